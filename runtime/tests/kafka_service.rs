//! The service process on a real broker (`HORIZON_KAFKA_BOOTSTRAP`, else `scripts/kafka start`;
//! a broker that cannot be started fails the tests): bad input goes to the dead-letter topic
//! with its reason, original bytes and source, and processing continues.
//!
//! The topics are shared with other tests, so the market stage's group is new and starts at the
//! end of `market.feed` (`admin::commit_group_at_end`), and only this test's records are checked.

use horizon_core::bus::{partition_for, Consumer, Producer, TopicPartition};
use horizon_core::event::{Event, Side, Trade};
use horizon_core::feed::trade_event;
use horizon_core::pipeline::MemoryRun;
use horizon_core::processor::decode_dead_letter;
use horizon_core::scenario::Scenario;
use horizon_core::time::Timestamp;
use horizon_core::topology::Topology;
use horizon_core::{topics, Fixed};
use horizon_runtime::kafka::{admin, KafkaConfig, KafkaConsumer, KafkaProducer};
use horizon_runtime::service::{ServiceOptions, ServiceProcess};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn bootstrap() -> String {
    match std::env::var("HORIZON_KAFKA_BOOTSTRAP") {
        Ok(b) if !b.trim().is_empty() => b.trim().to_string(),
        _ => {
            let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/kafka");
            let out = Command::new("bash").arg(script).arg("start").output().expect("run scripts/kafka");
            assert!(
                out.status.success(),
                "scripts/kafka start failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .last()
                .unwrap_or_default()
                .trim()
                .to_string()
        }
    }
}

/// The tests' market stages each read every partition of the shared `market.feed` from its end,
/// and count what they handled: one at a time, or each counts the other's records too.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn scenario() -> Scenario {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../scenarios/chop.toml");
    Scenario::from_toml(&std::fs::read_to_string(path).unwrap(), path).unwrap()
}

fn trade(id: &str, price: Fixed, quantity: Fixed) -> Event {
    trade_event(Trade {
        symbol: "BTCUSDT".into(),
        exchange: "SIM".into(),
        trade_id: id.into(),
        price,
        quantity,
        aggressor_side: Side::Buy,
        // Now, not a fixed day: the market stage restores by replaying the partition, which on
        // a broker kept between runs holds other runs' trades of BTCUSDT (the bench's are in
        // 2024-05); a fixed time before theirs made the valid trade "late".
        ts_exchange: Timestamp::from_millis(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64),
    })
}

/// The encoding with top-level field `field` removed (protobuf wire format, varint and
/// length-delimited fields only, as in a DomainEvent).
fn without_field(bytes: &[u8], field: u64) -> Vec<u8> {
    fn varint(b: &[u8], at: &mut usize) -> u64 {
        let (mut v, mut shift) = (0u64, 0);
        loop {
            let byte = b[*at];
            *at += 1;
            v |= ((byte & 0x7f) as u64) << shift;
            if byte & 0x80 == 0 {
                return v;
            }
            shift += 7;
        }
    }
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let start = at;
        let tag = varint(bytes, &mut at);
        match tag & 7 {
            0 => {
                varint(bytes, &mut at);
            }
            2 => {
                let len = varint(bytes, &mut at) as usize;
                at += len;
            }
            w => panic!("unexpected wire type {w}"),
        }
        if tag >> 3 != field {
            out.extend_from_slice(&bytes[start..at]);
        }
    }
    out
}

/// A broker config with the topics created, and a group prefix of this run whose market group
/// starts at the end of `market.feed`; with the run's nanoseconds, for unique markers.
fn market_group_at_end(what: &str) -> (KafkaConfig, String, u128) {
    let b = bootstrap();
    admin::create_topics(&b, &BTreeMap::new(), Topology::shipped().topics(), 1, None).unwrap();
    let cfg = KafkaConfig::new(b.as_str());
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    let prefix = format!("rt-{what}-{}-{nanos}", std::process::id());
    admin::commit_group_at_end(&cfg, &Topology::shipped(), &format!("{prefix}.market"), &[topics::MARKET_FEED]).unwrap();
    (cfg, prefix, nanos)
}

type MarketRun = std::thread::JoinHandle<(horizon_runtime::service::ServiceReport, horizon_core::processor::Stats)>;

