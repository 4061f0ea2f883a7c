//! The Kafka bus against a real broker: `HORIZON_KAFKA_BOOTSTRAP` if set, otherwise the one
//! `scripts/kafka start` runs (a broker that cannot be started fails the tests, never skips them).
//!
//! The topics are the fixed documented set, shared with whatever else uses the broker, so every
//! test marks its records with a key unique to the run and asserts only on those, and every
//! consumer group is new for the run.

use horizon_core::bus::{partition_for, BusError, Consumer, Polled, Producer, Record, Topic, TopicPartition};
use horizon_core::event::{root_id, Event, Payload, Side, Trade};
use horizon_core::market::{MarketConfig, MarketService};
use horizon_core::memory::MemoryBus;
use horizon_core::processor::{decode_dead_letter, Processor, Routes, StepOutcome};
use horizon_core::service::Service;
use horizon_core::time::Timestamp;
use horizon_core::topics;
use horizon_core::topology::Topology;
use horizon_runtime::kafka::{admin, KafkaConfig, KafkaConsumer, KafkaProducer};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const WAIT: Duration = Duration::from_secs(90);

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/kafka")
}

/// Runs `scripts/kafka` and returns the last line of its stdout, or its status and stderr.
fn try_script(args: &[&str], env: &[(&str, String)], unset_bootstrap: bool) -> Result<String, String> {
    let mut cmd = Command::new("bash");
    cmd.arg(script()).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    if unset_bootstrap {
        cmd.env_remove("HORIZON_KAFKA_BOOTSTRAP");
    }
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {}: {e}", script().display()));
    if !out.status.success() {
        return Err(format!(
            "scripts/kafka {} failed ({}):\n{}",
            args.join(" "),
            out.status,
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

/// `try_script`, panicking with the script's stderr.
fn run_script(args: &[&str], env: &[(&str, String)], unset_bootstrap: bool) -> String {
    try_script(args, env, unset_bootstrap).unwrap_or_else(|e| panic!("{e}"))
}

fn bootstrap() -> &'static str {
    static BOOTSTRAP: OnceLock<String> = OnceLock::new();
    BOOTSTRAP.get_or_init(|| match std::env::var("HORIZON_KAFKA_BOOTSTRAP") {
        Ok(b) if !b.trim().is_empty() => b.trim().to_string(),
        _ => {
            let b = run_script(&["start"], &[], false);
            assert!(!b.is_empty(), "scripts/kafka start printed no bootstrap servers");
            b
        }
    })
}

/// The broker's bootstrap, with every documented topic created.
fn config() -> KafkaConfig {
    static READY: OnceLock<()> = OnceLock::new();
    let b = bootstrap();
    READY.get_or_init(|| {
        admin::create_topics(b, &BTreeMap::new(), Topology::shipped().topics(), 1, None)
            .unwrap_or_else(|e| panic!("create_topics on {b}: {e}"))
    });
    KafkaConfig::new(b)
}

/// Unique per test and run.
fn unique(what: &str) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    format!("rt-{what}-{}-{nanos}", std::process::id())
}

fn until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(t) = f() {
            return t;
        }
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
    }
}

fn all_partitions(topic: Topic) -> Vec<TopicPartition> {
    (0..topics::partitions(topic))
        .map(|partition| TopicPartition { topic, partition })
        .collect()
}

/// Polls until the member's first assignment arrives (records before it are not expected).
fn await_assignment(c: &mut KafkaConsumer) -> Vec<TopicPartition> {
    until("an assignment", || match c.poll(100).unwrap() {
        Polled::Assigned(tps) => Some(tps),
        Polled::Idle => None,
        other => panic!("expected an assignment first, got {other:?}"),
    })
}

fn key_of(r: &Record) -> String {
    String::from_utf8_lossy(&r.key).into_owned()
}

