//! The Kafka commands as a user meets them, on a real broker of this test's own (`tests/broker`):
//! secrets in `--config` never reach stderr, `horizon feed` says what it is doing and when it
//! falls short of `--rate`, and a recording without records is refused before anything is
//! published. (An unreachable broker: `tests/cli.rs`, against a closed port.)

mod broker;
mod fixtures;
use broker::{horizon, run_cli, Broker};
use fixtures::{assert_one_line_error, Recording, TARDIS_HEADER};

const SECRET: &str = "hunter2-never-shown";

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn the_kafka_commands_on_a_real_broker() {
    let broker = Broker::start("cli", 20303..20600);
    let b = broker.bootstrap.as_str();
    let out = run_cli(&["topics", "create", "--brokers", b, "--timeout", "20"]);
    assert!(out.contains(&format!("topics ready on {b}")), "{out}");

    // A misspelled secret key, a secret without a separator, a secret librdkafka refuses:
    // named by key and line, the value never shown.
    let props = broker.state.with_extension("secrets.properties");
    for (file, must_name) in [
        (format!("sasl.pasword={SECRET}\n"), "sasl.pasword"),
        (format!("# comment\nsasl.password {SECRET}\n"), "line 2"),
        (
            format!("sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required password=\"{SECRET}\";\n"),
            "sasl.jaas.config",
        ),
    ] {
        std::fs::write(&props, file).unwrap();
        let p = props.to_str().unwrap();
        for command in [vec!["topics", "create"], vec!["feed", "chop"], vec!["digest", "--scenario", "chop"]] {
            let mut args = command.clone();
            args.extend(["--brokers", b, "--config", p]);
            let out = horizon().args(&args).output().unwrap();
            assert_one_line_error(&out, &[must_name]);
            assert!(!text(&out.stderr).contains(SECRET), "{}", text(&out.stderr));
        }
    }

    // feed: a line once the brokers answer, progress (every acknowledged chunk here), and an
    // asked rate far beyond any machine's named as missed, with the likely limit.
    let out = horizon()
        .args(["feed", "chop", "--brokers", b, "--rate", "1000000000/s", "--progress-secs", "0"])
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("horizon feed: brokers {b} reached; publishing chop")),
        "{stderr}"
    );
    let progress: Vec<&str> = stderr.lines().filter(|l| l.contains("events sent in")).collect();
    assert!(!progress.is_empty(), "no progress line: {stderr}");
    assert!(progress.iter().all(|l| l.contains("events/s (asked 1000000000/s)")), "{stderr}");
    assert!(stderr.contains("could not reach --rate 1000000000/s: achieved"), "{stderr}");
    assert!(stderr.contains("likely limit: "), "{stderr}");
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with("published ") && stdout.contains("asked 1000000000/s"),
        "{stdout}"
    );

    // A header-only recording: refused before anything is published; with --allow-empty a
    // warning and zero events.
    let r = Recording::new("header.csv", TARDIS_HEADER, "");
    let out = r.horizon(&["feed", r.scenario(), "--brokers", b]);
    assert_one_line_error(&out, &["header.csv: no records (1 header/blank lines)", "--allow-empty"]);
    assert!(
        !text(&out.stderr).contains("reached"),
        "refused before connecting: {}",
        text(&out.stderr)
    );
    let out = r.horizon(&["feed", r.scenario(), "--brokers", b, "--allow-empty"]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: ") && stderr.contains("no records (1 header/blank lines)"),
        "{stderr}"
    );
    assert!(text(&out.stdout).starts_with("published 0 events"), "{}", text(&out.stdout));
}
