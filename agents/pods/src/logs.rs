//! Containers' logs, as containerd writes them: one file per container instance,
//! `<pods>/logs/<namespace>_<name>_<uid>/<container>/<attempt>.log`, in the CRI format — a
//! line per write: `2026-12-07T14:27:03.683129508Z stdout F text`, where `F` ends a line and
//! `P` is part of one longer than the runtime's line size.
//!
//! [`read`] gives what `kubectl logs` shows: the text, optionally with each line's time,
//! the last `tailLines`, at most `limitBytes`.

use std::path::{Path, PathBuf};

/// What a log request asks for, as kubectl names it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    /// The container (required when the pod has several).
    pub container: Option<String>,
    /// Keep sending as the container writes.
    pub follow: bool,
    /// The instance before the current one.
    pub previous: bool,
    /// Prefix each line with its RFC 3339 time.
    pub timestamps: bool,
    /// Only the last lines.
    pub tail_lines: Option<usize>,
    /// At most this many bytes.
    pub limit_bytes: Option<usize>,
}

/// The log directory of a pod.
pub fn pod_dir(pods: &Path, namespace: &str, name: &str, uid: &str) -> PathBuf {
    pods.join("logs").join(format!("{namespace}_{name}_{uid}"))
}

/// The log directory of the current pod `namespace/name` on this host (the newest one, if a
/// pod of that name was replaced).
pub fn find_pod_dir(pods: &Path, namespace: &str, name: &str) -> Option<PathBuf> {
    let prefix = format!("{namespace}_{name}_");
    let entries = std::fs::read_dir(pods.join("logs")).ok()?;
    entries
        .filter_map(Result::ok)
        .filter(|e| {
            let file = e.file_name();
            let file = file.to_string_lossy();
            // The uid has no '_'; a longer name with this prefix has one more.
            file.strip_prefix(&prefix)
                .is_some_and(|uid| !uid.contains('_'))
        })
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
        .map(|e| e.path())
}

/// The containers that have logs in a pod's directory.
pub fn containers(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The log file of a container's current instance, or the one before it.
pub fn file(dir: &Path, container: &str, previous: bool) -> Option<PathBuf> {
    let mut attempts: Vec<(u32, PathBuf)> = std::fs::read_dir(dir.join(container))
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let attempt = name.strip_suffix(".log")?.parse().ok()?;
            Some((attempt, e.path()))
        })
        .collect();
    attempts.sort();
    let skip = usize::from(previous);
    attempts.into_iter().rev().nth(skip).map(|(_, p)| p)
}

/// One line of a CRI log file: its time, and its text with the partial flag.
#[derive(Debug, PartialEq, Eq)]
pub struct Line<'a> {
    /// RFC 3339 with nanoseconds.
    pub time: &'a str,
    /// The text, without the newline.
    pub text: &'a [u8],
    /// Whether the line goes on in the next record.
    pub partial: bool,
}

/// Parses one record; `None` for a record not in the CRI format.
pub fn parse(record: &[u8]) -> Option<Line<'_>> {
    let mut parts = record.splitn(4, |b| *b == b' ');
    let time = std::str::from_utf8(parts.next()?).ok()?;
    let stream = parts.next()?;
    if stream != b"stdout" && stream != b"stderr" {
        return None;
    }
    // The tag: P (partial) or F (full), possibly with more flags after a ':'.
    let tag = parts.next()?;
    let partial = match tag.first() {
        Some(b'P') => true,
        Some(b'F') => false,
        _ => return None,
    };
    let text = parts.next().unwrap_or_default();
    Some(Line {
        time,
        text,
        partial,
    })
}

/// Turns CRI records into what `kubectl logs` shows, keeping a partial line's tail for
/// the next call.
#[derive(Debug, Default)]
pub struct Decoder {
    timestamps: bool,
    /// A partial line's start, waiting for its end.
    pending: Vec<u8>,
    /// Bytes of an incomplete record.
    carry: Vec<u8>,
}

impl Decoder {
    /// A decoder; with `timestamps`, each line starts with its time.
    pub fn new(timestamps: bool) -> Decoder {
        Decoder {
            timestamps,
            ..Decoder::default()
        }
    }

