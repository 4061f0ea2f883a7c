//! The example's topology over the shipped flash-crash market, fault-free in memory: the alert
//! book and every read replica's digests as an insta snapshot, and the topology as data.

use horizon_core::bus::TopicPartition;
use horizon_core::event::{Event, Payload};
use horizon_core::feed::trade_event;
use horizon_core::generator::MarketGenerator;
use horizon_core::pipeline::{MemoryRun, Pipeline};
use horizon_core::scenario::Scenario;
use horizon_core::service::ReadModel;
use horizon_core::topics;
use horizon_example_bollinger::alerts::ALERTS;
use horizon_example_bollinger::book::{AlertBook, Book};
use horizon_example_bollinger::{scenario, topology};

/// The whole 8-hour market (about 58,000 trades, under a second in release): the flash crash
/// at 4h is what makes critical alerts.
fn run(s: &Scenario) -> MemoryRun {
    let mut run = MemoryRun::with_pipeline(Pipeline::from_topology(&topology(), s).unwrap());
    run.feed_all(MarketGenerator::new(s, s.seed).unwrap().map(trade_event), 4096);
    run
}

fn book(run: &MemoryRun) -> &Book {
    let p = run.pipeline.processor::<AlertBook>().expect("the topology has the alert book");
    p.states().next().map(|(_, b)| b).expect("the book holds its task")
}

/// Every event on `topic`, partition by partition.
fn read(run: &MemoryRun, topic: &'static str) -> Vec<Event> {
    let broker = run.bus.broker();
    let parts = run.pipeline.topology().partitions(topic).unwrap();
    (0..parts)
        .flat_map(|partition| {
            let tp = TopicPartition { topic, partition };
            broker.read(tp, 0, broker.end_offset(tp))
        })
        .map(|r| Event::decode(&r.value).unwrap())
        .collect()
}

#[test]
fn the_alert_book_and_the_read_digests_of_a_flash_crash_run() {
    // Given the example's topology and scenario,
    let s = scenario();
    // when the whole flash-crash market runs through it,
    let run = run(&s);
    let book = book(&run);
    // then the book holds a few dozen alerts of every severity, each alert published applied once,
    let published = read(&run, ALERTS);
    assert!((20..500).contains(&published.len()), "{} alerts", published.len());
    assert!(published.iter().all(|e| AlertBook.applied(book, &e.id)));
    assert!(AlertBook
        .tallies(book)
        .iter()
        .all(|t| t.counted == t.distinct && t.counted == published.len() as u64));
    let counts = book
        .counts
        .values()
        .fold([0; 3], |a, c| [a[0] + c.info, a[1] + c.warning, a[2] + c.critical]);
    assert!(counts.iter().all(|n| *n > 0), "{counts:?}");
    // and the book and the digests of every read replica are these.
    let mut text = String::new();
    for (symbol, c) in &book.counts {
        text.push_str(&format!(
            "{symbol}: {} info, {} warning, {} critical\n",
            c.info, c.warning, c.critical
        ));
    }
    text.push('\n');
    for (_, row) in book.rows() {
        text.push_str(&format!("{} {:?} {}\n", row.ts.to_rfc3339(), row.severity, row.message));
    }
    text.push('\n');
    let digests = run.pipeline.read_digests();
    for (part, d) in &digests.parts {
        text.push_str(&format!("{part} {d}\n"));
    }
    text.push_str(&format!("all {}\n", digests.all));
    insta::assert_snapshot!(text);
}

#[test]
fn the_signals_carry_the_bollinger_view_beside_the_shipped_one() {
    let s = scenario();
    let run = run(&s);
    let signals: Vec<_> = read(&run, topics::SIGNALS)
        .into_iter()
        .map(|e| match e.payload {
            Payload::Signal(s) => s,
            other => panic!("{other:?} on signals"),
        })
        .collect();
    assert!(signals.len() > 1000, "{}", signals.len());
    let names: Vec<&str> = signals[0].strategies.iter().map(|v| v.strategy.as_str()).collect();
    assert_eq!(names, ["ema_crossover", "bollinger"]);
    let directions: std::collections::BTreeSet<String> = signals.iter().map(|s| format!("{:?}", s.strategies[1].direction)).collect();
    assert_eq!(directions.len(), 3, "{directions:?}");
}

#[test]
fn the_topology_adds_the_alerts_topic_and_both_stages_to_the_shipped_pipeline() {
    let t = topology();
    t.validate().unwrap();
    assert_eq!(t.name, "bollinger");
    let stages: Vec<(&str, bool)> = t.stages().iter().map(|s| (s.name, s.replica)).collect();
    assert_eq!(
        stages,
        [
            ("market", false),
            ("signals", false),
            ("portfolio", false),
            ("projections", true),
            ("band-alerts", false),
            ("alert-book", true),
        ]
    );
    assert_eq!(t.partitions(ALERTS), Some(3));
    assert_eq!(t.producers(ALERTS), ["band-alerts"]);
    assert_eq!(t.owner(ALERTS), Some("alert-book"));
    // The bars stay the signals' to dead-letter; the feed is still the only source.
    assert_eq!(t.owner(topics::BARS), Some("signals"));
    assert_eq!(t.sources(), [topics::MARKET_FEED]);
}

#[test]
fn the_example_scenario_trades_the_shipped_flash_crash_market() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scenarios/flash-crash.toml");
    let shipped = Scenario::from_toml(&std::fs::read_to_string(path).unwrap(), path).unwrap();
    let ours = scenario();
    assert_eq!(json(&ours.market), json(&shipped.market));
    assert_eq!(json(&ours.portfolio), json(&shipped.portfolio));
    assert_eq!(json(&ours.risk), json(&shipped.risk));
    assert_eq!(json(&ours.users), json(&shipped.users));
    assert_eq!(ours.seed, shipped.seed);
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap()
}
