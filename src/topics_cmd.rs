//! `horizon topics create`: the documented topics with their partition counts.

use crate::run_cmd::KafkaArgs;
use horizon_core::topics;
use horizon_runtime::kafka::admin;

#[derive(clap::Subcommand)]
pub enum TopicsCommand {
    /// Create every documented topic (existing ones are left as they are).
    Create {
        #[command(flatten)]
        kafka: KafkaArgs,
        /// Replicas per partition (3 on a 3-node cluster).
        #[arg(long, default_value_t = 1)]
        replication_factor: i32,
        /// min.insync.replicas for the created topics (2 with 3 replicas survives one node down
        /// without losing an acknowledged record).
        #[arg(long)]
        min_insync: Option<u32>,
    },
    /// Print the documented topics.
    List,
}

pub fn run(cmd: TopicsCommand) -> Result<(), String> {
    match cmd {
        TopicsCommand::Create {
            kafka,
            replication_factor,
            min_insync,
        } => {
            if replication_factor < 1 {
                return Err("--replication-factor must be at least 1".into());
            }
            if let Some(m) = min_insync {
                if m < 1 || m as i32 > replication_factor {
                    return Err(format!(
                        "--min-insync must be between 1 and the replication factor ({replication_factor})"
                    ));
                }
            }
            let config = kafka.connect()?;
            admin::create_topics(&config.bootstrap, &config.properties, replication_factor, min_insync).map_err(|e| e.to_string())?;
            println!("topics ready on {} (replication factor {replication_factor}):", config.bootstrap);
            print_table();
            Ok(())
        }
        TopicsCommand::List => {
            print_table();
            Ok(())
        }
    }
}

fn print_table() {
    for t in topics::ALL {
        println!("  {:<14} {:>2} partitions  key: {:<30} {}", t.name, t.partitions, t.key, t.holds);
    }
}
