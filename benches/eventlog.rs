//! The event-sourced read side's speed: rebuilding every projection from a local log, the cost
//! of hash-chaining that log, and recovery from a snapshot plus the log's tail.
//!
//! Baselines in the same run: decoding alone, and the rebuild without chaining, so the ratios
//! (chaining overhead, snapshot speed-up) hold on a noisy shared machine. Run:
//! `cargo bench --bench eventlog`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use horizon_core::audit::Chainer;
use horizon_core::bus::Record;
use horizon_core::event::Event;
use horizon_core::feed;
use horizon_core::generator::MarketGenerator;
use horizon_core::pipeline::MemoryRun;
use horizon_core::projections::Projections;
use horizon_core::scenario::Scenario;
use horizon_core::snapshot;
use std::hint::black_box;

fn scenario() -> Scenario {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios/flash-crash.toml");
    Scenario::from_toml(&std::fs::read_to_string(path).unwrap(), path).unwrap()
}

fn bench(c: &mut Criterion) {
    let s = scenario();
    let run = MemoryRun::run(&s, MarketGenerator::new(&s, s.seed).unwrap().map(feed::trade_event), 8192);
    let broker = run.bus.broker();
    let log: Vec<Record> = broker
        .all_partitions()
        .into_iter()
        .flat_map(|tp| broker.read(tp, 0, u64::MAX))
        .collect();
    let n = log.len() as u64;
    let rebuild = |records: &[Record]| {
        let mut p = Projections::default();
        for r in records {
            if let Ok(e) = Event::decode(&r.value) {
                p.apply(&e);
            }
        }
        p
    };

    let mut g = c.benchmark_group("eventlog");
    g.sample_size(10);
    g.throughput(Throughput::Elements(n));
    g.bench_function("decode_only", |b| {
        b.iter(|| log.iter().filter(|r| Event::decode(&r.value).is_ok()).count())
    });
    g.bench_function("rebuild_projections", |b| b.iter(|| black_box(rebuild(&log).audit.len())));
    g.bench_function("rebuild_projections_with_hash_chain", |b| {
        b.iter(|| {
            let mut chain = Chainer::default();
            let mut p = Projections::default();
            for r in &log {
                black_box(chain.link(r.topic, r.partition, r.offset, &r.key, &r.value));
                if let Ok(e) = Event::decode(&r.value) {
                    p.apply(&e);
                }
            }
            black_box(p.audit.len())
        })
    });
    // Recovery: a snapshot taken at 90% of the log plus the last 10%, against a full replay.
    let cut = log.len() * 9 / 10;
    let at_cut = rebuild(&log[..cut]);
    let snap = snapshot::encode("projections", 0, &Default::default(), &snapshot::state_to_bytes(&at_cut).unwrap());
    g.bench_function("recover_snapshot_plus_tail_10pct", |b| {
        b.iter(|| {
            let decoded = snapshot::decode(&snap).unwrap();
            let mut p: Projections = snapshot::state_from_bytes(&decoded.state).unwrap();
            for r in &log[cut..] {
                if let Ok(e) = Event::decode(&r.value) {
                    p.apply(&e);
                }
            }
            black_box(p.audit.len())
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
