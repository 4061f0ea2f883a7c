//! The recorded scenarios on the real files in `../shared/data` (or `$HORIZON_DATA`): snapshots
//! of their projections, every event type, what the readers count in each file, the command
//! line, and an independent check of bars and EMAs against pandas (`scripts/crosscheck.py`).
//!
//! These tests need the data. CI has it; where it is missing they fail, saying where they looked.

mod common;

use horizon_core::pipeline::MemoryRun;
use horizon_core::scenario::Scenario;
use horizon_core::Timestamp;
use horizon_runtime::recorded::window::{read_window, Window, WindowRead};
use horizon_runtime::recorded::{self, ReadReport};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::Command;

const RECORDED: [&str; 3] = ["ftx-jan-2022", "binance-ticks-2020", "binance-ws-2024"];

const TICKS: &str = "binance-futures_btcusdt_trades_2020-02-22.tardis.csv";
const FTX: &str = "ftx_btc-perp_1m_2022-01.csv";
const WS: &str = "binance-usdm_btcusdt_ws-capture_2024-08-08.gz";

/// The data folder, or a failure that says the data is missing and where it was looked for.
fn data_dir() -> PathBuf {
    let (dir, origin) = match std::env::var_os(recorded::DATA_ENV).filter(|v| !v.is_empty()) {
        Some(d) => (PathBuf::from(d), format!("${}", recorded::DATA_ENV)),
        None => (
            PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/data")),
            "the default ../shared/data beside the repository".to_string(),
        ),
    };
    for f in [TICKS, FTX, WS] {
        assert!(
            dir.join(f).is_file(),
            "recorded data is missing: {} not found in {} ({origin}); these tests need the shared data \
             (CI has it; set {} to the folder holding it)",
            f,
            dir.display(),
            recorded::DATA_ENV
        );
    }
    dir
}

