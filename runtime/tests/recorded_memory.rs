//! Reading is streamed: a recording far larger than any buffer is read with the process's peak
//! memory unchanged. One test alone in its own binary, so no other test's allocations blur the
//! peak it reads from `/proc/self/status`.

use horizon_runtime::recorded::{Format, ReadOptions, RecordReader};
use std::io::{BufReader, Read};

/// A tardis trades file generated on the fly: `lines` rows after the header, never in memory.
struct Synthetic {
    lines: u64,
    next: u64,
    pending: Vec<u8>,
    at: usize,
}

impl Read for Synthetic {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.at == self.pending.len() {
            self.pending.clear();
            self.at = 0;
            if self.next == 0 {
                self.pending
                    .extend_from_slice(b"exchange,symbol,timestamp,local_timestamp,id,side,price,amount\n");
            }
            while self.pending.len() < 64 * 1024 && self.next < self.lines {
                let i = self.next;
                let line = format!(
                    "binance-futures,BTCUSDT,{},{},{},{},{}.{:02},0.{:03}\n",
                    1_582_329_602_000_000 + i * 1_000,
                    1_582_329_602_100_000 + i * 1_000,
                    i,
                    ["sell", "buy", "buy"][(i % 3) as usize],
                    9_600 + i % 200,
                    i % 100,
                    1 + i % 999
                );
                self.pending.extend_from_slice(line.as_bytes());
                self.next += 1;
            }
            if self.pending.is_empty() {
                return Ok(0);
            }
        }
        let n = buf.len().min(self.pending.len() - self.at);
        buf[..n].copy_from_slice(&self.pending[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

fn peak_rss_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_recording_much_larger_than_memory_buffers_is_read_in_constant_memory() {
    let read = |lines: u64| {
        let input = Synthetic {
            lines,
            next: 0,
            pending: Vec::new(),
            at: 0,
        };
        let reader = RecordReader::from_reader(
            "synthetic.csv",
            Box::new(BufReader::new(input)),
            Format::TardisTrades,
            ReadOptions::default(),
        )
        .unwrap();
        let mut n = 0u64;
        for r in reader {
            r.unwrap();
            n += 1;
        }
        n
    };
    // Warm up (allocator arenas, buffers), then read 25 times as much: about 100 MB of text.
    assert_eq!(read(40_000), 40_000);
    let before = peak_rss_kb();
    assert_eq!(read(1_000_000), 1_000_000);
    let grown = peak_rss_kb().saturating_sub(before);
    assert!(grown < 8 * 1024, "peak memory grew by {grown} kB reading ~100 MB");
}