#[test]
fn keyed_records_land_on_their_partition_and_a_new_member_resumes_after_the_commit() {
    let cfg = config();
    let group = unique("resume");
    let marker = unique("key");
    // A new group starts at the current end, so only this run's records are ahead of it.
    let start: BTreeMap<TopicPartition, u64> = admin::commit_group_at_end(&cfg, &Topology::shipped(), &group, &[topics::MARKET_FEED])
        .unwrap()
        .into_iter()
        .collect();

    let n = 60;
    let keys: Vec<String> = (0..n).map(|i| format!("{marker}-{i}")).collect();
    let mut producer = KafkaProducer::new(&cfg).unwrap();
    for (i, k) in keys.iter().enumerate() {
        producer
            .send(
                topics::MARKET_FEED,
                partition_for(k.as_bytes(), 6),
                k.as_bytes(),
                format!("v{i}").as_bytes(),
            )
            .unwrap();
    }
    producer.flush().unwrap();

    let mut a = KafkaConsumer::new(&cfg, &group, &[topics::MARKET_FEED]).unwrap();
    assert_eq!(await_assignment(&mut a), all_partitions(topics::MARKET_FEED));
    for tp in all_partitions(topics::MARKET_FEED) {
        assert_eq!(a.committed(tp).unwrap(), start[&tp], "{tp}");
    }
    let mut seen: Vec<Record> = Vec::new();
    until("member a to receive every record", || {
        match a.poll(25).unwrap() {
            Polled::Records(rs) => {
                assert!(rs.len() <= 25);
                for r in rs {
                    assert!(r.offset >= start[&r.tp()], "{r:?} is before the committed offset");
                    if key_of(&r).starts_with(&marker) {
                        seen.push(r);
                    }
                }
            }
            Polled::Idle => {}
            other => panic!("unexpected {other:?}"),
        }
        (seen.len() >= n).then_some(())
    });
    assert_eq!(
        seen.iter().map(key_of).collect::<BTreeSet<_>>(),
        keys.iter().cloned().collect(),
        "each record exactly once"
    );
    assert_eq!(seen.len(), n);
    let mut by_partition: BTreeMap<u32, Vec<&Record>> = BTreeMap::new();
    for r in &seen {
        assert_eq!(
            r.partition,
            partition_for(&r.key, 6),
            "key {} landed on its murmur2 partition",
            key_of(r)
        );
        by_partition.entry(r.partition).or_default().push(r);
    }
    assert!(by_partition.len() > 1, "{n} keys spread over several partitions");
    for rs in by_partition.values() {
        let index = |r: &Record| key_of(r).rsplit('-').next().unwrap().parse::<usize>().unwrap();
        assert!(
            rs.windows(2).all(|w| w[0].offset < w[1].offset && index(w[0]) < index(w[1])),
            "order holds within a partition"
        );
    }

    // Commit past the first record of each partition, then leave.
    let commits: Vec<(TopicPartition, u64)> = by_partition.values().map(|rs| (rs[0].tp(), rs[0].offset + 1)).collect();
    a.commit(&commits).unwrap();
    // `commit` stores; librdkafka's auto-commit sends within its interval, or this now.
    a.commit_stored().unwrap();
    for (tp, o) in &commits {
        assert_eq!(a.committed(*tp).unwrap(), *o);
    }
    drop(a);

    // The second member polls librdkafka on a thread of its own (as the read replica does):
    // the same notices and records reach its caller.
    let mut b = KafkaConsumer::new_prefetching(&cfg, &group, &[topics::MARKET_FEED]).unwrap();
    assert_eq!(await_assignment(&mut b), all_partitions(topics::MARKET_FEED));
    for (tp, o) in &commits {
        assert_eq!(b.committed(*tp).unwrap(), *o, "the group's commit survives the member");
    }
    let expected: BTreeSet<String> = by_partition.values().flat_map(|rs| rs[1..].iter().map(|r| key_of(r))).collect();
    let mut again: Vec<Record> = Vec::new();
    let committed: BTreeMap<TopicPartition, u64> = commits.iter().copied().collect();
    until("member b to resume", || {
        if let Polled::Records(rs) = b.poll(100).unwrap() {
            again.extend(rs.into_iter().filter(|r| key_of(r).starts_with(&marker)));
        }
        (again.len() >= expected.len()).then_some(())
    });
    let got: BTreeSet<String> = again.iter().map(key_of).collect();
    assert_eq!(got, expected, "b gets exactly the records after the commit");
    for r in &again {
        assert!(r.offset >= committed[&r.tp()]);
    }
}

