//! A Kafka broker (or cluster) of a test's own, and the `horizon` binary, for the tests that run
//! deployments as child processes (`kafka_parity.rs`, `query_api.rs`, and the example crate's
//! `examples/bollinger/tests/kafka_parity.rs`, which includes this file).
//!
//! `scripts/kafka start --fresh` on a free port with its own `HORIZON_KAFKA_STATE` under the
//! target dir, stopped and wiped on drop, so its topics hold exactly what the test published. A
//! broker that cannot be started fails the test (Java 17 and the cached Kafka jars are needed, as
//! for every Kafka test here).

// Each test binary that includes this module uses a part of it.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// The `horizon` binary of the crate under test (the root crate's tests only).
pub fn horizon() -> Command {
    match option_env!("CARGO_BIN_EXE_horizon") {
        Some(bin) => Command::new(bin),
        None => panic!("only the root crate's tests run `horizon`"),
    }
}

/// Runs `horizon ARGS`, which must succeed, and returns its stdout.
pub fn run_cli(args: &[&str]) -> String {
    let out = horizon().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "horizon {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `scripts/kafka` of the workspace (the crate under test may be a member below its root, like
/// `examples/bollinger`).
fn script() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.ancestors()
        .map(|d| d.join("scripts/kafka"))
        .find(|p| p.is_file())
        .expect("scripts/kafka above the crate")
}

fn port_free(p: u16) -> bool {
    TcpListener::bind(("127.0.0.1", p)).is_ok()
}

pub struct Broker {
    pub state: PathBuf,
    pub port: u16,
    pub bootstrap: String,
}

impl Broker {
    /// One broker, on a port from `ports` (each test binary has its own range), its state in
    /// `<target tmp>/kafka-<name>-<port>`.
    pub fn start(name: &str, ports: std::ops::Range<u16>) -> Broker {
        Broker::start_nodes(name, ports, 1)
    }

    /// `nodes` brokers (combined broker+controller) on ports `port..port+nodes`.
    pub fn start_nodes(name: &str, ports: std::ops::Range<u16>, nodes: u16) -> Broker {
        // Other test runs (another session's `cargo test`) may be starting brokers too: start
        // from a port that depends on the process id, and move on when a start fails.
        let offset = (std::process::id() as usize % 40) * 7;
        let mut failures = Vec::new();
        for port in ports.step_by(7).cycle().skip(offset / 7).take(40) {
            if !(0..nodes).all(|n| port_free(port + n) && port_free(port + 100 + n)) {
                continue;
            }
            let mut b = Broker {
                state: PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("kafka-{name}-{port}")),
                port,
                bootstrap: String::new(),
            };
            match b.try_script(&["start", "--fresh", "--nodes", &nodes.to_string(), "--port", &port.to_string()]) {
                Ok(bootstrap) => {
                    b.bootstrap = bootstrap;
                    return b;
                }
                Err(e) => failures.push(e),
            }
            if failures.len() >= 3 {
                break;
            }
        }
        panic!("could not start a test broker:\n{}", failures.join("\n"));
    }

    /// Runs `scripts/kafka ARGS` against this broker; the last line of its stdout.
    pub fn try_script(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("bash")
            .arg(script())
            .args(args)
            .env("HORIZON_KAFKA_STATE", &self.state)
            .env_remove("HORIZON_KAFKA_BOOTSTRAP")
            .output()
            .expect("run scripts/kafka");
        if !out.status.success() {
            return Err(format!(
                "scripts/kafka {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .trim()
            .to_string())
    }

    pub fn script(&self, args: &[&str]) -> String {
        self.try_script(args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Stops the broker, keeping its data, and starts it again after `down`.
    pub fn restart(&self, down: Duration) {
        self.script(&["stop"]);
        std::thread::sleep(down);
        self.script(&["start", "--port", &self.port.to_string()]);
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.try_script(&["clean"]);
    }
}
