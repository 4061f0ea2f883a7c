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