#[test]
fn two_members_split_co_partitioned_topics_with_revoked_and_assigned_notices() {
    two_members_split(KafkaConsumer::new);
}

/// The same with the first member polling librdkafka on a thread of its own: its rebalances
/// are served there, and reach its caller in the same order.
#[test]
fn a_prefetching_member_sees_the_same_rebalances() {
    two_members_split(KafkaConsumer::new_prefetching);
}

fn two_members_split(make_a: fn(&KafkaConfig, &str, &[Topic]) -> Result<KafkaConsumer, BusError>) {
    let cfg = config();
    let group = unique("split");
    let subscribed = [topics::MARKET_FEED, topics::BARS];
    let every: BTreeSet<TopicPartition> = subscribed.iter().flat_map(|t| all_partitions(t)).collect();
    let mut a = make_a(&cfg, &group, &subscribed).unwrap();
    let first: BTreeSet<TopicPartition> = await_assignment(&mut a).into_iter().collect();
    assert_eq!(first, every);

    let mut b = KafkaConsumer::new(&cfg, &group, &subscribed).unwrap();
    let (mut notices_a, mut notices_b) = (Vec::new(), Vec::new());
    until("the group to rebalance over two members", || {
        for (c, notices) in [(&mut a, &mut notices_a), (&mut b, &mut notices_b)] {
            if let n @ (Polled::Assigned(_) | Polled::Revoked(_)) = c.poll(500).unwrap() {
                notices.push(n);
            }
        }
        let a_done = matches!(notices_a.last(), Some(Polled::Assigned(_)));
        let b_done = matches!(notices_b.last(), Some(Polled::Assigned(_)));
        (a_done && b_done).then_some(())
    });
    // Eager protocol: a gives everything back, then gets its share.
    let Polled::Revoked(revoked) = &notices_a[0] else {
        panic!("a: {notices_a:?}")
    };
    assert_eq!(revoked.iter().copied().collect::<BTreeSet<_>>(), every);
    let Some(Polled::Assigned(share_a)) = notices_a.last() else {
        unreachable!()
    };
    let Some(Polled::Assigned(share_b)) = notices_b.last() else {
        unreachable!()
    };
    let share_a: BTreeSet<TopicPartition> = share_a.iter().copied().collect();
    let share_b: BTreeSet<TopicPartition> = share_b.iter().copied().collect();
    assert!(share_a.is_disjoint(&share_b), "{share_a:?} / {share_b:?}");
    assert_eq!(share_a.union(&share_b).copied().collect::<BTreeSet<_>>(), every);
    assert_eq!(share_a.len(), 6);
    for share in [&share_a, &share_b] {
        let numbers = |t: Topic| share.iter().filter(|tp| tp.topic == t).map(|tp| tp.partition).collect::<Vec<_>>();
        assert_eq!(
            numbers(topics::MARKET_FEED),
            numbers(topics::BARS),
            "range keeps partition p of both topics together"
        );
    }
    assert_eq!(a.assignment().into_iter().collect::<BTreeSet<_>>(), share_a);

    let theirs = *share_b.iter().next().unwrap();
    assert!(
        matches!(a.commit(&[(theirs, 0)]), Err(BusError::NotAssigned(_))),
        "a commit for another member's partition is refused"
    );
    let ours = *share_a.iter().next().unwrap();
    let at = a.committed(ours).unwrap();
    a.commit(&[(ours, at)]).unwrap();

    // b leaves: a gets everything back.
    drop(b);
    let mut after = Vec::new();
    until("a to take over b's partitions", || {
        if let n @ (Polled::Assigned(_) | Polled::Revoked(_)) = a.poll(500).unwrap() {
            after.push(n);
        }
        matches!(after.last(), Some(Polled::Assigned(tps)) if tps.len() == every.len()).then_some(())
    });
    assert!(
        matches!(&after[0], Polled::Revoked(tps) if tps.iter().copied().collect::<BTreeSet<_>>() == share_a),
        "{after:?}"
    );
}

