//! Fault profiles: which faults a run may suffer and how hard, as data (serde, TOML).
//!
//! A profile bounds the fault schedule a seed draws (`schedule`): for each kind of fault, at most
//! `max` of them per run, each up to `up_to` (milliseconds, or trades for the feed faults). The
//! named profiles are `none`, `kafka` (only what Apache Kafka with an idempotent producer and an
//! at-least-once consumer can do to the services), `chaos` (also what a non-idempotent producer
//! with several requests in flight can do: duplicates appended by a retry, reordering inside a
//! partition) and `swarm` (per seed, a random subset of the `kafka` faults at random intensity:
//! swarm testing, so rare combinations get whole runs to themselves).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::fmt;

/// How a consumer group hands partitions over in a rebalance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// Every member gives up its whole assignment, then receives a new one (Kafka's classic
    /// protocol with the `range` assignor; what `horizon-runtime` uses).
    Eager,
    /// Only the partitions that move are revoked and assigned (cooperative rebalancing).
    Incremental,
}

/// At most `max` faults of one kind per run, each up to `up_to` (ms, or trades for feed faults).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Knob {
    pub max: u32,
    pub up_to: u64,
}

impl Knob {
    pub const OFF: Knob = Knob { max: 0, up_to: 0 };

    pub const fn new(max: u32, up_to: u64) -> Knob {
        Knob { max, up_to }
    }

    pub fn is_on(&self) -> bool {
        self.max > 0
    }
}

/// The kinds of fault, in the order schedules list and draw them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// A process dies (all its stages lose their memory) and restarts `up_to` ms later; the
    /// group notices after the session timeout. Half of them strike in the middle of a publish.
    Crash,
    /// A process stops (a long GC pause); past the session timeout the group expels it and it
    /// comes back as a zombie that has to rejoin.
    Pause,
    /// The broker refuses every request (produce, commit, fetch) for up to `up_to` ms.
    Outage,
    /// One request of one stage fails: a flush (nothing appended), a commit, or a
    /// committed-offset or fetch request while restoring.
    RequestFailure,
    /// A flush appends some of its records, then reports failure: the loop sends all again.
    PartialFlush,
    /// A third process joins every group for up to `up_to` ms, then leaves.
    ScaleOut,
    /// One partition's deliveries are delayed by up to `up_to` ms more for a while.
    DelaySpike,
    /// The exchange feed reconnects and replays up to `up_to` recent trades of every symbol.
    FeedReconnect,
    /// The feed loses a symbol's trades for up to `up_to` ms.
    FeedGap,
    /// A trade reaches the gateway after up to `up_to` later trades of its symbol.
    FeedReorder,
    /// Chaos: a producer retry appends a batch twice (no idempotence).
    ProducerDuplicate,
    /// Chaos: two requests in flight to one partition land in the wrong order.
    ProducerReorder,
    /// The exchange gateway publishes a record no stage can use: bytes that do not decode, a
    /// 1,000,100-byte one that does not either (under the broker's limit, over a producer's, so
    /// nothing may copy it whole), or a decodable trade of an unknown 1 MB symbol (a rejection
    /// that quotes it must stay publishable). Each must end as exactly one stage's dead letter.
    Poison,
}