fn scenario(name: &str) -> Scenario {
    let path = format!("{}/scenarios/{name}.toml", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap();
    Scenario::from_toml(&text, &path).unwrap()
}

fn run(s: &Scenario, chunk: usize) -> (MemoryRun, ReadReport) {
    let mut feed = recorded::open_feed(s, &data_dir()).unwrap_or_else(|e| panic!("{e}"));
    let (run, failure) = recorded::drive(&mut feed, |events| MemoryRun::run(s, events, chunk));
    assert!(failure.is_none(), "{}", failure.unwrap());
    (run, feed.report().clone())
}

/// What a reviewer reads in a snapshot: the recording's counts, then every event count and the
/// read models, with long series thinned (as in `tests/scenarios.rs`).
#[derive(Serialize)]
struct Snapshot {
    recording: serde_json::Value,
    #[serde(flatten)]
    projections: common::ProjectionSummary,
}

fn snapshot(run: &MemoryRun, report: &ReadReport) -> Snapshot {
    let mut views = common::views(run);
    for pv in views["portfolios"].as_object_mut().unwrap().values_mut() {
        let series = pv["series"].as_array().unwrap();
        let step = (series.len() / 25).max(1);
        pv["series"] = serde_json::Value::Array(series.iter().step_by(step).cloned().collect());
    }
    for feed in views["notifications"].as_object_mut().unwrap().values_mut() {
        if let Some(items) = feed.as_array() {
            let step = (items.len() / 20).max(1);
            *feed = serde_json::Value::Array(items.iter().step_by(step).cloned().collect());
        }
    }
    let mut recording = serde_json::to_value(report).unwrap();
    // The path depends on the machine; the file name does not.
    recording["file"] = serde_json::json!(Path::new(&report.file).file_name().unwrap().to_string_lossy());
    for s in recording["skipped"].as_object_mut().unwrap().values_mut() {
        let first = s["first"].as_str().unwrap().to_string();
        s["first"] = serde_json::json!(first.rsplit('/').next().unwrap());
    }
    Snapshot {
        recording,
        projections: common::summarize(run, views),
    }
}

#[test]
fn every_recorded_scenario_exercises_every_event_type_and_matches_its_snapshot() {
    for name in RECORDED {
        let s = scenario(name);
        let (r, report) = run(&s, 8192);
        let by_type = &r.pipeline.projections().unwrap().events_by_type;
        assert_eq!(by_type.len(), 5, "{name} exercises every event type: {by_type:?}");
        let summary = r.summary(&s, s.seed);
        assert!(
            summary.risk_entered > 0 && summary.rebalances > 0 && summary.notifications > 0,
            "{name}"
        );
        assert_eq!(summary.dead_letters, 0, "{name}: nothing recorded is dead-lettered");
        insta::assert_json_snapshot!(format!("recorded-{name}"), snapshot(&r, &report));
    }
}

#[test]
fn the_readers_account_for_every_line_of_the_real_files() {
    let dir = data_dir();
    // tardis: 9,999 trades after the header, in time order.
    let (_, ticks) = run(&scenario("binance-ticks-2020"), 8192);
    assert_eq!(
        (ticks.lines, ticks.header_lines, ticks.trades, ticks.out_of_order),
        (10_000, 1, 9_999, 0)
    );
    // FTX: 45,031 bars, six of them refused for a float artefact in their volume.
    let (_, ftx) = run(&scenario("ftx-jan-2022"), 8192);
    assert_eq!((ftx.lines, ftx.bars, ftx.skipped_lines()), (45_032, 45_025, 6));
    assert_eq!(
        ftx.skipped.keys().collect::<Vec<_>>(),
        ["field `volume`: more than 8 decimal places"]
    );
    // The WebSocket capture: every message counted by kind.
    let (_, ws) = run(&scenario("binance-ws-2024"), 8192);
    let ignored: Vec<(&str, u64)> = ws.ignored.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    assert_eq!(ws.trades, 21_313);
    assert_eq!(ignored, [("book-ticker", 66_089), ("depth-snapshot", 1), ("depth-update", 6_551)]);
    assert_eq!(ws.lines, 93_954);
    assert_eq!(ws.quotes.as_ref().unwrap().updates, 66_089);
    // The rebuilt book follows every diff after the snapshot, and agrees with every book ticker
    // stamped with its update id.
    let book = ws.book.as_ref().unwrap();
    assert_eq!(
        (book.snapshots, book.diffs_applied, book.diffs_stale, book.sequence_breaks),
        (1, 6_547, 4, 0)
    );
    assert!(
        book.tickers_checked > 100 && book.tickers_matching == book.tickers_checked,
        "{book:?}"
    );
    for r in [&ticks, &ftx, &ws] {
        assert_eq!(r.unaccounted(), 0, "{}", r.file);
    }
    // Without skip_bad the FTX file stops at its first bad line, naming file, line and field.
    let mut strict = scenario("ftx-jan-2022");
    strict.market.recording.as_mut().unwrap().skip_bad = false;
    let err = recorded::open_recording(&strict, &dir).unwrap().find_map(Result::err).unwrap();
    assert!(
        err.to_string().ends_with(&format!(
            "{FTX}:249: field `volume`: `218102.59507500002` has more than 8 decimal places"
        )),
        "{err}"
    );
}

#[test]
fn a_recorded_run_does_not_depend_on_how_the_stages_interleave() {
    let s = scenario("binance-ticks-2020");
    let (coarse, _) = run(&s, 50_000);
    let (fine, _) = run(&s, 97);
    assert_eq!(fine.pipeline.digests(), coarse.pipeline.digests());
}

fn horizon(args: &[&str], cwd: &Path, data: Option<&Path>) -> std::process::Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_horizon"));
    c.args(args).current_dir(cwd);
    // Without `data`, the data folder is found as a user's would be: $HORIZON_DATA if set, else
    // ../shared/data beside the repository.
    if let Some(d) = data {
        c.env(recorded::DATA_ENV, d);
    }
    c.output().unwrap()
}

#[test]
fn horizon_sim_replays_each_recorded_scenario_from_the_repository_root() {
    data_dir();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for name in RECORDED {
        let out = horizon(&["sim", name, "--json"], root, None);
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["events_by_type"].as_object().unwrap().len(), 5, "{name}");
        assert!(v["recording"]["records"].as_u64().unwrap() > 0, "{name}");
    }
    let out = horizon(&["scenario", "list"], root, None);
    let text = String::from_utf8_lossy(&out.stdout);
    for name in RECORDED.iter().chain(&["flash-crash", "trend", "chop"]) {
        assert!(text.contains(name), "{name} listed: {text}");
    }
    assert!(!text.contains("MISSING"), "{text}");
    let out = horizon(&["scenario", "show", "binance-ticks-2020"], root, None);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("9999 trades") && text.contains("2020-02-22T00:00:02.111Z"), "{text}");
}