    /// The lines complete in `bytes` (after what came before).
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Vec<u8>> {
        self.carry.extend_from_slice(bytes);
        let mut out = Vec::new();
        let mut start = 0;
        while let Some(end) = self.carry[start..].iter().position(|b| *b == b'\n') {
            let record = &self.carry[start..start + end];
            start += end + 1;
            let Some(line) = parse(record) else { continue };
            if self.pending.is_empty() && self.timestamps {
                self.pending.extend_from_slice(line.time.as_bytes());
                self.pending.push(b' ');
            }
            self.pending.extend_from_slice(line.text);
            if !line.partial {
                self.pending.push(b'\n');
                out.push(std::mem::take(&mut self.pending));
            }
        }
        self.carry.drain(..start);
        out
    }
}

/// What `kubectl logs` shows of the file at `path` as it is now.
pub fn read(path: &Path, options: &Options) -> std::io::Result<Vec<u8>> {
    let bytes = std::fs::read(path)?;
    Ok(render(
        &bytes,
        options,
        &mut Decoder::new(options.timestamps),
    ))
}

/// The lines of `bytes` that `options` ask for (the last `tailLines`, at most
/// `limitBytes`), through `decoder`.
fn render(bytes: &[u8], options: &Options, decoder: &mut Decoder) -> Vec<u8> {
    let mut lines = decoder.feed(bytes);
    if let Some(n) = options.tail_lines {
        let skip = lines.len().saturating_sub(n);
        lines.drain(..skip);
    }
    let mut out: Vec<u8> = lines.concat();
    if let Some(limit) = options.limit_bytes {
        out.truncate(limit);
    }
    out
}

/// Why a log cannot be read: an HTTP status and a message.
#[derive(Debug, PartialEq, Eq)]
pub struct LogError {
    /// 400 or 404.
    pub code: u16,
    /// What is wrong.
    pub message: String,
}

/// An open container log: what it holds now, and (following) the lines to come.
pub struct Log {
    /// The log as it is.
    pub head: Vec<u8>,
    /// With `follow`: the lines written from now until the container stops.
    pub follow: Option<tokio::sync::mpsc::Receiver<Vec<u8>>>,
}

/// Opens the log of pod `namespace/name` on this host, as `options` ask. `cri` tells when
/// a followed container has stopped.
pub fn open(
    cri: Option<crate::cri::Cri>,
    pods: &Path,
    namespace: &str,
    name: &str,
    options: &Options,
) -> Result<Log, LogError> {
    let not_found = |message: String| LogError { code: 404, message };
    let dir = find_pod_dir(pods, namespace, name).ok_or_else(|| {
        not_found(format!(
            "pod {namespace}/{name} has no logs on this node (it has not started here)"
        ))
    })?;
    let names = containers(&dir);
    let container = match &options.container {
        Some(c) => c.clone(),
        None => match names.as_slice() {
            [one] => one.clone(),
            _ => {
                return Err(LogError {
                    code: 400,
                    message: format!(
                        "a container name must be specified for pod {name}, choose one of: [{}]",
                        names.join(" ")
                    ),
                });
            }
        },
    };
    let path = file(&dir, &container, options.previous).ok_or_else(|| {
        if options.previous {
            LogError {
                code: 400,
                message: format!(
                    "previous terminated container \"{container}\" in pod \"{name}\" not found"
                ),
            }
        } else {
            not_found(format!(
                "container \"{container}\" in pod \"{name}\" has no log on this node yet"
            ))
        }
    })?;
    let bytes = std::fs::read(&path).map_err(|e| not_found(format!("{}: {e}", path.display())))?;
    let mut decoder = Decoder::new(options.timestamps);
    let head = render(&bytes, options, &mut decoder);
    let follow = (options.follow && !options.previous).then(|| {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let uid = dir
            .file_name()
            .and_then(|f| f.to_str())
            .and_then(|f| f.rsplit('_').next())
            .unwrap_or_default()
            .to_string();
        let offset = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
        tokio::spawn(follow(cri, path, offset, decoder, uid, container, tx));
        rx
    });
    Ok(Log { head, follow })
}

