//! The query API of `horizon run --http`, over real HTTP against a deployment on a real broker
//! of this test's own (`tests/broker`, as in tests/kafka_parity.rs): every endpoint answers,
//! errors are JSON naming what is wrong, every answer carries the offsets it reflects, a request
//! can wait for offsets (read-your-writes), /metrics is Prometheus text, /openapi.json matches the
//! routes. Then: `horizon audit verify --brokers` chains the live topics and exports a log that
//! `horizon audit verify PATH` checks; and a run with `--state-dir` killed midway restarts from
//! its snapshots plus the log's tail and ends with the simulator's digests.

use horizon_core::bus::TopicPartition;
use horizon_core::topics;
use horizon_runtime::kafka::{KafkaConfig, KafkaConsumer};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

mod broker;
use broker::{horizon, run_cli, Broker};

const SCENARIO: &str = "chop";
const CLIENT_PROPERTIES: &str =
    "session.timeout.ms=6000\nheartbeat.interval.ms=500\nreconnect.backoff.ms=50\nreconnect.backoff.max.ms=500\n";

/// A broker of this test's own, with client properties that notice a lost member quickly.
fn start_broker() -> Broker {
    let b = Broker::start("query", 19903..20200);
    std::fs::write(properties(&b), CLIENT_PROPERTIES).unwrap();
    b
}

fn properties(broker: &Broker) -> PathBuf {
    broker.state.with_extension("client.properties")
}

fn sim_digests() -> Value {
    let v: Value = serde_json::from_str(&run_cli(&["sim", SCENARIO, "--json"])).unwrap();
    v["digests"].clone()
}

struct Service {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Service {
    fn start(broker: &Broker, name: &str, extra: &[&str]) -> Service {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let log = broker.state.with_extension(format!("{name}.log"));
        let child = horizon()
            .args(["run", "--brokers", &broker.bootstrap, "--scenario", SCENARIO])
            .arg("--config")
            .arg(properties(broker))
            .args(["--http", &format!("127.0.0.1:{port}")])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Service { child, port, log }
    }

    fn get(&self, path: &str) -> Reply {
        get(self.port, path).unwrap_or_else(|| panic!("GET {path}: no answer\n{}", self.logs()))
    }

