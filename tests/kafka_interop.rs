//! Interoperability with a client no one here wrote: Python's confluent-kafka with classes that
//! protoc (`grpc_tools.protoc`) generated from `proto/horizon/v1/events.proto`
//! (`scripts/interop/`). It publishes trades and a deliberately bad record to `market.feed`; a
//! `horizon run` process of the built binary processes them; the Python client reads the closed
//! bar back from `market.bars` and the dead letter from `deadletter`, decoding both with the
//! generated classes.
//!
//! The test gets a broker of its own (like `tests/kafka_parity.rs`) so the topics hold only its
//! records. It FAILS, never skips, when python3/pip (PyPI) or the broker is unavailable; the venv
//! under `target/interop-venv` is cached, so after the first run pip does not run at all.

use serde_json::Value;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

struct Broker {
    state: PathBuf,
    bootstrap: String,
}

impl Broker {
    fn start() -> Broker {
        let free = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
        let offset = std::process::id() as usize % 40;
        let mut failures = Vec::new();
        for port in (19900..20180).step_by(7).cycle().skip(offset).take(40) {
            if !(free(port) && free(port + 100)) {
                continue;
            }
            let state = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("kafka-interop-{port}"));
            let out = Command::new("bash")
                .arg(root().join("scripts/kafka"))
                .args(["start", "--fresh", "--port", &port.to_string()])
                .env("HORIZON_KAFKA_STATE", &state)
                .env_remove("HORIZON_KAFKA_BOOTSTRAP")
                .output()
                .expect("run scripts/kafka");
            let b = Broker {
                state,
                bootstrap: String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .last()
                    .unwrap_or_default()
                    .trim()
                    .to_string(),
            };
            if out.status.success() {
                return b;
            }
            failures.push(String::from_utf8_lossy(&out.stderr).into_owned());
            if failures.len() >= 3 {
                break;
            }
        }
        panic!("could not start a test broker:\n{}", failures.join("\n"));
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(root().join("scripts/kafka"))
            .arg("clean")
            .env("HORIZON_KAFKA_STATE", &self.state)
            .env_remove("HORIZON_KAFKA_BOOTSTRAP")
            .output();
    }
}

/// The venv's python (pip install and protoc run only when their inputs changed).
fn interop_python() -> (PathBuf, PathBuf) {
    let out = Command::new("bash")
        .arg(root().join("scripts/interop/setup"))
        .output()
        .expect("run scripts/interop/setup");
    assert!(
        out.status.success(),
        "the Python interop client could not be prepared (scripts/interop/setup; python3 with venv and pip access to PyPI \
         are needed for this test):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let python = PathBuf::from(String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or_default().trim());
    let gen = python.parent().and_then(|p| p.parent()).expect("venv layout").join("gen");
    (python, gen)
}

#[test]
fn a_python_confluent_kafka_client_with_protoc_classes_feeds_horizon_run_and_reads_its_outputs() {
    let t0 = Instant::now();
    let (python, gen) = interop_python();
    eprintln!("interop venv ready in {:?}", t0.elapsed());
    let broker = Broker::start();
    let horizon = env!("CARGO_BIN_EXE_horizon");
    let created = Command::new(horizon)
        .args(["topics", "create", "--brokers", &broker.bootstrap])
        .output()
        .unwrap();
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    let log = broker.state.with_extension("run.log");
    let mut service = Command::new(horizon)
        .args([
            "run",
            "--brokers",
            &broker.bootstrap,
            "--scenario",
            "chop",
            "--group-prefix",
            "interop",
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let client = Command::new(&python)
        .arg(root().join("scripts/interop/client.py"))
        .arg(&broker.bootstrap)
        .arg(&gen)
        .args(["--symbol", "BTCUSDT", "--start", "2024-05-01T00:00:00Z", "--timeout", "120"])
        .output()
        .unwrap();
    let _ = service.kill();
    let _ = service.wait();
    assert!(
        client.status.success(),
        "python client failed: {}\n{}\nhorizon run log:\n{}",
        String::from_utf8_lossy(&client.stderr),
        String::from_utf8_lossy(&client.stdout),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let v: Value = serde_json::from_slice(&client.stdout).expect("client prints JSON");
    eprintln!("{v}");
    // The bar of the two trades in [00:00, 00:01): open 60000.1, high 60012.3, low 60000.1,
    // close 60012.3, volume 0.0035, closed by the third trade at 00:01:05.
    let bar = &v["bar"];
    assert_eq!(bar["symbol"], "BTCUSDT");
    assert_eq!(bar["key"], "BTCUSDT");
    assert_eq!(bar["exchange"], "SIM");
    assert_eq!(bar["interval_ms"], 60000);
    assert_eq!(bar["trade_count"], 2);
    assert_eq!(bar["seq"], 0);
    let dec = |d: &Value| d[0].as_i64().unwrap() as f64 / 10f64.powi(d[1].as_i64().unwrap() as i32);
    assert_eq!(dec(&bar["open"]), 60000.1);
    assert_eq!(dec(&bar["high"]), 60012.3);
    assert_eq!(dec(&bar["low"]), 60000.1);
    assert_eq!(dec(&bar["close"]), 60012.3);
    assert!((dec(&bar["volume"]) - 0.0035).abs() < 1e-12, "{bar}");
    // The bad record's dead letter, with where it came from.
    let dead = &v["dead_letter"];
    assert_eq!(dead["source_topic"], "market.feed");
    assert_eq!(dead["source_partition"], v["bad_partition"]);
    assert_eq!(dead["source_offset"], v["bad_offset"]);
    assert_eq!(dead["original_matches"], true);
    assert!(!dead["reason"].as_str().unwrap_or_default().is_empty(), "{dead}");
    eprintln!("interop test took {:?}", t0.elapsed());
}
