//! The Apache Kafka backend: `horizon_core::bus::{Producer, Consumer}` on librdkafka (through
//! `rdkafka`'s synchronous `BaseProducer` / `BaseConsumer`), so the one processing loop
//! (`horizon_core::processor`) runs on a real cluster exactly as on the in-memory bus.
//!
//! Semantics, matching `horizon_core::memory`:
//! - Producer: idempotent (`enable.idempotence=true`, `acks=all`), batched (`linger.ms=1`),
//!   every record sent to the explicit partition the loop computed with Kafka's murmur2. `send`
//!   only enqueues; `flush` waits (bounded) until every record sent since the previous flush is
//!   acknowledged, and reports `Unavailable` if any failed or did not make it in time, after
//!   which the loop sends them all again (duplicates are harmless: handlers are idempotent).
//! - Consumer: one member of a consumer group. The loop's `commit` stores an offset (for an
//!   assigned partition, after the loop's flush acknowledged its outputs: `store_offsets` with
//!   `enable.auto.offset.store=false`), and librdkafka commits what is stored in the background
//!   every `auto.commit.interval.ms` (500), on revoke and on close (`enable.auto.commit=true`):
//!   no commit round trip on the loop's path. `commit_stored` commits synchronously where the
//!   driver needs the group's offsets to be current (before a snapshot is saved, at shutdown).
//!   A crash loses at most the last interval's commits: those records are processed again and
//!   their duplicate outputs dropped by id downstream. New groups start at the beginning
//!   (`auto.offset.reset=earliest`). Partition assignment uses the
//!   `range` assignor with the eager protocol: it gives one member partition `p` of every
//!   subscribed topic with the same partition count, which is what a task spanning
//!   co-partitioned topics needs. Rebalances surface from `poll` as `Polled::Revoked` (the whole
//!   previous assignment, eager) then `Polled::Assigned`, in the order librdkafka ran them and
//!   before any record fetched after them. Records buffered for a partition when it is revoked
//!   are dropped: the next owner reads them again from the committed offset. Defaults
//!   `session.timeout.ms=10000`, `heartbeat.interval.ms=1000` (a crashed member's partitions move
//!   within ~10 s; override them in the properties).
//! - `fetch` reads a range of a partition with a separate, group-less reader (`assign` at the
//!   start offset), used to restore a task by replay.
//! - `KafkaConsumer::new_prefetching` polls librdkafka on a thread of its own and hands records
//!   over in chunks, so a reader that applies everything it reads (the read replica) overlaps
//!   its processing with librdkafka's per-message work. The stages poll inline: their steps
//!   wait for acknowledgements, and librdkafka keeps fetching meanwhile anyway.
//!
//! Client properties from `KafkaConfig::properties` (for example `security.protocol`, `sasl.*`,
//! `ssl.*`, `client.id`, `linger.ms`) are passed to librdkafka verbatim; only the settings the
//! loop's guarantees rest on are enforced over them.

use crate::secrets;
use bytes::Bytes;
use horizon_core::bus::{self, BusError, Polled, Record, RefusedRecord, Topic, TopicPartition};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _, ConsumerContext, DefaultConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Message as _};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer as _, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long `poll` waits for a first record when there is nothing to deliver.
const POLL_WAIT: Duration = Duration::from_millis(100);
/// Once a batch has records, how long `poll` waits for more before returning it.
const POLL_LINGER: Duration = Duration::from_millis(5);
/// How long `KafkaProducer::flush` sleeps between looks for delivery reports: its granularity.
const FLUSH_POLL: Duration = Duration::from_micros(200);
/// Bound on waiting for room in the producer's queue.
const QUEUE_FULL_WAIT: Duration = Duration::from_secs(30);

/// Connection settings shared by every client: bootstrap servers plus any librdkafka property.
/// Its `Debug` masks secret-looking values (`crate::secrets`).
#[derive(Clone, PartialEq, Eq)]
pub struct KafkaConfig {
    pub bootstrap: String,
    /// Passed through verbatim to every client (producer, consumer, reader, admin).
    pub properties: BTreeMap<String, String>,
    /// Bound on `KafkaProducer::flush`.
    pub flush_timeout: Duration,
    /// Bound on a metadata, committed-offset or commit request and on one `fetch`.
    pub request_timeout: Duration,
}

impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown: BTreeMap<&str, &str> = self.properties.iter().map(|(k, v)| (k.as_str(), secrets::shown(k, v))).collect();
        f.debug_struct("KafkaConfig")
            .field("bootstrap", &self.bootstrap)
            .field("properties", &shown)
            .field("flush_timeout", &self.flush_timeout)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

impl KafkaConfig {
    pub fn new(bootstrap: impl Into<String>) -> KafkaConfig {
        KafkaConfig {
            bootstrap: bootstrap.into(),
            properties: BTreeMap::new(),
            flush_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(30),
        }
    }

    pub fn with_properties(bootstrap: impl Into<String>, properties: BTreeMap<String, String>) -> KafkaConfig {
        KafkaConfig {
            properties,
            ..KafkaConfig::new(bootstrap)
        }
    }

    /// Adds (or replaces) one client property.
    pub fn set(mut self, key: impl Into<String>, value: impl Into<String>) -> KafkaConfig {
        self.properties.insert(key.into(), value.into());
        self
    }

    /// Parses Java-style client properties (`key=value` or `key: value` lines, `#`/`!`
    /// comments), as in a Kafka `client.properties` file. `bootstrap.servers` is required.
    pub fn from_properties(text: &str) -> Result<KafkaConfig, BusError> {
        let mut properties = BTreeMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with('!') {
                continue;
            }
            let Some(at) = line.find(['=', ':']) else {
                // Only the first word: the rest may be a secret's value (`sasl.pasword hunter2`).
                let first = line.split_whitespace().next().unwrap_or_default();
                return Err(BusError::Fatal(format!(
                    "client properties line {}: expected key=value after `{first}`",
                    n + 1
                )));
            };
            let (key, value) = (line[..at].trim(), line[at + 1..].trim());
            if secrets::is_secret_key(key) {
                secrets::remember(value);
            }
            properties.insert(key.to_string(), value.to_string());
        }
        let bootstrap = properties
            .remove("bootstrap.servers")
            .ok_or_else(|| BusError::Fatal("client properties: bootstrap.servers is missing".into()))?;
        Ok(KafkaConfig::with_properties(bootstrap, properties))
    }

    /// Reads a client properties file (see `from_properties`).
    pub fn from_file(path: impl AsRef<Path>) -> Result<KafkaConfig, BusError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| BusError::Fatal(format!("cannot read {}: {e}", path.display())))?;
        KafkaConfig::from_properties(&text)
    }

    /// Checks every property with librdkafka without making a client. A key librdkafka does not
    /// know has its value remembered as a secret (a misspelled `sasl.pasword` is one), and no
    /// error here shows a secret's value.
    pub fn validate(&self) -> Result<(), BusError> {
        for (k, v) in &self.properties {
            let mut one = ClientConfig::new();
            one.set(k, v);
            match one.create_native_config() {
                Ok(_) => {}
                Err(KafkaError::ClientConfig(res, desc, ..)) => {
                    if secrets::is_secret_key(k) || matches!(res, rdkafka::types::RDKafkaConfRes::RD_KAFKA_CONF_UNKNOWN) {
                        secrets::remember(v);
                    }
                    return Err(BusError::Fatal(secrets::mask(&format!("client property `{k}` refused: {desc}"))));
                }
                Err(e) => return Err(BusError::Fatal(secrets::mask(&format!("client property `{k}` refused: {e}")))),
            }
        }
        Ok(())
    }

    /// `defaults`, then the user's properties, then `required` (what the guarantees rest on).
    pub(crate) fn client_config(&self, defaults: &[(&str, &str)], required: &[(&str, &str)]) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap);
        for (k, v) in defaults {
            c.set(*k, *v);
        }
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        for (k, v) in required {
            c.set(*k, *v);
        }
        c
    }
}

/// What the loop should do about an error librdkafka reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// Transient (a broker, leader or coordinator away, a timeout, a full queue, too few
    /// in-sync replicas for now): back off and try again.
    Retriable,
    /// This one record can never be accepted (too large, invalid, a bad timestamp): sending it
    /// again fails the same way. The loop dead-letters it and moves on.
    RecordRefused,
    /// Lost group membership or assignment: commits for the old assignment are refused.
    NotAssigned,
    /// The topic or partition does not exist.
    UnknownTopic,
    /// Configuration, authentication or authorisation, a fenced or fatal client: retrying
    /// cannot help, an operator must act. The stage stops with the error.
    Fatal,
}