#[test]
fn fetch_returns_exactly_the_requested_range() {
    let cfg = config();
    let marker = unique("fetch");
    let tp = TopicPartition {
        topic: topics::DEADLETTER,
        partition: 0,
    };
    let mut c = KafkaConsumer::new(&cfg, &unique("fetch-group"), &[topics::DEADLETTER]).unwrap();
    let before = c.end_offset(tp).unwrap();
    let mut producer = KafkaProducer::new(&cfg).unwrap();
    for i in 0..20 {
        producer
            .send(tp.topic, tp.partition, marker.as_bytes(), format!("{i}").as_bytes())
            .unwrap();
    }
    producer.flush().unwrap();
    let end = c.end_offset(tp).unwrap();
    assert!(end >= before + 20);

    let all = c.fetch(tp, before, end).unwrap();
    assert_eq!(all.iter().map(|r| r.offset).collect::<Vec<_>>(), (before..end).collect::<Vec<_>>());
    let ours: Vec<String> = all
        .iter()
        .filter(|r| r.key == marker.as_bytes())
        .map(|r| String::from_utf8_lossy(&r.value).into_owned())
        .collect();
    assert_eq!(ours, (0..20).map(|i| i.to_string()).collect::<Vec<_>>());
    assert!(all.iter().all(|r| r.tp() == tp));

    let mid = c.fetch(tp, before + 5, before + 12).unwrap();
    assert_eq!(
        mid.iter().map(|r| r.offset).collect::<Vec<_>>(),
        (before + 5..before + 12).collect::<Vec<_>>()
    );
    assert_eq!(mid, all[5..12].to_vec(), "the same records as the wider read");
    let one = c.fetch(tp, before + 19, before + 20).unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].offset, before + 19);

    assert!(c.fetch(tp, before + 3, before + 3).unwrap().is_empty(), "empty range");
    assert!(c.fetch(tp, before + 7, before + 3).unwrap().is_empty(), "inverted range");
    assert!(c.fetch(tp, end, end + 50).unwrap().is_empty(), "at the end of the partition");
    let tail = c.fetch(tp, end - 2, end + 50).unwrap();
    assert_eq!(
        tail.iter().map(|r| r.offset).collect::<Vec<_>>(),
        vec![end - 2, end - 1],
        "clipped at the end"
    );
}

fn trade(symbol: &str, id: u32, secs: i64, price: &str, qty: &str) -> (String, Vec<u8>) {
    let t = Trade {
        symbol: symbol.to_string(),
        exchange: "SIM".into(),
        trade_id: id.to_string(),
        price: price.parse().unwrap(),
        quantity: qty.parse().unwrap(),
        aggressor_side: Side::Buy,
        ts_exchange: Timestamp::from_millis(secs * 1000),
    };
    let e = Event::root(
        root_id(&["SIM", symbol, &id.to_string()]),
        symbol.to_string(),
        t.ts_exchange,
        "feed",
        Payload::Trade(t),
    );
    (symbol.to_string(), e.encode())
}

/// Steps the loop until `expect` holds and nothing awaits acknowledgement or commit.
fn drive<C: Consumer, P: Producer>(
    processor: &mut Processor<MarketService>,
    consumer: &mut C,
    producer: &mut P,
    expect: impl Fn(&Processor<MarketService>) -> bool,
) {
    until("the processor to consume its input", || {
        match processor.step(consumer, producer, 100).unwrap() {
            StepOutcome::Retry(e) => {
                eprintln!("retrying: {e}");
                std::thread::sleep(Duration::from_millis(200));
            }
            StepOutcome::Progress(_) | StepOutcome::Idle => {}
        }
        (expect(processor) && processor.is_settled()).then_some(())
    });
}

/// Trades 1, 2, 3, 5 and 6 accepted: the last input (trade 6) is handled.
fn all_trades_in(p: &Processor<MarketService>) -> bool {
    p.states().map(|(_, s)| s.counters.trades_accepted).sum::<u64>() == 5
}

