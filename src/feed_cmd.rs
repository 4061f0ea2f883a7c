//! `horizon feed`: a scenario's market data onto `market.feed`, as a market-data gateway would
//! publish it: the generator's trades or a recording's records, at full speed or paced.
//!
//! It says what it does while it does it: a line once the brokers answered, progress every
//! `--progress-secs` (events acknowledged, rate achieved against `--rate`; a bar instead when
//! stderr is a terminal), and at the end, when the achieved rate fell short of `--rate`, by how
//! much and where the time went (the likely limit).

use crate::run_cmd::KafkaArgs;
use crate::sim_cmd::{load_scenario, with_feed, RecordingArgs};
use horizon_core::bus::{BusError, Producer, Topic};
use horizon_core::event::Event;
use horizon_runtime::gateway::{self, FeedOptions};
use horizon_runtime::kafka::KafkaProducer;
use horizon_runtime::service::stop_on_signals;
use std::cell::Cell;
use std::io::IsTerminal as _;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct FeedArgs {
    /// A scenario file, or the name of a shipped one.
    pub scenario: String,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Events per second (`10000` or `10000/s`); default: as fast as the broker takes them.
    #[arg(long)]
    pub rate: Option<String>,
    /// Seed of the market generator (default: the scenario's).
    #[arg(long)]
    pub seed: Option<u64>,
    #[command(flatten)]
    pub recording: RecordingArgs,
    /// Seconds between progress lines on stderr (0: after every acknowledged chunk).
    #[arg(long, default_value_t = 5.0)]
    pub progress_secs: f64,
}

/// Below this share of `--rate`, the summary says the rate was not reached.
const SHORT_OF_RATE: f64 = 0.9;

pub fn parse_rate(s: &str) -> Result<f64, String> {
    let n = s.trim().trim_end_matches("/s");
    match n.parse::<f64>() {
        Ok(r) if r > 0.0 && r.is_finite() => Ok(r),
        _ => Err(format!(
            "--rate: `{s}` is not a positive number of events per second (e.g. 10000/s)"
        )),
    }
}

pub fn run(args: FeedArgs, topology: &horizon_core::topology::Topology) -> Result<(), String> {
    let (_path, scenario) = load_scenario(&args.scenario, topology)?;
    let config = args.kafka.config()?;
    let rate = args.rate.as_deref().map(parse_rate).transpose()?;
    let every = Duration::try_from_secs_f64(args.progress_secs)
        .map_err(|_| format!("--progress-secs: `{}` is not a number of seconds", args.progress_secs))?;
    let seed = args.seed.unwrap_or(scenario.seed);
    let stop = stop_on_signals()?;
    let options = FeedOptions {
        rate,
        ..FeedOptions::default()
    };
    let source_time = Cell::new(Duration::ZERO);
    // Connected inside: a recording without records is refused before any broker is asked.
    let (result, recording) = with_feed(&scenario, seed, args.recording, |events| {
        horizon_runtime::kafka::check_reachable(&config).map_err(|e| e.to_string())?;
        eprintln!(
            "horizon feed: brokers {} reached; publishing {} to market.feed {}",
            config.bootstrap,
            scenario.name,
            rate.map(|r| format!("at {r:.0} events/s"))
                .unwrap_or_else(|| "at full speed".into())
        );
        let mut producer = KafkaProducer::new(&config).map_err(|e| e.to_string())?;
        let mut progress = Progress::new(&mut producer, rate, every);
        let mut timed_events = Timed {
            inner: events,
            spent: &source_time,
        };
        let report = gateway::publish(&mut progress, &mut timed_events, &options, &stop).map_err(|e| e.to_string())?;
        let publish_time = progress.finish();
        Ok::<_, String>((report, publish_time))
    })?;
    let (report, publish_time) = result?;
    if let Some(r) = recording {
        for line in r.describe() {
            eprintln!("horizon feed: {line}");
        }
    }
    let elapsed = Duration::from_millis(report.elapsed_ms);
    let achieved = report.events as f64 / elapsed.as_secs_f64().max(1e-9);
    println!(
        "published {} events of {} to market.feed in {:.3} s ({:.0} events/s{}){}{}",
        report.events,
        scenario.name,
        elapsed.as_secs_f64(),
        achieved,
        rate.map(|r| format!(", asked {r:.0}/s")).unwrap_or_default(),
        if report.chunks_resent > 0 {
            format!(", {} chunk(s) sent again", report.chunks_resent)
        } else {
            String::new()
        },
        if report.stopped_early { ", stopped early by a signal" } else { "" }
    );
    if let Some(line) = shortfall(rate, report.events, elapsed, publish_time, source_time.get()) {
        eprintln!("horizon feed: {line}");
    }
    Ok(())
}