impl FaultKind {
    pub const ALL: [FaultKind; 13] = [
        FaultKind::Crash,
        FaultKind::Pause,
        FaultKind::Outage,
        FaultKind::RequestFailure,
        FaultKind::PartialFlush,
        FaultKind::ScaleOut,
        FaultKind::DelaySpike,
        FaultKind::FeedReconnect,
        FaultKind::FeedGap,
        FaultKind::FeedReorder,
        FaultKind::ProducerDuplicate,
        FaultKind::ProducerReorder,
        FaultKind::Poison,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Crash => "crash",
            FaultKind::Pause => "pause",
            FaultKind::Outage => "outage",
            FaultKind::RequestFailure => "request-failure",
            FaultKind::PartialFlush => "partial-flush",
            FaultKind::ScaleOut => "scale-out",
            FaultKind::DelaySpike => "delay-spike",
            FaultKind::FeedReconnect => "feed-reconnect",
            FaultKind::FeedGap => "feed-gap",
            FaultKind::FeedReorder => "feed-reorder",
            FaultKind::ProducerDuplicate => "producer-duplicate",
            FaultKind::ProducerReorder => "producer-reorder",
            FaultKind::Poison => "poison",
        }
    }

    pub fn parse(name: &str) -> Option<FaultKind> {
        FaultKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Beyond what Kafka with an idempotent producer can do.
    pub fn chaos_only(self) -> bool {
        matches!(self, FaultKind::ProducerDuplicate | FaultKind::ProducerReorder)
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Everything a run may suffer. Field names are the TOML keys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FaultProfile {
    pub name: String,
    /// Processes in the deployment, each running every stage (like `horizon run` started twice),
    /// so every working stage's group has this many members.
    pub processes: u32,
    pub protocol: Protocol,
    /// How long a dead or stopped member keeps its partitions before the group expels it.
    pub session_timeout_ms: u64,
    /// Records per poll.
    pub max_poll_records: u32,
    /// Delivery delay: each partition and each process gets a fixed skew of up to this many ms
    /// (so partitions and topics interleave differently), each delivery a jitter.
    pub partition_delay_ms: u64,
    pub process_delay_ms: u64,
    pub jitter_ms: u64,
    /// Virtual time the deployment gets, once every fault has ended, to consume everything.
    pub heal_budget_ms: u64,
    /// The largest record a stage's producer sends (librdkafka's `message.max.bytes`, default
    /// 1,000,000): a larger one is refused at `send`, for good. 0: no limit.
    pub producer_message_bytes_max: u64,
    /// The largest record the broker appends (Kafka's `message.max.bytes`, default 1,048,588):
    /// a larger one is refused in the flush's delivery report, for good. 0: no limit.
    pub broker_message_bytes_max: u64,
    pub crash: Knob,
    pub pause: Knob,
    pub outage: Knob,
    pub request_failure: Knob,
    pub partial_flush: Knob,
    pub scale_out: Knob,
    pub delay_spike: Knob,
    pub feed_reconnect: Knob,
    pub feed_gap: Knob,
    pub feed_reorder: Knob,
    pub producer_duplicate: Knob,
    pub producer_reorder: Knob,
    pub poison: Knob,
    /// Per seed, switch each fault kind on or off and pick its intensity (swarm testing).
    pub swarm: bool,
}

impl Default for FaultProfile {
    fn default() -> Self {
        FaultProfile::none()
    }
}

impl FaultProfile {
    pub const NAMES: [&'static str; 4] = ["none", "kafka", "chaos", "swarm"];

    /// Two processes, no fault, no delay.
    pub fn none() -> FaultProfile {
        FaultProfile {
            name: "none".into(),
            processes: 2,
            protocol: Protocol::Eager,
            session_timeout_ms: 10_000,
            max_poll_records: 500,
            partition_delay_ms: 0,
            process_delay_ms: 0,
            jitter_ms: 0,
            heal_budget_ms: 120_000,
            producer_message_bytes_max: PRODUCER_MESSAGE_BYTES_MAX,
            broker_message_bytes_max: BROKER_MESSAGE_BYTES_MAX,
            crash: Knob::OFF,
            pause: Knob::OFF,
            outage: Knob::OFF,
            request_failure: Knob::OFF,
            partial_flush: Knob::OFF,
            scale_out: Knob::OFF,
            delay_spike: Knob::OFF,
            feed_reconnect: Knob::OFF,
            feed_gap: Knob::OFF,
            feed_reorder: Knob::OFF,
            producer_duplicate: Knob::OFF,
            producer_reorder: Knob::OFF,
            poison: Knob::OFF,
            swarm: false,
        }
    }

    /// What a real Kafka deployment can do to the services: delays, crashes, expulsions,
    /// outages, failed requests, partial publishes (then resent), members joining and leaving,
    /// and what exchanges do to a feed.
    pub fn kafka() -> FaultProfile {
        FaultProfile {
            name: "kafka".into(),
            partition_delay_ms: 20,
            process_delay_ms: 20,
            jitter_ms: 10,
            crash: Knob::new(2, 20_000),
            pause: Knob::new(2, 30_000),
            outage: Knob::new(2, 5_000),
            request_failure: Knob::new(4, 0),
            partial_flush: Knob::new(2, 0),
            scale_out: Knob::new(1, 60_000),
            delay_spike: Knob::new(2, 10_000),
            feed_reconnect: Knob::new(1, 20),
            feed_gap: Knob::new(1, 30_000),
            feed_reorder: Knob::new(2, 5),
            poison: Knob::new(1, 0),
            ..FaultProfile::none()
        }
    }

    /// Everything in `kafka`, more of it, plus a non-idempotent producer's duplicates and
    /// reordering inside a partition: beyond Kafka's guarantees, to see what still holds.
    pub fn chaos() -> FaultProfile {
        FaultProfile {
            name: "chaos".into(),
            partition_delay_ms: 50,
            process_delay_ms: 50,
            jitter_ms: 25,
            crash: Knob::new(4, 30_000),
            pause: Knob::new(3, 30_000),
            outage: Knob::new(3, 8_000),
            request_failure: Knob::new(8, 0),
            partial_flush: Knob::new(4, 0),
            scale_out: Knob::new(2, 60_000),
            delay_spike: Knob::new(3, 20_000),
            feed_reconnect: Knob::new(2, 50),
            feed_gap: Knob::new(2, 60_000),
            feed_reorder: Knob::new(4, 10),
            producer_duplicate: Knob::new(4, 0),
            producer_reorder: Knob::new(4, 0),
            poison: Knob::new(2, 0),
            ..FaultProfile::none()
        }
    }

    /// The `kafka` faults at up to twice their intensity, a random subset per seed.
    pub fn swarm() -> FaultProfile {
        let k = FaultProfile::kafka();
        let twice = |n: Knob| Knob::new(n.max * 2, n.up_to * 2);
        FaultProfile {
            name: "swarm".into(),
            partition_delay_ms: k.partition_delay_ms * 2,
            process_delay_ms: k.process_delay_ms * 2,
            jitter_ms: k.jitter_ms * 2,
            crash: twice(k.crash),
            pause: twice(k.pause),
            outage: twice(k.outage),
            request_failure: twice(k.request_failure),
            partial_flush: twice(k.partial_flush),
            scale_out: Knob::new(2, k.scale_out.up_to),
            delay_spike: twice(k.delay_spike),
            feed_reconnect: twice(k.feed_reconnect),
            feed_gap: twice(k.feed_gap),
            feed_reorder: twice(k.feed_reorder),
            poison: twice(k.poison),
            swarm: true,
            ..FaultProfile::none()
        }
    }

    pub fn named(name: &str) -> Option<FaultProfile> {
        match name {
            "none" => Some(FaultProfile::none()),
            "kafka" => Some(FaultProfile::kafka()),
            "chaos" => Some(FaultProfile::chaos()),
            "swarm" => Some(FaultProfile::swarm()),
            _ => None,
        }
    }

    /// A profile from TOML: a named profile's values (`base = "kafka"`, default `none`) with the
    /// file's keys over them.
    pub fn from_toml(text: &str, origin: &str) -> Result<FaultProfile, String> {
        let mut table: toml::Table = toml::from_str(text).map_err(|e| format!("{origin}: {e}"))?;
        let base = match table.remove("base") {
            None => FaultProfile::none(),
            Some(toml::Value::String(b)) => FaultProfile::named(&b)
                .ok_or_else(|| format!("{origin}: `base`: no profile `{b}` (known: {})", FaultProfile::NAMES.join(", ")))?,
            Some(other) => return Err(format!("{origin}: `base`: expected a profile name, got {other}")),
        };
        let mut merged = toml::Table::try_from(&base).map_err(|e| format!("{origin}: {e}"))?;
        for (k, v) in table {
            match (merged.get_mut(&k), v) {
                (Some(toml::Value::Table(old)), toml::Value::Table(new)) => old.extend(new),
                (_, v) => {
                    merged.insert(k, v);
                }
            }
        }
        let profile: FaultProfile = merged.try_into().map_err(|e: toml::de::Error| format!("{origin}: {e}"))?;
        profile.validate().map_err(|e| format!("{origin}: {e}"))?;
        Ok(profile)
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.processes == 0 || self.processes > 8 {
            return Err(format!("`processes`: must be 1 to 8, got {}", self.processes));
        }
        if self.max_poll_records == 0 {
            return Err("`max_poll_records`: must be positive".into());
        }
        if self.session_timeout_ms == 0 {
            return Err("`session_timeout_ms`: must be positive".into());
        }
        for kind in FaultKind::ALL {
            let k = self.knob(kind);
            if k.max > 64 {
                return Err(format!("`{}.max`: at most 64 faults of a kind, got {}", knob_key(kind), k.max));
            }
        }
        Ok(())
    }

    pub fn knob(&self, kind: FaultKind) -> Knob {
        match kind {
            FaultKind::Crash => self.crash,
            FaultKind::Pause => self.pause,
            FaultKind::Outage => self.outage,
            FaultKind::RequestFailure => self.request_failure,
            FaultKind::PartialFlush => self.partial_flush,
            FaultKind::ScaleOut => self.scale_out,
            FaultKind::DelaySpike => self.delay_spike,
            FaultKind::FeedReconnect => self.feed_reconnect,
            FaultKind::FeedGap => self.feed_gap,
            FaultKind::FeedReorder => self.feed_reorder,
            FaultKind::ProducerDuplicate => self.producer_duplicate,
            FaultKind::ProducerReorder => self.producer_reorder,
            FaultKind::Poison => self.poison,
        }
    }

    pub fn knob_mut(&mut self, kind: FaultKind) -> &mut Knob {
        match kind {
            FaultKind::Crash => &mut self.crash,
            FaultKind::Pause => &mut self.pause,
            FaultKind::Outage => &mut self.outage,
            FaultKind::RequestFailure => &mut self.request_failure,
            FaultKind::PartialFlush => &mut self.partial_flush,
            FaultKind::ScaleOut => &mut self.scale_out,
            FaultKind::DelaySpike => &mut self.delay_spike,
            FaultKind::FeedReconnect => &mut self.feed_reconnect,
            FaultKind::FeedGap => &mut self.feed_gap,
            FaultKind::FeedReorder => &mut self.feed_reorder,
            FaultKind::ProducerDuplicate => &mut self.producer_duplicate,
            FaultKind::ProducerReorder => &mut self.producer_reorder,
            FaultKind::Poison => &mut self.poison,
        }
    }

    /// Applies `kind=max[:up_to]` or `kind=off` overrides, comma-separated (the `--faults` flag).
    pub fn apply_overrides(&mut self, spec: &str) -> Result<(), String> {
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (name, value) = item
                .split_once('=')
                .ok_or_else(|| format!("`{item}`: expected KIND=MAX[:UP_TO] or KIND=off"))?;
            let kind = FaultKind::parse(name.trim()).ok_or_else(|| {
                let known: Vec<&str> = FaultKind::ALL.iter().map(|k| k.name()).collect();
                format!("`{name}`: no such fault (known: {})", known.join(", "))
            })?;
            let knob = self.knob_mut(kind);
            let value = value.trim();
            if value == "off" {
                *knob = Knob::OFF;
                continue;
            }
            let (max, up_to) = match value.split_once(':') {
                Some((m, u)) => (m, Some(u)),
                None => (value, None),
            };
            knob.max = max.parse().map_err(|_| format!("`{item}`: `{max}` is not a count"))?;
            if let Some(u) = up_to {
                knob.up_to = u.parse().map_err(|_| format!("`{item}`: `{u}` is not a number"))?;
            }
        }
        self.validate()
    }

    /// The concrete profile for one seed: itself, or for a swarm profile the seed's draw of
    /// which faults are on and how hard (from its own ChaCha8 stream of the seed).
    pub fn for_seed(&self, seed: u64) -> FaultProfile {
        if !self.swarm {
            return self.clone();
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(SWARM_STREAM);
        let mut p = self.clone();
        p.swarm = false;
        p.name = format!("{}#{seed}", self.name);
        p.protocol = if rng.random_bool(0.5) {
            Protocol::Eager
        } else {
            Protocol::Incremental
        };
        p.processes = rng.random_range(2..=self.processes.max(2) + 1);
        p.partition_delay_ms = rng.random_range(0..=self.partition_delay_ms);
        p.process_delay_ms = rng.random_range(0..=self.process_delay_ms);
        p.jitter_ms = rng.random_range(0..=self.jitter_ms);
        for kind in FaultKind::ALL {
            let k = p.knob_mut(kind);
            let on = k.is_on() && rng.random_bool(0.5);
            *k = if on {
                Knob::new(rng.random_range(1..=k.max), rng.random_range(k.up_to / 4..=k.up_to))
            } else {
                Knob::OFF
            };
        }
        p
    }

    /// One line: the knobs that are on.
    pub fn describe(&self) -> String {
        let mut parts = vec![
            format!("{} processes", self.processes),
            format!("{:?} rebalancing", self.protocol).to_lowercase(),
            format!("delays {}/{}/{} ms", self.partition_delay_ms, self.process_delay_ms, self.jitter_ms),
        ];
        for kind in FaultKind::ALL {
            let k = self.knob(kind);
            if k.is_on() {
                parts.push(if k.up_to > 0 {
                    format!("{kind}={}:{}", k.max, k.up_to)
                } else {
                    format!("{kind}={}", k.max)
                });
            }
        }
        if self.swarm {
            parts.push("swarm".into());
        }
        parts.join(", ")
    }
}

/// librdkafka's default producer `message.max.bytes`.
pub const PRODUCER_MESSAGE_BYTES_MAX: u64 = 1_000_000;
/// Kafka's default broker `message.max.bytes`.
pub const BROKER_MESSAGE_BYTES_MAX: u64 = 1_048_588;

/// The ChaCha8 stream a swarm profile draws its knobs from.
const SWARM_STREAM: u64 = 0x0053_5741_524d;

fn knob_key(kind: FaultKind) -> String {
    kind.name().replace('-', "_")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_profiles_round_trip_through_toml() {
        for name in FaultProfile::NAMES {
            let p = FaultProfile::named(name).unwrap();
            let text = toml::to_string(&p).unwrap();
            assert_eq!(FaultProfile::from_toml(&text, "test").unwrap(), p, "{name}");
        }
    }

    #[test]
    fn a_toml_profile_overrides_its_base() {
        let p = FaultProfile::from_toml("base = \"kafka\"\nname = \"mine\"\ncrash = { max = 5 }\n", "mine.toml").unwrap();
        assert_eq!(p.name, "mine");
        assert_eq!(p.crash, Knob::new(5, 20_000), "the base's up_to stays");
        assert_eq!(p.outage, FaultProfile::kafka().outage);
        let err = FaultProfile::from_toml("crash = { maxx = 5 }", "bad.toml").unwrap_err();
        assert!(err.contains("bad.toml") && err.contains("maxx"), "{err}");
    }

    #[test]
    fn the_kafka_profile_has_no_chaos_faults() {
        let k = FaultProfile::kafka();
        for kind in FaultKind::ALL.into_iter().filter(|k| k.chaos_only()) {
            assert!(!k.knob(kind).is_on(), "{kind}");
            assert!(FaultProfile::chaos().knob(kind).is_on(), "{kind}");
            assert!(!FaultProfile::swarm().knob(kind).is_on(), "{kind}");
        }
    }

    #[test]
    fn overrides_set_and_switch_off_knobs() {
        let mut p = FaultProfile::kafka();
        p.apply_overrides("crash=3:1000, outage=off").unwrap();
        assert_eq!((p.crash, p.outage), (Knob::new(3, 1000), Knob::OFF));
        assert!(p.apply_overrides("meteor=1").unwrap_err().contains("meteor"));
    }

    #[test]
    fn swarm_draws_a_subset_per_seed_deterministically() {
        let s = FaultProfile::swarm();
        let a = s.for_seed(1);
        assert_eq!(a, s.for_seed(1));
        assert!(!a.swarm);
        let differing = (0..32).filter(|&seed| s.for_seed(seed).describe() != a.describe()).count();
        assert!(differing > 16, "the draws should vary with the seed");
        for seed in 0..32 {
            let p = s.for_seed(seed);
            for kind in FaultKind::ALL {
                assert!(p.knob(kind).max <= s.knob(kind).max);
            }
        }
    }
}