/// Classifies every error code librdkafka (2.12) can return, local (negative) and broker ones.
/// Written out code by code so that a new code is a decision, not an accident: the default
/// arm is only for codes that do not exist yet.
pub fn classify(code: RDKafkaErrorCode) -> ErrorClass {
    use ErrorClass::*;
    use RDKafkaErrorCode as C;
    match code {
        C::MessageSizeTooLarge
        | C::MessageBatchTooLarge
        | C::InvalidMessageSize
        | C::InvalidRecord
        | C::InvalidDifferentRecord
        | C::InvalidTimestamp
        | C::UnsupportedForMessageFormat
        | C::BadMessage
        | C::KeySerialization
        | C::ValueSerialization => RecordRefused,

        C::RebalanceInProgress
        | C::IllegalGeneration
        | C::UnknownMemberId
        | C::AssignmentLost
        | C::FencedInstanceId
        | C::FencedMemberEpoch
        | C::StaleMemberEpoch
        | C::UnreleasedInstanceId
        | C::MemberIdRequired
        | C::State => NotAssigned,

        C::UnknownTopic | C::UnknownPartition | C::UnknownTopicOrPartition | C::UnknownTopicId | C::InvalidTopic => UnknownTopic,

        C::Fatal
        | C::InvalidArgument
        | C::InvalidConfig
        | C::NotConfigured
        | C::NotImplemented
        | C::UnsupportedFeature
        | C::UnsupportedVersion
        | C::UnknownProtocol
        | C::Authentication
        | C::SaslAuthenticationFailed
        | C::UnsupportedSASLMechanism
        | C::IllegalSASLState
        | C::SSL
        | C::TopicAuthorizationFailed
        | C::GroupAuthorizationFailed
        | C::ClusterAuthorizationFailed
        | C::TransactionalIdAuthorizationFailed
        | C::DelegationTokenAuthorizationFailed
        | C::DelegationTokenAuthDisabled
        | C::DelegationTokenNotFound
        | C::DelegationTokenOwnerMismatch
        | C::DelegationTokenRequestNotAllowed
        | C::DelegationTokenExpired
        | C::SecurityDisabled
        | C::InvalidPrincipalType
        | C::UnacceptableCredential
        | C::PrincipalDeserializationFailure
        | C::InvalidRequiredAcks
        | C::InvalidSessionTimeout
        | C::InvalidGroupId
        | C::InconsistentGroupProtocol
        | C::GroupMaxSizeReached
        | C::UnsupportedAssignor
        | C::UnsupportedCompressionType
        | C::BadCompression
        | C::InvalidRequest
        | C::PolicyViolation
        | C::InvalidPartitions
        | C::InvalidReplicationFactor
        | C::InvalidReplicaAssignment
        | C::TopicAlreadyExists
        | C::TopicDeletionDisabled
        | C::ProducerFenced
        | C::Fenced
        | C::InvalidProducerEpoch
        | C::InvalidProducerIdMapping
        | C::InvalidTransactionalState
        | C::InvalidTransactionTimeout
        | C::TransactionCoordinatorFenced
        | C::ConcurrentTransactions
        | C::GaplessGuarantee
        | C::Inconsistent
        | C::OutOfOrderSequenceNumber
        | C::ExistingSubscription
        | C::Conflict
        | C::ReadOnly
        | C::InvalidType
        | C::CriticalSystemResource
        | C::FileSystem
        | C::LogDirNotFound
        | C::ListenerNotFound
        | C::Application
        | C::KeyDeserialization
        | C::ValueDeserialization
        | C::AutoOffsetReset
        | C::ResourceNotFound
        | C::DuplicateResource
        | C::InvalidUpdateVersion
        | C::FeatureUpdateFailed
        | C::InconsistentVoterSet
        | C::TelemetryTooLarge
        | C::UnknownSubscriptionId
        | C::NonEmptyGroup
        | C::GroupIdNotFound
        | C::GroupSubscribedToTopic
        | C::NoReassignmentInProgress
        | C::ElectionNotNeeded
        | C::OffsetMetadataTooLarge
        | C::InvalidCommitOffsetSize => Fatal,

        C::Begin
        | C::End
        | C::EndAll
        | C::NoError
        | C::Unknown
        | C::Fail
        | C::BrokerDestroy
        | C::DestroyBroker
        | C::BrokerTransportFailure
        | C::Resolve
        | C::MessageTimedOut
        | C::PartitionEOF
        | C::AllBrokersDown
        | C::OperationTimedOut
        | C::QueueFull
        | C::ISRInsufficient
        | C::NodeUpdate
        | C::WaitingForCoordinator
        | C::UnknownGroup
        | C::InProgress
        | C::PreviousInProgress
        | C::AssignPartitions
        | C::RevokePartitions
        | C::NoOffset
        | C::Outdated
        | C::TimedOutQueue
        | C::WaitCache
        | C::Interrupted
        | C::Partial
        | C::NoEnt
        | C::Underflow
        | C::Retry
        | C::PurgeQueue
        | C::PurgeInflight
        | C::PollExceeded
        | C::UnknownBroker
        | C::Noop
        | C::LogTruncation
        | C::OffsetOutOfRange
        | C::InvalidMessage
        | C::LeaderNotAvailable
        | C::NotLeaderForPartition
        | C::RequestTimedOut
        | C::BrokerNotAvailable
        | C::ReplicaNotAvailable
        | C::StaleControllerEpoch
        | C::NetworkException
        | C::CoordinatorLoadInProgress
        | C::CoordinatorNotAvailable
        | C::NotCoordinator
        | C::NotEnoughReplicas
        | C::NotEnoughReplicasAfterAppend
        | C::NotController
        | C::DuplicateSequenceNumber
        | C::OperationNotAttempted
        | C::KafkaStorageError
        | C::UnknownProducerId
        | C::ReassignmentInProgress
        | C::FetchSessionIdNotFound
        | C::InvalidFetchSessionEpoch
        | C::FencedLeaderEpoch
        | C::UnknownLeaderEpoch
        | C::StaleBrokerEpoch
        | C::OffsetNotAvailable
        | C::PreferredLeaderNotAvailable
        | C::EligibleLeadersNotAvailable
        | C::UnstableOffsetCommit
        | C::ThrottlingQuotaExceeded
        | C::RebootstrapRequired => Retriable,
        // A code newer than this list: treat it as transient, as librdkafka does by default.
        #[allow(unreachable_patterns)]
        _ => Retriable,
    }
}

/// The class of a client error (see `classify`); errors without a code are about the client.
fn class_of(e: &KafkaError) -> ErrorClass {
    match e.rdkafka_error_code() {
        Some(code) => classify(code),
        None => match e {
            KafkaError::ClientConfig(..) | KafkaError::ClientCreation(_) | KafkaError::Subscription(_) => ErrorClass::Fatal,
            _ => ErrorClass::Retriable,
        },
    }
}

/// librdkafka's last error, from its error callback or an error or warning log line: what a
/// failed connection says ("Connect to ipv4#127.0.0.1:9 failed: Connection refused"). The log
/// callback runs on librdkafka's threads; the error callback when the client is polled.
#[derive(Default)]
struct LastError {
    error: Mutex<Option<String>>,
    log: Mutex<Option<String>>,
}

impl ClientContext for LastError {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        use rdkafka::config::RDKafkaLogLevel as L;
        if matches!(level, L::Emerg | L::Alert | L::Critical | L::Error | L::Warning) {
            // Without librdkafka's thread prefix ("[thrd:127.0.0.1:9/bootstrap]: ").
            let text = message
                .split_once("]: ")
                .filter(|(t, _)| t.starts_with("[thrd:"))
                .map_or(message, |(_, m)| m);
            *self.log.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!("{text} ({fac})"));
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // "1/1 brokers are down" says less than the failure before it.
        if error.rdkafka_error_code() != Some(RDKafkaErrorCode::AllBrokersDown) {
            *self.error.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason.to_string());
        }
    }
}

impl ProducerContext for LastError {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &DeliveryResult<'_>, _: ()) {}
}

