//! Stuck is visible (issue 17): `horizon run` on a real broker of this test's own
//! (`tests/broker`). A run whose work all settles exits 0 on SIGTERM. A run whose notify stage
//! cannot deliver (its stdout sink is a pipe nobody reads: every write fails, a retriable
//! error) turns `/ready` to 503 naming the stage and its last error, `/metrics` says
//! `horizon_stage_stalled` 1 for it and 0 for the others; with the broker then stopped too,
//! SIGTERM exits 3 with one line naming what is left.

use serde_json::Value;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

mod broker;
use broker::{horizon, run_cli, Broker};

const SCENARIO: &str = "chop";
const STAGES: [&str; 5] = ["market", "signals", "portfolio", "projections", "notify"];

struct Run {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Run {
    /// `horizon run` of every stage with notify, its stdout as given (the sink when no
    /// `--notify-out` is passed).
    fn start(broker: &Broker, name: &str, stdout: Stdio, extra: &[&str]) -> Run {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let log = broker.state.with_extension(format!("{name}.log"));
        let child = horizon()
            .args(["run", "--brokers", &broker.bootstrap, "--scenario", SCENARIO])
            .args(["--services", &STAGES.join(","), "--group-prefix", name])
            .args(["--http", &format!("127.0.0.1:{port}")])
            .args(extra)
            .stdout(stdout)
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Run { child, port, log }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GETs `path` until `want` holds for (status, body), within `timeout`.
    fn await_get(&self, path: &str, timeout: Duration, want: impl Fn(u16, &str) -> bool) -> (u16, String) {
        let deadline = Instant::now() + timeout;
        let mut last = None;
        while Instant::now() < deadline {
            if let Some((status, body)) = get(self.port, path) {
                if want(status, &body) {
                    return (status, body);
                }
                last = Some((status, body));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("GET {path}: never as wanted; last: {last:?}\nlog:\n{}", self.logs());
    }

    /// SIGTERM, then the exit status (a 60 s guard against a hang, far above the bound).
    fn terminate(&mut self) -> ExitStatus {
        Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "no exit within 60 s of SIGTERM\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// The value of a `/metrics` sample line `name{labels}`.
fn sample(metrics: &str, series: &str) -> Option<String> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .map(str::to_string)
}

fn feed(broker: &Broker) {
    let out = horizon()
        .args(["feed", SCENARIO, "--brokers", &broker.bootstrap])
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_settled_run_exits_0_and_a_stalled_stage_is_visible_and_exits_3_naming_it() {
    let broker = Broker::start("stall", 20303..20600);
    run_cli(&["topics", "create", "--brokers", &broker.bootstrap]);
    feed(&broker);
    let sim: Value = serde_json::from_str(&run_cli(&["sim", SCENARIO, "--json"])).unwrap();
    let notifications = sim["events_by_type"]["user_notification_triggered"].as_u64().unwrap();
    assert!(notifications > 0, "{SCENARIO} has notifications to deliver: {sim}");

    // Everything delivered and settled: SIGTERM exits 0, with no line about unsettled work.
    let out = broker.state.with_extension("notify.jsonl");
    // A sink file left by an earlier run on the same port would count as delivered already.
    let _ = std::fs::remove_file(&out);
    let mut clean = Run::start(
        &broker,
        "clean",
        Stdio::null(),
        &["--notify-out", out.to_str().unwrap(), "--stall-after", "2s"],
    );
    clean.await_get("/stats", Duration::from_secs(120), |status, body| {
        status == 200 && json(body)["delivery"]["delivered"].as_u64() == Some(notifications)
    });
    let (_, ready) = clean.await_get("/ready", Duration::from_secs(60), |status, _| status == 200);
    assert_eq!(json(&ready)["stalled"], Value::Array(vec![]), "{ready}");
    let status = clean.terminate();
    let log = clean.logs();
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(!log.contains("unsettled work"), "{log}");

    // The notify stage's sink fails on every write (the pipe's reader is gone): it retries
    // with notifications waiting and makes no progress.
    let mut stuck = Run::start(&broker, "stuck", Stdio::piped(), &["--stall-after", "2s", "--drain-timeout", "3s"]);
    drop(stuck.child.stdout.take());
    let (status, body) = stuck.await_get("/ready", Duration::from_secs(120), |status, body| {
        status == 503 && json(body)["stalled"].as_array().is_some_and(|s| !s.is_empty())
    });
    let ready = json(&body);
    assert_eq!(status, 503);
    assert_eq!(ready["ready"], false, "{body}");
    let stalled = ready["stalled"].as_array().unwrap();
    assert_eq!(stalled.len(), 1, "only notify is stuck: {body}");
    assert_eq!(stalled[0]["stage"], "notify", "{body}");
    assert!(stalled[0]["stalled_for_ms"].as_u64().unwrap() > 2000, "{body}");
    let error = stalled[0]["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("notification sink"), "last error `{error}`: {body}");
    assert!(stalled[0]["unsettled"]["outputs"].as_u64().unwrap() > 0, "{body}");

    let (_, metrics) = stuck.await_get("/metrics", Duration::from_secs(10), |status, _| status == 200);
    assert!(metrics.contains("# TYPE horizon_stage_stalled gauge"), "{metrics}");
    for stage in STAGES {
        let want = if stage == "notify" { "1" } else { "0" };
        let got = sample(&metrics, &format!("horizon_stage_stalled{{stage=\"{stage}\"}}"));
        assert_eq!(got.as_deref(), Some(want), "{stage}:\n{metrics}");
        assert!(
            sample(&metrics, &format!("horizon_stage_no_progress_seconds{{stage=\"{stage}\"}}")).is_some(),
            "{stage}:\n{metrics}"
        );
    }
    let (_, stats) = stuck.await_get("/stats", Duration::from_secs(10), |status, _| status == 200);
    assert_eq!(json(&stats)["stalled"][0]["stage"], "notify", "{stats}");

    // With the broker gone as well (commits and consumers' closes cannot complete), SIGTERM
    // still ends the process, non-zero, naming the stage and what it holds.
    broker.script(&["stop"]);
    let status = stuck.terminate();
    let log = stuck.logs();
    assert_eq!(status.code(), Some(3), "{log}");
    let line = log
        .lines()
        .find(|l| l.contains("stopped with unsettled work"))
        .unwrap_or_else(|| panic!("no line about unsettled work:\n{log}"));
    assert!(line.contains("notify (") && line.contains("outputs pending"), "{line}");
    assert!(line.contains("processed again on restart"), "{line}");
    assert!(!line.contains("market ("), "market settled: {line}");
}
