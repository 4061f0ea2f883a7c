//! `bollinger`: CipherHorizon's command line over this crate's topology — the shipped pipeline
//! plus `band-alerts` and `alert-book` — with every `horizon` command and flag: `sim`,
//! `explore`, `replay`, `shrink` on the simulator, `topics create` and `run` on Kafka.

use std::process::ExitCode;

fn main() -> ExitCode {
    horizon::main_with(horizon_example_bollinger::topology())
}
