//! The event-sourced read side's speed: rebuilding every projection from a local log, the cost
//! of hash-chaining that log, and recovery from a snapshot plus the log's tail.
//!
//! Baselines in the same run: decoding alone, and the rebuild without chaining, so the ratios
//! (chaining overhead, snapshot speed-up) hold on a noisy shared machine. After criterion's
//! figures, two same-run comparisons are printed, their two sides timed alternately round by
//! round (medians), with their ratio:
//!
//! - `chain overhead`: rebuilding the projections from the flash-crash log without and with
//!   hash-chaining every record (`audit::Chainer`, blake3; the target: at most 15% of replay
//!   throughput), and with the same bytes hashed outside `Chainer` by blake3 and by SHA-256
//!   (`sha2`, the CPU's SHA extensions), for comparison.
//! - `day recovery`: a day of tick data (the flash-crash scenario stretched to 24 h at
//!   `EVENTLOG_DAY_TRADES_PER_MINUTE` trades per minute per symbol, default 620: 3,749,741
//!   trades with seed 7, ~43 a second, the order of a busy Binance BTCUSDT spot day, which is
//!   several million trades; the recorded 2020 futures tick file runs at 1.3 a second, a calm
//!   day's ~114,000) run through the in-memory pipeline,
//!   the projections stage snapshotted (`Processor::snapshot`) at the first trade of 23:00. A
//!   fresh projections processor then recovers the whole day twice: offered the snapshot
//!   (`Processor::offer_snapshot`) and replaying each partition's tail from the snapshot's offsets,
//!   and from offset 0. `EVENTLOG_DAY=0` skips it (it takes minutes and ~6 GB).
//!
//! Run: `cargo bench --bench eventlog`.

use criterion::{criterion_group, Criterion, Throughput};
use horizon_core::audit::Chainer;
use horizon_core::bus::Record;
use horizon_core::event::Event;
use horizon_core::feed;
use horizon_core::generator::MarketGenerator;
use horizon_core::pipeline::MemoryRun;
use horizon_core::processor::{Processor, StepOutcome};
use horizon_core::projections::{ProjectionService, Projections};
use horizon_core::scenario::Scenario;
use horizon_core::service::Service;
use horizon_core::snapshot;
use std::hint::black_box;
use std::time::{Duration, Instant};

fn scenario() -> Scenario {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios/flash-crash.toml");
    Scenario::from_toml(&std::fs::read_to_string(path).unwrap(), path).unwrap()
}

/// The flash-crash run's log: every record of every partition.
fn flash_crash_log() -> Vec<Record> {
    let s = scenario();
    let run = MemoryRun::run(&s, MarketGenerator::new(&s, s.seed).unwrap().map(feed::trade_event), 8192);
    let broker = run.bus.broker();
    broker
        .all_partitions()
        .into_iter()
        .flat_map(|tp| broker.read(tp, 0, u64::MAX))
        .collect()
}

fn rebuild(records: &[Record]) -> Projections {
    let mut p = Projections::default();
    for r in records {
        if let Ok(e) = Event::decode(&r.value) {
            p.apply(&e);
        }
    }
    p
}

fn rebuild_chained(records: &[Record]) -> Projections {
    let mut chain = Chainer::default();
    let mut p = Projections::default();
    for r in records {
        black_box(chain.link(r.topic, r.partition, r.offset, &r.key, &r.value));
        if let Ok(e) = Event::decode(&r.value) {
            p.apply(&e);
        }
    }
    p
}

/// The audit chain's bytes through blake3 (as `Chainer` hashes them) or SHA-256 (`sha2`, with
/// the CPU's SHA extensions), outside `Chainer`: one buffer per record. For the same-run
/// comparison only; the audit log's chain is `audit::Chainer`.
fn rebuild_chained_local(records: &[Record], sha256: bool) -> Projections {
    use sha2::Digest;
    let mut buf = Vec::new();
    let mut heads: Vec<(&str, u32, [u8; 32])> = Vec::new();
    let mut p = Projections::default();
    for r in records {
        let i = match heads.iter().position(|(t, q, _)| *q == r.partition && *t == r.topic) {
            Some(i) => i,
            None => {
                heads.push((r.topic, r.partition, [0; 32]));
                heads.len() - 1
            }
        };
        buf.clear();
        buf.extend_from_slice(&heads[i].2);
        buf.extend_from_slice(&(r.topic.len() as u32).to_le_bytes());
        buf.extend_from_slice(r.topic.as_bytes());
        buf.extend_from_slice(&r.partition.to_le_bytes());
        buf.extend_from_slice(&r.offset.to_le_bytes());
        buf.extend_from_slice(&(r.key.len() as u32).to_le_bytes());
        buf.extend_from_slice(&r.key);
        buf.extend_from_slice(&r.value);
        heads[i].2 = if sha256 {
            sha2::Sha256::digest(&buf).into()
        } else {
            *blake3::hash(&buf).as_bytes()
        };
        if let Ok(e) = Event::decode(&r.value) {
            p.apply(&e);
        }
    }
    black_box(heads);
    p
}