#[test]
fn the_processing_loop_runs_unchanged_on_kafka() {
    let cfg = config();
    let symbol = unique("SYM");
    let market = || {
        MarketService::new(MarketConfig {
            symbols: [symbol.clone()].into_iter().collect(),
            intervals_ms: vec![60_000],
            max_fill_bars: 10,
            dedup_window: 100,
        })
    };
    let mut inputs = vec![
        trade(&symbol, 1, 0, "100", "1"),
        trade(&symbol, 2, 10, "101", "2"),
        trade(&symbol, 2, 10, "101", "2"), // a feed replay
        trade(&symbol, 3, 70, "99", "1"),
        trade(&symbol, 4, 75, "98", "-1"), // rejected: dead-lettered
        trade(&symbol, 5, 250, "102", "3"),
    ];
    inputs.push((symbol.clone(), b"not an event".to_vec())); // undecodable: dead-lettered
    inputs.push(trade(&symbol, 6, 320, "103", "1"));
    let p = partition_for(symbol.as_bytes(), topics::partitions(topics::MARKET_FEED));
    let bars_tp = TopicPartition {
        topic: topics::BARS,
        partition: partition_for(symbol.as_bytes(), topics::partitions(topics::BARS)),
    };
    let dlq_tp = TopicPartition {
        topic: topics::DEADLETTER,
        partition: 0,
    };

    // The reference: the in-memory bus.
    let bus = MemoryBus::new();
    let mut mp = bus.producer();
    for (k, v) in &inputs {
        mp.send(topics::MARKET_FEED, p, k.as_bytes(), v).unwrap();
    }
    let mut memory = Processor::new(market());
    let mut mc = bus.consumer("market", "m1", memory.service().inputs());
    drive(&mut memory, &mut mc, &mut mp, all_trades_in);
    let want_bars: Vec<Event> = bus
        .broker()
        .read(bars_tp, 0, u64::MAX)
        .iter()
        .map(|r| Event::decode(&r.value).unwrap())
        .collect();
    let want_dlq: Vec<(String, Vec<u8>)> = bus
        .broker()
        .read(dlq_tp, 0, u64::MAX)
        .iter()
        .map(|r| decode_dead_letter(&r.value).unwrap())
        .map(|d| (d.reason, d.original.to_vec()))
        .collect();
    assert!(want_bars.len() >= 4, "{want_bars:?}");
    assert_eq!(want_dlq.len(), 2);

    // The same loop on Kafka.
    let group = unique("market");
    admin::commit_group_at_end(&cfg, &Topology::shipped(), &group, memory.service().inputs()).unwrap();
    let mut kp = KafkaProducer::new(&cfg).unwrap();
    let mut kc = KafkaConsumer::new(&cfg, &group, memory.service().inputs()).unwrap();
    let feed_tp = TopicPartition {
        topic: topics::MARKET_FEED,
        partition: p,
    };
    let feed_from = kc.end_offset(feed_tp).unwrap();
    let bars_from = kc.end_offset(bars_tp).unwrap();
    let dlq_from = kc.end_offset(dlq_tp).unwrap();
    for (k, v) in &inputs {
        kp.send(topics::MARKET_FEED, p, k.as_bytes(), v).unwrap();
    }
    kp.flush().unwrap();
    let mut kafka = Processor::new(market());
    drive(&mut kafka, &mut kc, &mut kp, all_trades_in);

    let bars_to = kc.end_offset(bars_tp).unwrap();
    let got_bars: Vec<Event> = kc
        .fetch(bars_tp, bars_from, bars_to)
        .unwrap()
        .iter()
        .filter(|r| r.key == symbol.as_bytes())
        .map(|r| Event::decode(&r.value).unwrap())
        .collect();
    assert_eq!(got_bars, want_bars, "the same bars, ids and order as on the in-memory bus");
    let dlq_to = kc.end_offset(dlq_tp).unwrap();
    let got_dlq: Vec<(String, Vec<u8>)> = kc
        .fetch(dlq_tp, dlq_from, dlq_to)
        .unwrap()
        .iter()
        .map(|r| decode_dead_letter(&r.value).unwrap())
        .filter(|d| d.source_topic == topics::MARKET_FEED && d.source_partition == p && inputs.iter().any(|(_, v)| v[..] == d.original[..]))
        .map(|d| (d.reason, d.original.to_vec()))
        .collect();
    assert_eq!(got_dlq, want_dlq, "the same dead letters");
    eprintln!("kafka loop stats: {:?}", kafka.stats);
    assert_eq!(kafka.stats.outputs, memory.stats.outputs);
    assert_eq!(kafka.stats.dead_letters, memory.stats.dead_letters);
    kc.commit_stored().unwrap();
    assert!(
        kc.committed(feed_tp).unwrap() >= feed_from + inputs.len() as u64,
        "committed through the last input"
    );
}