#[test]
fn missing_data_and_bad_lines_are_one_clear_line() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let nowhere = std::env::temp_dir().join("horizon-no-such-data-folder");
    let out = horizon(&["sim", "ftx-jan-2022"], root, Some(&nowhere));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("recorded data is missing") && err.contains("horizon-no-such-data-folder"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    let out = horizon(&["scenario", "list"], root, Some(&nowhere));
    assert!(String::from_utf8_lossy(&out.stdout).contains("MISSING"));

    // A recording with bad lines: stop at the first, or skip and count with --skip-bad.
    let dir = std::env::temp_dir().join(format!("horizon-recorded-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join(FTX),
        "timestamp,open,high,low,close,volume\n\
         2022-01-01 00:00:00,100,101,99,100,5\n\
         2022-01-01 00:01:00,100,abc,99,100,5\n\
         2022-01-01 00:02:00,100,101,99,100\n\
         2022-01-01 00:03:00,100,101,99,100,5\n",
    )
    .unwrap();
    let scenario_file = dir.join("s.toml");
    let text = std::fs::read_to_string(root.join("scenarios/ftx-jan-2022.toml")).unwrap();
    std::fs::write(&scenario_file, text.replace("skip_bad = true", "skip_bad = false")).unwrap();
    let f = scenario_file.to_str().unwrap();
    let out = horizon(&["sim", f], root, Some(&dir));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!("{FTX}:3: field `high`: `abc` is not a decimal number")),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    let out = horizon(&["sim", f, "--skip-bad", "--json"], root, Some(&dir));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let skipped = &v["recording"]["skipped"];
    assert_eq!(skipped["field `high`: not a decimal number"]["lines"], 1, "{skipped}");
    assert_eq!(skipped["wrong number of columns"]["lines"], 1, "{skipped}");
    assert_eq!(v["recording"]["bars"], 2);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A Python with pandas, in a venv under the target dir, created once and reused.
fn python_with_pandas() -> PathBuf {
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("crosscheck-venv");
    let python = venv.join("bin").join("python");
    let stamp = venv.join(".pandas-installed");
    if !stamp.is_file() {
        if !python.is_file() {
            let st = Command::new("python3")
                .args(["-m", "venv"])
                .arg(&venv)
                .status()
                .expect("python3 runs");
            assert!(st.success(), "python3 -m venv {} failed", venv.display());
        }
        let st = Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "pandas>=2.2,<3"])
            .status()
            .expect("pip runs");
        assert!(st.success(), "pip install pandas failed");
        std::fs::write(&stamp, "").unwrap();
    }
    python
}

#[test]
fn bars_and_emas_match_pandas() {
    let dir = data_dir();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = python_with_pandas();
    let cases = [
        ("binance-ticks-2020", "1m", "ticks", TICKS, "1min"),
        ("binance-ticks-2020", "10s", "ticks", TICKS, "10s"),
        ("ftx-jan-2022", "15m", "ohlcv", FTX, "15min"),
    ];
    for (name, interval, kind, file, pandas_interval) in cases {
        let out = horizon(
            &["scenario", "bars", name, "--interval", interval, "--ema", "12,48,200"],
            root,
            Some(&dir),
        );
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let ours = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("crosscheck-{name}-{interval}.csv"));
        std::fs::write(&ours, &out.stdout).unwrap();
        let check = Command::new(&python)
            .arg(root.join("scripts/crosscheck.py"))
            .args([kind, dir.join(file).to_str().unwrap(), ours.to_str().unwrap()])
            .args(["--interval", pandas_interval, "--spans", "12,48,200"])
            .output()
            .unwrap();
        let report = String::from_utf8_lossy(&check.stdout);
        println!("{name} {interval}:\n{report}{}", String::from_utf8_lossy(&check.stderr));
        assert!(check.status.success(), "{name} {interval} disagrees with pandas:\n{report}");
        assert!(report.contains("vs exact: 0 differ"), "{report}");
    }
}

// The simulator on recorded markets: a window of each file replayed through the simulated
// Kafka deployment, with the same feed faults as a generated market.

const SIM_SEEDS: u64 = 30;

/// A recorded scenario's default window (the first 1,000 records) as a simulator case.
fn recorded_case(name: &str, profile: horizon_sim::FaultProfile) -> horizon_sim::Case {
    let s = scenario(name);
    let window = Window {
        events: Some(horizon_sim::DEFAULT_EVENTS),
        ..Window::default()
    };
    let w = read_window(&s, &data_dir(), window).unwrap_or_else(|e| panic!("{e}"));
    horizon_sim::Case {
        recorded: Some(std::sync::Arc::new(horizon_sim::feed::Feed::recorded(w.events))),
        ..horizon_sim::Case::new(s, profile)
    }
}

fn explore_recorded(name: &str, profile: horizon_sim::FaultProfile) -> Vec<horizon_sim::SeedReport> {
    let opts = horizon_sim::ExploreOptions {
        first: 0,
        end: SIM_SEEDS,
        jobs: 1,
        determinism_every: 8,
    };
    horizon_sim::explore(&recorded_case(name, profile), &opts, |_| {})
}

