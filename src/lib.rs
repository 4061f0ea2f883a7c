//! `horizon`: the CipherHorizon command line, as a library a user's binary calls with its own
//! topology (`main_with`): the same commands and flags over their stages.
//!
//! The edge of the system: reads files and flags, measures wall time, prints. Everything it
//! runs is in `horizon-core` (the pure domain), `horizon-sim` and `horizon-runtime`. Errors are
//! one line on stderr and a non-zero exit, never a panic trace.
//!
//! ```no_run
//! // A user's `src/main.rs`: `sim`, `explore`, `replay`, `shrink`, `run`, ... over their topology.
//! fn main() -> std::process::ExitCode {
//!     horizon::main_with(horizon_core::topology::Topology::shipped().named("mine"))
//! }
//! ```

mod audit_cmd;
mod bench_kafka_cmd;
mod explore_cmd;
mod explore_results;
mod feed_cmd;
mod query_cmd;
mod run_cmd;
mod scenario_cmd;
mod sim_cmd;
mod topics_cmd;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use horizon_core::topology::{Topology, SHIPPED};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "horizon",
    version,
    about = "Event-driven crypto analytics on a deterministic simulator and on Apache Kafka"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a scenario end to end on the in-memory bus and summarise it.
    Sim(sim_cmd::SimArgs),
    /// The scenario library: list the shipped scenarios, show one's market data.
    #[command(subcommand)]
    Scenario(scenario_cmd::ScenarioCommand),
    /// Audit logs: verify the hash chains.
    #[command(subcommand)]
    Audit(audit_cmd::AuditCommand),
    /// Run services against Apache Kafka (a long-lived process; SIGTERM stops it cleanly).
    Run(run_cmd::RunArgs),
    /// Publish a scenario's market data to Kafka, as a market-data gateway would.
    Feed(feed_cmd::FeedArgs),
    /// Kafka topics: create the documented set.
    #[command(subcommand)]
    Topics(topics_cmd::TopicsCommand),
    /// Build the projections from the Kafka log (a fresh read replica) and print their digests.
    Digest(run_cmd::DigestArgs),
    /// A read model as of now or of a past point (time travel), from an audit log.
    Query(query_cmd::QueryArgs),
    /// Run many seeds of the deterministic simulator on every core; list failures by invariant.
    Explore(explore_cmd::ExploreArgs),
    /// Run one simulator seed again (same trace digest) and print its schedule.
    Replay(explore_cmd::ReplayArgs),
    /// Shrink a failing simulator seed's fault schedule to a minimal one.
    Shrink(explore_cmd::ShrinkArgs),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(explore_cmd::BenchCommand),
}

// `horizon explore merge FILES...`, parsed apart: `explore` takes a scenario where a
// subcommand would go (a scenario file called `merge` is `./merge`).
#[derive(Parser)]
#[command(
    name = "horizon explore merge",
    bin_name = "horizon explore merge",
    about = "Merge result files of `horizon explore --json` (shards of one case) into one failure table"
)]
struct MergeCli {
    #[command(flatten)]
    args: explore_results::MergeArgs,
}

/// The name the running binary was invoked by (`horizon`, or a user's binary), for the
/// commands it prints.
pub fn bin_name() -> String {
    std::env::args_os()
        .next()
        .and_then(|a| std::path::Path::new(&a).file_stem().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "horizon".to_string())
}

/// Runs the command line over `topology`: `horizon` is `main_with(Topology::shipped())`.
pub fn main_with(topology: Topology) -> ExitCode {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if argv.len() >= 3 && argv[1] == "explore" && argv[2] == "merge" {
        let parsed = MergeCli::try_parse_from(argv[2..].iter());
        return match parsed {
            Ok(m) => finish(explore_results::run_merge(m.args)),
            Err(e) => clap_exit(e),
        };
    }
    if let Err(e) = topology.validate() {
        eprintln!("{}: {e}", bin_name());
        return ExitCode::FAILURE;
    }
    let mut command = Cli::command();
    if topology.name != SHIPPED {
        // Once per process: clap's names are static.
        let name: &'static str = Box::leak(bin_name().into_boxed_str());
        let about: &'static str = Box::leak(format!("CipherHorizon's commands over topology `{}`", topology.name).into_boxed_str());
        command = command.name(name).bin_name(name).about(about);
    }
    let cli = match command.try_get_matches().and_then(|m| Cli::from_arg_matches(&m)) {
        Ok(c) => c,
        Err(e) => return clap_exit(e),
    };
    let result = match cli.command {
        Command::Sim(args) => sim_cmd::run(args, &topology),
        Command::Scenario(cmd) => scenario_cmd::run(cmd, &topology),
        Command::Audit(cmd) => audit_cmd::run(cmd),
        Command::Run(args) => run_cmd::run(args, &topology),
        Command::Feed(args) => feed_cmd::run(args, &topology),
        Command::Topics(cmd) => topics_cmd::run(cmd, &topology),
        Command::Digest(args) => run_cmd::digest(args, &topology),
        Command::Query(args) => query_cmd::run(args, &topology),
        Command::Explore(args) => explore_cmd::run_explore(args, &topology),
        Command::Replay(args) => explore_cmd::run_replay(args, &topology),
        Command::Shrink(args) => explore_cmd::run_shrink(args, &topology),
        Command::Bench(cmd) => explore_cmd::run_bench(cmd),
    };
    finish(result)
}

/// clap's own rendering: usage errors name the flag; --help/--version print normally.
fn clap_exit(e: clap::Error) -> ExitCode {
    let code = if e.use_stderr() { 2 } else { 0 };
    let _ = e.print();
    ExitCode::from(code)
}

fn finish(result: Result<(), String>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Through the one masking function: an error may echo a client property's value.
            eprintln!("{}: {}", bin_name(), horizon_runtime::secrets::mask(&e));
            ExitCode::FAILURE
        }
    }
}