/// Runs the market stage in group `<prefix>.market` until `stop` is set; it publishes its query
/// snapshot to `shared`.
fn run_market(cfg: &KafkaConfig, prefix: &str, stop: &Arc<AtomicBool>, shared: &horizon_runtime::api::SharedSnapshot) -> MarketRun {
    let (cfg, prefix, stop, shared) = (cfg.clone(), prefix.to_string(), Arc::clone(stop), shared.clone());
    std::thread::spawn(move || {
        let mut p = ServiceProcess::new(
            &Topology::shipped(),
            &scenario(),
            &cfg,
            ServiceOptions::new(vec![horizon_core::market::NAME], prefix),
        )
        .unwrap();
        let report = p.run(&stop, Some(&shared)).unwrap();
        (report, p.stats(horizon_core::market::NAME).unwrap().clone())
    })
}

#[test]
fn bad_records_go_to_the_dead_letter_topic_with_reason_bytes_and_source_and_processing_continues() {
    let _serial = serial();
    let (cfg, prefix, nanos) = market_group_at_end("deadletter");

    // Given a real rebalance event, re-labelled as market data by dropping its type field (an
    // absent type reads as MARKET_DATA_RECEIVED)
    let s = scenario();
    let run = MemoryRun::run(
        &s,
        horizon_core::generator::MarketGenerator::new(&s, s.seed).unwrap().map(trade_event),
        8192,
    );
    let rebalance = run
        .bus
        .broker()
        .read(
            TopicPartition {
                topic: topics::PORTFOLIO,
                partition: partition_for(s.portfolio.id.as_bytes(), 3),
            },
            0,
            1,
        )
        .remove(0)
        .value
        .to_vec();
    let mismatched = without_field(&rebalance, 3);
    let marker = format!("dl-{nanos}");
    let valid = trade(&format!("{marker}-ok"), Fixed::from_int(60_000), Fixed::ONE).encode();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("garbage", b"\xff\xfe not a protobuf \x00\x01".to_vec(), ""),
        ("truncated", valid[..valid.len() / 2].to_vec(), ""),
        ("type/payload mismatch", mismatched, "MARKET_DATA_RECEIVED"),
        (
            "negative price",
            trade(&format!("{marker}-neg"), Fixed::from_int(-5), Fixed::ONE).encode(),
            "price must be positive",
        ),
        (
            "zero quantity",
            trade(&format!("{marker}-zero"), Fixed::from_int(60_000), Fixed::ZERO).encode(),
            "quantity must be positive",
        ),
    ];
    // When they are published to market.feed, followed by a valid trade, all on one partition
    let partition = partition_for(marker.as_bytes(), topics::partitions(topics::MARKET_FEED));
    let tp = TopicPartition {
        topic: topics::MARKET_FEED,
        partition,
    };
    let mut reader = KafkaConsumer::new(&cfg, &format!("{prefix}.reader"), &[topics::DEADLETTER]).unwrap();
    let first = reader.end_offset(tp).unwrap();
    let dl_start = reader
        .end_offset(TopicPartition {
            topic: topics::DEADLETTER,
            partition: 0,
        })
        .unwrap();
    let mut producer = KafkaProducer::new(&cfg).unwrap();
    for (_, bytes, _) in &cases {
        producer.send(topics::MARKET_FEED, partition, marker.as_bytes(), bytes).unwrap();
    }
    producer.send(topics::MARKET_FEED, partition, marker.as_bytes(), &valid).unwrap();
    producer.flush().unwrap();

    // And the market stage runs
    let stop = Arc::new(AtomicBool::new(false));
    let service = run_market(&cfg, &prefix, &stop, &Default::default());

    // Then each bad record has a dead letter naming its source, with its bytes and the reason
    let deadline = Instant::now() + Duration::from_secs(90);
    let ours = loop {
        assert!(Instant::now() < deadline, "dead letters did not arrive");
        let end = reader
            .end_offset(TopicPartition {
                topic: topics::DEADLETTER,
                partition: 0,
            })
            .unwrap();
        let letters: Vec<_> = reader
            .fetch(
                TopicPartition {
                    topic: topics::DEADLETTER,
                    partition: 0,
                },
                dl_start,
                end,
            )
            .unwrap()
            .into_iter()
            .filter_map(|r| decode_dead_letter(&r.value))
            .filter(|d| d.source_topic == topics::MARKET_FEED && d.source_partition == partition && d.source_offset >= first)
            .collect();
        if letters.len() >= cases.len() {
            break letters;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    stop.store(true, Ordering::SeqCst);
    let (report, stats) = service.join().unwrap();
    let mut by_offset: BTreeMap<u64, _> = ours.into_iter().map(|d| (d.source_offset, d)).collect();
    for (i, (what, bytes, reason)) in cases.iter().enumerate() {
        let d = by_offset
            .remove(&(first + i as u64))
            .unwrap_or_else(|| panic!("no dead letter for the {what} record"));
        assert_eq!(d.original.as_ref(), bytes.as_slice(), "{what}: original bytes");
        assert_eq!(d.service, "market", "{what}");
        assert!(!d.reason.is_empty() && d.reason.contains(reason), "{what}: reason `{}`", d.reason);
        eprintln!("{what:<22} -> dead letter: {}", d.reason);
    }
    assert!(by_offset.is_empty(), "the valid trade was not dead-lettered: {by_offset:?}");
    // And processing went on past them: the valid trade was handled
    assert_eq!(stats.records_in, cases.len() as u64 + 1, "{report:?}");
    assert_eq!(stats.dead_letters, cases.len() as u64);
    assert!(report.unsettled_at_exit.is_empty());
}

#[test]
fn a_poison_record_too_large_to_dead_letter_whole_is_dead_lettered_by_prefix_and_the_stage_goes_on() {
    let _serial = serial();
    let (cfg, prefix, nanos) = market_group_at_end("poison");

    // Given a ~1 MB trade that the market rejects (negative price), which the broker accepts
    // (its limit is 1,048,588 bytes) but whose whole bytes no dead letter can carry (librdkafka's
    // producer limit is 1,000,000), followed by a valid trade
    let marker = format!("poison-{nanos}");
    let poison = trade(&format!("{marker}-{}", "x".repeat(1_040_000)), Fixed::from_int(-1), Fixed::ONE).encode();
    assert!(poison.len() > 1_000_000 && poison.len() < 1_048_588, "{}", poison.len());
    let valid = trade(&format!("{marker}-ok"), Fixed::from_int(60_000), Fixed::ONE).encode();
    let partition = partition_for(marker.as_bytes(), topics::partitions(topics::MARKET_FEED));
    let tp = TopicPartition {
        topic: topics::MARKET_FEED,
        partition,
    };
    let dl = TopicPartition {
        topic: topics::DEADLETTER,
        partition: 0,
    };
    let mut reader = KafkaConsumer::new(&cfg, &format!("{prefix}.reader"), &[topics::DEADLETTER]).unwrap();
    let first = reader.end_offset(tp).unwrap();
    let dl_start = reader.end_offset(dl).unwrap();
    let mut producer = KafkaProducer::new(&cfg.clone().set("message.max.bytes", "1048576")).unwrap();
    producer.send(topics::MARKET_FEED, partition, marker.as_bytes(), &poison).unwrap();
    producer.send(topics::MARKET_FEED, partition, marker.as_bytes(), &valid).unwrap();
    producer.flush().unwrap();

    // When the market stage runs
    let stop = Arc::new(AtomicBool::new(false));
    let shared = horizon_runtime::api::SharedSnapshot::default();
    let service = run_market(&cfg, &prefix, &stop, &shared);

    // Then the poison record's dead letter arrives, with a prefix of its bytes, their whole size
    // and hash, and its source offset
    let deadline = Instant::now() + Duration::from_secs(90);
    let letter = loop {
        assert!(
            Instant::now() < deadline,
            "no dead letter for the poison record: the stage is wedged"
        );
        let end = reader.end_offset(dl).unwrap();
        let found = reader
            .fetch(dl, dl_start, end)
            .unwrap()
            .into_iter()
            .filter_map(|r| decode_dead_letter(&r.value))
            .find(|d| d.source_topic == topics::MARKET_FEED && d.source_partition == partition && d.source_offset == first);
        if let Some(d) = found {
            break d;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(letter.reason.contains("price must be positive"), "{}", letter.reason);
    assert_eq!(letter.original_size, poison.len() as u64);
    assert_eq!(
        &letter.original[..],
        &poison[..horizon_core::processor::DEAD_LETTER_ORIGINAL_BYTES_MAX]
    );
    assert_eq!(&letter.original_blake3[..], blake3::hash(&poison).as_bytes());
    // And the stage went on to the valid trade
    let deadline = Instant::now() + Duration::from_secs(90);
    while shared.get().stats.get("market").is_none_or(|m| m.records_in < 2) {
        assert!(Instant::now() < deadline, "the valid trade after the poison record was not handled");
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::SeqCst);
    let (report, stats) = service.join().unwrap();
    assert_eq!((stats.records_in, stats.dead_letters), (2, 1), "{report:?}");
    assert!(report.unsettled_at_exit.is_empty(), "{report:?}");
}

/// A user's stage: forwards the feed trades whose id starts with `alert-` to a topic of its own.
struct Alerter;

const ALERTS: horizon_core::bus::Topic = "rt.service.alerts";

impl horizon_core::service::Service for Alerter {
    type State = ();
    fn name(&self) -> &'static str {
        "alerts"
    }
    fn inputs(&self) -> &'static [horizon_core::bus::Topic] {
        &[topics::MARKET_FEED]
    }
    fn handle(
        &self,
        _state: &mut (),
        event: &Event,
        out: &mut Vec<horizon_core::service::Output>,
    ) -> Result<(), horizon_core::service::Rejection> {
        if matches!(&event.payload, horizon_core::event::Payload::Trade(t) if t.trade_id.starts_with("alert-")) {
            out.push(horizon_core::service::Output {
                topic: ALERTS,
                key: event.aggregate_id.clone(),
                event: event.clone(),
            });
        }
        Ok(())
    }
}

#[test]
fn a_users_topology_runs_its_own_stage_and_topic_on_kafka() {
    let _serial = serial();
    // Given the shipped topology plus a stage of a user's, publishing to a topic of its own
    let topology = Topology::shipped()
        .named("with-alerts")
        .topic(horizon_core::topology::TopicSpec {
            name: ALERTS,
            partitions: 2,
            key: "symbol",
            holds: "the test's alerts",
        })
        .stage(horizon_core::topology::StageSpec::service(
            "alerts",
            &[topics::MARKET_FEED],
            &[ALERTS],
            |_| Ok(Alerter),
        ));
    let b = bootstrap();
    admin::create_topics(&b, &BTreeMap::new(), topology.topics(), 1, None).unwrap();
    let cfg = KafkaConfig::new(b.as_str());
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    let prefix = format!("rt-alerts-{}-{nanos}", std::process::id());
    admin::commit_group_at_end(&cfg, &topology, &format!("{prefix}.alerts"), &[topics::MARKET_FEED]).unwrap();
    let reader_group = format!("{prefix}.reader");
    admin::commit_group_at_end(&cfg, &topology, &reader_group, &[ALERTS]).unwrap();
    let stages = horizon_runtime::service::parse_services(&topology, "alerts").unwrap();
    assert_eq!(stages, vec!["alerts"]);

    // When `horizon run --services alerts` of that topology runs and a matching trade is fed
    let stop = Arc::new(AtomicBool::new(false));
    let shared = horizon_runtime::api::SharedSnapshot::default();
    let service = {
        let (cfg, topology, stop, shared) = (cfg.clone(), topology.clone(), Arc::clone(&stop), shared.clone());
        std::thread::spawn(move || {
            let mut p = ServiceProcess::new(&topology, &scenario(), &cfg, ServiceOptions::new(stages, prefix)).unwrap();
            let report = p.run(&stop, Some(&shared)).unwrap();
            (report, p.stats("alerts").unwrap().clone())
        })
    };
    let alert = trade(&format!("alert-{nanos}"), Fixed::from_int(60_000), Fixed::ONE);
    let mut producer = KafkaProducer::new(&cfg).unwrap();
    let key = alert.aggregate_id.as_bytes();
    producer
        .send(
            topics::MARKET_FEED,
            partition_for(key, topics::partitions(topics::MARKET_FEED)),
            key,
            &alert.encode(),
        )
        .unwrap();
    producer.flush().unwrap();

    // Then the alert is on the user's topic, on its key's partition, under the topic's own name
    let mut reader = KafkaConsumer::new(&cfg, &reader_group, &[ALERTS]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    let got = loop {
        assert!(Instant::now() < deadline, "no alert on {ALERTS}");
        if let horizon_core::bus::Polled::Records(rs) = reader.poll(100).unwrap() {
            if let Some(r) = rs.into_iter().find(|r| Event::decode(&r.value).is_ok_and(|e| e.id == alert.id)) {
                break r;
            }
        }
    };
    assert_eq!((got.topic, got.partition), (ALERTS, partition_for(key, 2)));
    stop.store(true, Ordering::SeqCst);
    let (report, stats) = service.join().unwrap();
    assert!(stats.outputs >= 1, "{report:?}");
    assert!(report.unsettled_at_exit.is_empty(), "{report:?}");
    // No projections in this process: the query snapshot has its stage's counters and no views
    let snapshot = shared.get();
    assert_eq!(snapshot.stages, vec!["alerts".to_string()]);
    assert!(snapshot.digests.is_none());
}
