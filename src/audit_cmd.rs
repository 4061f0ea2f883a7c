//! `horizon audit verify PATH`: recomputes the hash chains of an audit log and names the first
//! record that was altered, removed or inserted.

use horizon_core::audit::{verify, Chainer, Line};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

#[derive(clap::Subcommand)]
pub enum AuditCommand {
    /// Verify an audit log (as written by `horizon sim --out DIR`, DIR/audit.log).
    Verify {
        path: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cmd: AuditCommand) -> Result<(), String> {
    match cmd {
        AuditCommand::Verify { path, json } => {
            let lines = read_log(&path)?;
            let report = verify(lines).map_err(|t| format!("{}: {t}", path.display()))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?);
            } else {
                println!(
                    "{}: {} records in {} chains, every link intact and sealed",
                    path.display(),
                    report.records,
                    report.chains.len()
                );
                for (chain, head) in &report.heads {
                    println!("  {chain:<18} {:>8} records  head {head}", report.chains[chain]);
                }
            }
            Ok(())
        }
    }
}

/// Reads an audit log's lines, numbered from 1.
pub fn read_log(path: &Path) -> Result<Vec<(usize, Line)>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut lines = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let text = line.map_err(|e| format!("{}: line {}: {e}", path.display(), i + 1))?;
        if text.trim().is_empty() {
            continue;
        }
        let parsed: Line =
            serde_json::from_str(&text).map_err(|e| format!("{}: line {}: not an audit record: {e}", path.display(), i + 1))?;
        lines.push((i + 1, parsed));
    }
    Ok(lines)
}

/// Writes every record of the given partitions, chained, then the seal.
pub fn write_log<'a, I>(path: &Path, records: I) -> std::io::Result<()>
where
    I: IntoIterator<Item = &'a horizon_core::bus::Record>,
{
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut chainer = Chainer::default();
    for r in records {
        let line = Line::Record(chainer.record(r.topic, r.partition, r.offset, &r.key, &r.value));
        serde_json::to_writer(&mut out, &line)?;
        out.write_all(b"\n")?;
    }
    serde_json::to_writer(&mut out, &Line::Seal(chainer.seal()))?;
    out.write_all(b"\n")?;
    out.flush()
}
