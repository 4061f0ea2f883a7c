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
//!   (`sha2`, the CPU's SHA extensions), for comparison; and with `Chainer` on a second thread
//!   fed batches of the records (wall time and both threads' CPU time). Then `chain breakdown`:
//!   each part of the chain's cost alone, per record (link bytes, blake3, SHA-256), and what
//!   multi-buffer hashing would cost, with blake3's doc-hidden many-inputs kernel (measured only:
//!   the audit log does not use it), every lane full and a lane per partition of this log.
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
use horizon_core::audit::{verify, Chainer, Line};
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

/// The CPU time this thread has used (it excludes time the thread waited or was preempted).
fn thread_cpu() -> Duration {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `t` is a valid timespec for the call to write.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// Records handed to the chaining thread at a time by `rebuild_chained_pipelined`.
const PIPELINE_BATCH_RECORDS: usize = 4096;

/// The rebuild on this thread, `Chainer` on a second one fed batches of the same records through
/// a bounded channel, as a replay that chains what it reads would. Returns the projections, the
/// heads (so the chaining is not optimised away) and both threads' CPU time.
fn rebuild_chained_pipelined(records: &[Record]) -> (Projections, usize, Duration) {
    std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<&[Record]>(4);
        let chainer = s.spawn(move || {
            let start = thread_cpu();
            let mut chain = Chainer::default();
            for batch in rx {
                for r in batch {
                    black_box(chain.link(r.topic, r.partition, r.offset, &r.key, &r.value));
                }
            }
            (chain.seal().heads.len(), thread_cpu() - start)
        });
        let start = thread_cpu();
        let mut p = Projections::default();
        for batch in records.chunks(PIPELINE_BATCH_RECORDS) {
            tx.send(batch).unwrap();
            for r in batch {
                if let Ok(e) = Event::decode(&r.value) {
                    p.apply(&e);
                }
            }
        }
        drop(tx);
        let own = thread_cpu() - start;
        let (heads, chained) = chainer.join().unwrap();
        (p, heads, own + chained)
    })
}

/// The audit chain's link bytes of every record (each as if first in its chain: the hashing
/// cost is the same), for timing the hash alone.
fn link_buffers(records: &[Record]) -> Vec<Vec<u8>> {
    records
        .iter()
        .map(|r| {
            let mut b = Vec::with_capacity(32 + 4 + r.topic.len() + 16 + r.key.len() + r.value.len());
            b.extend_from_slice(&[0; 32]);
            b.extend_from_slice(&(r.topic.len() as u32).to_le_bytes());
            b.extend_from_slice(r.topic.as_bytes());
            b.extend_from_slice(&r.partition.to_le_bytes());
            b.extend_from_slice(&r.offset.to_le_bytes());
            b.extend_from_slice(&(r.key.len() as u32).to_le_bytes());
            b.extend_from_slice(&r.key);
            b.extend_from_slice(&r.value);
            b
        })
        .collect()
}

/// BLAKE3's IV (the regular hash mode's key words).
const BLAKE3_IV: [u32; 8] = [
    0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A, 0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19,
];
/// Bytes per input of the multi-lane measurement: six blocks, the size of a typical link.
const LANE_INPUT_BYTES: usize = 384;

/// What multi-buffer hashing would cost: blake3's own many-inputs kernel (`platform::hash_many`,
/// AVX-512 here: 16 inputs side by side) over independent 384-byte inputs, every lane full.
/// `blake3::platform` is doc-hidden, "undocumented and unstable, for benchmarks only": measured
/// here, not used by the audit log. Its outputs are checked against `blake3::hash` first.
fn multi_lane_blake3(inputs: &[[u8; LANE_INPUT_BYTES]], out: &mut [u8]) {
    let platform = blake3::platform::Platform::detect();
    let lanes = platform.simd_degree();
    // Flags from the BLAKE3 spec: CHUNK_START on the first block, CHUNK_END | ROOT on the last.
    let (chunk_start, chunk_end_root) = (1u8, 2u8 | 8u8);
    for (batch, out) in inputs.chunks(lanes).zip(out.chunks_mut(lanes * 32)) {
        let refs: Vec<&[u8; LANE_INPUT_BYTES]> = batch.iter().collect();
        platform.hash_many(
            &refs,
            &BLAKE3_IV,
            0,
            blake3::IncrementCounter::No,
            0,
            chunk_start,
            chunk_end_root,
            &mut out[..batch.len() * 32],
        );
    }
}

