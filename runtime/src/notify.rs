//! Notification delivery: the `notify` stage consumes `notifications` and hands each user
//! notification to a sink (a JSON-lines file or stdout), once per notification id, behind a
//! circuit breaker.
//!
//! The portfolio step decides notifications (rate limits, subscriptions) as pure domain logic;
//! delivering them is I/O, so it is not a `Service` but a `Stage` of its own with the loop's
//! guarantee: an input's offset is committed only after its notification was delivered (or
//! found already delivered), so a crash redelivers and the id check keeps delivery idempotent.
//! A failing sink is retried with the driver's bounded exponential backoff; after
//! `failure_threshold` consecutive failures the breaker opens and no delivery is attempted for
//! `cooldown`, then one trial delivery (half-open) closes it again or re-opens it. Every state
//! change is logged to stderr and counted.

use horizon_core::bus::{BusError, Consumer, Polled, Producer, Topic, TopicPartition};
use horizon_core::event::{Event, Payload};
use horizon_core::pipeline::Stage;
use horizon_core::processor::{Stats, StepOutcome, Unsettled};
use horizon_core::topics;
use serde::Serialize;
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const NAME: &str = "notify";

// ------------------------------------------------------------------------------- breaker

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

/// A consecutive-failure circuit breaker. Time is passed in, so the state machine is
/// deterministic and testable without sleeping.
#[derive(Clone, Debug)]
pub struct CircuitBreaker {
    state: BreakerState,
    failure_threshold: u32,
    cooldown: Duration,
    consecutive_failures: u32,
    opened_at: Option<Instant>,
    /// State changes by "from->to".
    pub transitions: BTreeMap<String, u64>,
    /// Calls refused while open.
    pub rejected: u64,
}

impl CircuitBreaker {
    pub fn new(failure_threshold: u32, cooldown: Duration) -> CircuitBreaker {
        CircuitBreaker {
            state: BreakerState::Closed,
            failure_threshold: failure_threshold.max(1),
            cooldown,
            consecutive_failures: 0,
            opened_at: None,
            transitions: BTreeMap::new(),
            rejected: 0,
        }
    }

    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// May a call go through now? Open turns half-open once the cooldown has passed.
    pub fn allow(&mut self, now: Instant) -> bool {
        match self.state {
            BreakerState::Closed | BreakerState::HalfOpen => true,
            BreakerState::Open => {
                if self.opened_at.is_some_and(|t| now.saturating_duration_since(t) >= self.cooldown) {
                    self.change(BreakerState::HalfOpen, "cooldown over, trying one call");
                    true
                } else {
                    self.rejected += 1;
                    false
                }
            }
        }
    }

    pub fn on_success(&mut self) {
        self.consecutive_failures = 0;
        if self.state != BreakerState::Closed {
            self.change(BreakerState::Closed, "call succeeded");
        }
    }

    pub fn on_failure(&mut self, now: Instant) {
        self.consecutive_failures += 1;
        match self.state {
            BreakerState::HalfOpen => {
                self.opened_at = Some(now);
                self.change(BreakerState::Open, "trial call failed");
            }
            BreakerState::Closed if self.consecutive_failures >= self.failure_threshold => {
                self.opened_at = Some(now);
                let why = format!("{} consecutive failures", self.consecutive_failures);
                self.change(BreakerState::Open, &why);
            }
            _ => {}
        }
    }

    fn change(&mut self, to: BreakerState, why: &str) {
        let key = format!("{}->{}", name(self.state), name(to));
        eprintln!("horizon: notify: circuit breaker {key} ({why})");
        *self.transitions.entry(key).or_insert(0) += 1;
        self.state = to;
    }
}

fn name(s: BreakerState) -> &'static str {
    match s {
        BreakerState::Closed => "closed",
        BreakerState::Open => "open",
        BreakerState::HalfOpen => "half-open",
    }
}

// ------------------------------------------------------------------------------- sinks

/// One delivered notification, as written to the sink.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Delivery {
    pub notification_id: String,
    pub user_id: String,
    pub severity: String,
    pub source_type: String,
    pub source_event_id: String,
    pub symbol: String,
    pub message: String,
    pub ts: String,
}