/// Under `kafka`, `swarm` and `chaos` (a producer that duplicates and reorders its requests, beyond
/// Kafka's guarantees) every seed holds every invariant.
fn explore_recorded_under_every_profile(name: &str) {
    use horizon_sim::FaultProfile;
    for profile in [FaultProfile::kafka(), FaultProfile::swarm(), FaultProfile::chaos()] {
        let reports = explore_recorded(name, profile.clone());
        assert_eq!(reports.len() as u64, SIM_SEEDS);
        let failed: Vec<String> = reports
            .iter()
            .filter(|r| r.failed())
            .map(|r| format!("seed {}: {:?}", r.seed, r.violations))
            .collect();
        assert!(failed.is_empty(), "{name} under {}: {failed:#?}", profile.name);
    }
}

#[test]
fn explore_ftx_bars_holds_every_invariant() {
    explore_recorded_under_every_profile("ftx-jan-2022");
}

#[test]
fn explore_binance_ticks_holds_every_invariant() {
    explore_recorded_under_every_profile("binance-ticks-2020");
}

#[test]
fn explore_binance_ws_capture_holds_every_invariant() {
    explore_recorded_under_every_profile("binance-ws-2024");
}

#[test]
fn a_recorded_feed_is_read_once_and_is_the_same_for_every_seed() {
    let mut runner = horizon_sim::Runner::new(recorded_case("ftx-jan-2022", horizon_sim::FaultProfile::none()));
    let a = runner.run_seed(1, false).unwrap();
    let b = runner.run_seed(2, false).unwrap();
    assert_eq!(a.feed_events, 1000);
    assert_eq!(a.reference, b.reference, "one market, one reference, whatever the seed");
    assert!(a.violations.is_empty() && b.violations.is_empty());
}

/// The first `n` records of a file, each with its exchange time and its event.
fn records(s: &Scenario, n: usize) -> Vec<(Timestamp, horizon_core::event::Event)> {
    recorded::open_recording(s, &data_dir())
        .unwrap()
        .take(n)
        .map(|r| {
            let r = r.unwrap();
            (r.ts(), r.into_event())
        })
        .collect()
}

#[test]
fn a_window_starts_at_its_skip_and_its_start_and_takes_its_events() {
    for name in RECORDED {
        let s = scenario(name);
        let all = records(&s, 3000);
        let ids = |from: usize, n: usize| -> Vec<String> { all[from..from + n].iter().map(|(_, e)| e.id.clone()).collect() };
        let read = |w: Window| read_window(&s, &data_dir(), w).unwrap_or_else(|e| panic!("{name}: {e}"));
        let got = |w: &WindowRead| -> Vec<String> { w.events.iter().map(|e| e.id.clone()).collect() };
        // --skip N: records N.. of the file
        let w = read(Window {
            skip: 250,
            events: Some(100),
            ..Window::default()
        });
        assert_eq!((w.first_record, got(&w)), (250, ids(250, 100)), "{name} --skip");
        assert_eq!(w.report.records, 350, "{name}: the file is read up to the window's end, no further");
        // --start T: from the first record at or after T
        let t = all[1200].0;
        let first = all.iter().position(|(ts, _)| *ts >= t).unwrap();
        let w = read(Window {
            start: Some(t),
            events: Some(50),
            ..Window::default()
        });
        assert_eq!((w.first_record, got(&w)), (first as u64, ids(first, 50)), "{name} --start");
        // both: the later of the two
        let w = read(Window {
            start: Some(t),
            skip: 2000,
            events: Some(10),
        });
        assert_eq!(got(&w), ids(2000, 10), "{name} --skip past --start");
        // virtual time 0 is the window's first event
        let feed = horizon_sim::feed::Feed::recorded(w.events.clone());
        assert_eq!(feed.items[0].at_ns, 0);
        assert!(feed.items.windows(2).all(|p| p[0].at_ns <= p[1].at_ns));
    }
    // An empty window is an error naming the file and why.
    let s = scenario("ftx-jan-2022");
    let past = |w: Window| read_window(&s, &data_dir(), w).err().unwrap();
    let e = past(Window {
        skip: 1_000_000,
        ..Window::default()
    });
    assert!(
        e.contains(FTX) && e.contains("the window is empty") && e.contains("45025 records"),
        "{e}"
    );
    let e = past(Window {
        start: Timestamp::parse_rfc3339("2023-01-01T00:00:00Z"),
        ..Window::default()
    });
    assert!(e.contains("no record at or after --start 2023-01-01"), "{e}");
}