/// A lane per partition: blake3's multi-lane kernel chaining every partition side by side, the
/// whole log ahead (step k hashes the k-th record of every partition that has one, its input
/// carrying the previous step's hash). The inputs are the partitions' links cut or padded to 384
/// bytes. What a multi-buffer `Chainer` could do at best with this log's partitions.
fn multi_lane_by_partition(partitions: &mut [Vec<[u8; LANE_INPUT_BYTES]>]) -> Vec<u8> {
    let platform = blake3::platform::Platform::detect();
    let steps = partitions.iter().map(Vec::len).max().unwrap_or(0);
    let mut out = vec![0u8; partitions.len() * 32];
    for step in 0..steps {
        let live: Vec<usize> = (0..partitions.len()).filter(|&p| step < partitions[p].len()).collect();
        {
            let refs: Vec<&[u8; LANE_INPUT_BYTES]> = live.iter().map(|&p| &partitions[p][step]).collect();
            platform.hash_many(
                &refs,
                &BLAKE3_IV,
                0,
                blake3::IncrementCounter::No,
                0,
                1,
                2 | 8,
                &mut out[..live.len() * 32],
            );
        }
        for (lane, &p) in live.iter().enumerate() {
            if let Some(next) = partitions[p].get_mut(step + 1) {
                next[..32].copy_from_slice(&out[lane * 32..lane * 32 + 32]);
            }
        }
    }
    out
}