impl Delivery {
    pub fn from_event(e: &Event) -> Option<Delivery> {
        let Payload::Notification(n) = &e.payload else {
            return None;
        };
        Some(Delivery {
            notification_id: e.id.clone(),
            user_id: n.user_id.clone(),
            severity: format!("{:?}", n.severity).to_lowercase(),
            source_type: n.source_type.as_str().to_string(),
            source_event_id: n.source_event_id.clone(),
            symbol: n.symbol.clone(),
            message: n.message.clone(),
            ts: e.ts.to_rfc3339(),
        })
    }
}

/// Where notifications go.
pub trait Sink: Send {
    fn deliver(&mut self, d: &Delivery) -> Result<(), String>;
    /// Ids this sink delivered before this process started (for idempotence across restarts).
    fn delivered_before(&mut self) -> HashSet<String> {
        HashSet::new()
    }
}

/// JSON lines to a file (appended; its ids are read back on start) or to stdout.
pub struct JsonlSink {
    path: Option<PathBuf>,
    out: Box<dyn Write + Send>,
}

impl JsonlSink {
    pub fn stdout() -> JsonlSink {
        JsonlSink {
            path: None,
            out: Box::new(std::io::stdout()),
        }
    }

    pub fn file(path: &Path) -> std::io::Result<JsonlSink> {
        let f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        Ok(JsonlSink {
            path: Some(path.to_path_buf()),
            out: Box::new(f),
        })
    }
}

impl Sink for JsonlSink {
    fn deliver(&mut self, d: &Delivery) -> Result<(), String> {
        let line = serde_json::to_string(d).map_err(|e| e.to_string())?;
        // One write per line: a crash leaves at most a torn last line, which `delivered_before`
        // ignores (that notification is delivered again).
        self.out.write_all(format!("{line}\n").as_bytes()).map_err(|e| e.to_string())?;
        self.out.flush().map_err(|e| e.to_string())
    }

    fn delivered_before(&mut self) -> HashSet<String> {
        let Some(path) = &self.path else {
            return HashSet::new();
        };
        let Ok(f) = std::fs::File::open(path) else {
            return HashSet::new();
        };
        std::io::BufReader::new(f)
            .lines()
            .map_while(Result::ok)
            .filter_map(|l| serde_json::from_str::<Delivery>(&l).ok())
            .map(|d| d.notification_id)
            .collect()
    }
}

// ------------------------------------------------------------------------------- stage

#[derive(Clone, Debug, Default, Serialize)]
pub struct DeliveryCounters {
    pub delivered: u64,
    pub already_delivered: u64,
    pub failures: u64,
    /// Records on `notifications` that are not a decodable notification (the projections
    /// stage dead-letters them; delivery skips them).
    pub skipped: u64,
}

struct Pending {
    tp: TopicPartition,
    offset: u64,
    delivery: Option<Delivery>,
}

pub struct DeliveryStage {
    sink: Box<dyn Sink>,
    pub breaker: CircuitBreaker,
    delivered: HashSet<String>,
    pending: VecDeque<Pending>,
    to_commit: BTreeMap<TopicPartition, u64>,
    pub counters: DeliveryCounters,
    stats: Stats,
}

const INPUTS: [Topic; 1] = [topics::NOTIFICATIONS];

impl DeliveryStage {
    pub fn new(mut sink: Box<dyn Sink>, breaker: CircuitBreaker) -> DeliveryStage {
        let delivered = sink.delivered_before();
        DeliveryStage {
            sink,
            breaker,
            delivered,
            pending: VecDeque::new(),
            to_commit: BTreeMap::new(),
            counters: DeliveryCounters::default(),
            stats: Stats::default(),
        }
    }

    /// Delivers pending notifications in order; stops at the first the sink or breaker refuses.
    fn drain(&mut self, now: Instant) -> Result<(), String> {
        while let Some(p) = self.pending.front() {
            if let Some(d) = &p.delivery {
                if self.delivered.contains(&d.notification_id) {
                    self.counters.already_delivered += 1;
                } else {
                    if !self.breaker.allow(now) {
                        return Err("notification sink: circuit breaker open".into());
                    }
                    if let Err(e) = self.sink.deliver(d) {
                        self.counters.failures += 1;
                        self.breaker.on_failure(now);
                        return Err(format!("notification sink: {e}"));
                    }
                    self.breaker.on_success();
                    self.counters.delivered += 1;
                    self.delivered.insert(d.notification_id.clone());
                }
            }
            self.to_commit.insert(p.tp, p.offset + 1);
            self.pending.pop_front();
        }
        Ok(())
    }

