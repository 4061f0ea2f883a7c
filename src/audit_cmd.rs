//! `horizon audit verify PATH`: recomputes the hash chains of an audit log and names the first
//! record that was altered, removed or inserted. `horizon audit verify --brokers B [--export
//! PATH]`: reads every topic partition of a running deployment from offset 0, chains the records
//! (one chain per partition) and prints each partition's head; `--export` writes the chained log,
//! which `horizon audit verify PATH` then checks.

use horizon_core::audit::{verify, Chainer, Line};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

#[derive(clap::Subcommand)]
pub enum AuditCommand {
    /// Verify an audit log (as written by `horizon sim --out DIR`, DIR/audit.log).
    Verify {
        /// The audit log file (omit with --brokers).
        path: Option<PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        kafka: crate::run_cmd::KafkaArgs,
        /// With --brokers: write the chained log here.
        #[arg(long)]
        export: Option<PathBuf>,
    },
}

pub fn run(cmd: AuditCommand) -> Result<(), String> {
    match cmd {
        AuditCommand::Verify {
            path: None,
            json,
            kafka,
            export,
        } => {
            if kafka.brokers.is_none() && kafka.config.is_none() {
                return Err("audit verify: give an audit log PATH, or --brokers HOST:PORT for a running deployment".into());
            }
            let config = kafka.connect()?;
            let records = horizon_runtime::replica::read_log(&config, "horizon").map_err(|e| e.to_string())?;
            let mut chainer = Chainer::default();
            for r in &records {
                chainer.link(r.topic, r.partition, r.offset, &r.key, &r.value);
            }
            let seal = chainer.seal();
            if let Some(out) = &export {
                write_log(out, &records).map_err(|e| format!("--export {}: {e}", out.display()))?;
                // What was written must verify, and to the same heads.
                let report = verify(read_log(out)?).map_err(|t| format!("{}: {t}", out.display()))?;
                if report.records != records.len() as u64 {
                    return Err(format!(
                        "{}: {} records written, {} verified",
                        out.display(),
                        records.len(),
                        report.records
                    ));
                }
            }
            if json {
                let v = serde_json::json!({"records": records.len(), "heads": seal.heads, "exported": export});
                println!("{}", serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?);
            } else {
                println!(
                    "{}: {} records in {} partitions, chained",
                    config.bootstrap,
                    records.len(),
                    seal.heads.len()
                );
                for (chain, head) in &seal.heads {
                    println!("  {chain:<18} {:>8} records  head {}", head.records, hex(&head.hash));
                }
                if let Some(out) = &export {
                    println!("exported to {} (verified)", out.display());
                }
            }
            Ok(())
        }
        AuditCommand::Verify {
            path: Some(path), json, ..
        } => {
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

fn hex(h: &[u8]) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}
