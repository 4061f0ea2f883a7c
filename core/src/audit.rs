//! The tamper-evident audit log: every record the system saw, each carrying a hash chained to
//! the previous record of its partition.
//!
//! `hash = blake3(prev hash ‖ len(topic) ‖ topic ‖ partition ‖ offset ‖ len(key) ‖ key ‖ value)`
//! (integers little-endian, lengths u32). Verification walks each
//! partition's chain and names the first record that was altered (its content no longer matches
//! its hash), removed (the next record's offset skips or its link points past a missing record)
//! or inserted (a record whose offset repeats or whose link does not continue the chain). The
//! head of every chain is sealed at the end of the log, so a truncated tail is caught too. An
//! attacker who rewrites a whole tail and the seal is not detectable from the file alone: keep
//! the seal (or the heads it prints) somewhere else. Pure: the caller reads and writes the file.

use crate::event::hex;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub type Hash = [u8; 32];

/// One line of the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
    #[serde(with = "b64")]
    pub key: Vec<u8>,
    #[serde(with = "b64")]
    pub value: Vec<u8>,
    #[serde(with = "hex_hash")]
    pub prev: Hash,
    #[serde(with = "hex_hash")]
    pub hash: Hash,
}

/// The last line: the head of every chain.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seal {
    pub heads: BTreeMap<String, SealedHead>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedHead {
    pub records: u64,
    #[serde(with = "hex_hash")]
    pub hash: Hash,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Line {
    Record(AuditRecord),
    Seal(Seal),
}

/// The bytes a link hashes, into `b` (cleared first).
fn link_bytes(b: &mut Vec<u8>, prev: &Hash, topic: &str, partition: u32, offset: u64, key: &[u8], value: &[u8]) {
    b.clear();
    b.extend_from_slice(prev);
    b.extend_from_slice(&(topic.len() as u32).to_le_bytes());
    b.extend_from_slice(topic.as_bytes());
    b.extend_from_slice(&partition.to_le_bytes());
    b.extend_from_slice(&offset.to_le_bytes());
    b.extend_from_slice(&(key.len() as u32).to_le_bytes());
    b.extend_from_slice(key);
    b.extend_from_slice(value);
}

/// `link_bytes` in a buffer of the calling thread (no allocation per record).
fn with_link_bytes<R>(prev: &Hash, topic: &str, partition: u32, offset: u64, key: &[u8], value: &[u8], f: impl FnOnce(&[u8]) -> R) -> R {
    thread_local! {
        static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    BUF.with(|buf| {
        let mut b = buf.borrow_mut();
        link_bytes(&mut b, prev, topic, partition, offset, key, value);
        f(&b)
    })
}

fn blake3(bytes: &[u8]) -> Hash {
    // One contiguous buffer: blake3 is much faster on one update than on many small ones.
    *blake3::hash(bytes).as_bytes()
}

pub fn chain_hash(prev: &Hash, topic: &str, partition: u32, offset: u64, key: &[u8], value: &[u8]) -> Hash {
    with_link_bytes(prev, topic, partition, offset, key, value, blake3)
}

fn chain_name(topic: &str, partition: u32) -> String {
    format!("{topic}/{partition}")
}

/// Appends records to the chains.
#[derive(Default)]
pub struct Chainer {
    // A handful of chains (one per partition): a vector searched linearly beats a map keyed by
    // an allocated name.
    heads: Vec<(String, u32, u64, Hash)>,
    /// The link being hashed, reused across records: no allocation and no thread-local lookup
    /// per record (a replay links millions).
    buf: Vec<u8>,
}

impl Chainer {
    /// Links one record into its partition's chain: returns (previous hash, this hash).
    pub fn link(&mut self, topic: &str, partition: u32, offset: u64, key: &[u8], value: &[u8]) -> (Hash, Hash) {
        let i = match self.heads.iter().position(|(t, p, _, _)| *p == partition && t == topic) {
            Some(i) => i,
            None => {
                self.heads.push((topic.to_string(), partition, 0, [0; 32]));
                self.heads.len() - 1
            }
        };
        let head = &mut self.heads[i];
        let prev = head.3;
        link_bytes(&mut self.buf, &prev, topic, partition, offset, key, value);
        let hash = blake3(&self.buf);
        head.2 += 1;
        head.3 = hash;
        (prev, hash)
    }

    pub fn record(&mut self, topic: &str, partition: u32, offset: u64, key: &[u8], value: &[u8]) -> AuditRecord {
        let (prev, hash) = self.link(topic, partition, offset, key, value);
        AuditRecord {
            topic: topic.to_string(),
            partition,
            offset,
            key: key.to_vec(),
            value: value.to_vec(),
            prev,
            hash,
        }
    }

    pub fn seal(&self) -> Seal {
        Seal {
            heads: self
                .heads
                .iter()
                .map(|(t, p, n, h)| (chain_name(t, *p), SealedHead { records: *n, hash: *h }))
                .collect(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Tamper {
    #[error("line {line}: {chain} offset {offset} was altered: its content does not match its hash")]
    Altered { line: usize, chain: String, offset: u64 },
    #[error("line {line}: {chain}: record(s) removed before offset {offset} (expected offset {expected})")]
    Removed {
        line: usize,
        chain: String,
        offset: u64,
        expected: u64,
    },
    #[error("line {line}: {chain} offset {offset} was inserted: it does not continue the chain")]
    Inserted { line: usize, chain: String, offset: u64 },
    #[error("{chain}: the log ends after {found} records but was sealed at {sealed}: records removed from the end")]
    Truncated { chain: String, found: u64, sealed: u64 },
    #[error("{chain}: its head does not match the seal")]
    SealMismatch { chain: String },
    #[error("the log has no seal line: it was cut short or never closed")]
    Unsealed,
    #[error("line {line}: {problem}")]
    Malformed { line: usize, problem: String },
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    pub records: u64,
    pub chains: BTreeMap<String, u64>,
    pub heads: BTreeMap<String, String>,
}

/// Verifies a log given as numbered lines (1-based), owned or borrowed, stopping at the first
/// problem.
pub fn verify<L: std::borrow::Borrow<Line>, I: IntoIterator<Item = (usize, L)>>(lines: I) -> Result<VerifyReport, Tamper> {
    struct Head {
        topic: String,
        partition: u32,
        expected_offset: Option<u64>,
        hash: Hash,
        records: u64,
    }
    // A handful of chains searched linearly by (topic, partition), as in `Chainer`: a chain's
    // name is formatted only for a report, not for every record.
    let mut heads: Vec<Head> = Vec::new();
    let mut sealed = None;
    let mut total = 0;
    for (line, entry) in lines {
        let r = match entry.borrow() {
            Line::Seal(s) => {
                sealed = Some(s.clone());
                continue;
            }
            Line::Record(r) if sealed.is_some() => {
                return Err(Tamper::Inserted {
                    line,
                    chain: chain_name(&r.topic, r.partition),
                    offset: r.offset,
                });
            }
            Line::Record(r) => r,
        };
        let i = match heads.iter().position(|h| h.partition == r.partition && h.topic == r.topic) {
            Some(i) => i,
            None => {
                heads.push(Head {
                    topic: r.topic.clone(),
                    partition: r.partition,
                    expected_offset: None,
                    hash: [0; 32],
                    records: 0,
                });
                heads.len() - 1
            }
        };
        let head = &mut heads[i];
        let chain = || chain_name(&r.topic, r.partition);
        let own = chain_hash(&r.prev, &r.topic, r.partition, r.offset, &r.key, &r.value);
        if r.prev == head.hash {
            if own != r.hash {
                return Err(Tamper::Altered {
                    line,
                    chain: chain(),
                    offset: r.offset,
                });
            }
            if head.expected_offset.is_some_and(|e| r.offset < e) {
                return Err(Tamper::Inserted {
                    line,
                    chain: chain(),
                    offset: r.offset,
                });
            }
        } else {
            // The link does not continue the chain: either this record was inserted (its offset
            // repeats or goes back), or records before it are missing (its offset jumps ahead).
            let expected = head.expected_offset.unwrap_or(0);
            if own == r.hash && r.offset > expected && head.expected_offset.is_some() {
                return Err(Tamper::Removed {
                    line,
                    chain: chain(),
                    offset: r.offset,
                    expected,
                });
            }
            if own == r.hash && head.expected_offset.is_none() && r.prev != [0; 32] {
                return Err(Tamper::Removed {
                    line,
                    chain: chain(),
                    offset: r.offset,
                    expected,
                });
            }
            return Err(Tamper::Inserted {
                line,
                chain: chain(),
                offset: r.offset,
            });
        }
        head.expected_offset = Some(r.offset + 1);
        head.hash = r.hash;
        head.records += 1;
        total += 1;
    }
    let seal = sealed.ok_or(Tamper::Unsealed)?;
    // By name from here on: the seal's order and the report's (a name is unique: the partition
    // is the digits after the last '/').
    let heads: BTreeMap<String, Head> = heads.into_iter().map(|h| (chain_name(&h.topic, h.partition), h)).collect();
    for (chain, s) in &seal.heads {
        let Some(h) = heads.get(chain) else {
            return Err(Tamper::Truncated {
                chain: chain.clone(),
                found: 0,
                sealed: s.records,
            });
        };
        if h.records < s.records {
            return Err(Tamper::Truncated {
                chain: chain.clone(),
                found: h.records,
                sealed: s.records,
            });
        }
        if h.hash != s.hash || h.records != s.records {
            return Err(Tamper::SealMismatch { chain: chain.clone() });
        }
    }
    if let Some(extra) = heads.keys().find(|c| !seal.heads.contains_key(*c)) {
        return Err(Tamper::SealMismatch { chain: extra.clone() });
    }
    Ok(VerifyReport {
        records: total,
        chains: heads.iter().map(|(c, h)| (c.clone(), h.records)).collect(),
        heads: heads.iter().map(|(c, h)| (c.clone(), hex(&h.hash))).collect(),
    })
}

mod b64 {
    use base64::Engine;
    pub fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = <String as serde::Deserialize>::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(serde::de::Error::custom)
    }
}

mod hex_hash {
    pub fn serialize<S: serde::Serializer>(v: &super::Hash, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::event::hex(v))
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<super::Hash, D::Error> {
        let text = <String as serde::Deserialize>::deserialize(d)?;
        let mut out = [0u8; 32];
        if text.len() != 64 {
            return Err(serde::de::Error::custom("a hash is 64 hex digits"));
        }
        for (i, chunk) in text.as_bytes().chunks(2).enumerate() {
            let s = std::str::from_utf8(chunk).map_err(serde::de::Error::custom)?;
            out[i] = u8::from_str_radix(s, 16).map_err(serde::de::Error::custom)?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two partitions, five records each, interleaved, then the seal.
    fn log() -> Vec<Line> {
        let mut c = Chainer::default();
        let mut lines = Vec::new();
        for o in 0..5u64 {
            for p in 0..2u32 {
                lines.push(Line::Record(c.record("t", p, o, b"k", format!("v{p}-{o}").as_bytes())));
            }
        }
        lines.push(Line::Seal(c.seal()));
        lines
    }

    fn check(lines: Vec<Line>) -> Result<VerifyReport, Tamper> {
        verify(lines.into_iter().enumerate().map(|(i, l)| (i + 1, l)))
    }

    fn record(lines: &mut [Line], i: usize) -> &mut AuditRecord {
        match &mut lines[i] {
            Line::Record(r) => r,
            _ => panic!(),
        }
    }

    #[test]
    fn an_untouched_log_verifies() {
        let report = check(log()).unwrap();
        assert_eq!(report.records, 10);
        assert_eq!(report.chains["t/0"], 5);
    }

    #[test]
    fn an_altered_record_is_named() {
        let mut l = log();
        record(&mut l, 4).value = b"forged".to_vec();
        assert_eq!(
            check(l).unwrap_err(),
            Tamper::Altered {
                line: 5,
                chain: "t/0".into(),
                offset: 2
            }
        );
    }

    #[test]
    fn a_removed_record_is_named_at_the_next_one() {
        let mut l = log();
        l.remove(4); // t/0 offset 2; line 5 is now t/1 offset 2, line 6 t/0 offset 3
        assert_eq!(
            check(l).unwrap_err(),
            Tamper::Removed {
                line: 6,
                chain: "t/0".into(),
                offset: 3,
                expected: 2
            }
        );
    }

    #[test]
    fn an_inserted_record_is_named() {
        let mut l = log();
        let mut forged = record(&mut l, 2).clone(); // t/0 offset 1
        forged.value = b"extra".to_vec();
        forged.hash = chain_hash(
            &forged.prev,
            &forged.topic,
            forged.partition,
            forged.offset,
            &forged.key,
            &forged.value,
        );
        l.insert(4, Line::Record(forged));
        assert_eq!(
            check(l).unwrap_err(),
            Tamper::Inserted {
                line: 5,
                chain: "t/0".into(),
                offset: 1
            }
        );
    }

    #[test]
    fn a_cut_tail_is_caught_by_the_seal_and_a_missing_seal_is_reported() {
        let mut l = log();
        l.remove(9); // t/1 offset 4, the last record before the seal
        assert_eq!(
            check(l).unwrap_err(),
            Tamper::Truncated {
                chain: "t/1".into(),
                found: 4,
                sealed: 5
            }
        );
        let mut l = log();
        l.pop();
        assert_eq!(check(l).unwrap_err(), Tamper::Unsealed);
    }

    #[test]
    fn a_chain_the_seal_does_not_name_is_reported_and_the_report_names_every_chain() {
        let report = check(log()).unwrap();
        let seal = match log().pop() {
            Some(Line::Seal(s)) => s,
            _ => panic!(),
        };
        assert_eq!(report.chains.keys().collect::<Vec<_>>(), ["t/0", "t/1"]);
        assert_eq!(report.heads["t/1"], hex(&seal.heads["t/1"].hash));
        let mut l = log();
        if let Some(Line::Seal(s)) = l.last_mut() {
            s.heads.remove("t/1");
        }
        assert_eq!(check(l).unwrap_err(), Tamper::SealMismatch { chain: "t/1".into() });
    }

    #[test]
    fn lines_round_trip_through_json() {
        for line in log() {
            let text = serde_json::to_string(&line).unwrap();
            assert_eq!(serde_json::from_str::<Line>(&text).unwrap(), line);
        }
    }
}