/// Stops and deletes a private broker when the test ends, passing or not.
struct PrivateBroker {
    state: PathBuf,
}

impl PrivateBroker {
    fn env(&self) -> Vec<(&'static str, String)> {
        vec![("HORIZON_KAFKA_STATE", self.state.display().to_string())]
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        let env = self.env();
        let _ = std::panic::catch_unwind(|| run_script(&["clean"], &env, true));
        let _ = std::fs::remove_file(self.state.with_extension("lock"));
    }
}

#[test]
fn flush_reports_unavailable_within_its_bound_when_the_broker_is_down() {
    // A private single-node broker, so stopping it disturbs no one else.
    let state = std::env::temp_dir().join(format!("horizon-kafka-runtime-{}", std::process::id()));
    let broker = PrivateBroker { state };
    let env = broker.env();
    let seed = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().subsec_nanos() + std::process::id();
    let mut attempt = 0;
    let b = loop {
        // Brokers on 19400..19498, controllers 100 above: clear of the shared broker's 19092.
        let port = (19400 + ((seed + attempt * 7) % 50) * 2).to_string();
        match try_script(&["start", "--fresh", "--port", &port], &env, true) {
            Ok(b) => {
                assert_eq!(b, format!("127.0.0.1:{port}"));
                break b;
            }
            Err(e) if e.contains("already in use") && attempt < 4 => attempt += 1,
            Err(e) => panic!("{e}"),
        }
    };
    admin::create_topics(&b, &BTreeMap::new(), Topology::shipped().topics(), 1, None).unwrap();

    let mut cfg = KafkaConfig::new(&b);
    cfg.flush_timeout = Duration::from_secs(10);
    let mut producer = KafkaProducer::new(&cfg).unwrap();
    producer.send(topics::SIGNALS, 0, b"k", b"before").unwrap();
    producer.flush().unwrap();

    run_script(&["stop"], &env, true);
    for i in 0..10u8 {
        producer.send(topics::SIGNALS, (i % 3) as u32, b"k", &[i]).unwrap();
    }
    let started = Instant::now();
    let res = producer.flush();
    eprintln!("flush with the broker down after {:?}: {res:?}", started.elapsed());
    assert!(matches!(res, Err(BusError::Unavailable(_))), "{res:?}");
    // Not a timing assertion: a generous bound proving flush does not hang.
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "flush returned after {:?}",
        started.elapsed()
    );
    drop(broker);
}

/// A scratch topic of this run (auto-creation is off on the test broker), leaked to a `Topic`.
fn scratch_topic(what: &str, partitions: i32, settings: &[(&str, &str)]) -> Topic {
    let name: &'static str = Box::leak(unique(what).into_boxed_str());
    admin::create_topic_with(&config(), name, partitions, settings).unwrap();
    name
}

/// The end offset of a scratch topic's partition 0 (the bus's consumer reads documented topics
/// only).
fn scratch_end(topic: &str) -> i64 {
    use rdkafka::consumer::{BaseConsumer, Consumer as _};
    let c: BaseConsumer = rdkafka::ClientConfig::new().set("bootstrap.servers", bootstrap()).create().unwrap();
    c.fetch_watermarks(topic, 0, Duration::from_secs(30)).unwrap().1
}

