//! Reading a VM's serial console log: its rotated files in order, the tail of it, text since
//! the last boot, and following it as it grows (through rotations).
//!
//! The agent writes a line starting with [`BOOT_MARK`] before each start of QEMU, so that
//! what the current boot printed can be told from what earlier boots printed.

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

/// How the agent marks a start of QEMU in the console log.
pub const BOOT_MARK: &str = "[keel] starting QEMU";
/// How often a follower looks for new output.
const FOLLOW_TICK: Duration = Duration::from_millis(200);

/// A console log: `path`, and `path.1` … `path.<keep>` older.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Console {
    /// The current file.
    pub path: PathBuf,
    /// How many rotated files there may be.
    pub keep: u32,
}

// === impl Console ===

impl Console {
    /// Appends a boot mark line.
    pub fn mark_boot(&self, what: &str) -> std::io::Result<()> {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        writeln!(
            file,
            "\n{BOOT_MARK} at {} ({what})",
            keel_schemas::time::now_rfc3339()
        )
    }

    /// The whole log, oldest file first.
    pub fn read_all(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for i in (1..=self.keep).rev() {
            if let Ok(bytes) = std::fs::read(numbered(&self.path, i)) {
                out.extend_from_slice(&bytes);
            }
        }
        if let Ok(bytes) = std::fs::read(&self.path) {
            out.extend_from_slice(&bytes);
        }
        out
    }

    /// What the current boot printed: the log after the last boot mark.
    pub fn since_boot(&self) -> String {
        let all = self.read_all();
        let text = String::from_utf8_lossy(&all);
        match text.rfind(BOOT_MARK) {
            Some(i) => text[i..]
                .split_once('\n')
                .map(|(_, rest)| rest.to_string())
                .unwrap_or_default(),
            None => text.into_owned(),
        }
    }

    /// The last `lines` lines (all when `None`), at most `limit` bytes of them.
    pub fn tail(&self, lines: Option<usize>, limit: Option<usize>) -> Vec<u8> {
        let all = self.read_all();
        let mut start = 0;
        if let Some(n) = lines {
            // Skip a final newline: it ends the last line rather than starting another.
            let body = all.strip_suffix(b"\n").unwrap_or(&all);
            let mut seen = 0;
            start = body.len();
            while start > 0 {
                if body[start - 1] == b'\n' {
                    seen += 1;
                    if seen == n {
                        break;
                    }
                }
                start -= 1;
            }
            if n == 0 {
                start = all.len();
            }
        }
        if let Some(limit) = limit {
            start = start.max(all.len().saturating_sub(limit));
        }
        all[start..].to_vec()
    }

    /// Sends what is appended to the log from now on into `to`, following rotations, until
    /// the receiver is dropped.
    pub async fn follow(self, to: mpsc::Sender<Bytes>) {
        let mut position = std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0);
        let mut inode = std::fs::metadata(&self.path).map(|m| m.ino()).ok();
        loop {
            if to.is_closed() {
                return;
            }
            let now = std::fs::metadata(&self.path).ok();
            let rotated = now.as_ref().map(|m| m.ino()) != inode;
            if rotated {
                // The file we read became `.1`: finish it, then start the new one.
                let old = numbered(&self.path, 1);
                if inode.is_some()
                    && std::fs::metadata(&old)
                        .map(|m| Some(m.ino()) == inode)
                        .unwrap_or(false)
                    && let Some(rest) = read_from(&old, position)
                    && !rest.is_empty()
                    && to.send(rest).await.is_err()
                {
                    return;
                }
                position = 0;
                inode = now.as_ref().map(|m| m.ino());
            }
            if let Some(chunk) = read_from(&self.path, position)
                && !chunk.is_empty()
            {
                position += chunk.len() as u64;
                if to.send(chunk).await.is_err() {
                    return;
                }
            }
            tokio::time::sleep(FOLLOW_TICK).await;
        }
    }
}

fn numbered(path: &Path, i: u32) -> PathBuf {
    PathBuf::from(format!("{}.{i}", path.display()))
}

fn read_from(path: &Path, position: u64) -> Option<Bytes> {
    let mut file = std::fs::File::open(path).ok()?;
    file.seek(SeekFrom::Start(position)).ok()?;
    let mut buf = Vec::new();
    file.take(1 << 20).read_to_end(&mut buf).ok()?;
    Some(Bytes::from(buf))
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_workload::shim::{ConsoleLog, rotate};

    #[test]
    fn tails_and_boots_read_across_rotated_files() {
        let dir = tempfile::tempdir().unwrap();
        let console = Console {
            path: dir.path().join("console.log"),
            keep: 2,
        };
        std::fs::write(numbered(&console.path, 2), "one\ntwo\n").unwrap();
        std::fs::write(numbered(&console.path, 1), "three\n").unwrap();
        std::fs::write(&console.path, "four\nfive\n").unwrap();
        assert_eq!(console.tail(Some(2), None), b"four\nfive\n");
        assert_eq!(console.tail(Some(4), None), b"two\nthree\nfour\nfive\n");
        assert_eq!(console.tail(None, Some(5)), b"five\n");
        assert_eq!(console.tail(Some(0), None), b"");
        assert_eq!(console.tail(Some(100), None).len(), 24);
        console.mark_boot("generation 2").unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&console.path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"six\n"))
            .unwrap();
        assert_eq!(console.since_boot(), "six\n");
    }

    #[tokio::test]
    async fn a_follower_sees_new_lines_through_a_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        std::fs::write(&path, "old\n").unwrap();
        let console = Console {
            path: path.clone(),
            keep: 1,
        };
        let (tx, mut rx) = mpsc::channel(16);
        tokio::spawn(console.follow(tx));
        tokio::time::sleep(Duration::from_millis(300)).await;
        let append = |text: &str| {
            std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()))
                .unwrap()
        };
        append("a\n");
        let mut got = String::new();
        while !got.contains("a\n") {
            got.push_str(&String::from_utf8_lossy(&rx.recv().await.unwrap()));
        }
        append("b\n");
        rotate(&ConsoleLog {
            path: path.clone(),
            max_bytes: 1,
            keep: 1,
        });
        append("c\n");
        while !got.contains("c\n") {
            got.push_str(&String::from_utf8_lossy(&rx.recv().await.unwrap()));
        }
        assert_eq!(got, "a\nb\nc\n", "nothing old, nothing lost, in order");
    }
}
