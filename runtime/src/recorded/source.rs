//! Opening a recorded file as a stream of lines: plain text, gzip or a zip archive with one
//! entry, told apart by their first bytes (not by the file name), read in constant memory.

use flate2::read::{DeflateDecoder, MultiGzDecoder};
use flate2::CrcReader;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

const BUFFER: usize = 256 * 1024;

/// How a file is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Container {
    Plain,
    Gzip,
    Zip,
}

/// The container of a file, from its magic bytes.
pub fn sniff(path: &Path) -> io::Result<Container> {
    let mut head = [0u8; 4];
    let mut f = File::open(path)?;
    let mut n = 0;
    while n < head.len() {
        match f.read(&mut head[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(match &head[..n] {
        [0x1f, 0x8b, ..] => Container::Gzip,
        [b'P', b'K', 3, 4] => Container::Zip,
        _ => Container::Plain,
    })
}

/// The file's text as a buffered stream, decompressed on the fly.
pub fn open(path: &Path) -> io::Result<Box<dyn BufRead + Send>> {
    Ok(match sniff(path)? {
        Container::Plain => Box::new(BufReader::with_capacity(BUFFER, File::open(path)?)),
        Container::Gzip => Box::new(BufReader::with_capacity(
            BUFFER,
            MultiGzDecoder::new(BufReader::with_capacity(BUFFER, File::open(path)?)),
        )),
        Container::Zip => Box::new(BufReader::with_capacity(BUFFER, open_zip_entry(path)?)),
    })
}

/// The one file in a zip archive (Binance's public data ships one CSV per archive), streamed:
/// the zip crate reads the directory; the entry's bytes are inflated from a second handle, so
/// nothing but the decoder's window is held, and its CRC-32 and length are checked at the end.
fn open_zip_entry(path: &Path) -> io::Result<Box<dyn Read + Send>> {
    let invalid = |m: String| io::Error::new(io::ErrorKind::InvalidData, m);
    let mut archive = zip::ZipArchive::new(File::open(path)?).map_err(|e| invalid(format!("not a readable zip archive: {e}")))?;
    let files: Vec<usize> = (0..archive.len())
        .filter(|&i| archive.by_index_raw(i).map(|f| f.is_file()).unwrap_or(false))
        .collect();
    let [index] = files[..] else {
        return Err(invalid(format!(
            "the zip archive holds {} files; expected exactly one",
            files.len()
        )));
    };
    let entry = archive.by_index_raw(index).map_err(|e| invalid(e.to_string()))?;
    if entry.encrypted() {
        return Err(invalid(format!("zip entry `{}` is encrypted", entry.name())));
    }
    let (method, start, compressed, size, crc) = (
        entry.compression(),
        entry.data_start(),
        entry.compressed_size(),
        entry.size(),
        entry.crc32(),
    );
    let name = entry.name().to_string();
    drop(entry);
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(start))?;
    let raw = BufReader::with_capacity(BUFFER, file).take(compressed);
    let data: Box<dyn Read + Send> = match method {
        m if m == zip::CompressionMethod::STORE => Box::new(raw),
        // A constant, not the variant: the variant exists only with zip's own inflater.
        m if m == zip::CompressionMethod::DEFLATE => Box::new(DeflateDecoder::new(raw)),
        other => {
            return Err(invalid(format!(
                "zip entry `{name}` uses {other:?} compression; only stored and deflate are read"
            )))
        }
    };
    Ok(Box::new(Checked {
        inner: CrcReader::new(data),
        crc,
        size,
        name,
    }))
}

/// Fails the read at the end of a zip entry whose length or CRC-32 is not the directory's.
struct Checked<R> {
    inner: CrcReader<R>,
    crc: u32,
    size: u64,
    name: String,
}

impl<R: Read> Read for Checked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            let (crc, len) = (self.inner.crc().sum(), self.inner.crc().amount() as u64);
            if len != self.size || crc != self.crc {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "zip entry `{}` is corrupt or truncated: {len} bytes with CRC {crc:08x}, the directory says {} bytes with CRC {:08x}",
                        self.name, self.size, self.crc
                    ),
                ));
            }
        }
        Ok(n)
    }
}

/// Lines with their 1-based numbers, reusing one buffer: constant memory per line.
pub struct Lines {
    inner: Box<dyn BufRead + Send>,
    buf: Vec<u8>,
    number: u64,
}

impl Lines {
    pub fn new(inner: Box<dyn BufRead + Send>) -> Lines {
        Lines {
            inner,
            buf: Vec::with_capacity(512),
            number: 0,
        }
    }

    /// The next line without its terminator (`\n` or `\r\n`), or `None` at the end.
    pub fn next_line(&mut self) -> Option<io::Result<&[u8]>> {
        self.buf.clear();
        match self.inner.read_until(b'\n', &mut self.buf) {
            Ok(0) => None,
            Ok(_) => {
                self.number += 1;
                let mut end = self.buf.len();
                if self.buf[end - 1] == b'\n' {
                    end -= 1;
                    if end > 0 && self.buf[end - 1] == b'\r' {
                        end -= 1;
                    }
                }
                Some(Ok(&self.buf[..end]))
            }
            Err(e) => {
                self.number += 1;
                Some(Err(e))
            }
        }
    }

    /// The number of the line last returned.
    pub fn number(&self) -> u64 {
        self.number
    }
}