#[test]
fn a_record_over_the_clients_size_limit_is_refused_at_send_and_the_others_go_out() {
    // Given librdkafka's default producer limit (message.max.bytes 1,000,000)
    let topic = scratch_topic("refused-send", 1, &[]);
    let mut producer = KafkaProducer::new(&config()).unwrap();
    // When a small record, one of 1.2 MB and another small one are sent
    producer.send(topic, 0, b"k", b"small-1").unwrap();
    let refused = producer.send(topic, 0, b"k", &vec![7u8; 1_200_000]);
    producer.send(topic, 0, b"k", b"small-2").unwrap();
    // Then the large one is refused for good, naming its size, and the flush delivers the rest
    match &refused {
        Err(BusError::Refused(r)) => {
            assert_eq!(r.len(), 1);
            assert!(
                r[0].reason.contains("MessageSizeTooLarge") && r[0].reason.contains("1200000 bytes"),
                "{r:?}"
            );
        }
        other => panic!("expected Refused, got {other:?}"),
    }
    assert!(!refused.unwrap_err().is_retriable());
    producer.flush().unwrap();
    assert_eq!(scratch_end(topic), 2);
}

/// Forwards the trades whose id starts with `marker` to `target`, unchanged.
struct Forward {
    marker: String,
    target: Topic,
}

impl Service for Forward {
    type State = ();
    fn name(&self) -> &'static str {
        "forward"
    }
    fn inputs(&self) -> &'static [Topic] {
        &[topics::MARKET_FEED]
    }
    fn handle(
        &self,
        _state: &mut (),
        event: &Event,
        out: &mut Vec<horizon_core::service::Output>,
    ) -> Result<(), horizon_core::service::Rejection> {
        if matches!(&event.payload, Payload::Trade(t) if t.trade_id.starts_with(&self.marker)) {
            out.push(horizon_core::service::Output {
                topic: self.target,
                key: event.aggregate_id.clone(),
                event: event.clone(),
            });
        }
        Ok(())
    }
}

#[test]
fn an_output_over_the_topics_size_limit_is_dead_lettered_alone_and_the_rest_of_its_batch_published() {
    // Given an output topic whose broker-side limit is 2,000 bytes (a limit on a whole batch),
    // and three trades, the second with an id of 10,000 bytes
    let target = scratch_topic("refused-broker", 1, &[("max.message.bytes", "2000")]);
    let cfg = config();
    let group = unique("forward");
    admin::commit_group_at_end(&cfg, &Topology::shipped(), &group, &[topics::MARKET_FEED]).unwrap();
    let marker = unique("fw");
    let ids = [
        format!("{marker}-1"),
        format!("{marker}-{}", "x".repeat(10_000)),
        format!("{marker}-3"),
    ];
    let partition = partition_for(marker.as_bytes(), topics::partitions(topics::MARKET_FEED));
    let mut producer = KafkaProducer::new(&cfg).unwrap();
    let mut dl_reader = KafkaConsumer::new(&cfg, &unique("dl"), &[topics::DEADLETTER]).unwrap();
    let dl = TopicPartition {
        topic: topics::DEADLETTER,
        partition: 0,
    };
    let dl_start = dl_reader.end_offset(dl).unwrap();
    let mut inputs = Vec::new();
    for id in &ids {
        let e = Event::root(
            root_id(&["SIM", "BTCUSDT", id]),
            "BTCUSDT".into(),
            Timestamp::from_millis(1_000),
            "feed",
            Payload::Trade(Trade {
                symbol: "BTCUSDT".into(),
                exchange: "SIM".into(),
                trade_id: id.clone(),
                price: "100".parse().unwrap(),
                quantity: "1".parse().unwrap(),
                aggressor_side: Side::Buy,
                ts_exchange: Timestamp::from_millis(1_000),
            }),
        );
        producer
            .send(topics::MARKET_FEED, partition, marker.as_bytes(), &e.encode())
            .unwrap();
        inputs.push(e);
    }
    producer.flush().unwrap();
    // When the loop forwards them in one batch
    // (Routes of its own: the scratch topic is no shipped topic, so no standalone route.)
    let routes = Routes::new(vec![(target, 1), (topics::DEADLETTER, 1)], vec![topics::MARKET_FEED]);
    let mut p = Processor::with_routes(Forward { marker, target }, routes);
    let mut consumer = KafkaConsumer::new(&cfg, &group, &[topics::MARKET_FEED]).unwrap();
    until("the three trades forwarded or dead-lettered", || {
        match p.step(&mut consumer, &mut producer, 100).unwrap() {
            StepOutcome::Retry(e) => {
                eprintln!("retrying: {e}");
                std::thread::sleep(Duration::from_millis(200));
            }
            StepOutcome::Progress(_) | StepOutcome::Idle => {}
        }
        (p.stats.outputs == 3 && p.is_settled()).then_some(())
    });
    // Then the two small ones are on the topic, and only the large one is a dead letter
    assert_eq!(scratch_end(target), 2);
    assert_eq!(p.stats.outputs_refused, 1);
    let dl_end = dl_reader.end_offset(dl).unwrap();
    let letters: Vec<_> = dl_reader
        .fetch(dl, dl_start, dl_end)
        .unwrap()
        .into_iter()
        .filter_map(|r| decode_dead_letter(&r.value))
        .filter(|d| d.refused_topic == target)
        .collect();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].event_id, inputs[1].id);
    assert!(letters[0].reason.contains("MessageSizeTooLarge"), "{}", letters[0].reason);
}