/// What the summary says when the achieved rate fell short of the asked one by more than the
/// margin: by how much, and which side took the run's time.
pub fn shortfall(asked: Option<f64>, events: u64, elapsed: Duration, publish: Duration, source: Duration) -> Option<String> {
    let asked = asked?;
    let secs = elapsed.as_secs_f64().max(1e-9);
    let achieved = events as f64 / secs;
    if events == 0 || achieved >= asked * SHORT_OF_RATE {
        return None;
    }
    let share = |d: Duration| 100.0 * d.as_secs_f64() / secs;
    let limit = if publish >= source {
        format!(
            "the broker and producer: sending and waiting for acknowledgements took {:.0}% of the run",
            share(publish)
        )
    } else {
        format!(
            "the market source: reading or generating the events took {:.0}% of the run",
            share(source)
        )
    };
    Some(format!(
        "could not reach --rate {asked:.0}/s: achieved {achieved:.0} events/s ({:.0}% of it); likely limit: {limit}",
        100.0 * achieved / asked
    ))
}

/// One progress report: events acknowledged so far, and the rate against the asked one.
pub fn progress_line(events: u64, elapsed: Duration, asked: Option<f64>) -> String {
    let secs = elapsed.as_secs_f64();
    format!(
        "{events} events sent in {secs:.1} s: {:.0} events/s ({})",
        events as f64 / secs.max(1e-9),
        asked.map(|r| format!("asked {r:.0}/s")).unwrap_or_else(|| "full speed".into())
    )
}

/// The events, with the time spent producing them (reading the file, generating) added up.
struct Timed<'a, I: Iterator<Item = Event> + ?Sized> {
    inner: &'a mut I,
    spent: &'a Cell<Duration>,
}

impl<I: Iterator<Item = Event> + ?Sized> Iterator for Timed<'_, I> {
    type Item = Event;
    fn next(&mut self) -> Option<Event> {
        let t = Instant::now();
        let next = self.inner.next();
        self.spent.set(self.spent.get() + t.elapsed());
        next
    }
}

/// The gateway's producer, counting what each flush got acknowledged and reporting progress
/// after flushes: no change to the gateway, and only acknowledged events are counted.
struct Progress<'a> {
    producer: &'a mut dyn Producer,
    asked: Option<f64>,
    every: Duration,
    started: Instant,
    last_report: Instant,
    pending: u64,
    acked: u64,
    /// Time in `send` and `flush`: the producer's and the broker's share of the run.
    publish_time: Duration,
    bar: Option<indicatif::ProgressBar>,
}

impl<'a> Progress<'a> {
    fn new(producer: &'a mut dyn Producer, asked: Option<f64>, every: Duration) -> Progress<'a> {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.set_style(indicatif::ProgressStyle::with_template("{spinner} horizon feed: {msg}").expect("a valid template"));
            bar
        });
        let now = Instant::now();
        Progress {
            producer,
            asked,
            every,
            started: now,
            last_report: now,
            pending: 0,
            acked: 0,
            publish_time: Duration::ZERO,
            bar,
        }
    }

    fn report(&mut self) {
        let line = progress_line(self.acked, self.started.elapsed(), self.asked);
        match &self.bar {
            Some(bar) => bar.set_message(line),
            None => eprintln!("horizon feed: {line}"),
        }
    }

    /// Clears the bar; returns the time spent publishing.
    fn finish(self) -> Duration {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        self.publish_time
    }
}

impl Producer for Progress<'_> {
    fn send(&mut self, topic: Topic, partition: u32, key: &[u8], value: &[u8]) -> Result<(), BusError> {
        let t = Instant::now();
        let sent = self.producer.send(topic, partition, key, value);
        self.publish_time += t.elapsed();
        self.pending += sent.is_ok() as u64;
        sent
    }

    fn flush(&mut self) -> Result<(), BusError> {
        let t = Instant::now();
        let flushed = self.producer.flush();
        self.publish_time += t.elapsed();
        // After a failed flush the gateway sends the whole chunk again.
        if flushed.is_ok() {
            self.acked += self.pending;
        }
        self.pending = 0;
        if self.last_report.elapsed() >= self.every {
            self.last_report = Instant::now();
            self.report();
        }
        flushed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines_give_events_and_rate_against_the_asked_one() {
        assert_eq!(
            progress_line(12_000, Duration::from_secs(2), Some(10_000.0)),
            "12000 events sent in 2.0 s: 6000 events/s (asked 10000/s)"
        );
        assert_eq!(
            progress_line(500, Duration::from_millis(500), None),
            "500 events sent in 0.5 s: 1000 events/s (full speed)"
        );
    }

    #[test]
    fn a_shortfall_names_the_side_that_took_the_time() {
        let s = Duration::from_secs;
        assert_eq!(shortfall(None, 100, s(10), s(9), s(0)), None, "no rate asked");
        assert_eq!(shortfall(Some(10.0), 95, s(10), s(9), s(0)), None, "within the margin");
        let broker = shortfall(Some(100.0), 500, s(10), s(8), s(1)).unwrap();
        assert_eq!(
            broker,
            "could not reach --rate 100/s: achieved 50 events/s (50% of it); likely limit: the broker and producer: \
             sending and waiting for acknowledgements took 80% of the run"
        );
        let source = shortfall(Some(100.0), 500, s(10), s(1), s(7)).unwrap();
        assert!(source.contains("the market source") && source.contains("70%"), "{source}");
    }
}
