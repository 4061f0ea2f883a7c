//! The simulator's throughput: one seed of the `kafka` profile (two processes, every fault
//! kind; the run alone, and the run checked against every invariant with the reference cached
//! as it is when the market is pinned) next to
//! the fault-free in-memory run of the same 1,000 trades, in market events per second.
//!
//! Run: `cargo bench --bench sim`. `horizon bench sim` prints the same ratio plus seeds per
//! minute on every core and the virtual-time speed-up.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use horizon_core::pipeline::MemoryRun;
use horizon_core::scenario::Scenario;
use horizon_sim::driver::{simulate, RunSpec};
use horizon_sim::feed::Feed;
use horizon_sim::{Case, FaultProfile, Runner};
use proptest::strategy::ValueTree;
use std::hint::black_box;

fn scenario() -> Scenario {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/sim/scenarios/quick.toml");
    Scenario::from_toml(&std::fs::read_to_string(path).unwrap(), path).unwrap()
}

fn bench(c: &mut Criterion) {
    let s = scenario();
    let seed = 3;
    let mut runner = Runner::new(Case::new(s.clone(), FaultProfile::kafka()));
    let (profile, tree) = runner.schedule_tree(seed).unwrap();
    let schedule = tree.current();
    let feed = Feed::generate(&s, seed, Some(horizon_sim::DEFAULT_EVENTS))
        .unwrap()
        .with_faults(&schedule.feed_faults(), &s.symbols());
    let events = feed.events();
    let mut g = c.benchmark_group("sim");
    g.sample_size(20);
    g.throughput(Throughput::Elements(events.len() as u64));
    g.bench_function("memory_run", |b| {
        b.iter(|| black_box(MemoryRun::run(&s, events.clone(), 8192).feed_events))
    });
    let topology = horizon_core::topology::Topology::shipped();
    g.bench_function("kafka_run", |b| {
        b.iter(|| {
            let spec = RunSpec {
                scenario: &s,
                topology: &topology,
                profile: &profile,
                schedule: &schedule,
                feed: &feed,
                seed,
                render: false,
            };
            black_box(simulate(&spec).events)
        })
    });
    g.bench_function("kafka_seed_checked", |b| {
        b.iter(|| black_box(runner.run_schedule(seed, &profile, &schedule, false).unwrap().events))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