#[test]
fn a_topic_that_does_not_exist_is_unknown_not_unavailable() {
    // Given a topic name the broker does not have (it does not create topics on demand)
    let topic: Topic = Box::leak(unique("missing").into_boxed_str());
    let mut cfg = config();
    cfg.flush_timeout = Duration::from_secs(20);
    let mut producer = KafkaProducer::new(&cfg).unwrap();
    // When a record is sent to it
    let res = producer.send(topic, 0, b"k", b"x").and_then(|()| producer.flush());
    // Then the error says so and is not retried as an outage
    assert!(matches!(res, Err(BusError::UnknownTopic(_))), "{res:?}");
}

/// A topic of a user's topology, not one of the shipped: created from its `TopicSpec`, its
/// assignment and records arrive under its own name (the consumer maps the broker's names by
/// what it subscribed to, not by the shipped list).
#[test]
fn a_users_topic_is_created_from_its_topology_and_consumed_by_name() {
    const ALERTS: Topic = "rt.alerts";
    let topology = Topology::shipped().topic(horizon_core::topology::TopicSpec {
        name: ALERTS,
        partitions: 2,
        key: "symbol",
        holds: "a test's alerts",
    });
    let cfg = config();
    admin::create_topics(bootstrap(), &BTreeMap::new(), topology.topics(), 1, None).unwrap();
    let group = unique("alerts");
    let start: BTreeMap<TopicPartition, u64> = admin::commit_group_at_end(&cfg, &topology, &group, &[ALERTS])
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(start.len(), 2);
    let marker = unique("alert");
    let mut producer = KafkaProducer::new(&cfg).unwrap();
    producer.send(ALERTS, 1, marker.as_bytes(), b"raised").unwrap();
    producer.flush().unwrap();

    let mut c = KafkaConsumer::new(&cfg, &group, &[ALERTS]).unwrap();
    let assigned = await_assignment(&mut c);
    assert_eq!(
        assigned,
        (0..2)
            .map(|partition| TopicPartition { topic: ALERTS, partition })
            .collect::<Vec<_>>()
    );
    let got = until("the alert", || match c.poll(100).unwrap() {
        Polled::Records(rs) => rs.into_iter().find(|r| key_of(r) == marker),
        _ => None,
    });
    assert_eq!((got.topic, got.partition, &got.value[..]), (ALERTS, 1, &b"raised"[..]));
    assert_eq!(
        got.offset,
        start[&TopicPartition {
            topic: ALERTS,
            partition: 1
        }]
    );

    // A topic the topology does not declare is named in the error.
    let e = admin::commit_group_at_end(&cfg, &Topology::shipped(), &group, &[ALERTS]).unwrap_err();
    assert!(e.to_string().contains("rt.alerts"), "{e}");
}
