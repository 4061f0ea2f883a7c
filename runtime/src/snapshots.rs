//! Snapshots on local disk, written atomically: the new snapshot goes to a temporary file that
//! is flushed to disk and then renamed over the old one, and the directory is synced. A crash
//! at any point leaves either the previous snapshot or the new one, never a torn file; a file
//! that fails to decode anyway (a disk fault) is refused by the processor, which then replays.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

pub struct SnapshotDir {
    dir: PathBuf,
}

impl SnapshotDir {
    pub fn open(dir: &Path) -> std::io::Result<SnapshotDir> {
        fs::create_dir_all(dir)?;
        Ok(SnapshotDir { dir: dir.to_path_buf() })
    }

    fn path(&self, service: &str, task: u32) -> PathBuf {
        self.dir.join(format!("{service}-{task}.snap"))
    }

    /// Replaces the snapshot of `service`'s task atomically.
    pub fn save(&self, service: &str, task: u32, bytes: &[u8]) -> std::io::Result<()> {
        let target = self.path(service, task);
        let tmp = target.with_extension("snap.tmp");
        {
            let mut f = OpenOptions::new().create(true).write(true).truncate(true).open(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
        }
        fs::rename(&tmp, &target)?;
        // The rename is durable only once the directory entry is.
        File::open(&self.dir)?.sync_all()
    }

    /// Every saved snapshot of `service`, by task (temporary files of interrupted writes are
    /// ignored).
    pub fn load_all(&self, service: &str) -> std::io::Result<Vec<(u32, Vec<u8>)>> {
        let prefix = format!("{service}-");
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let name = entry?.file_name().to_string_lossy().to_string();
            let Some(task) = name
                .strip_prefix(&prefix)
                .and_then(|r| r.strip_suffix(".snap"))
                .and_then(|t| t.parse().ok())
            else {
                continue;
            };
            out.push((task, fs::read(self.dir.join(&name))?));
        }
        out.sort_by_key(|(t, _)| *t);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> SnapshotDir {
        let d = std::env::temp_dir().join(format!("horizon-snapshots-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        SnapshotDir::open(&d).unwrap()
    }

    #[test]
    fn a_crash_while_writing_leaves_the_previous_snapshot_usable() {
        let d = dir("crash");
        d.save("market", 0, b"first").unwrap();
        // A writer that died mid-write leaves a partial temporary file and no rename.
        fs::write(d.path("market", 0).with_extension("snap.tmp"), b"fir").unwrap();
        assert_eq!(d.load_all("market").unwrap(), vec![(0, b"first".to_vec())]);
        d.save("market", 0, b"second").unwrap();
        assert_eq!(d.load_all("market").unwrap(), vec![(0, b"second".to_vec())]);
    }

    #[test]
    fn services_and_tasks_are_kept_apart() {
        let d = dir("apart");
        d.save("market", 2, b"m2").unwrap();
        d.save("market", 0, b"m0").unwrap();
        d.save("signals", 0, b"s0").unwrap();
        assert_eq!(d.load_all("market").unwrap(), vec![(0, b"m0".to_vec()), (2, b"m2".to_vec())]);
        assert_eq!(d.load_all("signals").unwrap(), vec![(0, b"s0".to_vec())]);
    }
}