    fn wait_up(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while get(self.port, "/health").is_none() {
            assert!(Instant::now() < deadline, "no query API\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn await_digests(&self, want: &Value, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        let mut last = Value::Null;
        while Instant::now() < deadline {
            if let Some(r) = get(self.port, "/digest") {
                if r.status == 200 {
                    last = r.json();
                    if last["digests"] == *want {
                        return last;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "projections never reached the simulator's digests {want}\nlast: {last}\nlog:\n{}",
            self.logs()
        );
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Reply {
    status: u16,
    headers: BTreeMap<String, String>,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// A JSON error of this status whose message mentions `needle`.
    fn assert_error(&self, status: u16, needle: &str) {
        assert_eq!(self.status, status, "{}", self.body);
        let v = self.json();
        let msg = v["error"].as_str().unwrap_or_else(|| panic!("no error field: {}", self.body));
        assert!(msg.contains(needle), "error `{msg}` does not name `{needle}`");
    }
}

fn get(port: u16, path: &str) -> Option<Reply> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(40))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let mut lines = head.lines();
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    // axum answers with Content-Length (no chunking) for these bodies.
    Some(Reply {
        status,
        headers,
        body: body.to_string(),
    })
}

/// The `X-Horizon-Offsets` header, parsed.
fn token(r: &Reply) -> BTreeMap<String, u64> {
    let h = r
        .headers
        .get("x-horizon-offsets")
        .unwrap_or_else(|| panic!("no X-Horizon-Offsets header: {:?}", r.headers));
    h.split(',')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (tp, o) = p.rsplit_once(':').unwrap();
            (tp.to_string(), o.parse().unwrap())
        })
        .collect()
}

fn feed(broker: &Broker, rate: Option<&str>) -> Child {
    let mut cmd = horizon();
    cmd.args(["feed", SCENARIO, "--brokers", &broker.bootstrap])
        .arg("--config")
        .arg(properties(broker));
    if let Some(r) = rate {
        cmd.args(["--rate", r]);
    }
    cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap()
}

fn wait_ok(c: Child) {
    let out = c.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn market_feed_ends(broker: &Broker) -> BTreeMap<String, u64> {
    let mut c = KafkaConsumer::new(&KafkaConfig::new(&broker.bootstrap), "query-test-reader", &[topics::DEADLETTER]).unwrap();
    (0..topics::partitions(topics::MARKET_FEED))
        .map(|partition| {
            let tp = TopicPartition {
                topic: topics::MARKET_FEED,
                partition,
            };
            (tp.to_string(), c.end_offset(tp).unwrap())
        })
        .collect()
}

#[test]
fn the_query_api_on_a_real_broker_then_audit_export_then_snapshot_restart() {
    let t0 = Instant::now();
    let want = sim_digests();
    let broker = start_broker();
    run_cli(&["topics", "create", "--brokers", &broker.bootstrap]);
    let state_dir = broker.state.with_extension("state");
    let _ = std::fs::remove_dir_all(&state_dir);
    let snap_args = [
        "--state-dir",
        state_dir.to_str().unwrap(),
        "--snapshot-records",
        "5000",
        "--projections-group",
        "query-test.projections",
        "--group-prefix",
        "query-test",
    ];
    let svc = Service::start(&broker, "first", &snap_args);
    svc.wait_up();
    // Not ready before it has its assignment and has caught up; answers 503 with JSON meanwhile.
    let r = svc.get("/ready");
    assert!(r.status == 200 || r.status == 503, "{}", r.body);
    assert!(r.json()["ready"].is_boolean());

    // Fed at a bounded rate; the process is SIGKILLed midway.
    let feeding = feed(&broker, Some("10000/s"));
    // Killed once a projections snapshot is on disk (the group's first join takes ~3 s).
    let deadline = Instant::now() + Duration::from_secs(40);
    while !state_dir.join("projections-0.snap").exists() {
        assert!(Instant::now() < deadline, "no projections snapshot within 40 s\n{}", svc.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let before = svc.get("/stats").json();
    drop(svc); // SIGKILL
    wait_ok(feeding);
    let ends = market_feed_ends(&broker);
    let saved: Vec<String> = std::fs::read_dir(&state_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        saved.iter().any(|n| n.starts_with("projections-")),
        "no projections snapshot saved: {saved:?}"
    );
    eprintln!(
        "killed after {} projection records; snapshots {saved:?}",
        before["stats"]["projections"]["records_in"]
    );

    let svc = Service::start(&broker, "restarted", &snap_args);
    svc.wait_up();
    // Read-your-writes: wait until every market.feed record published is applied.
    let min: Vec<String> = ends.iter().map(|(tp, o)| format!("{tp}:{o}")).collect();
    let r = svc.get(&format!("/portfolios/alpha?min_offsets={}&timeout_ms=45000", min.join(",")));
    assert_eq!(r.status, 200, "{}\n{}", r.body, svc.logs());
    let got = token(&r);
    for (tp, o) in &ends {
        assert!(got[tp] >= *o, "{tp}: answer reflects {} < asked {o}", got[tp]);
    }
    assert_eq!(
        r.json()["offsets"],
        serde_json::to_value(&got).unwrap(),
        "header and body offsets agree"
    );
    let d = svc.await_digests(&want, Duration::from_secs(60));
    eprintln!("restarted process reached the simulator's digests: {}", d["digests"]["all"]);
    let stats = svc.get("/stats").json();
    let p = &stats["stats"]["projections"];
    assert!(
        p["snapshots_used"].as_u64().unwrap() >= 1,
        "the restart did not restore from a snapshot: {stats}"
    );
    eprintln!(
        "restart: projections snapshots_used {} restored_records {} records_in {}; portfolio snapshots_used {}",
        p["snapshots_used"], p["restored_records"], p["records_in"], stats["stats"]["portfolio"]["snapshots_used"]
    );
    let log = svc.logs();
    assert!(log.contains("restoring from its snapshot"), "{log}");

    // Readiness once caught up.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = svc.get("/ready");
        if r.status == 200 {
            assert_eq!(r.json()["ready"], true);
            break;
        }
        assert!(Instant::now() < deadline, "never ready: {}", r.body);
        std::thread::sleep(Duration::from_millis(200));
    }

    // Every endpoint.
    let health = svc.get("/health");
    assert_eq!((health.status, health.json()["status"].clone()), (200, Value::from("ok")));
    let list = svc.get("/portfolios");
    assert_eq!(list.json()["data"], serde_json::json!(["alpha"]));
    let pf = svc.get("/portfolios/alpha?series=true");
    let v = pf.json();
    for field in [
        "portfolio_id",
        "cash",
        "positions",
        "value",
        "realized_pnl",
        "total_pnl",
        "max_drawdown",
        "series",
    ] {
        assert!(!v["data"][field].is_null(), "portfolio has no `{field}`: {v}");
    }
    assert!(!token(&pf).is_empty());
    assert!(svc.get("/portfolios/alpha").json()["data"].get("series").is_none());
    assert!(svc.get("/portfolios/alpha/positions").json()["data"].is_array());
    let risk = svc.get("/portfolios/alpha/risk").json();
    for field in ["active", "entered", "cleared", "history"] {
        assert!(!risk["data"][field].is_null(), "risk has no `{field}`: {risk}");
    }
    let bars = svc.get("/bars/BTCUSDT/1m").json();
    let all = bars["data"].as_array().unwrap().len();
    assert!(all > 10, "{all} bars");
    let last3 = svc.get("/bars/BTCUSDT/5m?last=3").json();
    assert_eq!(last3["data"].as_array().unwrap().len(), 3);
    // Time travel: bars and the portfolio as of the 10th bar's end.
    let tenth_start = bars["data"][9]["start"].as_str().unwrap().to_string();
    let early = svc.get(&format!(
        "/bars/BTCUSDT/1m?at={}",
        tenth_start.replace(':', "%3A").replace('+', "%2B")
    ));
    assert_eq!(early.status, 200, "{}", early.body);
    let n_early = early.json()["data"].as_array().unwrap().len();
    assert!(n_early < all && n_early >= 9, "{n_early} bars as of {tenth_start}, {all} now");
    let pf_early = svc.get(&format!(
        "/portfolios/alpha?at={}",
        tenth_start.replace(':', "%3A").replace('+', "%2B")
    ));
    assert_eq!(pf_early.status, 200, "{}", pf_early.body);
    let feed_alice = svc.get("/users/alice/notifications").json();
    let notes = feed_alice["data"].as_array().unwrap();
    assert!(svc.get("/users/carol/notifications").status == 200);
    // One event with its causation chain: a notification's chain runs back to its root.
    let projections = svc.get("/projections").json();
    assert!(projections["data"]["portfolios"]["alpha"].is_object());
    let some_note = notes
        .first()
        .or_else(|| {
            projections["data"]["notifications"]
                .as_object()
                .and_then(|m| m.values().find_map(|f| f.as_array()?.first()))
        })
        .cloned();
    if let Some(n) = some_note {
        let id = n["notification"]["notification_id"]
            .as_str()
            .or(n[1]["notification_id"].as_str())
            .map(str::to_string);
        if let Some(id) = id {
            eprintln!("notification id {id}");
        }
    }
    // Event ids: the audit trail's; take a rebalance from the risk history's neighbour, or any
    // id the digest endpoint's audit count covers. Use the causation chain of a notification's
    // source event where known, else of a bar.
    let audit_ids = event_ids(&broker);
    let deep = audit_ids
        .iter()
        .find(|id| id.starts_with("ntf") || id.contains("notif"))
        .or(audit_ids.last())
        .unwrap();
    let ev = svc.get(&format!("/events/{deep}"));
    assert_eq!(ev.status, 200, "{}", ev.body);
    let chain = ev.json()["data"]["causation_chain"].as_array().unwrap().clone();
    assert_eq!(chain[0]["id"], Value::from(deep.as_str()));
    eprintln!("event {deep}: causation chain of {} events", chain.len());

    // Errors: JSON naming what is wrong.
    svc.get("/bars/DOGEUSDT/1m").assert_error(404, "DOGEUSDT");
    svc.get("/bars/BTCUSDT/7m").assert_error(404, "7m");
    svc.get("/users/mallory/notifications").assert_error(404, "mallory");
    svc.get("/portfolios/beta").assert_error(404, "beta");
    svc.get("/events/no-such-event").assert_error(404, "no-such-event");
    svc.get("/bars/BTCUSDT/1m?last=many").assert_error(400, "last");
    svc.get("/portfolios/alpha?at=yesterday").assert_error(400, "at");
    svc.get("/portfolios/alpha?series=perhaps").assert_error(400, "series");
    svc.get("/portfolios/alpha?colour=red").assert_error(400, "colour");
    svc.get("/portfolios/alpha?min_offsets=nonsense").assert_error(400, "min_offsets");
    svc.get("/portfolios/alpha?min_offsets=market.feed/0:1&timeout_ms=-3")
        .assert_error(400, "timeout_ms");
    svc.get("/nowhere").assert_error(404, "/nowhere");
    // Read-your-writes timeout: offsets nobody wrote yet.
    let t = Instant::now();
    let r = svc.get("/portfolios/alpha?min_offsets=market.feed/0:999999999&timeout_ms=300");
    r.assert_error(504, "min_offsets");
    assert!(t.elapsed() >= Duration::from_millis(300));
    assert!(r.json()["waiting_for"]["market.feed/0"].is_u64());

    // Metrics.
    let m = svc.get("/metrics");
    assert_eq!(m.status, 200);
    assert!(m.headers["content-type"].starts_with("text/plain"));
    for needle in [
        "horizon_ready 1",
        "horizon_consumer_lag{topic=\"market.feed\",partition=\"0\"} 0",
        "horizon_events_processed_total{stage=\"projections\",type=",
        "horizon_dead_letters_total{stage=\"market\"}",
        "horizon_step_duration_seconds_bucket{stage=\"projections\",le=\"+Inf\"}",
        "# TYPE horizon_step_duration_seconds histogram",
    ] {
        assert!(m.body.contains(needle), "/metrics lacks `{needle}`:\n{}", m.body);
    }
    for line in m.body.lines().filter(|l| !l.starts_with('#')) {
        let (_, value) = line.rsplit_once(' ').unwrap();
        value.parse::<f64>().unwrap_or_else(|_| panic!("not a sample: {line}"));
    }

    // The OpenAPI document: every path it names is served (not a fallback 404) with a declared
    // 200 whose required fields the live answer has.
    let doc = svc.get("/openapi.json").json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let concrete = |p: &str| {
        p.replace("{portfolio_id}", "alpha")
            .replace("{symbol}", "BTCUSDT")
            .replace("{interval}", "1m")
            .replace("{user_id}", "alice")
            .replace("{event_id}", deep)
    };
    let documented: BTreeSet<String> = doc["paths"].as_object().unwrap().keys().cloned().collect();
    assert_eq!(documented.len(), horizon_runtime::api::ROUTES.len());
    for path in &documented {
        let r = svc.get(&concrete(path));
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        let op = &doc["paths"][path]["get"]["responses"]["200"];
        if let Some(schema) = op["content"]["application/json"]["schema"].as_object() {
            let v = r.json();
            let required = schema
                .get("required")
                .or_else(|| {
                    schema
                        .get("allOf")
                        .and_then(|a| a[0]["$ref"].as_str())
                        .map(|_| &doc["components"]["schemas"]["Envelope"]["required"])
                })
                .or_else(|| {
                    schema
                        .get("$ref")
                        .and_then(|r| r.as_str())
                        .map(|r| &doc["components"]["schemas"][r.rsplit('/').next().unwrap()]["required"])
                });
            for f in required.and_then(|r| r.as_array()).into_iter().flatten() {
                assert!(v.get(f.as_str().unwrap()).is_some(), "{path}: answer lacks required `{f}`: {v}");
            }
        }
    }

    // The audit trail of the live deployment, chained and exported, then verified offline.
    let export = broker.state.with_extension("audit.log");
    let out = run_cli(&[
        "audit",
        "verify",
        "--brokers",
        &broker.bootstrap,
        "--export",
        export.to_str().unwrap(),
        "--json",
    ]);
    let live: Value = serde_json::from_str(&out).unwrap();
    let offline: Value = serde_json::from_str(&run_cli(&["audit", "verify", export.to_str().unwrap(), "--json"])).unwrap();
    assert_eq!(live["records"], offline["records"]);
    let heads = live["heads"].as_object().unwrap();
    assert!(
        heads.keys().any(|k| k.starts_with("market.feed/")) && heads.keys().any(|k| k.starts_with("notifications/")),
        "{live}"
    );
    for (chain, head) in heads {
        assert_eq!(offline["heads"][chain].as_str(), head["hash"].as_str(), "{chain}");
    }
    eprintln!(
        "audit: {} records in {} chains; took {:?} in all",
        live["records"],
        heads.len(),
        t0.elapsed()
    );
}

/// Ids of events on the notifications topic (deepest causation chains), else on signals.
fn event_ids(broker: &Broker) -> Vec<String> {
    use horizon_core::bus::Consumer;
    let mut c = KafkaConsumer::new(&KafkaConfig::new(&broker.bootstrap), "query-test-ids", &[topics::DEADLETTER]).unwrap();
    for topic in [topics::NOTIFICATIONS, topics::RISK, topics::PORTFOLIO, topics::SIGNALS] {
        let tp = TopicPartition { topic, partition: 0 };
        let end = c.end_offset(tp).unwrap();
        let ids: Vec<String> = c
            .fetch(tp, 0, end.min(50))
            .unwrap()
            .iter()
            .filter_map(|r| horizon_core::event::Event::decode(&r.value).ok().map(|e| e.id))
            .collect();
        if !ids.is_empty() {
            return ids;
        }
    }
    panic!("no events on the output topics");
}
