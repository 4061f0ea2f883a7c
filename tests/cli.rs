//! The command line as a user meets it: one clear line and a non-zero exit for bad input.

use std::process::{Command, Output};

mod fixtures;
use fixtures::{assert_one_line_error, Recording, TARDIS_HEADER};

fn horizon(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_horizon")).args(args).output().unwrap()
}

fn scenario_with(replace: &str, with: &str) -> tempfile_path::Path {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios/chop.toml")).unwrap();
    assert!(text.contains(replace), "fixture drifted: {replace}");
    tempfile_path::write(&text.replacen(replace, with, 1))
}

/// A uniquely named file under the target dir, removed on drop.
mod tempfile_path {
    pub struct Path(pub std::path::PathBuf);
    impl Drop for Path {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    pub fn write(text: &str) -> Path {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!("horizon-cli-{}-{n}.toml", std::process::id()));
        std::fs::write(&p, text).unwrap();
        Path(p)
    }
}

#[test]
fn a_missing_scenario_is_named() {
    assert_one_line_error(&horizon(&["sim", "no-such-scenario"]), &["no-such-scenario"]);
}

#[test]
fn a_toml_syntax_error_names_the_file_line_and_column() {
    let f = scenario_with("name = \"chop\"", "name = \"chop");
    let out = horizon(&["sim", f.0.to_str().unwrap()]);
    assert_one_line_error(&out, &[f.0.to_str().unwrap(), ":"]);
}

#[test]
fn an_unknown_key_is_named() {
    let f = scenario_with("[risk]", "[risk]\ndrawdwn = \"0.1\"");
    assert_one_line_error(&horizon(&["sim", f.0.to_str().unwrap()]), &["drawdwn"]);
}

#[test]
fn an_out_of_range_value_names_its_key() {
    let f = scenario_with("hysteresis = ", "hysteresis = \"1.5\"\n# was: ");
    assert_one_line_error(&horizon(&["sim", f.0.to_str().unwrap()]), &["risk.hysteresis", "1.5"]);
}

#[test]
fn a_float_where_an_exact_decimal_belongs_is_refused() {
    let f = scenario_with("max_weight = \"0.4\"", "max_weight = 0.4");
    assert_one_line_error(&horizon(&["sim", f.0.to_str().unwrap()]), &["portfolio.max_weight", "strings"]);
}