    fn commit(&mut self, consumer: &mut dyn Consumer) -> Result<(), BusError> {
        if self.to_commit.is_empty() {
            return Ok(());
        }
        let offsets: Vec<(TopicPartition, u64)> = self.to_commit.iter().map(|(tp, o)| (*tp, *o)).collect();
        match consumer.commit(&offsets) {
            Ok(()) | Err(BusError::NotAssigned(_)) => {
                self.stats.commits += 1;
                self.to_commit.clear();
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn settle(&mut self, consumer: &mut dyn Consumer) -> Result<Option<StepOutcome>, BusError> {
        let drained = self.drain(Instant::now());
        match self.commit(consumer) {
            Ok(()) => {}
            Err(e) if e.is_retriable() => return Ok(Some(StepOutcome::Retry(e))),
            Err(e) => return Err(e),
        }
        Ok(drained.err().map(|e| StepOutcome::Retry(BusError::Unavailable(e))))
    }
}

impl Stage for DeliveryStage {
    fn name(&self) -> &'static str {
        NAME
    }

    fn inputs(&self) -> &'static [Topic] {
        &INPUTS
    }

    fn step(&mut self, consumer: &mut dyn Consumer, _producer: &mut dyn Producer, max_records: usize) -> Result<StepOutcome, BusError> {
        if !self.pending.is_empty() || !self.to_commit.is_empty() {
            if let Some(retry) = self.settle(consumer)? {
                return Ok(retry);
            }
        }
        match consumer.poll(max_records) {
            Ok(Polled::Records(records)) if !records.is_empty() => {
                let n = records.len();
                for r in records {
                    self.stats.records_in += 1;
                    let delivery = Event::decode(&r.value).ok().and_then(|e| Delivery::from_event(&e));
                    if delivery.is_none() {
                        self.counters.skipped += 1;
                    }
                    self.pending.push_back(Pending {
                        tp: r.tp(),
                        offset: r.offset,
                        delivery,
                    });
                }
                Ok(self.settle(consumer)?.unwrap_or(StepOutcome::Progress(n)))
            }
            Ok(Polled::Records(_)) | Ok(Polled::Idle) => Ok(StepOutcome::Idle),
            Ok(Polled::Assigned(_)) => Ok(StepOutcome::Progress(0)),
            Ok(Polled::Revoked(tps)) => {
                self.pending.retain(|p| !tps.contains(&p.tp));
                self.to_commit.retain(|tp, _| !tps.contains(tp));
                Ok(StepOutcome::Progress(0))
            }
            Err(e) if e.is_retriable() => Ok(StepOutcome::Retry(e)),
            Err(e) => Err(e),
        }
    }

    fn crash(&mut self) {
        self.pending.clear();
        self.to_commit.clear();
    }

    /// Delivery keeps no task state to snapshot: what was delivered is in the sink.
    fn snapshot(&self) -> Vec<(u32, Vec<u8>)> {
        Vec::new()
    }

    fn offer_snapshot(&mut self, _bytes: &[u8]) -> Result<u32, String> {
        Err("the notify stage takes no snapshots (the sink remembers what it delivered)".into())
    }

    fn stats(&self) -> &Stats {
        &self.stats
    }

    fn unsettled(&self) -> Unsettled {
        Unsettled {
            outputs: self.pending.len(),
            partitions: self.to_commit.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use horizon_core::event::{EventType, Notification, Severity};
    use horizon_core::memory::MemoryBus;
    use horizon_core::time::Timestamp;
    use std::sync::{Arc, Mutex};

    /// A sink that fails while told to, and records what it delivered.
    #[derive(Clone, Default)]
    struct FlakySink {
        failing: Arc<Mutex<bool>>,
        delivered: Arc<Mutex<Vec<String>>>,
    }

    impl Sink for FlakySink {
        fn deliver(&mut self, d: &Delivery) -> Result<(), String> {
            if *self.failing.lock().unwrap() {
                return Err("connection refused".into());
            }
            self.delivered.lock().unwrap().push(d.notification_id.clone());
            Ok(())
        }
    }

    fn notification(i: u32) -> Event {
        Event::root(
            format!("n{i}"),
            "alice".into(),
            Timestamp::from_millis(i as i64),
            "portfolio",
            Payload::Notification(Notification {
                user_id: "alice".into(),
                source_type: EventType::RiskThresholdCrossed,
                source_event_id: format!("r{i}"),
                symbol: "BTCUSDT".into(),
                severity: Severity::Warning,
                message: format!("m{i}"),
            }),
        )
    }

    #[test]
    fn a_failing_sink_trips_the_breaker_and_every_notification_is_delivered_once_when_it_recovers() {
        // Given notifications n0..n4 (n2 published twice) and a sink that is down
        let bus = MemoryBus::new();
        let mut producer = bus.producer();
        for i in [0, 1, 2, 2, 3, 4] {
            producer
                .send(topics::NOTIFICATIONS, 0, b"alice", &notification(i).encode())
                .unwrap();
        }
        let sink = FlakySink::default();
        *sink.failing.lock().unwrap() = true;
        let mut stage = DeliveryStage::new(Box::new(sink.clone()), CircuitBreaker::new(2, Duration::ZERO));
        let mut consumer = bus.consumer("notify", "m", &INPUTS);
        // When the stage is stepped while the sink fails
        let mut retries = 0;
        for _ in 0..6 {
            if let StepOutcome::Retry(_) = stage.step(&mut consumer, &mut producer, 100).unwrap() {
                retries += 1;
            }
        }
        // Then nothing was delivered or committed, and the breaker opened
        assert!(retries >= 3, "{retries}");
        assert!(sink.delivered.lock().unwrap().is_empty());
        assert_eq!(
            bus.broker().committed(
                "notify",
                TopicPartition {
                    topic: topics::NOTIFICATIONS,
                    partition: 0
                }
            ),
            0
        );
        assert!(stage.breaker.transitions.contains_key("closed->open"));
        // When the sink recovers
        *sink.failing.lock().unwrap() = false;
        while stage.step(&mut consumer, &mut producer, 100).unwrap() != StepOutcome::Idle {}
        // Then each notification was delivered once, in order, and everything is committed
        assert_eq!(*sink.delivered.lock().unwrap(), vec!["n0", "n1", "n2", "n3", "n4"]);
        assert_eq!(stage.counters.already_delivered, 1);
        assert_eq!(
            bus.broker().committed(
                "notify",
                TopicPartition {
                    topic: topics::NOTIFICATIONS,
                    partition: 0
                }
            ),
            6
        );
        assert_eq!(stage.breaker.state(), BreakerState::Closed);
        assert!(stage.breaker.transitions.contains_key("half-open->closed"));
    }

    #[test]
    fn the_file_sink_remembers_what_it_delivered_across_restarts() {
        let path = std::env::temp_dir().join(format!("horizon-notify-{}.jsonl", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let d = Delivery::from_event(&notification(7)).unwrap();
        JsonlSink::file(&path).unwrap().deliver(&d).unwrap();
        let mut again = JsonlSink::file(&path).unwrap();
        assert!(again.delivered_before().contains("n7"));
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn the_breaker_opens_after_consecutive_failures_half_opens_after_the_cooldown_and_closes_on_success() {
        // Given a breaker that opens after 3 consecutive failures and cools down for 10 s
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut b = CircuitBreaker::new(3, 10 * s);
        // When two calls fail, a third succeeds, then three fail in a row
        b.on_failure(t0);
        b.on_failure(t0);
        b.on_success();
        assert_eq!(b.state(), BreakerState::Closed, "a success resets the count");
        for _ in 0..3 {
            assert!(b.allow(t0));
            b.on_failure(t0);
        }
        // Then it is open and refuses calls until the cooldown is over
        assert_eq!(b.state(), BreakerState::Open);
        assert!(!b.allow(t0 + 9 * s));
        assert_eq!(b.rejected, 1);
        // When the cooldown is over, one trial goes through (half-open); it fails: open again
        assert!(b.allow(t0 + 10 * s));
        assert_eq!(b.state(), BreakerState::HalfOpen);
        b.on_failure(t0 + 10 * s);
        assert_eq!(b.state(), BreakerState::Open);
        assert!(!b.allow(t0 + 19 * s), "the cooldown restarts at the failed trial");
        // When the next trial succeeds, it is closed
        assert!(b.allow(t0 + 20 * s));
        b.on_success();
        assert_eq!(b.state(), BreakerState::Closed);
        let want: BTreeMap<String, u64> = [
            ("closed->open", 1),
            ("open->half-open", 2),
            ("half-open->open", 1),
            ("half-open->closed", 1),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        assert_eq!(b.transitions, want);
    }
}