/// Fails within `config.request_timeout` unless a broker answers a metadata request: the error
/// names the brokers and librdkafka's last error. Commands call it before their first blocking
/// call, so an unreachable cluster is one line, not a silent wait.
pub fn check_reachable(config: &KafkaConfig) -> Result<(), BusError> {
    let timeout = config.request_timeout;
    let client: BaseProducer<LastError> = config
        .client_config(&[], &[])
        .create_with_context(LastError::default())
        .map_err(|e| BusError::Fatal(secrets::mask(&e.to_string())))?;
    let deadline = Instant::now() + timeout;
    let failure = loop {
        // In slices, polling between them so the error callback runs.
        let slice = deadline.saturating_duration_since(Instant::now()).min(Duration::from_secs(1));
        let result = client.client().fetch_metadata(None, slice);
        client.poll(Duration::ZERO);
        match result {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() >= deadline => break e,
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    let context = client.context();
    let last = [&context.error, &context.log]
        .iter()
        .find_map(|m| m.lock().unwrap_or_else(|p| p.into_inner()).clone())
        .unwrap_or_else(|| failure.to_string());
    Err(BusError::Unavailable(secrets::mask(&format!(
        "cannot reach the Kafka brokers {} within {timeout:?} (--timeout): {last}",
        config.bootstrap
    ))))
}

/// Maps a client error onto the bus's error kinds.
/// A librdkafka error as the bus's, its text masked: a broker's or client's message may quote
/// a configured secret (an authentication failure naming the JAAS line), and every retry line
/// and exit message of the runtime prints these.
fn bus_error(e: &KafkaError) -> BusError {
    let text = secrets::mask(&e.to_string());
    match class_of(e) {
        ErrorClass::Retriable => BusError::Unavailable(text),
        ErrorClass::RecordRefused => BusError::Refused(vec![RefusedRecord { index: 0, reason: text }]),
        ErrorClass::NotAssigned => BusError::NotAssigned(text),
        ErrorClass::UnknownTopic => BusError::UnknownTopic(text),
        ErrorClass::Fatal => BusError::Fatal(text),
    }
}

/// A broker connection that failed or went down. librdkafka reports one per failed attempt and
/// reconnects by itself ("ALL_BROKERS_DOWN doesn't really mean anything to librdkafka", its
/// author): informational for a consumer, never a reason to stop polling.
fn connection_error(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(RDKafkaErrorCode::AllBrokersDown | RDKafkaErrorCode::BrokerTransportFailure)
    )
}

/// The static name of a topic a broker client reports as a string: one of `known`, the topics
/// the consumer subscribed to (whatever topology declared them).
fn static_topic(name: &str, known: &[Topic]) -> Option<Topic> {
    known.iter().copied().find(|t| *t == name)
}

fn to_record(m: &impl rdkafka::message::Message, known: &[Topic]) -> Result<Record, BusError> {
    Ok(Record {
        topic: static_topic(m.topic(), known).ok_or_else(|| BusError::UnknownTopic(m.topic().to_string()))?,
        partition: m.partition() as u32,
        offset: m.offset() as u64,
        key: Bytes::copy_from_slice(m.key().unwrap_or_default()),
        value: Bytes::copy_from_slice(m.payload().unwrap_or_default()),
    })
}

fn to_tps(tpl: &TopicPartitionList, known: &[Topic]) -> Vec<TopicPartition> {
    let mut tps: Vec<TopicPartition> = tpl
        .elements()
        .iter()
        .filter_map(|e| match static_topic(e.topic(), known) {
            Some(topic) => Some(TopicPartition {
                topic,
                partition: e.partition() as u32,
            }),
            None => {
                log::warn!("ignoring partition {}/{} of a topic not subscribed to", e.topic(), e.partition());
                None
            }
        })
        .collect();
    tps.sort();
    tps
}

// ------------------------------------------------------------------------------------ producer

/// Counts delivery reports of the current flush epoch; reports of older epochs (records that a
/// failed flush gave up on and the loop has sent again) are ignored. A record's opaque is its
/// epoch and its index in the epoch, so a refused record can be named to the loop.
#[derive(Default)]
struct DeliveryTracker {
    epoch: AtomicU64,
    acked: AtomicU64,
    /// Records that failed for a reason that may pass (retriable, or the whole stage's).
    failed: AtomicU64,
    /// The first failure that refused no single record: its class decides what `flush` reports.
    first_error: Mutex<Option<(ErrorClass, String)>>,
    /// Records refused for good, by index in the epoch.
    refused: Mutex<Vec<RefusedRecord>>,
}

/// A record's delivery opaque: epoch in the high half, index in the low half.
fn opaque(epoch: u64, index: u64) -> usize {
    (((epoch & 0xffff_ffff) << 32) | (index & 0xffff_ffff)) as usize
}

impl ClientContext for DeliveryTracker {}

impl ProducerContext for DeliveryTracker {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        let (epoch, index) = ((opaque as u64) >> 32, (opaque as u64) & 0xffff_ffff);
        if epoch != self.epoch.load(Ordering::SeqCst) & 0xffff_ffff {
            return;
        }
        match result {
            Ok(_) => {
                self.acked.fetch_add(1, Ordering::SeqCst);
            }
            Err((e, m)) => {
                let reason = format!("{}/{}: {e}", m.topic(), m.partition());
                match class_of(e) {
                    ErrorClass::RecordRefused => lock(&self.refused).push(RefusedRecord {
                        index: index as usize,
                        reason,
                    }),
                    class => {
                        self.failed.fetch_add(1, Ordering::SeqCst);
                        lock(&self.first_error).get_or_insert((class, reason));
                    }
                }
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// An idempotent, batching producer.
pub struct KafkaProducer {
    producer: BaseProducer<DeliveryTracker>,
    /// Records sent in the current epoch.
    sent: u64,
    flush_timeout: Duration,
}

impl KafkaProducer {
    pub fn new(config: &KafkaConfig) -> Result<KafkaProducer, BusError> {
        // message.timeout.ms below the flush bound, so a failed flush leaves little in flight.
        let message_timeout = config
            .flush_timeout
            .saturating_sub(Duration::from_secs(5))
            .max(Duration::from_secs(1));
        // A topic missing from the metadata fails its records as UnknownTopic after this wait,
        // and only if it ends before their message timeout; otherwise they time out, which reads
        // as an outage and is retried forever.
        let propagation = (message_timeout / 2).as_millis().to_string();
        let message_timeout = message_timeout.as_millis().to_string();
        let producer = config
            .client_config(
                &[
                    // Each step waits for its own records' acknowledgement, so a batch's linger
                    // is paid by every step: 1 ms (was 5; `flush(0)`'s wake-up of the broker
                    // threads races with their linger timer). `horizon bench kafka` at
                    // 10,000/s: p50 publish-to-projection 8.6-11 ms with 5, 3.2 ms with 1.
                    ("linger.ms", "1"),
                    ("batch.num.messages", "10000"),
                    ("message.timeout.ms", &message_timeout),
                    ("topic.metadata.propagation.max.ms", &propagation),
                    ("compression.type", "none"),
                ],
                &[("enable.idempotence", "true"), ("acks", "all")],
            )
            .create_with_context(DeliveryTracker::default())
            .map_err(|e| bus_error(&e))?;
        Ok(KafkaProducer {
            producer,
            sent: 0,
            flush_timeout: config.flush_timeout,
        })
    }

    fn tracker(&self) -> &DeliveryTracker {
        self.producer.context()
    }

    fn delivered(&self) -> u64 {
        let t = self.tracker();
        t.acked.load(Ordering::SeqCst) + t.failed.load(Ordering::SeqCst) + lock(&t.refused).len() as u64
    }

    /// Starts a new epoch: reports still due for the old one no longer count.
    fn next_epoch(&mut self) {
        let t = self.producer.context();
        t.epoch.fetch_add(1, Ordering::SeqCst);
        t.acked.store(0, Ordering::SeqCst);
        t.failed.store(0, Ordering::SeqCst);
        *lock(&t.first_error) = None;
        lock(&t.refused).clear();
        self.sent = 0;
    }

    fn fatal_error(&self) -> Option<BusError> {
        self.producer
            .client()
            .fatal_error()
            .map(|(code, reason)| BusError::Fatal(format!("producer: {code}: {reason}")))
    }
}

impl bus::Producer for KafkaProducer {
    fn send(&mut self, topic: Topic, partition: u32, key: &[u8], value: &[u8]) -> Result<(), BusError> {
        let epoch = self.tracker().epoch.load(Ordering::SeqCst);
        let mut record = BaseRecord::with_opaque_to(topic, opaque(epoch, self.sent))
            .partition(partition as i32)
            .key(key)
            .payload(value);
        let mut deadline = None;
        loop {
            match self.producer.send(record) {
                Ok(()) => {
                    self.sent += 1;
                    return Ok(());
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    let until = *deadline.get_or_insert_with(|| Instant::now() + QUEUE_FULL_WAIT);
                    if Instant::now() >= until {
                        return Err(BusError::Unavailable(format!(
                            "producer queue still full after {QUEUE_FULL_WAIT:?}"
                        )));
                    }
                    // Serve delivery reports so the queue drains.
                    self.producer.poll(Duration::from_millis(100));
                    record = back;
                }
                // Refused before it was queued (librdkafka checks `message.max.bytes` here):
                // name the record's destination, and let the loop dead-letter it.
                Err((e, _)) if class_of(&e) == ErrorClass::RecordRefused => {
                    return Err(BusError::Refused(vec![RefusedRecord {
                        index: 0,
                        reason: format!("{topic}/{partition}: {e} ({} bytes)", value.len()),
                    }]));
                }
                Err((e, _)) => return Err(self.fatal_error().unwrap_or_else(|| bus_error(&e))),
            }
        }
    }

    fn flush(&mut self) -> Result<(), BusError> {
        let deadline = Instant::now() + self.flush_timeout;
        // Not `BaseProducer::flush`, nor `poll` with a timeout: rdkafka's `poll(t)` serves
        // events until `t` has passed even when the reports came at once (spinning through the
        // last millisecond, which it rounds down to a non-blocking poll), and its flush polls in
        // 100 ms slices, so every flush took at least 100 ms (the pipeline's bottleneck,
        // `horizon bench kafka`). Here: `flush(0)` wakes the broker threads to send what is
        // queued now, `poll(0)` serves one queued event (a delivery report covers a batch), and
        // while none is there the thread sleeps `FLUSH_POLL`.
        let mut served = self.delivered();
        let mut idle = 0u32;
        loop {
            let done = self.delivered();
            if done >= self.sent {
                break;
            }
            if Instant::now() >= deadline {
                break;
            }
            if done == served {
                idle += 1;
                if idle.is_multiple_of(8) || idle == 1 {
                    let _ = self.producer.flush(Duration::ZERO);
                }
                std::thread::sleep(FLUSH_POLL);
            } else {
                served = done;
                idle = 0;
            }
            self.producer.poll(Duration::ZERO);
        }
        let t = self.tracker();
        let (sent, acked, failed) = (self.sent, t.acked.load(Ordering::SeqCst), t.failed.load(Ordering::SeqCst));
        let first_error = lock(&t.first_error).clone();
        let mut refused = std::mem::take(&mut *lock(&t.refused));
        self.next_epoch();
        if let Some(fatal) = self.fatal_error() {
            return Err(fatal);
        }
        if let Some((class, first)) = first_error {
            let text = format!("{failed} of {sent} records were not delivered (first: {first})");
            return Err(match class {
                ErrorClass::Fatal => BusError::Fatal(text),
                ErrorClass::UnknownTopic => BusError::UnknownTopic(text),
                _ => BusError::Unavailable(text),
            });
        }
        let answered = acked + refused.len() as u64;
        if answered < sent {
            return Err(BusError::Unavailable(format!(
                "{} of {sent} records not acknowledged within {:?}",
                sent - answered,
                self.flush_timeout
            )));
        }
        if !refused.is_empty() {
            refused.sort_by_key(|r| r.index);
            return Err(BusError::Refused(refused));
        }
        Ok(())
    }
}

// ------------------------------------------------------------------------------------ consumer

/// Turns librdkafka's rebalance callbacks into notices for `poll` and keeps the assignment.
#[derive(Default)]
struct GroupContext {
    /// The subscribed topics: what the broker's topic names map to.
    topics: Vec<Topic>,
    notices: Mutex<VecDeque<Polled>>,
    /// Set when a notice is queued: the poll loop looks at this after every record, and takes
    /// the lock only when it is set.
    noticed: AtomicBool,
    assigned: Mutex<BTreeSet<TopicPartition>>,
}

impl GroupContext {
    fn notify(&self, notice: Polled) {
        self.notices.lock().unwrap_or_else(|p| p.into_inner()).push_back(notice);
        self.noticed.store(true, Ordering::Release);
    }

    fn take_notices(&self) -> Vec<Polled> {
        if !self.noticed.swap(false, Ordering::Acquire) {
            return Vec::new();
        }
        self.notices.lock().unwrap_or_else(|p| p.into_inner()).drain(..).collect()
    }
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        // Revoke: nothing to commit here: librdkafka commits what the loop stored for the revoked
        // partitions (auto-commit) before it lets go of them.
        if let Rebalance::Revoke(tpl) = rebalance {
            let tps = to_tps(tpl, &self.topics);
            let mut assigned = self.assigned.lock().unwrap_or_else(|p| p.into_inner());
            for tp in &tps {
                assigned.remove(tp);
            }
            if !tps.is_empty() {
                self.notify(Polled::Revoked(tps));
            }
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let tps = to_tps(tpl, &self.topics);
                self.assigned.lock().unwrap_or_else(|p| p.into_inner()).extend(tps.iter().copied());
                if !tps.is_empty() {
                    self.notify(Polled::Assigned(tps));
                }
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => log::warn!("rebalance error: {e}"),
        }
    }
}

enum Item {
    Notice(Polled),
    Record(Record),
}

/// Notices and records in the order they happened, not yet handed out.
#[derive(Default)]
struct Inbox {
    items: VecDeque<Item>,
    /// How many of `items` are notices: with none (the usual case) every item is a record, so
    /// `poll`'s per-record checks are O(1) instead of a scan of the whole inbox (which made a
    /// step's poll quadratic in its batch size).
    notices: usize,
}

impl Inbox {
    /// Records held for a revoked partition go: the next owner reads them again.
    fn push(&mut self, item: Item) {
        if let Item::Notice(n) = &item {
            if let Polled::Revoked(tps) = n {
                self.items.retain(|i| !matches!(i, Item::Record(r) if tps.contains(&r.tp())));
            }
            self.notices += 1;
        }
        self.items.push_back(item);
    }

    /// Records at the front, before any notice.
    fn leading_records(&self) -> usize {
        if self.notices == 0 {
            return self.items.len();
        }
        self.items.iter().take_while(|i| matches!(i, Item::Record(_))).count()
    }

    fn has_notice(&self) -> bool {
        self.notices > 0
    }

    /// A batch is complete once it has `max_records` records or a notice is next in line.
    fn is_full(&self, max_records: usize) -> bool {
        self.has_notice() || self.leading_records() >= max_records
    }

    fn drain(&mut self) -> Vec<Item> {
        self.notices = 0;
        self.items.drain(..).collect()
    }

    fn take(&mut self, max_records: usize) -> Polled {
        if let Some(Item::Notice(_)) = self.items.front() {
            let Some(Item::Notice(n)) = self.items.pop_front() else {
                unreachable!()
            };
            self.notices -= 1;
            return n;
        }
        let n = self.leading_records().min(max_records);
        if n == 0 {
            return Polled::Idle;
        }
        let records = self
            .items
            .drain(..n)
            .map(|i| match i {
                Item::Record(r) => r,
                Item::Notice(_) => unreachable!("only leading records are drained"),
            })
            .collect();
        Polled::Records(records)
    }
}

/// What one pull from a source added to an inbox.
enum Pulled {
    /// At least one item.
    Items,
    Nothing,
    Failed(BusError),
}

/// Fills `inbox` until it holds a complete batch, `wait` passes with nothing, or `linger`
/// passes after the first record; `pull(inbox, timeout)` adds what its source has within
/// `timeout`. A failure with records in hand is logged and ends the batch; without, it is
/// returned.
fn fill(
    inbox: &mut Inbox,
    max_records: usize,
    wait: Duration,
    linger: Duration,
    mut pull: impl FnMut(&mut Inbox, Duration) -> Pulled,
) -> Result<(), BusError> {
    let start = Instant::now();
    // Set when the batch gets its first record: the batch is returned by then.
    let mut linger_until: Option<Instant> = None;
    while !inbox.is_full(max_records) {
        let have = inbox.leading_records() > 0;
        if have && linger_until.is_none() {
            linger_until = Some(Instant::now() + linger);
        }
        let until = linger_until.unwrap_or(start + wait);
        // A zero timeout still takes what the source already has.
        let timeout = until.saturating_duration_since(Instant::now());
        match pull(inbox, timeout) {
            Pulled::Items => {}
            Pulled::Nothing if have || timeout.is_zero() => break,
            Pulled::Nothing => {}
            Pulled::Failed(e) => {
                if inbox.leading_records() == 0 && !inbox.has_notice() {
                    return Err(e);
                }
                log::warn!("consumer: {e}");
                break;
            }
        }
    }
    Ok(())
}

/// librdkafka's side of `poll`: its messages, and the notices its rebalance callbacks left
/// while serving them, into an inbox in the order they happened.
struct Intake {
    consumer: Arc<BaseConsumer<GroupContext>>,
    group: String,
    /// Connection errors since the last record: an outage in progress, logged once when it
    /// starts and once when records flow again.
    outage: Option<Outage>,
}

impl Intake {
    fn absorb_notices(&self, inbox: &mut Inbox) {
        for n in self.consumer.context().take_notices() {
            inbox.push(Item::Notice(n));
        }
    }

    /// One wait of up to `timeout` for a message, then whatever librdkafka has already fetched
    /// up to a complete batch, without looking at the clock per record.
    fn pull(&mut self, inbox: &mut Inbox, max_records: usize, timeout: Duration) -> Pulled {
        self.absorb_notices(inbox);
        let mut timeout = timeout;
        let mut pulled = Pulled::Nothing;
        while !inbox.is_full(max_records) {
            let polled = self
                .consumer
                .poll(timeout)
                .map(|r| r.map(|m| to_record(&m, &self.consumer.context().topics)));
            timeout = Duration::ZERO;
            match polled {
                Some(Ok(record)) => {
                    if let Some(o) = self.outage.take() {
                        eprintln!(
                            "horizon: consumer {}: receiving again after {} connection errors over {:?}",
                            self.group,
                            o.errors,
                            o.started.elapsed()
                        );
                    }
                    // A rebalance served inside this poll precedes the record.
                    self.absorb_notices(inbox);
                    match record {
                        Ok(r) => inbox.push(Item::Record(r)),
                        Err(e) => return Pulled::Failed(e),
                    }
                    pulled = Pulled::Items;
                }
                Some(Err(KafkaError::PartitionEOF(_))) => {}
                Some(Err(e)) if connection_error(&e) => {
                    // Served as a step failure, each of these would cost the stage a backoff
                    // while librdkafka queues more of them than the backoff drains: a consumer
                    // so treated stays "down" long after the broker is back. Keep polling.
                    match &mut self.outage {
                        Some(o) => o.errors += 1,
                        None => {
                            eprintln!(
                                "horizon: consumer {}: broker connection lost ({}); librdkafka reconnects",
                                self.group,
                                secrets::mask(&e.to_string())
                            );
                            self.outage = Some(Outage {
                                started: Instant::now(),
                                errors: 1,
                            });
                        }
                    }
                }
                Some(Err(e)) => {
                    if let Some((code, reason)) = self.consumer.client().fatal_error() {
                        return Pulled::Failed(BusError::Fatal(format!("consumer: {code}: {reason}")));
                    }
                    self.absorb_notices(inbox);
                    return Pulled::Failed(bus_error(&e));
                }
                None => {
                    self.absorb_notices(inbox);
                    break;
                }
            }
        }
        if inbox.has_notice() {
            pulled = Pulled::Items;
        }
        pulled
    }
}

/// Where `poll` gets its items: librdkafka on the caller's thread, or a prefetch thread.
enum Source {
    Inline { intake: Intake, inbox: Inbox },
    Prefetched(Prefetch),
}

/// A thread that polls librdkafka and converts its messages into records while the caller
/// processes the previous ones (the read replica: its processing and librdkafka's per-message
/// work then overlap instead of taking turns). It hands over chunks through a bounded channel:
/// when the caller stops taking them the thread stops polling, so a stuck caller still leaves
/// its group after `max.poll.interval.ms`.
struct Prefetch {
    inbox: Inbox,
    chunks: Option<Receiver<Result<Vec<Item>, BusError>>>,
    /// Tells an idle thread (nothing to send, so it never sees the channel close) to end.
    stopping: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Records per chunk handed over by the prefetch thread, and chunks in flight.
const PREFETCH_CHUNK: usize = 1024;
const PREFETCH_CHUNKS: usize = 16;
/// How long the prefetch thread waits in one poll: also how long closing waits for it.
const PREFETCH_WAIT: Duration = Duration::from_millis(10);

impl Prefetch {
    fn start(mut intake: Intake) -> Result<Prefetch, BusError> {
        let (send, chunks) = sync_channel(PREFETCH_CHUNKS);
        let stopping = Arc::new(AtomicBool::new(false));
        let told = stopping.clone();
        let thread = std::thread::Builder::new()
            .name(format!("prefetch {}", intake.group))
            .spawn(move || {
                let mut inbox = Inbox::default();
                while !told.load(Ordering::Relaxed) {
                    let filled = fill(&mut inbox, PREFETCH_CHUNK, PREFETCH_WAIT, Duration::ZERO, |inbox, timeout| {
                        intake.pull(inbox, PREFETCH_CHUNK, timeout)
                    });
                    let chunk = match filled {
                        Ok(()) if inbox.items.is_empty() => continue,
                        Ok(()) => Ok(inbox.drain()),
                        Err(e) => Err(e),
                    };
                    let fatal = matches!(chunk, Err(BusError::Fatal(_)));
                    if send.send(chunk).is_err() || fatal {
                        return;
                    }
                }
            })
            .map_err(|e| BusError::Fatal(format!("cannot start the consumer's prefetch thread: {e}")))?;
        Ok(Prefetch {
            inbox: Inbox::default(),
            chunks: Some(chunks),
            stopping,
            thread: Some(thread),
        })
    }

    /// What the thread has handed over within `timeout`, into `inbox`.
    fn receive(chunks: &Option<Receiver<Result<Vec<Item>, BusError>>>, inbox: &mut Inbox, timeout: Duration) -> Pulled {
        let stopped = || Pulled::Failed(BusError::Fatal("the consumer's prefetch thread has stopped".into()));
        let Some(chunks) = chunks else {
            return stopped();
        };
        match chunks.recv_timeout(timeout) {
            Ok(Ok(items)) => {
                for item in items {
                    inbox.push(item);
                }
                Pulled::Items
            }
            Ok(Err(e)) => Pulled::Failed(e),
            Err(RecvTimeoutError::Timeout) => Pulled::Nothing,
            Err(RecvTimeoutError::Disconnected) => stopped(),
        }
    }

    /// Stops and joins the thread; idempotent.
    fn stop(&mut self) {
        self.stopping.store(true, Ordering::Relaxed);
        // Unblocks a thread waiting for room in the channel.
        self.chunks = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Drop for KafkaConsumer {
    fn drop(&mut self) {
        // The prefetch thread first: the close below must be the only poll of the consumer.
        if let Source::Prefetched(prefetch) = &mut self.source {
            prefetch.stop();
        }
        let timeout = self.config.request_timeout;
        close(&self.consumer, timeout);
        if let Some(reader) = &self.reader {
            close(reader, timeout);
        }
    }
}

/// Closes a consumer that has a group id (the member leaves its group) and waits for it.
/// rdkafka's drop does the same but waits in 100 ms polls, and a close posts nothing that ends
/// a poll early: dropping a `KafkaConsumer` took ~100 ms more than the close itself (`horizon
/// digest`: 110 ms). rdkafka's drop then finds the consumer closed; its second close is
/// refused, which it logs through `log` at error level.
fn close<C: ConsumerContext>(consumer: &BaseConsumer<C>, timeout: Duration) {
    if consumer.close_queue().is_ok() {
        let deadline = Instant::now() + timeout;
        while !consumer.closed() && Instant::now() < deadline {
            consumer.poll(Duration::from_millis(2));
        }
    }
}

/// One member of a consumer group.
pub struct KafkaConsumer {
    /// Shared with the prefetch thread, if any; closed when the last holder drops it.
    consumer: Arc<BaseConsumer<GroupContext>>,
    /// How long `poll` waits for a first record (default `POLL_WAIT`).
    poll_wait: Duration,
    /// Once a batch has a record, how much longer `poll` waits for more (default `POLL_LINGER`).
    poll_linger: Duration,
    source: Source,
    /// A consumer outside the group (assign + seek) for `fetch` and watermarks, made on first use.
    reader: Option<BaseConsumer<DefaultConsumerContext>>,
    config: KafkaConfig,
    group: String,
}

struct Outage {
    started: Instant,
    errors: u64,
}

impl KafkaConsumer {
    /// Joins `group` subscribed to `topics`; the assignment arrives from `poll`.
    pub fn new(config: &KafkaConfig, group: &str, topics: &[Topic]) -> Result<KafkaConsumer, BusError> {
        Self::open(config, group, topics, false)
    }

    /// As `new`, with librdkafka polled on a thread of its own (see `Prefetch`): for a reader
    /// that processes everything it reads, such as the read replica.
    pub fn new_prefetching(config: &KafkaConfig, group: &str, topics: &[Topic]) -> Result<KafkaConsumer, BusError> {
        Self::open(config, group, topics, true)
    }

    fn open(config: &KafkaConfig, group: &str, topics: &[Topic], prefetch: bool) -> Result<KafkaConsumer, BusError> {
        let consumer: BaseConsumer<GroupContext> = config
            .client_config(
                &[
                    ("partition.assignment.strategy", "range"),
                    ("session.timeout.ms", "10000"),
                    ("heartbeat.interval.ms", "1000"),
                    ("auto.commit.interval.ms", "500"),
                    ("fetch.queue.backoff.ms", "10"),
                    // librdkafka keeps one fetch in flight per broker, and a partition not in it
                    // waits for it to return: after an assignment the first fetch (often for an
                    // empty partition) held every other partition back for librdkafka's default
                    // 500 ms, in every group join (`horizon digest` went 1.18 -> 0.65 s).
                    ("fetch.wait.max.ms", "50"),
                ],
                &[
                    ("group.id", group),
                    ("enable.auto.commit", "true"),
                    ("enable.auto.offset.store", "false"),
                    ("auto.offset.reset", "earliest"),
                    ("enable.partition.eof", "false"),
                ],
            )
            .create_with_context(GroupContext {
                topics: topics.to_vec(),
                ..GroupContext::default()
            })
            .map_err(|e| bus_error(&e))?;
        consumer.subscribe(topics).map_err(|e| bus_error(&e))?;
        let consumer = Arc::new(consumer);
        let intake = Intake {
            consumer: consumer.clone(),
            group: group.to_string(),
            outage: None,
        };
        let source = if prefetch {
            Source::Prefetched(Prefetch::start(intake)?)
        } else {
            Source::Inline {
                intake,
                inbox: Inbox::default(),
            }
        };
        Ok(KafkaConsumer {
            consumer,
            poll_wait: POLL_WAIT,
            poll_linger: POLL_LINGER,
            source,
            reader: None,
            config: config.clone(),
            group: group.to_string(),
        })
    }

    pub fn group(&self) -> &str {
        &self.group
    }

    /// Sets how long `poll` waits for a first record, and once it has one, how much longer it
    /// waits for more (zero: return what librdkafka has already fetched). A driver stepping
    /// several consumers in turn keeps these short so no stage waits on another's idle poll.
    pub fn set_poll_timing(&mut self, wait: Duration, linger: Duration) {
        self.poll_wait = wait;
        self.poll_linger = linger;
    }

    /// The partitions this member owns right now.
    pub fn assignment(&self) -> Vec<TopicPartition> {
        self.consumer
            .context()
            .assigned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .copied()
            .collect()
    }

    /// Commits every stored offset now and waits for the group coordinator's answer. Nothing
    /// stored since the last commit is not an error.
    pub fn commit_stored(&self) -> Result<(), BusError> {
        if self
            .consumer
            .context()
            .assigned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
        {
            return Ok(());
        }
        match self.consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => Ok(()),
            Err(e) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::NoOffset) => Ok(()),
            Err(e) => Err(bus_error(&e)),
        }
    }

    /// The offset the next record appended to a partition will get (its high watermark).
    pub fn end_offset(&mut self, tp: TopicPartition) -> Result<u64, BusError> {
        let timeout = self.config.request_timeout;
        let (_, high) = self.watermarks(tp, timeout)?;
        Ok(high.max(0) as u64)
    }

    /// A partition's low and high watermarks. The topics are the documented ones, so a partition
    /// the reader does not know is a gap in its metadata (seen right after a broker restart, and
    /// kept: the reader is never polled, so its cached metadata stayed without the partition for
    /// minutes) or topics never created. Either way it is retried, with a fresh reader, and the
    /// error says what to check.
    ///
    /// Right after topics are created (or a leader moves) the broker may answer with stale
    /// leadership for a moment (seen in CI on a fresh broker): that is retried within `timeout`.
    fn watermarks(&mut self, tp: TopicPartition, timeout: Duration) -> Result<(i64, i64), BusError> {
        let deadline = Instant::now() + timeout;
        let result = loop {
            let result = self.reader()?.fetch_watermarks(tp.topic, tp.partition as i32, timeout);
            match &result {
                Err(e)
                    if matches!(
                        e.rdkafka_error_code(),
                        Some(RDKafkaErrorCode::NotLeaderForPartition | RDKafkaErrorCode::LeaderNotAvailable)
                    ) && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(100));
                }
                _ => break result,
            }
        };
        result.map_err(|e| match bus_error(&e) {
            BusError::UnknownTopic(text) => {
                self.reader = None;
                BusError::Unavailable(format!("{tp} is not in the broker's metadata ({text}); were the topics created?"))
            }
            other => other,
        })
    }

    fn reader(&mut self) -> Result<&BaseConsumer<DefaultConsumerContext>, BusError> {
        if self.reader.is_none() {
            // librdkafka refuses `assign` without a group id; this one never joins (no
            // subscribe) nor commits, so it is distinct from the member's group only for clarity.
            let group = format!("{}.reader", self.group);
            let reader: BaseConsumer<DefaultConsumerContext> = self
                .config
                .client_config(
                    &[],
                    &[
                        ("group.id", &group),
                        ("enable.auto.commit", "false"),
                        ("enable.auto.offset.store", "false"),
                        ("enable.partition.eof", "true"),
                        ("auto.offset.reset", "earliest"),
                    ],
                )
                .create()
                .map_err(|e| bus_error(&e))?;
            self.reader = Some(reader);
        }
        Ok(self.reader.as_ref().expect("created above"))
    }
}

impl bus::Consumer for KafkaConsumer {
    fn poll(&mut self, max_records: usize) -> Result<Polled, BusError> {
        let max_records = max_records.max(1);
        let (wait, linger) = (self.poll_wait, self.poll_linger);
        Ok(match &mut self.source {
            Source::Inline { intake, inbox } => {
                fill(inbox, max_records, wait, linger, |inbox, timeout| {
                    intake.pull(inbox, max_records, timeout)
                })?;
                inbox.take(max_records)
            }
            Source::Prefetched(Prefetch { inbox, chunks, .. }) => {
                fill(inbox, max_records, wait, linger, |inbox, timeout| {
                    Prefetch::receive(chunks, inbox, timeout)
                })?;
                inbox.take(max_records)
            }
        })
    }

    fn commit(&mut self, offsets: &[(TopicPartition, u64)]) -> Result<(), BusError> {
        if offsets.is_empty() {
            return Ok(());
        }
        {
            let assigned = self.consumer.context().assigned.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((tp, _)) = offsets.iter().find(|(tp, _)| !assigned.contains(tp)) {
                return Err(BusError::NotAssigned(tp.to_string()));
            }
        }
        let mut tpl = TopicPartitionList::with_capacity(offsets.len());
        for (tp, offset) in offsets {
            tpl.add_partition_offset(tp.topic, tp.partition as i32, Offset::Offset(*offset as i64))
                .map_err(|e| bus_error(&e))?;
        }
        // Stored, not committed: librdkafka's auto-commit sends it (see the module header). A
        // synchronous commit per batch was the largest share of every stage's time in
        // `horizon bench kafka`; explicit asynchronous commits (commit 90686d4) left 2 of 3
        // broker-restart runs silent, cause unknown (docs/kafka.md). librdkafka refuses to store
        // for a partition it no longer owns, so a revoked partition's offset is never committed.
        self.consumer.store_offsets(&tpl).map_err(|e| match e.rdkafka_error_code() {
            Some(RDKafkaErrorCode::State) | Some(RDKafkaErrorCode::UnknownPartition) => BusError::NotAssigned(format!(
                "{}: {e}",
                to_tps(&tpl, &self.consumer.context().topics)
                    .iter()
                    .map(|tp| tp.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            _ => bus_error(&e),
        })
    }

    fn committed(&mut self, tp: TopicPartition) -> Result<u64, BusError> {
        let mut tpl = TopicPartitionList::with_capacity(1);
        tpl.add_partition(tp.topic, tp.partition as i32);
        let got = self
            .consumer
            .committed_offsets(tpl, self.config.request_timeout)
            .map_err(|e| bus_error(&e))?;
        let elem = got
            .find_partition(tp.topic, tp.partition as i32)
            .ok_or_else(|| BusError::Unavailable(format!("no committed offset reported for {tp}")))?;
        elem.error().map_err(|e| bus_error(&e))?;
        Ok(match elem.offset() {
            Offset::Offset(o) if o >= 0 => o as u64,
            _ => 0,
        })
    }

    fn fetch(&mut self, tp: TopicPartition, from: u64, to: u64) -> Result<Vec<Record>, BusError> {
        if from >= to {
            return Ok(Vec::new());
        }
        let timeout = self.config.request_timeout;
        let (low, high) = self.watermarks(tp, timeout)?;
        let reader = self.reader()?;
        // Nothing before the log start survives; nothing at or past the end exists yet.
        let from = from.max(low.max(0) as u64);
        let to = to.min(high.max(0) as u64);
        if from >= to {
            return Ok(Vec::new());
        }
        let mut tpl = TopicPartitionList::with_capacity(1);
        tpl.add_partition_offset(tp.topic, tp.partition as i32, Offset::Offset(from as i64))
            .map_err(|e| bus_error(&e))?;
        reader.assign(&tpl).map_err(|e| bus_error(&e))?;
        let deadline = Instant::now() + timeout;
        let mut out = Vec::with_capacity((to - from) as usize);
        let mut last_error = None;
        let complete = loop {
            let now = Instant::now();
            if now >= deadline {
                break false;
            }
            match reader.poll((deadline - now).min(Duration::from_millis(100))) {
                Some(Ok(m)) => {
                    if m.topic() != tp.topic || m.partition() != tp.partition as i32 {
                        continue;
                    }
                    let offset = m.offset() as u64;
                    if offset < from {
                        continue;
                    }
                    if offset >= to {
                        // Offsets may skip (transaction markers, compaction): past the range.
                        break true;
                    }
                    out.push(Record {
                        topic: tp.topic,
                        partition: tp.partition,
                        offset,
                        key: Bytes::copy_from_slice(m.key().unwrap_or_default()),
                        value: Bytes::copy_from_slice(m.payload().unwrap_or_default()),
                    });
                    if offset + 1 >= to {
                        break true;
                    }
                }
                // The end of the partition (or of committed data) before `to`: all there is.
                Some(Err(KafkaError::PartitionEOF(p))) if p == tp.partition as i32 => break true,
                Some(Err(KafkaError::PartitionEOF(_))) => {}
                Some(Err(e)) => last_error = Some(e),
                None => {}
            }
        };
        let _ = reader.unassign();
        if !complete {
            let why = last_error.map(|e| format!(": {e}")).unwrap_or_default();
            return Err(BusError::Unavailable(format!(
                "fetch {tp} [{from}, {to}) incomplete after {timeout:?} ({} records){why}",
                out.len()
            )));
        }
        Ok(out)
    }
}

// ------------------------------------------------------------------------------------ admin

/// Topic administration.
pub mod admin {
    use super::{bus_error, KafkaConfig};
    use horizon_core::bus::{BusError, Topic, TopicPartition};
    use horizon_core::topology::{TopicSpec, Topology};
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _, DefaultConsumerContext};
    use rdkafka::error::RDKafkaErrorCode;
    use rdkafka::{Offset, TopicPartitionList};
    use std::collections::BTreeMap;
    use std::time::{Duration, Instant};

    /// Creates `topics` (a topology's: `Topology::topics`) with their partition counts; topics
    /// that already exist are left as they are. `min_insync` sets `min.insync.replicas` on the
    /// topics this call creates. Returns once every partition of every topic has a leader.
    pub fn create_topics(
        bootstrap: &str,
        extra: &BTreeMap<String, String>,
        topics: &[TopicSpec],
        replication_factor: i32,
        min_insync: Option<u32>,
    ) -> Result<(), BusError> {
        let config = KafkaConfig::with_properties(bootstrap, extra.clone());
        let admin: AdminClient<DefaultClientContext> = config.client_config(&[], &[]).create().map_err(|e| bus_error(&e))?;
        let misr = min_insync.map(|n| n.to_string());
        let new: Vec<NewTopic<'_>> = topics
            .iter()
            .map(|t| {
                let topic = NewTopic::new(t.name, t.partitions as i32, TopicReplication::Fixed(replication_factor));
                match &misr {
                    Some(m) => topic.set("min.insync.replicas", m),
                    None => topic,
                }
            })
            .collect();
        let options = AdminOptions::new()
            .operation_timeout(Some(config.request_timeout))
            .request_timeout(Some(config.request_timeout));
        let results = futures_executor::block_on(admin.create_topics(new.iter(), &options)).map_err(|e| bus_error(&e))?;
        for r in results {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => return Err(BusError::Unavailable(format!("creating topic {name}: {code}"))),
            }
        }
        wait_for_leaders(&admin, topics, config.request_timeout)
    }

    /// Deletes `topics` and creates them again, empty: for benchmarks on a scratch broker only.
    /// Retries the creation while the broker still has the old topic marked for deletion
    /// (waits until the deleted topics leave the metadata first).
    pub fn recreate_topics(config: &KafkaConfig, topics: &[TopicSpec]) -> Result<(), BusError> {
        let admin: AdminClient<DefaultClientContext> = config.client_config(&[], &[]).create().map_err(|e| bus_error(&e))?;
        let options = AdminOptions::new()
            .operation_timeout(Some(config.request_timeout))
            .request_timeout(Some(config.request_timeout));
        let names: Vec<&str> = topics.iter().map(|t| t.name).collect();
        let results = futures_executor::block_on(admin.delete_topics(&names, &options)).map_err(|e| bus_error(&e))?;
        for r in results {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
                Err((name, code)) => return Err(BusError::Unavailable(format!("deleting topic {name}: {code}"))),
            }
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let left = match admin.inner().fetch_metadata(None, Duration::from_secs(5)) {
                Ok(md) => md.topics().iter().any(|t| names.contains(&t.name())),
                Err(_) => true,
            };
            if !left {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        loop {
            match create_topics(&config.bootstrap, &config.properties, topics, 1, None) {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(250)),
            }
        }
    }

    /// Creates one scratch topic (not one of the documented set) if it does not exist.
    pub fn create_topic(config: &KafkaConfig, name: &str, partitions: i32) -> Result<(), BusError> {
        create_topic_with(config, name, partitions, &[])
    }

    /// `create_topic` with topic-level settings (`max.message.bytes`, `min.insync.replicas`, ...).
    pub fn create_topic_with(config: &KafkaConfig, name: &str, partitions: i32, settings: &[(&str, &str)]) -> Result<(), BusError> {
        let admin: AdminClient<DefaultClientContext> = config.client_config(&[], &[]).create().map_err(|e| bus_error(&e))?;
        let options = AdminOptions::new()
            .operation_timeout(Some(config.request_timeout))
            .request_timeout(Some(config.request_timeout));
        let mut new = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
        for (k, v) in settings {
            new = new.set(k, v);
        }
        let results = futures_executor::block_on(admin.create_topics([&new], &options)).map_err(|e| bus_error(&e))?;
        for r in results {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => return Err(BusError::Unavailable(format!("creating topic {name}: {code}"))),
            }
        }
        std::thread::sleep(Duration::from_millis(500));
        Ok(())
    }

    fn wait_for_leaders(admin: &AdminClient<DefaultClientContext>, topics: &[TopicSpec], timeout: Duration) -> Result<(), BusError> {
        let deadline = Instant::now() + timeout;
        loop {
            let missing = match admin.inner().fetch_metadata(None, Duration::from_secs(5)) {
                Ok(md) => topics
                    .iter()
                    .filter(|spec| {
                        let Some(t) = md.topics().iter().find(|t| t.name() == spec.name) else {
                            return true;
                        };
                        t.error().is_some()
                            || t.partitions().len() != spec.partitions as usize
                            || t.partitions().iter().any(|p| p.leader() < 0 || p.error().is_some())
                    })
                    .map(|s| s.name)
                    .collect::<Vec<_>>(),
                Err(e) => return Err(bus_error(&e)),
            };
            if missing.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(BusError::Unavailable(format!(
                    "topics without leaders after {timeout:?}: {}",
                    missing.join(", ")
                )));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Commits, for `group`, the current end offset of every partition of `topics` (declared by
    /// `topology`, which gives their partition counts), so a new group starts with what is
    /// published from now on instead of the whole log. Refused by the broker while the group
    /// has live members.
    pub fn commit_group_at_end(
        config: &KafkaConfig,
        topology: &Topology,
        group: &str,
        topics: &[Topic],
    ) -> Result<Vec<(TopicPartition, u64)>, BusError> {
        let consumer: BaseConsumer<DefaultConsumerContext> = config
            .client_config(&[], &[("group.id", group), ("enable.auto.commit", "false")])
            .create()
            .map_err(|e| bus_error(&e))?;
        let mut tpl = TopicPartitionList::new();
        let mut ends = Vec::new();
        for &topic in topics {
            let partitions = topology
                .partitions(topic)
                .ok_or_else(|| BusError::UnknownTopic(format!("{topic} (not declared by topology `{}`)", topology.name)))?;
            for partition in 0..partitions {
                let (_, high) = consumer
                    .fetch_watermarks(topic, partition as i32, config.request_timeout)
                    .map_err(|e| bus_error(&e))?;
                let end = high.max(0) as u64;
                tpl.add_partition_offset(topic, partition as i32, Offset::Offset(end as i64))
                    .map_err(|e| bus_error(&e))?;
                ends.push((TopicPartition { topic, partition }, end));
            }
        }
        consumer.commit(&tpl, CommitMode::Sync).map_err(|e| bus_error(&e))?;
        Ok(ends)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_client_error_that_quotes_a_secret_is_masked() {
        // Given a configured secret, and an error whose text quotes it
        secrets::remember("hunter2-very-secret");
        let e = KafkaError::ClientCreation("SASL authentication with hunter2-very-secret refused by the broker".into());
        // When it becomes the bus's error
        let text = bus_error(&e).to_string();
        // Then the value is gone from the text, and the rest stays
        assert!(!text.contains("hunter2-very-secret"), "{text}");
        assert!(text.contains("refused by the broker"), "{text}");
    }

    use super::*;

    #[test]
    fn client_properties_parse_like_a_kafka_properties_file() {
        let text = "# security\nbootstrap.servers=b1:9093,b2:9093\nsecurity.protocol = SASL_SSL\n! also a comment\nsasl.mechanism: SCRAM-SHA-512\nsasl.jaas.config=x=y\n\n";
        let c = KafkaConfig::from_properties(text).unwrap();
        assert_eq!(c.bootstrap, "b1:9093,b2:9093");
        assert_eq!(c.properties.get("security.protocol").map(String::as_str), Some("SASL_SSL"));
        assert_eq!(c.properties.get("sasl.mechanism").map(String::as_str), Some("SCRAM-SHA-512"));
        assert_eq!(
            c.properties.get("sasl.jaas.config").map(String::as_str),
            Some("x=y"),
            "split at the first separator"
        );
        assert!(!c.properties.contains_key("bootstrap.servers"));
        assert!(
            KafkaConfig::from_properties("security.protocol=SSL").is_err(),
            "bootstrap.servers is required"
        );
        assert!(KafkaConfig::from_properties("bootstrap.servers=b\nnonsense").is_err());
    }

    #[test]
    fn user_properties_override_defaults_but_not_the_guarantees() {
        let c = KafkaConfig::new("b:9092")
            .set("linger.ms", "50")
            .set("enable.idempotence", "false")
            .set("ssl.ca.location", "/ca.pem");
        let cc = c.client_config(&[("linger.ms", "5")], &[("enable.idempotence", "true")]);
        assert_eq!(cc.get("bootstrap.servers"), Some("b:9092"));
        assert_eq!(cc.get("linger.ms"), Some("50"));
        assert_eq!(cc.get("enable.idempotence"), Some("true"));
        assert_eq!(cc.get("ssl.ca.location"), Some("/ca.pem"));
    }

    #[test]
    fn ssl_and_sasl_are_built_in() {
        // librdkafka checks security settings when a client is made: this fails without SSL.
        let c = KafkaConfig::new("127.0.0.1:1")
            .set("security.protocol", "SASL_SSL")
            .set("sasl.mechanism", "SCRAM-SHA-256")
            .set("sasl.username", "u")
            .set("sasl.password", "p");
        assert!(KafkaProducer::new(&c).is_ok());
    }

    #[test]
    fn each_class_of_client_error_maps_onto_its_bus_error() {
        use RDKafkaErrorCode as C;
        let class = |code| bus_error(&KafkaError::MessageProduction(code));
        // A record that can never be accepted: refused, not retried
        for code in [
            C::MessageSizeTooLarge,
            C::MessageBatchTooLarge,
            C::InvalidRecord,
            C::InvalidTimestamp,
            C::InvalidMessageSize,
        ] {
            assert!(matches!(class(code), BusError::Refused(_)), "{code:?}");
            assert!(!class(code).is_retriable(), "{code:?}");
        }
        // Authorisation, authentication and configuration: the stage stops with the error
        for code in [
            C::TopicAuthorizationFailed,
            C::ClusterAuthorizationFailed,
            C::SaslAuthenticationFailed,
            C::Authentication,
            C::InvalidConfig,
            C::ProducerFenced,
            C::UnsupportedVersion,
        ] {
            assert!(matches!(class(code), BusError::Fatal(_)), "{code:?}");
        }
        // A topic or partition that does not exist
        for code in [C::UnknownTopicOrPartition, C::UnknownTopic, C::UnknownPartition, C::InvalidTopic] {
            assert!(matches!(class(code), BusError::UnknownTopic(_)), "{code:?}");
        }
        // Transient: back off and retry
        for code in [
            C::NotEnoughReplicas,
            C::NotEnoughReplicasAfterAppend,
            C::LeaderNotAvailable,
            C::NotLeaderForPartition,
            C::RequestTimedOut,
            C::MessageTimedOut,
            C::AllBrokersDown,
            C::BrokerTransportFailure,
            C::QueueFull,
            C::InvalidMessage,
            C::ThrottlingQuotaExceeded,
        ] {
            assert!(class(code).is_retriable(), "{code:?}");
        }
        // Group membership lost
        for code in [C::RebalanceInProgress, C::FencedMemberEpoch, C::AssignmentLost] {
            assert!(matches!(class(code), BusError::NotAssigned(_)), "{code:?}");
        }
    }

    #[test]
    fn client_errors_map_onto_bus_errors() {
        use RDKafkaErrorCode as C;
        assert!(matches!(
            bus_error(&KafkaError::ConsumerCommit(C::RebalanceInProgress)),
            BusError::NotAssigned(_)
        ));
        assert!(matches!(
            bus_error(&KafkaError::ConsumerCommit(C::IllegalGeneration)),
            BusError::NotAssigned(_)
        ));
        assert!(matches!(
            bus_error(&KafkaError::ConsumerCommit(C::UnknownMemberId)),
            BusError::NotAssigned(_)
        ));
        assert!(matches!(
            bus_error(&KafkaError::ConsumerCommit(C::BrokerTransportFailure)),
            BusError::Unavailable(_)
        ));
        assert!(matches!(
            bus_error(&KafkaError::ConsumerCommit(C::RequestTimedOut)),
            BusError::Unavailable(_)
        ));
        assert!(matches!(
            bus_error(&KafkaError::MessageProduction(C::UnknownPartition)),
            BusError::UnknownTopic(_)
        ));
        assert!(matches!(
            bus_error(&KafkaError::Global(C::GroupAuthorizationFailed)),
            BusError::Fatal(_)
        ));
    }
}