#[test]
fn a_bad_flag_is_a_usage_error_not_a_panic() {
    let out = horizon(&["sim", "chop", "--seed", "banana"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--seed"));
}

#[test]
fn sim_prints_a_summary_with_every_section() {
    let out = horizon(&["sim", "chop"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    for s in [
        "MARKET_DATA_RECEIVED",
        "rebalances",
        "max drawdown",
        "projection digests",
        "feed events/s",
    ] {
        assert!(text.contains(s), "`{s}` missing from:\n{text}");
    }
}

#[test]
fn sim_json_carries_the_same_digest_as_a_second_run() {
    let run = || {
        let out = horizon(&["sim", "chop", "--json"]);
        assert!(out.status.success());
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["digests"]["all"].as_str().unwrap().to_string()
    };
    assert_eq!(run(), run());
}

#[test]
fn sim_out_writes_an_audit_log_that_verifies_and_a_tampered_one_that_does_not() {
    let dir = std::env::temp_dir().join(format!("horizon-audit-{}", std::process::id()));
    let out = horizon(&["sim", "chop", "--out", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let log = dir.join("audit.log");
    let ok = horizon(&["audit", "verify", log.to_str().unwrap()]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(String::from_utf8_lossy(&ok.stdout).contains("every link intact"));

    // Alter one record's value (line 10): the verifier names that line.
    let text = std::fs::read_to_string(&log).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let mut v: serde_json::Value = serde_json::from_str(&lines[9]).unwrap();
    v["record"]["value"] = serde_json::json!("Zm9yZ2Vk");
    lines[9] = v.to_string();
    let tampered = dir.join("tampered.log");
    std::fs::write(&tampered, lines.join("\n")).unwrap();
    assert_one_line_error(&horizon(&["audit", "verify", tampered.to_str().unwrap()]), &["line 10", "altered"]);
    // A time-travel query refuses to answer from it, naming the same record, unless told to.
    let refused = horizon(&["query", "risk", "--log", tampered.to_str().unwrap()]);
    assert_one_line_error(&refused, &["line 10", "altered", "--no-verify"]);
    assert!(
        refused.stdout.is_empty(),
        "no answer printed: {}",
        String::from_utf8_lossy(&refused.stdout)
    );
    json(&horizon(&["query", "risk", "--log", tampered.to_str().unwrap(), "--no-verify"]));

    // Remove a record: named at the next record of its chain.
    let mut removed: Vec<String> = text.lines().map(str::to_string).collect();
    removed.remove(9);
    std::fs::write(&tampered, removed.join("\n")).unwrap();
    assert_one_line_error(&horizon(&["audit", "verify", tampered.to_str().unwrap()]), &["removed"]);
    let _ = std::fs::remove_dir_all(&dir);
}

fn json(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn query_travels_in_time_over_the_audit_log() {
    let dir = std::env::temp_dir().join(format!("horizon-query-{}", std::process::id()));
    assert!(horizon(&["sim", "flash-crash", "--out", dir.to_str().unwrap()]).status.success());
    let log = dir.join("audit.log");
    let log = log.to_str().unwrap();
    let q = |args: &[&str]| json(&horizon(&[&["query"], args, &["--log", log, "--scenario", "flash-crash"]].concat()));

    // Now: the same portfolio as the live run wrote.
    let live: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("projections.json")).unwrap()).unwrap();
    let now = q(&["portfolio", "--series"]);
    assert_eq!(now["alpha"], live["portfolios"]["alpha"]);

    // Before anything happened: no rebalance, all cash.
    let start = q(&["portfolio", "--at", "2024-03-01T00:00:00Z"]);
    assert_eq!(start["alpha"]["rebalances"], 0, "{start}");

    // Part-way: fewer rebalances than at the end, and bars end at the cut.
    let mid = q(&["portfolio", "--at", "2024-03-01T04:30:00Z"]);
    assert!(mid["alpha"]["rebalances"].as_u64().unwrap() < now["alpha"]["rebalances"].as_u64().unwrap());
    let bars = q(&["bars", "--symbol", "BTCUSDT", "--last", "1", "--at", "2024-03-01T04:30:00Z"]);
    assert_eq!(bars[0]["start"], "2024-03-01T04:29:00.000Z");

    // An event id: its causation chain reaches the root trade.
    let risk = q(&["risk"]);
    let first = &risk["alpha"]["history"][0];
    assert_eq!(first["crossing"], "entered");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn query_names_a_bad_point_in_time() {
    let dir = std::env::temp_dir().join(format!("horizon-query-bad-{}", std::process::id()));
    assert!(horizon(&["sim", "chop", "--out", dir.to_str().unwrap()]).status.success());
    let log = dir.join("audit.log");
    assert_one_line_error(
        &horizon(&["query", "risk", "--log", log.to_str().unwrap(), "--at", "yesterday"]),
        &["--at", "yesterday"],
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Runs `horizon ARGS`, killed if it is still running after `bound` (a hang fails the test).
fn horizon_within(args: &[&str], bound: std::time::Duration) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_horizon"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + bound;
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "horizon {} still running after {bound:?}; stderr: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn every_kafka_command_fails_within_its_timeout_naming_the_brokers_and_the_last_error() {
    let brokers = format!("127.0.0.1:{}", closed_port());
    let commands: [&[&str]; 6] = [
        &["feed", "chop"],
        &["topics", "create"],
        &["digest", "--scenario", "chop"],
        &["run", "--scenario", "chop"],
        &["audit", "verify"],
        &["bench", "kafka", "--scratch", "--events", "1000"],
    ];
    for command in commands {
        let mut args = command.to_vec();
        args.extend(["--brokers", &brokers, "--timeout", "2"]);
        // 2 s asked; the bound only proves it does not hang.
        let out = horizon_within(&args, std::time::Duration::from_secs(60));
        assert_one_line_error(&out, &[&brokers, "Connection refused", "--timeout"]);
    }
}

#[test]
fn the_kafka_timeout_has_a_documented_default_and_refuses_nonsense() {
    let help = String::from_utf8_lossy(&horizon(&["feed", "--help"]).stdout).into_owned();
    assert!(help.contains("--timeout") && help.contains("[default: 30s]"), "{help}");
    for bad in ["0", "soon", "1.5"] {
        let out = horizon(&["topics", "create", "--brokers", "127.0.0.1:1", "--timeout", bad]);
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("--timeout") && !stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn an_empty_or_header_only_recording_is_refused() {
    for (file, text, what) in [
        ("empty.csv", "", "no records (0 header/blank lines)"),
        ("header.csv", TARDIS_HEADER, "no records (1 header/blank lines)"),
    ] {
        let r = Recording::new(file, text, "");
        for args in [vec!["sim", r.scenario()], vec!["scenario", "show", r.scenario()]] {
            let out = r.horizon(&args);
            assert_one_line_error(&out, &[file, what, "--allow-empty"]);
            assert!(out.stdout.is_empty(), "nothing replayed: {}", String::from_utf8_lossy(&out.stdout));
        }
    }
}

#[test]
fn allow_empty_replays_an_empty_recording_with_a_warning() {
    let r = Recording::new("header.csv", TARDIS_HEADER, "");
    let keyed = Recording::new("header.csv", TARDIS_HEADER, "allow_empty = true");
    for (data, args) in [
        (&r, vec!["sim", r.scenario(), "--allow-empty"]),
        (&keyed, vec!["sim", keyed.scenario()]),
    ] {
        let out = data.horizon(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "one warning: {stderr}");
        assert!(
            stderr.contains("warning") && stderr.contains("header.csv: no records (1 header/blank lines)"),
            "{stderr}"
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("0 feed events"));
    }
}

#[test]
fn run_names_a_bad_stall_or_drain_duration_before_connecting() {
    let out = horizon(&["run", "--brokers", "127.0.0.1:1", "--scenario", "chop", "--stall-after", "soon"]);
    assert_one_line_error(&out, &["--stall-after", "`soon`"]);
    let out = horizon(&["run", "--brokers", "127.0.0.1:1", "--scenario", "chop", "--drain-timeout", "0s"]);
    assert_one_line_error(&out, &["--drain-timeout", "`0s`"]);
}

#[test]
fn explore_refuses_a_recorded_scenario_it_cannot_run_once_before_any_seed() {
    let empty = std::env::temp_dir().join(format!("horizon-cli-no-data-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    let missing = Command::new(env!("CARGO_BIN_EXE_horizon"))
        .args(["explore", "ftx-jan-2022", "--seeds", "0..50"])
        .env("HORIZON_DATA", &empty)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir(&empty);
    for (out, what) in [
        (
            missing,
            vec!["ftx-jan-2022", "ftx_btc-perp_1m_2022-01.csv", "recorded data is missing"],
        ),
        (
            horizon(&["explore", "ftx-jan-2022", "--seeds", "0..50", "--skip", "1000000"]),
            vec!["ftx_btc-perp_1m_2022-01.csv", "the window is empty", "--skip 1000000"],
        ),
        (
            horizon(&["replay", "binance-ticks-2020", "--seed", "3", "--start", "2031-01-01T00:00:00Z"]),
            vec!["binance-futures_btcusdt_trades_2020-02-22.tardis.csv", "no record at or after"],
        ),
        (
            horizon(&["shrink", "binance-ws-2024", "--seed", "3", "--start", "noon"]),
            vec!["--start noon", "RFC 3339"],
        ),
        (
            horizon(&["explore", "chop", "--seeds", "0..50", "--skip", "10"]),
            vec!["chop has a generated market"],
        ),
    ] {
        // One line, no progress header, no seed counted as broken.
        assert_one_line_error(&out, &what);
        assert!(!String::from_utf8_lossy(&out.stderr).contains("exploring"));
        assert!(out.stdout.is_empty(), "no seed ran: {}", String::from_utf8_lossy(&out.stdout));
    }
}

#[test]
fn explore_runs_a_window_of_a_recording() {
    let out = horizon(&[
        "explore",
        "ftx-jan-2022",
        "--seeds",
        "0..4",
        "--start",
        "2022-01-21T00:00:00Z",
        "--events",
        "300",
        "--quiet",
    ]);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("recorded: 300 bars of ftx_btc-perp_1m_2022-01.csv from 2022-01-21T00:00:00.000Z"),
        "{stderr}"
    );
    assert!(stdout.contains("every invariant held for every seed"), "{stdout}");
}

/// A case that fails on purpose, fast: the simulator's deliberately broken `no-dedup` signals
/// (every bar evaluated, a re-published one twice) under `kafka`; seeds
/// 40..70 fail at 53, 67 and 69. The root crate's dev-dependency turns the broken services on
/// for the binary these tests run.
const FAILING_CASE: [&str; 5] = ["quick", "--profile", "kafka", "--broken", "no-dedup"];

/// A scratch folder, removed with everything in it on drop.
struct Scratch(std::path::PathBuf);
impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
fn scratch(name: &str) -> Scratch {
    let dir = std::env::temp_dir().join(format!("horizon-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    Scratch(dir)
}

/// `horizon explore FAILING_CASE --seeds 40..70 --jobs 1 --quiet EXTRA...`
fn explore_failing(extra: &[&str]) -> Output {
    horizon(
        &[
            &["explore"],
            &FAILING_CASE[..],
            &["--seeds", "40..70", "--jobs", "1", "--quiet"],
            extra,
        ]
        .concat(),
    )
}

/// stdout from the failure table on (after the totals).
fn failure_table(out: &Output) -> String {
    let text = String::from_utf8_lossy(&out.stdout);
    let at = text.find("\ninvariant ").unwrap_or_else(|| panic!("no failure table in:\n{text}"));
    text[at..].to_string()
}

#[test]
fn explore_shards_merge_to_the_failures_of_one_unsharded_run() {
    let dir = scratch("shards");
    let file = |n: &str| dir.0.join(n).to_str().unwrap().to_string();
    let whole = explore_failing(&["--json", &file("whole.json")]);
    assert_eq!(whole.status.code(), Some(1), "{}", String::from_utf8_lossy(&whole.stderr));
    for k in ["1/2", "2/2"] {
        let out = explore_failing(&["--shard", k, "--json", &file(&format!("{}.json", &k[..1]))]);
        assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("(shard {k} of 40..70)")));
    }
    let merged = horizon(&["explore", "merge", &file("2.json"), &file("1.json")]);
    let stdout = String::from_utf8_lossy(&merged.stdout);
    assert_eq!(merged.status.code(), Some(1), "a failed seed fails the merge: {stdout}");
    assert!(
        stdout.contains("merged 2 result files of quick --profile kafka --broken no-dedup"),
        "{stdout}"
    );
    assert!(stdout.contains("seeds 40..55 55..70"), "{stdout}");
    assert!(stdout.contains("30 seeds in") && stdout.contains("seeds/s"), "{stdout}");
    assert_eq!(failure_table(&merged), failure_table(&whole));

    // The file: versioned, the case, the slice, and each failure's replay command as printed.
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(file("1.json")).unwrap()).unwrap();
    assert_eq!(v["format"], 1);
    assert_eq!(v["case"]["profile"], "kafka");
    assert_eq!((v["shard"]["k"].as_u64(), v["shard"]["n"].as_u64()), (Some(1), Some(2)));
    assert_eq!((v["ran"]["first"].as_u64(), v["ran"]["end"].as_u64()), (Some(40), Some(55)));
    let failures = v["failures"].as_array().unwrap();
    assert!(!failures.is_empty(), "{v}");
    let replay = failures[0]["replay"].as_str().unwrap();
    assert!(
        replay.starts_with("horizon replay quick --profile kafka --broken no-dedup --seed "),
        "{replay}"
    );
    assert!(String::from_utf8_lossy(&whole.stdout).contains(replay));
    assert!(failures[0]["violations"][0]["invariant"].is_string());
}

#[test]
fn explore_merge_refuses_other_cases_overlaps_malformed_and_missing_files() {
    let dir = scratch("merge-refusals");
    let file = |n: &str| dir.0.join(n).to_str().unwrap().to_string();
    let out = horizon(&[
        "explore",
        "quick",
        "--seeds",
        "0..4",
        "--shard",
        "1/2",
        "--jobs",
        "1",
        "--quiet",
        "--json",
        &file("a.json"),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let a: serde_json::Value = serde_json::from_slice(&std::fs::read(file("a.json")).unwrap()).unwrap();
    let write = |name: &str, v: &serde_json::Value| {
        std::fs::write(file(name), v.to_string()).unwrap();
        file(name)
    };
    let mut other = a.clone();
    other["case"]["profile"] = "swarm".into();
    other["ran"] = serde_json::json!({"first": 2, "end": 4});
    let mut overlapping = a.clone();
    overlapping["ran"] = serde_json::json!({"first": 1, "end": 3});
    let mut future = a.clone();
    future["format"] = 2.into();
    let mut outside = a.clone();
    outside["failures"] =
        serde_json::json!([{"seed": 9, "violations": [{"invariant": "stuck", "detail": "x"}], "replay": "horizon replay quick --seed 9"}]);
    let mut unknown = a.clone();
    unknown["failures"] = serde_json::json!([{"seed": 1, "violations": [{"invariant": "sad", "detail": "x"}], "replay": "r"}]);
    let mut missing_field = a.clone();
    missing_field.as_object_mut().unwrap().remove("ran");
    std::fs::write(file("truncated.json"), &std::fs::read(file("a.json")).unwrap()[..40]).unwrap();
    let a_path = file("a.json");
    let cases: Vec<(Vec<String>, Vec<&str>)> = vec![
        (
            vec![a_path.clone(), write("other.json", &other)],
            vec!["different cases", "--profile kafka", "--profile swarm"],
        ),
        (
            vec![a_path.clone(), write("overlap.json", &overlapping)],
            vec!["overlap.json", "seeds 1..3", "overlap"],
        ),
        (vec![a_path.clone(), a_path.clone()], vec!["a.json", "overlap"]),
        (vec![write("future.json", &future)], vec!["future.json", "format 2", "format 1"]),
        (
            vec![write("outside.json", &outside)],
            vec!["outside.json", "seed 9 is outside the seeds run (0..2)"],
        ),
        (vec![write("unknown.json", &unknown)], vec!["unknown.json", "unknown variant `sad`"]),
        (
            vec![write("missing-field.json", &missing_field)],
            vec!["missing-field.json", "missing field `ran`"],
        ),
        (vec![file("truncated.json")], vec!["truncated.json", "not an explore result file"]),
        (vec![a_path.clone(), file("nowhere.json")], vec!["nowhere.json", "cannot read"]),
    ];
    for (files, what) in cases {
        let args: Vec<&str> = ["explore", "merge"].into_iter().chain(files.iter().map(String::as_str)).collect();
        let out = horizon(&args);
        assert_one_line_error(&out, &what);
        assert!(out.stdout.is_empty(), "nothing merged: {}", String::from_utf8_lossy(&out.stdout));
    }
    // A clean merge of the two halves of one case.
    let mut b = a.clone();
    b["ran"] = serde_json::json!({"first": 2, "end": 4});
    b["shard"]["k"] = 2.into();
    let ok = horizon(&["explore", "merge", &a_path, &write("b.json", &b)]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(String::from_utf8_lossy(&ok.stdout).contains("every invariant held for every seed"));
}

#[test]
fn explore_names_a_bad_shard_seeds_or_time() {
    for (args, what) in [
        (vec!["--shard", "3/2"], vec!["--shard 3/2", "from 1 to 2"]),
        (vec!["--shard", "0/2"], vec!["--shard 0/2"]),
        (vec!["--shard", "half"], vec!["--shard half", "K/N"]),
        (vec!["--shard", "1/0"], vec!["--shard 1/0"]),
        (
            vec!["--seeds", "0..2", "--shard", "1/3"],
            vec!["--shard 1/3", "fewer seeds than shards"],
        ),
        (vec!["--seeds", "5.."], vec!["--seeds 5..", "--time"]),
        (vec!["--time", "soon"], vec!["--time", "soon"]),
        (
            vec!["--json", "/nonexistent-horizon-dir/r.json"],
            vec!["--json /nonexistent-horizon-dir/r.json"],
        ),
    ] {
        let out = horizon(&[&["explore", "quick"], &args[..]].concat());
        assert_one_line_error(&out, &what);
    }
}

#[test]
fn explore_time_stops_at_its_budget_and_reports_the_seeds_it_ran() {
    let dir = scratch("time");
    let file = dir.0.join("t.json");
    let out = horizon_within(
        &[
            "explore",
            "quick",
            "--time",
            "1s",
            "--jobs",
            "1",
            "--quiet",
            "--json",
            file.to_str().unwrap(),
        ],
        std::time::Duration::from_secs(60),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("time budget 1s spent: ran seeds 0.."), "{stdout}");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let ran = v["ran"]["end"].as_u64().unwrap();
    assert_eq!(v["ran"]["first"], 0);
    assert!(ran > 0, "{v}");
    assert_eq!(v["range"]["end"].as_u64(), Some(u64::MAX), "open-ended by default with --time");
    assert!(stdout.contains(&format!("{ran} seeds in")), "{stdout}");
    assert!(v["seconds"].as_f64().unwrap() >= 1.0);
}
