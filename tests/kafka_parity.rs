//! Parity with the simulator on a real Apache Kafka: a shipped scenario fed through Kafka and
//! processed by `horizon run` processes (real child processes of the built binary) ends in
//! projections byte-identical to `horizon sim` of the same scenario — with one process, with two
//! in one consumer group one of which is SIGKILLed midway and restarted, with the broker
//! stopped and restarted in the middle of the run, and with one node of a three-node cluster
//! (replication factor 3, min.insync.replicas 2) SIGKILLed in the middle of the run.
//!
//! Each test gets a broker of its own (`tests/broker`), so its topics hold exactly what the test
//! published; the tests take turns.

use horizon_core::bus::{Consumer, TopicPartition};
use horizon_core::event::{Event, EventType};
use horizon_core::topics;
use horizon_runtime::kafka::{KafkaConfig, KafkaConsumer};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

mod broker;
use broker::{horizon, run_cli, Broker};

const SCENARIO: &str = "chop";
/// This binary's brokers' ports.
const PORTS: std::ops::Range<u16> = 19600..19900;

static TURN: Mutex<()> = Mutex::new(());

/// What `horizon sim` says about the scenario.
struct Reference {
    digests: Value,
    events_by_type: BTreeMap<String, u64>,
    events: u64,
}

