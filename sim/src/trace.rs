//! The trace of a run: a blake3 digest over the canonical sequence of what happened (deliveries,
//! commits, published records with their bytes, faults, step outcomes, each with its virtual
//! time), and optionally the same sequence as readable lines (the schedule `horizon replay
//! --schedule` prints). Two runs of one seed must produce the same digest.

use horizon_core::bus::TopicPartition;

pub struct Trace {
    hasher: blake3::Hasher,
    lines: Option<Vec<String>>,
    entries: u64,
}

impl Trace {
    pub fn new(render: bool) -> Trace {
        Trace {
            hasher: blake3::Hasher::new(),
            lines: render.then(Vec::new),
            entries: 0,
        }
    }

    pub fn rendering(&self) -> bool {
        self.lines.is_some()
    }

    /// Adds one canonical entry: a tag and its numbers.
    pub fn entry(&mut self, tag: u8, numbers: &[u64]) {
        self.entries += 1;
        self.hasher.update(&[tag]);
        for n in numbers {
            self.hasher.update(&n.to_le_bytes());
        }
    }

    pub fn bytes(&mut self, b: &[u8]) {
        self.hasher.update(&(b.len() as u64).to_le_bytes());
        self.hasher.update(b);
    }

    /// A readable line, built only when rendering.
    pub fn line(&mut self, now_ns: u64, text: impl FnOnce() -> String) {
        if let Some(lines) = &mut self.lines {
            lines.push(format!("{:>14}  {}", format_ns(now_ns), text()));
        }
    }

    pub fn entries(&self) -> u64 {
        self.entries
    }

    pub fn digest(&self) -> String {
        self.hasher.finalize().to_hex()[..32].to_string()
    }

    pub fn take_lines(&mut self) -> Vec<String> {
        self.lines.take().unwrap_or_default()
    }
}

/// `12m03.456789s`: virtual time with microseconds.
pub fn format_ns(ns: u64) -> String {
    let us = ns / 1_000;
    let (m, rest) = (us / 60_000_000, us % 60_000_000);
    if m > 0 {
        format!("{m}m{:02}.{:06}s", rest / 1_000_000, rest % 1_000_000)
    } else {
        format!("{}.{:06}s", rest / 1_000_000, rest % 1_000_000)
    }
}

/// `market.feed/3 [10..14)` ranges, for lines.
pub fn ranges(rs: &[(TopicPartition, u64, u64)]) -> String {
    rs.iter()
        .map(|(tp, a, b)| format!("{tp} [{a}..{b})"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The first line where two renderings differ: (index, left, right).
pub fn first_difference(a: &[String], b: &[String]) -> Option<(usize, String, String)> {
    let n = a.len().max(b.len());
    (0..n).find_map(|i| {
        let (x, y) = (a.get(i), b.get(i));
        (x != y).then(|| {
            (
                i,
                x.cloned().unwrap_or_else(|| "<end>".into()),
                y.cloned().unwrap_or_else(|| "<end>".into()),
            )
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_follows_every_entry() {
        let mut a = Trace::new(false);
        let mut b = Trace::new(true);
        for t in [&mut a, &mut b] {
            t.entry(1, &[2, 3]);
            t.bytes(b"value");
        }
        assert_eq!(a.digest(), b.digest());
        b.entry(1, &[4]);
        assert_ne!(a.digest(), b.digest());
        assert_eq!(format_ns(61_500_000_000), "1m01.500000s");
    }

    #[test]
    fn first_difference_names_the_step() {
        let a = vec!["x".to_string(), "y".into()];
        let b = vec!["x".to_string(), "z".into(), "w".into()];
        assert_eq!(first_difference(&a, &b), Some((1, "y".into(), "z".into())));
        assert_eq!(first_difference(&a, &a), None);
    }
}