/// Where the chain's time goes, each part alone over the flash-crash log, per record: the
/// `Chainer` (link bytes, head lookup, hash), the link bytes alone, blake3 and SHA-256 alone over
/// prebuilt links, and blake3's multi-lane kernel over as many independent 384-byte inputs.
fn chain_breakdown(log: &[Record]) {
    use sha2::Digest;
    let n = log.len();
    let links = link_buffers(log);
    let bytes: usize = links.iter().map(Vec::len).sum();
    let lane_inputs: Vec<[u8; LANE_INPUT_BYTES]> = links
        .iter()
        .map(|l| {
            let mut a = [0u8; LANE_INPUT_BYTES];
            let k = l.len().min(LANE_INPUT_BYTES);
            a[..k].copy_from_slice(&l[..k]);
            a
        })
        .collect();
    let mut lane_out = vec![0u8; n * 32];
    multi_lane_blake3(&lane_inputs, &mut lane_out);
    for (i, input) in lane_inputs.iter().enumerate() {
        assert_eq!(
            &lane_out[i * 32..i * 32 + 32],
            blake3::hash(input).as_bytes(),
            "hash_many differs from blake3::hash"
        );
    }
    let mut partitions: Vec<(&str, u32)> = log.iter().map(|r| (r.topic, r.partition)).collect();
    partitions.sort();
    partitions.dedup();
    let (min_len, max_len) = (links.iter().map(Vec::len).min().unwrap(), links.iter().map(Vec::len).max().unwrap());

    let mut by_partition: Vec<Vec<[u8; LANE_INPUT_BYTES]>> = partitions
        .iter()
        .map(|&(t, p)| {
            log.iter()
                .zip(&lane_inputs)
                .filter(|(r, _)| r.topic == t && r.partition == p)
                .map(|(_, i)| *i)
                .collect()
        })
        .collect();
    let sizes: Vec<usize> = by_partition.iter().map(Vec::len).collect();
    // Each partition's links end to end, cut at record boundaries every `BATCH_RECORDS` records.
    const BATCH_RECORDS: usize = 64;
    let batches: Vec<Vec<u8>> = partitions
        .iter()
        .flat_map(|&(t, p)| {
            let mine: Vec<&Vec<u8>> = log
                .iter()
                .zip(&links)
                .filter(|(r, _)| r.topic == t && r.partition == p)
                .map(|(_, l)| l)
                .collect();
            mine.chunks(BATCH_RECORDS)
                .map(|c| c.iter().flat_map(|l| l.iter().copied()).collect())
                .collect::<Vec<Vec<u8>>>()
        })
        .collect();

    // The log as `horizon sim --out` writes it, for `audit::verify`.
    let lines: Vec<(usize, Line)> = {
        let mut chain = Chainer::default();
        let mut lines: Vec<Line> = log
            .iter()
            .map(|r| Line::Record(chain.record(r.topic, r.partition, r.offset, &r.key, &r.value)))
            .collect();
        lines.push(Line::Seal(chain.seal()));
        lines.into_iter().enumerate().map(|(i, l)| (i + 1, l)).collect()
    };

    let rounds = 31;
    let mut times: [Vec<Duration>; 10] = Default::default();
    let mut buf = Vec::new();
    for round in 0..rounds {
        for k in 0..10 {
            let which = (round + k) % 10;
            // `verify` consumes its lines: a fresh copy, made before the clock starts.
            let fresh = (which == 9).then(|| lines.clone());
            let t = Instant::now();
            match which {
                0 => {
                    let mut chain = Chainer::default();
                    for r in log {
                        black_box(chain.link(r.topic, r.partition, r.offset, &r.key, &r.value));
                    }
                }
                1 => {
                    for r in log {
                        buf.clear();
                        buf.extend_from_slice(&[0; 32]);
                        buf.extend_from_slice(&(r.topic.len() as u32).to_le_bytes());
                        buf.extend_from_slice(r.topic.as_bytes());
                        buf.extend_from_slice(&r.partition.to_le_bytes());
                        buf.extend_from_slice(&r.offset.to_le_bytes());
                        buf.extend_from_slice(&(r.key.len() as u32).to_le_bytes());
                        buf.extend_from_slice(&r.key);
                        buf.extend_from_slice(&r.value);
                        black_box(&buf);
                    }
                }
                2 => {
                    for l in &links {
                        black_box(blake3::hash(l));
                    }
                }
                3 => {
                    for l in &links {
                        black_box(sha2::Sha256::digest(l));
                    }
                }
                4 => {
                    multi_lane_blake3(&lane_inputs, &mut lane_out);
                    black_box(&lane_out);
                }
                5 => {
                    black_box(multi_lane_by_partition(&mut by_partition));
                }
                6 => {
                    for i in &lane_inputs {
                        black_box(blake3::hash(i));
                    }
                }
                9 => {
                    let report = verify(fresh.unwrap()).unwrap();
                    assert_eq!(report.records, n as u64);
                }
                7 => {
                    for b in &batches {
                        black_box(blake3::hash(b));
                    }
                }
                _ => {
                    // No copy of key and value: the header in a stack buffer, two updates.
                    for r in log {
                        let mut h = [0u8; 128];
                        let mut n = 0;
                        for part in [
                            &[0u8; 32][..],
                            &(r.topic.len() as u32).to_le_bytes(),
                            r.topic.as_bytes(),
                            &r.partition.to_le_bytes(),
                            &r.offset.to_le_bytes(),
                            &(r.key.len() as u32).to_le_bytes(),
                            &r.key,
                        ] {
                            h[n..n + part.len()].copy_from_slice(part);
                            n += part.len();
                        }
                        let mut hasher = blake3::Hasher::new();
                        hasher.update(&h[..n]).update(&r.value);
                        black_box(hasher.finalize());
                    }
                }
            }
            times[which].push(t.elapsed());
        }
    }
    let [chainer, link, blake, sha, lanes, by_part, contiguous, batched, two_updates, verified] = times.map(median);
    println!(
        "\nchain breakdown ({n} records in {} partitions, links {min_len}-{max_len} B, mean {:.0} B; per record, median of {rounds} rotating rounds):",
        partitions.len(),
        bytes as f64 / n as f64
    );
    let ns = |d: Duration| d.as_secs_f64() * 1e9 / n as f64;
    println!("  Chainer::link (blake3)             {:>7.1} ns", ns(chainer));
    println!("  audit::verify (parsed lines)       {:>7.1} ns", ns(verified));
    println!("  link bytes only (copy)             {:>7.1} ns", ns(link));
    println!("  blake3::hash of prebuilt links     {:>7.1} ns", ns(blake));
    println!("  blake3::hash of 384-B inputs, contiguous {:>5.1} ns", ns(contiguous));
    println!("  blake3 Hasher, header + value (no copy) {:>6.1} ns", ns(two_updates));
    println!("  SHA-256 of prebuilt links          {:>7.1} ns", ns(sha));
    println!(
        "  blake3::hash of {BATCH_RECORDS}-record batches    {:>7.1} ns  (a partition's links end to end: one hash per batch, blake3's own SIMD over 1 KiB chunks)",
        ns(batched)
    );
    println!(
        "  blake3 hash_many, {:>2} lanes x {LANE_INPUT_BYTES} B {:>7.1} ns  (independent inputs, every lane full)",
        blake3::platform::Platform::detect().simd_degree(),
        ns(lanes)
    );
    println!(
        "  blake3 hash_many, a lane per partition {:>5.1} ns  (whole log ahead; {} steps, partition sizes {sizes:?})",
        ns(by_part),
        sizes.iter().max().unwrap()
    );
}