fn reference() -> Reference {
    let out = horizon().args(["sim", SCENARIO, "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let events_by_type: BTreeMap<String, u64> = serde_json::from_value(v["events_by_type"].clone()).unwrap();
    Reference {
        digests: v["digests"].clone(),
        events: events_by_type.values().sum(),
        events_by_type,
    }
}

/// A `horizon run` child process with its query API.
struct Service {
    child: Child,
    port: u16,
    name: String,
    log: PathBuf,
}

impl Service {
    fn start(broker: &Broker, name: &str, prefix: &str) -> Service {
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let log = broker.state.with_extension(format!("{name}.log"));
        let err = std::fs::File::create(&log).unwrap();
        let child = horizon()
            .args([
                "run",
                "--brokers",
                &broker.bootstrap,
                "--scenario",
                SCENARIO,
                "--group-prefix",
                prefix,
            ])
            .args(["--http", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap();
        Service {
            child,
            port,
            name: name.to_string(),
            log,
        }
    }

    fn digest(&self) -> Option<Value> {
        let body = http_get(self.port, "/digest")?;
        serde_json::from_str(&body).ok()
    }

    /// Waits until this process's projections have the reference digests.
    fn await_digests(&self, want: &Reference, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        let mut last = None;
        while Instant::now() < deadline {
            if let Some(d) = self.digest() {
                if d["digests"] == want.digests {
                    return d;
                }
                last = Some(d);
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        panic!(
            "{}: projections never reached the simulator's digests {}\nlast: {}\nlog:\n{}",
            self.name,
            want.digests,
            last.map(|d| d.to_string()).unwrap_or_default(),
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    /// SIGTERM; returns the exit status and the process's log.
    fn stop(mut self) -> (std::process::ExitStatus, String) {
        Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, std::fs::read_to_string(&self.log).unwrap_or_default());
            }
            assert!(Instant::now() < deadline, "{} did not stop within 60 s of SIGTERM", self.name);
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn kill(mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    if !text.starts_with("HTTP/1.1 200") {
        return None;
    }
    text.split_once("\r\n\r\n").map(|(_, body)| body.to_string())
}

/// Every record of every topic, read straight from the log.
fn read_all(bootstrap: &str) -> BTreeMap<&'static str, Vec<Vec<u8>>> {
    let cfg = KafkaConfig::new(bootstrap);
    let mut c = KafkaConsumer::new(&cfg, "parity-reader", &[topics::DEADLETTER]).unwrap();
    let mut out = BTreeMap::new();
    for spec in topics::ALL {
        let mut values = Vec::new();
        for partition in 0..spec.partitions {
            let tp = TopicPartition {
                topic: spec.name,
                partition,
            };
            let end = c.end_offset(tp).unwrap();
            values.extend(c.fetch(tp, 0, end).unwrap().into_iter().map(|r| r.value.to_vec()));
        }
        out.insert(spec.name, values);
    }
    out
}

/// Distinct event ids per type on the topics, and how many records were redelivered copies.
fn ids_on_topics(bootstrap: &str) -> (BTreeMap<String, u64>, u64) {
    let mut ids: BTreeMap<EventType, BTreeSet<String>> = BTreeMap::new();
    let mut records = 0u64;
    for (topic, values) in read_all(bootstrap) {
        if topic == topics::DEADLETTER {
            continue;
        }
        for v in values {
            if let Ok(e) = Event::decode(&v) {
                records += 1;
                ids.entry(e.event_type()).or_default().insert(e.id);
            }
        }
    }
    let distinct: u64 = ids.values().map(|s| s.len() as u64).sum();
    let by_type = ids.into_iter().map(|(t, s)| (t.as_str().to_string(), s.len() as u64)).collect();
    (by_type, records - distinct)
}

fn feed(broker: &Broker, rate: Option<&str>) -> Child {
    let mut cmd = horizon();
    cmd.args(["feed", SCENARIO, "--brokers", &broker.bootstrap]);
    if let Some(r) = rate {
        cmd.args(["--rate", r]);
    }
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
}

fn await_ok(child: Child, what: &str) -> String {
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{what} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn check_topics_against(reference: &Reference, bootstrap: &str) {
    let (by_type, copies) = ids_on_topics(bootstrap);
    let want: BTreeMap<String, u64> = reference
        .events_by_type
        .iter()
        .map(|(t, n)| (t.to_uppercase(), *n))
        .filter(|(_, n)| *n > 0)
        .collect();
    assert_eq!(by_type, want, "distinct event ids per type on the topics vs the simulator");
    eprintln!("topics hold every event id of the simulator's run once or more ({copies} copies from feed duplicates and redeliveries, dropped by id)");
}

#[test]
fn a_scenario_fed_through_kafka_gives_the_simulators_projections() {
    let _turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
    let want = reference();
    let broker = Broker::start("parity", PORTS);
    run_cli(&["topics", "create", "--brokers", &broker.bootstrap]);
    let service = Service::start(&broker, "one", "parity-a");
    await_ok(feed(&broker, None), "horizon feed");
    let d = service.await_digests(&want, Duration::from_secs(180));
    assert_eq!(d["events"], want.events);
    let (status, log) = service.stop();
    assert!(status.success(), "horizon run exited with {status} after SIGTERM:\n{log}");
    assert!(log.contains("stopped (signal)"), "{log}");
    // A fresh read replica built from the log agrees.
    let replica: Value = serde_json::from_str(&run_cli(&[
        "digest",
        "--brokers",
        &broker.bootstrap,
        "--scenario",
        SCENARIO,
        "--json",
    ]))
    .unwrap();
    assert_eq!(replica["digests"], want.digests);
    check_topics_against(&want, &broker.bootstrap);
}

#[test]
fn two_processes_in_one_group_one_killed_midway_and_restarted_give_the_same_projections() {
    let _turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
    let want = reference();
    let broker = Broker::start("parity", PORTS);
    run_cli(&["topics", "create", "--brokers", &broker.bootstrap]);
    let a = Service::start(&broker, "a", "parity-b");
    let b = Service::start(&broker, "b", "parity-b");
    // ~54k events over ~7 s; a dies 2.5 s in, with work in flight.
    let feeding = feed(&broker, Some("8000/s"));
    std::thread::sleep(Duration::from_millis(2500));
    let before = a.digest().map(|d| d["events"].clone()).unwrap_or_default();
    a.kill();
    eprintln!("killed a (SIGKILL) after its projections had applied {before} events");
    std::thread::sleep(Duration::from_millis(500));
    let a2 = Service::start(&broker, "a-restarted", "parity-b");
    await_ok(feeding, "horizon feed");
    let t0 = Instant::now();
    for s in [&b, &a2] {
        let d = s.await_digests(&want, Duration::from_secs(240));
        eprintln!("{} reached the digests {:?} after the feed ended", s.name, t0.elapsed());
        assert_eq!(d["events"], want.events, "{}: the audit trail holds every event once", s.name);
        assert_eq!(
            d["events_by_type"]["portfolio_rebalanced"],
            want.events_by_type["portfolio_rebalanced"]
        );
    }
    check_topics_against(&want, &broker.bootstrap);
    for s in [b, a2] {
        let name = s.name.clone();
        let (status, log) = s.stop();
        assert!(status.success(), "{name} exited with {status}:\n{log}");
    }
}

#[test]
fn the_broker_stopped_and_restarted_midway_the_run_completes_with_the_same_projections() {
    let _turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
    let want = reference();
    let broker = Broker::start("parity", PORTS);
    run_cli(&["topics", "create", "--brokers", &broker.bootstrap]);
    let service = Service::start(&broker, "through-restart", "parity-c");
    let feeding = feed(&broker, Some("10000/s"));
    std::thread::sleep(Duration::from_millis(2000));
    // Down for longer than the consumers' session timeout (10 s): the groups forget their
    // members and every stage must rejoin, not just reconnect.
    broker.restart(Duration::from_secs(15));
    eprintln!("broker stopped and restarted");
    await_ok(feeding, "horizon feed");
    let t0 = Instant::now();
    service.await_digests(&want, Duration::from_secs(240));
    eprintln!("reached the digests {:?} after the feed ended", t0.elapsed());
    check_topics_against(&want, &broker.bootstrap);
    let (status, log) = service.stop();
    assert!(status.success(), "horizon run exited with {status}:\n{log}");
    assert!(log.contains("broker connection lost"), "the outage was seen:\n{log}");
}

#[test]
fn a_node_of_three_killed_midway_the_run_completes_with_the_same_projections() {
    let _turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
    let want = reference();
    let cluster = Broker::start_nodes("parity", PORTS, 3);
    run_cli(&[
        "topics",
        "create",
        "--brokers",
        &cluster.bootstrap,
        "--replication-factor",
        "3",
        "--min-insync",
        "2",
    ]);
    let service = Service::start(&cluster, "one-node-down", "parity-d");
    let feeding = feed(&cluster, Some("10000/s"));
    std::thread::sleep(Duration::from_millis(2000));
    // A crash, not a clean shutdown: node 1 is the first bootstrap server, and leads about a
    // third of the partitions and perhaps the groups' coordinator. Two of three replicas stay in
    // sync, so acks=all writes go on after the leaders move.
    cluster.script(&["kill-node", "1"]);
    eprintln!("node 1 of 3 killed");
    await_ok(feeding, "horizon feed");
    let t0 = Instant::now();
    service.await_digests(&want, Duration::from_secs(240));
    eprintln!("reached the digests {:?} after the feed ended, one node down", t0.elapsed());
    check_topics_against(&want, &cluster.bootstrap);
    let (status, log) = service.stop();
    assert!(status.success(), "horizon run exited with {status}:\n{log}");
}
