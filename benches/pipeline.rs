//! The in-memory pipeline's throughput: market events per second through every service,
//! including protobuf encode (at the feed) and decode (at each consumer).
//!
//! Baselines in the same run: the generator alone and the codec alone, so a reader can see what
//! share of the pipeline's cost is the domain. Run: `cargo bench --bench pipeline`.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use horizon_core::event::Event;
use horizon_core::feed;
use horizon_core::generator::MarketGenerator;
use horizon_core::pipeline::MemoryRun;
use horizon_core::scenario::Scenario;
use std::hint::black_box;

fn scenario() -> Scenario {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios/flash-crash.toml");
    Scenario::from_toml(&std::fs::read_to_string(path).unwrap(), path).unwrap()
}

fn bench(c: &mut Criterion) {
    let s = scenario();
    let events: Vec<Event> = MarketGenerator::new(&s, s.seed).unwrap().map(feed::trade_event).collect();
    let encoded: Vec<Vec<u8>> = events.iter().map(|e| e.encode()).collect();
    let mut g = c.benchmark_group("pipeline");
    g.sample_size(10);
    g.throughput(Throughput::Elements(events.len() as u64));
    g.bench_function("generate", |b| b.iter(|| MarketGenerator::new(&s, s.seed).unwrap().count()));
    g.bench_function("encode", |b| b.iter(|| events.iter().map(|e| e.encode().len()).sum::<usize>()));
    g.bench_function("decode", |b| {
        b.iter(|| encoded.iter().map(|v| Event::decode(v).unwrap().ts.nanos()).sum::<i64>())
    });
    g.bench_function("all_services", |b| {
        b.iter_batched(
            || events.clone(),
            |evs| black_box(MemoryRun::run(&s, evs, 8192).feed_events),
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