/// Sends what is written to `path` after `offset` until the container stops (or a newer
/// instance starts, or the reader goes away).
async fn follow(
    cri: Option<crate::cri::Cri>,
    path: PathBuf,
    mut offset: u64,
    mut decoder: Decoder,
    uid: String,
    container: String,
    tx: tokio::sync::mpsc::Sender<Vec<u8>>,
) {
    use std::io::{Read, Seek, SeekFrom};
    let mut idle = 0u32;
    loop {
        let mut grew = false;
        if let Ok(mut f) = std::fs::File::open(&path)
            && f.seek(SeekFrom::Start(offset)).is_ok()
        {
            let mut buf = Vec::new();
            if f.read_to_end(&mut buf).is_ok() && !buf.is_empty() {
                offset += u64::try_from(buf.len()).unwrap_or(0);
                grew = true;
                for line in decoder.feed(&buf) {
                    if tx.send(line).await.is_err() {
                        return;
                    }
                }
            }
        }
        if tx.is_closed() {
            return;
        }
        idle = if grew { 0 } else { idle + 1 };
        // Every second without output: is the container still the one running?
        if idle >= 4
            && idle.is_multiple_of(4)
            && !running(cri.as_ref(), &uid, &container, &path).await
        {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

/// Whether the instance writing `path` still runs.
async fn running(cri: Option<&crate::cri::Cri>, uid: &str, container: &str, path: &Path) -> bool {
    let Some(cri) = cri else {
        return path.exists();
    };
    let filter = crate::cri::v1::ContainerFilter {
        label_selector: [
            (crate::labels::POD_UID.to_string(), uid.to_string()),
            (
                crate::labels::CONTAINER_NAME.to_string(),
                container.to_string(),
            ),
        ]
        .into(),
        ..Default::default()
    };
    let request = crate::cri::v1::ListContainersRequest {
        filter: Some(filter),
    };
    let Ok(list) = cri.runtime.clone().list_containers(request).await else {
        return path.exists();
    };
    let newest = list
        .into_inner()
        .containers
        .into_iter()
        .max_by_key(|c| c.metadata.as_ref().map_or(0, |m| m.attempt));
    let attempt = path
        .file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.parse::<u32>().ok());
    newest.is_some_and(|c| {
        c.state == crate::cri::v1::ContainerState::ContainerRunning as i32
            && c.metadata.as_ref().map(|m| m.attempt) == attempt
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_become_lines_and_partials_join() {
        let mut d = Decoder::new(false);
        let lines = d.feed(
            b"2026-12-07T14:27:03.683129508Z stdout F tick 0\n2026-12-07T14:27:04Z stderr P par",
        );
        assert_eq!(lines, vec![b"tick 0\n".to_vec()]);
        let lines = d.feed(b"t\n2026-12-07T14:27:04Z stderr F ial\nnot a record\n");
        assert_eq!(lines, vec![b"partial\n".to_vec()]);
        let mut t = Decoder::new(true);
        let lines = t.feed(b"2026-12-07T14:27:03Z stdout F x\n");
        assert_eq!(lines, vec![b"2026-12-07T14:27:03Z x\n".to_vec()]);
    }

    #[test]
    fn tail_limit_and_previous_pick_what_kubectl_asks() {
        let dir = tempfile::tempdir().unwrap();
        let c = dir.path().join("web");
        std::fs::create_dir_all(&c).unwrap();
        std::fs::write(c.join("0.log"), b"T stdout F old\n").unwrap();
        std::fs::write(
            c.join("1.log"),
            b"T stdout F a\nT stdout F b\nT stdout F c\n",
        )
        .unwrap();
        let current = file(dir.path(), "web", false).unwrap();
        assert!(current.ends_with("1.log"));
        assert!(file(dir.path(), "web", true).unwrap().ends_with("0.log"));
        let options = Options {
            tail_lines: Some(2),
            ..Options::default()
        };
        assert_eq!(read(&current, &options).unwrap(), b"b\nc\n");
        let options = Options {
            limit_bytes: Some(3),
            ..Options::default()
        };
        assert_eq!(read(&current, &options).unwrap(), b"a\nb");
        assert_eq!(containers(dir.path()), vec!["web".to_string()]);
    }
}