/// Rebuild without the hash chain, with `Chainer` (blake3, as the audit log chains), with the
/// same bytes hashed outside `Chainer` by SHA-256 and by blake3, and with `Chainer` on a second
/// thread, in turn, the same records each round.
fn chain_overhead() {
    let log = flash_crash_log();
    let n = log.len() as u64;
    let rounds = 31;
    let mut times: [Vec<Duration>; 5] = Default::default();
    // CPU time (both threads) of the plain rebuild and of the pipelined one.
    let (mut plain_cpu, mut piped_cpu) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        // Rotate which goes first, so none always runs on a warmer (or busier) machine.
        for k in 0..5 {
            let which = (round + k) % 5;
            let t = Instant::now();
            let cpu = thread_cpu();
            let p = match which {
                0 => {
                    let p = rebuild(&log);
                    plain_cpu.push(thread_cpu() - cpu);
                    p
                }
                1 => rebuild_chained(&log),
                2 => rebuild_chained_local(&log, true),
                3 => rebuild_chained_local(&log, false),
                _ => {
                    let (p, heads, cpu) = rebuild_chained_pipelined(&log);
                    black_box(heads);
                    piped_cpu.push(cpu);
                    p
                }
            };
            times[which].push(t.elapsed());
            black_box(p.audit.len());
        }
    }
    let [plain, chainer, sha, blake, piped] = times.map(median);
    let (plain_cpu, piped_cpu) = (median(plain_cpu), median(piped_cpu));
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
        ("+ Chainer on a 2nd thread", piped),
    ] {
        let ratio = plain.as_secs_f64() / d.as_secs_f64();
        println!(
            "  rebuild {name:<27}{:>9.2} ms  {}  throughput {ratio:.3} of without: costs {:.1}% (target <= 15%)",
            d.as_secs_f64() * 1e3,
            per_second(n, d),
            (1.0 - ratio) * 100.0
        );
    }
    println!(
        "  CPU time, both threads: without chain {:.2} ms, with Chainer on a 2nd thread {:.2} ms: {:+.1}% CPU (the 2nd thread's cost is moved to another core, not removed)",
        plain_cpu.as_secs_f64() * 1e3,
        piped_cpu.as_secs_f64() * 1e3,
        (piped_cpu.as_secs_f64() / plain_cpu.as_secs_f64() - 1.0) * 100.0
    );
    chain_breakdown(&log);
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
            snap = Some(run.pipeline.projection_processor().unwrap().snapshot().remove(0).1);
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
    let reference = run.pipeline.projection_processor().unwrap().snapshot().remove(0).1;
    let records: u64 = {
        let broker = run.bus.broker();
        let inputs = run.pipeline.projection_processor().unwrap().service().inputs();
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
    let inputs = run.pipeline.projection_processor().unwrap().service().inputs();
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
