//! `horizon`: the CipherHorizon command line.
//!
//! The edge of the system: reads files and flags, measures wall time, prints. Everything it
//! runs is in `horizon-core` (the pure domain), `horizon-sim` and `horizon-runtime`. Errors are
//! one line on stderr and a non-zero exit, never a panic trace.

mod audit_cmd;
mod query_cmd;
mod scenario_cmd;
mod sim_cmd;

use clap::{Parser, Subcommand};
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
    /// A read model as of now or of a past point (time travel), from an audit log.
    Query(query_cmd::QueryArgs),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            // clap's own rendering: usage errors name the flag; --help/--version print normally.
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let result = match cli.command {
        Command::Sim(args) => sim_cmd::run(args),
        Command::Scenario(cmd) => scenario_cmd::run(cmd),
        Command::Audit(cmd) => audit_cmd::run(cmd),
        Command::Query(args) => query_cmd::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("horizon: {e}");
            ExitCode::FAILURE
        }
    }
}

// The pipeline allocates per event; mimalloc is markedly faster than glibc's malloc for that.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