fn bench(c: &mut Criterion) {
    let log = flash_crash_log();
    let n = log.len() as u64;

    let mut g = c.benchmark_group("eventlog");
    g.sample_size(10);
    g.throughput(Throughput::Elements(n));
    g.bench_function("decode_only", |b| {
        b.iter(|| log.iter().filter(|r| Event::decode(&r.value).is_ok()).count())
    });
    g.bench_function("rebuild_projections", |b| b.iter(|| black_box(rebuild(&log).audit.len())));
    g.bench_function("rebuild_projections_with_hash_chain", |b| {
        b.iter(|| black_box(rebuild_chained(&log).audit.len()))
    });
    g.bench_function("hash_chain_only", |b| {
        b.iter(|| {
            let mut chain = Chainer::default();
            for r in &log {
                black_box(chain.link(r.topic, r.partition, r.offset, &r.key, &r.value));
            }
            black_box(chain.seal().heads.len())
        })
    });
    // Recovery: a snapshot taken at 90% of the log plus the last 10%, against a full replay.
    let cut = log.len() * 9 / 10;
    let at_cut = rebuild(&log[..cut]);
    let snap = snapshot::encode("projections", 0, &Default::default(), &snapshot::state_to_bytes(&at_cut).unwrap());
    g.bench_function("recover_snapshot_plus_tail_10pct", |b| {
        b.iter(|| {
            let decoded = snapshot::decode(&snap).unwrap();
            let mut p: Projections = snapshot::state_from_bytes(decoded.state).unwrap();
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

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn per_second(n: u64, d: Duration) -> String {
    let r = n as f64 / d.as_secs_f64();
    if r >= 1e6 {
        format!("{:.3} M/s", r / 1e6)
    } else {
        format!("{:.1} K/s", r / 1e3)
    }
}

/// Rebuild without the hash chain, with it (SHA-256, as the audit log chains) and with the
/// former blake3 chain, in turn, the same records each round.
fn chain_overhead() {
    let log = flash_crash_log();
    let n = log.len() as u64;
    let rounds = 31;
    let mut times: [Vec<Duration>; 4] = Default::default();
    for round in 0..rounds {
        // Rotate which goes first, so none always runs on a warmer (or busier) machine.
        for k in 0..4 {
            let which = (round + k) % 4;
            let t = Instant::now();
            let p = match which {
                0 => rebuild(&log),
                1 => rebuild_chained(&log),
                2 => rebuild_chained_local(&log, true),
                _ => rebuild_chained_local(&log, false),
            };
            times[which].push(t.elapsed());
            black_box(p.audit.len());
        }
    }
    let [plain, chainer, sha, blake] = times.map(median);
    println!("\nchain overhead (flash-crash log, {n} records, median of {rounds} rotating rounds):");
    println!(
        "  rebuild without chain              {:>9.2} ms  {}",
        plain.as_secs_f64() * 1e3,
        per_second(n, plain)
    );
    for (name, d) in [
        ("with Chainer (blake3)", chainer),
        ("with local SHA-256 chain", sha),
        ("with local blake3 chain", blake),
    ] {
        let ratio = plain.as_secs_f64() / d.as_secs_f64();
        println!(
            "  rebuild {name:<27}{:>9.2} ms  {}  throughput {ratio:.3} of without: costs {:.1}% (target <= 15%)",
            d.as_secs_f64() * 1e3,
            per_second(n, d),
            (1.0 - ratio) * 100.0
        );
    }
}

/// Recovery of the projections after a day of ticks: snapshot at 23:00 plus the tail, against
/// a replay of the whole day, both through the processor's own restore.
fn day_recovery() {
    let per_minute: u32 = std::env::var("EVENTLOG_DAY_TRADES_PER_MINUTE")
        .ok()
        .map(|v| v.parse().expect("EVENTLOG_DAY_TRADES_PER_MINUTE: a whole number"))
        .unwrap_or(620);
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios/flash-crash.toml");
    let text = std::fs::read_to_string(path)
        .unwrap()
        .replace("duration = \"8h\"", "duration = \"24h\"")
        .replace("trades_per_minute = 40", &format!("trades_per_minute = {per_minute}"));
    assert!(
        text.contains("24h") && text.contains("2024-03-01T00:00:00Z"),
        "flash-crash.toml changed: update the day bench"
    );
    let s = Scenario::from_toml(&text, path).unwrap();
    let cut = horizon_core::time::Timestamp::parse_rfc3339("2024-03-01T23:00:00Z").unwrap();

    let t = Instant::now();
    let mut run = MemoryRun::new(&s);
    let (mut trades, mut snap) = (0u64, None);
    let mut buf = Vec::with_capacity(8192);
    for e in MarketGenerator::new(&s, s.seed).unwrap().map(feed::trade_event) {
        if snap.is_none() && e.ts >= cut {
            run.feed(&buf);
            buf.clear();
            run.settle();
            snap = Some(run.pipeline.projections.snapshot().remove(0).1);
        }
        trades += 1;
        buf.push(e);
        if buf.len() == buf.capacity() {
            run.feed(&buf);
            buf.clear();
            run.settle();
        }
    }
    run.feed(&buf);
    run.settle();
    let snap = snap.expect("the day reaches 23:00");
    let reference = run.pipeline.projections.snapshot().remove(0).1;
    let records: u64 = {
        let broker = run.bus.broker();
        let inputs = run.pipeline.projections.service().inputs();
        broker
            .all_partitions()
            .into_iter()
            .filter(|tp| inputs.contains(&tp.topic))
            .map(|tp| broker.end_offset(tp))
            .sum()
    };
    println!(
        "\nday recovery: {trades} feed trades in 24 h ({per_minute}/min/symbol, 3 symbols), {records} records on the projections' inputs; built in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let name = horizon_core::projections::NAME;
    let inputs = run.pipeline.projections.service().inputs();
    run.bus.broker_mut().leave(name, "member-0");
    // A fresh processor recovering the day: offered `snapshot` or not, then restored the way a
    // restarted process is (its group's committed offsets are the end of the day).
    let recover = |snapshot: Option<&[u8]>| {
        let mut consumer = run.bus.consumer(name, "recovering", inputs);
        let mut producer = run.bus.producer();
        let t = Instant::now();
        let mut p = Processor::new(ProjectionService::from_scenario(&s));
        if let Some(bytes) = snapshot {
            p.offer_snapshot(bytes).unwrap();
        }
        let offered = t.elapsed();
        loop {
            match p.step(&mut consumer, &mut producer, 4096).unwrap() {
                StepOutcome::Idle => break,
                StepOutcome::Progress(_) => {}
                StepOutcome::Retry(e) => panic!("in-memory restore refused: {e}"),
            }
        }
        let total = t.elapsed();
        run.bus.broker_mut().leave(name, "recovering");
        (total, offered, p)
    };
    let rounds = 3;
    let (mut from_snap, mut decode, mut full) = (Vec::new(), Vec::new(), Vec::new());
    let (mut tail, mut replayed) = (0, 0);
    for round in 0..rounds {
        for use_snapshot in [round % 2 == 0, round % 2 != 0] {
            let (d, offered, p) = recover(use_snapshot.then_some(&snap[..]));
            if round == 0 {
                // Not timed: both ways recover exactly the state the day's run ended with.
                assert!(p.snapshot()[0].1 == reference, "recovered state differs from the run's");
            }
            if use_snapshot {
                from_snap.push(d);
                decode.push(offered);
                tail = p.stats.restored_records;
            } else {
                full.push(d);
                replayed = p.stats.restored_records;
            }
            drop(p);
        }
    }
    let (from_snap, decode, full) = (median(from_snap), median(decode), median(full));
    println!("  snapshot at 2024-03-01T23:00:00Z: {:.1} MB", snap.len() as f64 / 1e6);
    println!(
        "  snapshot + tail   {:>9.1} ms  (decode {:.1} ms, tail of {tail} records {:.1} ms)",
        from_snap.as_secs_f64() * 1e3,
        decode.as_secs_f64() * 1e3,
        (from_snap - decode).as_secs_f64() * 1e3
    );
    println!(
        "  full replay       {:>9.1} ms  ({replayed} records, {})",
        full.as_secs_f64() * 1e3,
        per_second(replayed, full)
    );
    println!(
        "  snapshot + tail / full replay = {:.3} ({:.1}x faster), median of {rounds} alternating rounds",
        from_snap.as_secs_f64() / full.as_secs_f64(),
        full.as_secs_f64() / from_snap.as_secs_f64()
    );
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    // Only under `cargo bench` (not when `cargo test --benches` runs each benchmark once).
    // and as filtered: `cargo bench --bench eventlog -- chain_overhead` runs only that one.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") {
        return;
    }
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let wanted = |name: &str| filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str()));
    if wanted("chain_overhead") {
        chain_overhead();
    }
    if wanted("day_recovery") && std::env::var("EVENTLOG_DAY").as_deref() != Ok("0") {
        day_recovery();
    }
}

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
