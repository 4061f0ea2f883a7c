//! `horizon topics`: a topology's topics, created with their partition counts
//! (`horizon_runtime::cli::create_topics`).

use horizon_core::topology::Topology;
use horizon_runtime::cli::{self, CreateTopicsArgs};

#[derive(clap::Subcommand)]
pub enum TopicsCommand {
    /// Create every documented topic (existing ones are left as they are).
    Create(CreateTopicsArgs),
    /// Print the documented topics.
    List,
}

pub fn run(cmd: TopicsCommand, topology: &Topology) -> Result<(), String> {
    match cmd {
        TopicsCommand::Create(args) => cli::create_topics(&args, topology),
        TopicsCommand::List => {
            cli::print_topics(topology);
            Ok(())
        }
    }
}
