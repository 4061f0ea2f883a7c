//! The example's topology on a real Kafka broker ends where the simulator does: `bollinger run`
//! (the `horizon run` flags, over this crate's topology) fed the example scenario's market,
//! then every read replica rebuilt from the Kafka log by `bollinger digest` — the shipped
//! projections and this crate's `alert-book` — has the digests of `bollinger sim`.

#[path = "../../../tests/broker/mod.rs"]
mod broker;

use broker::Broker;
use horizon_example_bollinger::SCENARIO_ORIGIN;
use serde_json::Value;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn bollinger(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bollinger"))
        .args(args)
        .current_dir(workspace())
        .output()
        .unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = bollinger(args);
    assert!(
        out.status.success(),
        "bollinger {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The scenario path is relative to the workspace root.
fn workspace() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn the_example_topology_on_kafka_ends_with_the_simulators_read_models() {
    let sim: Value = serde_json::from_str(&ok(&["sim", SCENARIO_ORIGIN, "--json"])).unwrap();
    let want = sim["read_digests"].clone();
    let parts: Vec<&str> = want["parts"].as_array().unwrap().iter().map(|p| p[0].as_str().unwrap()).collect();
    assert!(parts.contains(&"alert-book.alerts"), "{parts:?}");

    let broker = Broker::start("bollinger", 20603..20900);
    let b = broker.bootstrap.as_str();
    let topics = ok(&["topics", "create", "--brokers", b]);
    assert!(topics.contains(&format!("topics ready on {b}")), "{topics}");
    let log = broker.state.with_extension("run.log");
    let mut service = Command::new(env!("CARGO_BIN_EXE_bollinger"))
        .args(["run", "--brokers", b, "--scenario", SCENARIO_ORIGIN, "--group-prefix", "bollinger"])
        .current_dir(workspace())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    ok(&["feed", SCENARIO_ORIGIN, "--brokers", b]);

    // Every read replica rebuilt from the log, until the deployment has produced all of it.
    let deadline = Instant::now() + Duration::from_secs(240);
    let last = loop {
        let out = bollinger(&[
            "digest",
            "--brokers",
            b,
            "--scenario",
            SCENARIO_ORIGIN,
            "--json",
            "--catch-up-secs",
            "120",
        ]);
        let got: Option<Value> = out.status.success().then(|| serde_json::from_slice(&out.stdout).ok()).flatten();
        match got {
            Some(v) if v["read_digests"] == want => break v,
            other if Instant::now() >= deadline => {
                let _ = service.kill();
                panic!(
                    "the read models rebuilt from Kafka never reached the simulator's\nwant {want}\nlast {other:?}\nservice log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            _ => std::thread::sleep(Duration::from_secs(2)),
        }
    };
    assert_eq!(last["digests"], sim["digests"]);
    Command::new("kill").args(["-TERM", &service.id().to_string()]).status().unwrap();
    let status = service.wait().unwrap();
    assert!(
        status.success(),
        "bollinger run exited with {status} after SIGTERM:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}
