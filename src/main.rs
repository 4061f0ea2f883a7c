//! `horizon`: the CipherHorizon command line over the shipped topology (the commands are the
//! `horizon` library's, so a user's binary gets them over its own: `horizon::main_with`).

use std::process::ExitCode;

fn main() -> ExitCode {
    horizon::main_with(horizon_core::topology::Topology::shipped())
}

// The pipeline allocates per event; mimalloc is markedly faster than glibc's malloc for that.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
