//! Putting bytes on disk: a request body streamed into a new file while its MD5 is
//! computed, then made durable (the file and its directory fsynced) and handed, on the same
//! blocking thread, to the index commit that makes it visible.
//!
//! The async side only gathers the body's chunks into batches of about a MiB; a blocking
//! thread hashes and writes them with vectored writes (no copy of the chunks), so a slow
//! disk never stalls the runtime and receiving overlaps writing. Past a few MiB a helper
//! thread fdatasyncs what is already written while more arrives, so the final fsync has
//! little left to do: the disk works during the upload instead of after it.

use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc as sync_mpsc;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use md5::{Digest, Md5};
use tokio::sync::mpsc;

use super::{Body, BoxError, Result, StorageError, io_err};

/// Chunks are handed to the writer in batches of at least this many bytes.
const BATCH: usize = 1 << 20;
/// Batches in flight between the body and the writer.
const IN_FLIGHT: usize = 4;
/// The writer asks for an early fdatasync each time this much more has been written.
const FLUSH_AHEAD: u64 = 8 << 20;

/// A new file that is removed when dropped, unless kept: a write that fails or is
/// abandoned at any point leaves nothing behind.
#[derive(Debug)]
pub(super) struct NewFile {
    /// Its random name.
    pub id: String,
    /// Its path.
    pub path: PathBuf,
    keep: bool,
}

/// A file written whole and durable, not yet referenced by the index.
#[derive(Debug)]
pub(super) struct Written {
    pub file: NewFile,
    pub size: u64,
    pub md5: [u8; 16],
}

/// How many more bytes a body may have before the bucket is over its byte quota.
#[derive(Debug, Clone)]
pub(super) struct Budget {
    pub bucket: String,
    pub limit: u64,
    pub used: u64,
}

enum Msg {
    Data(Vec<Bytes>),
    Finish,
}

/// What the async side saw of the body.
enum Pumped {
    /// All of it went to the writer.
    Done,
    /// The writer stopped early; its result says why.
    WriterGone,
}

// === impl NewFile ===

impl NewFile {
    pub(super) fn new(dir: &Path, id: String) -> NewFile {
        NewFile {
            path: dir.join(&id),
            id,
            keep: false,
        }
    }

    /// The index references the file now: it stays.
    pub(super) fn keep(mut self) {
        self.keep = true;
    }
}

impl Drop for NewFile {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        match std::fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            // Left for the next `Store::open`, which removes unreferenced files.
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot remove an abandoned file")
            }
        }
    }
}

/// Streams `body` into `file` (in `dir`), fsyncs both, checks the declared length and MD5,
/// and runs `commit` on the writer's thread. If the caller stops waiting, the write either
/// finishes and commits (once the whole body was received) or removes the file.
pub(super) async fn stream_to_file<S, E, T>(
    body: Body<S>,
    file: NewFile,
    dir: PathBuf,
    budget: Option<Budget>,
    commit: impl FnOnce(Written) -> Result<T> + Send + 'static,
) -> Result<T>
where
    S: Stream<Item = Result<Bytes, E>>,
    E: Into<BoxError>,
    T: Send + 'static,
{
    let Body {
        stream,
        length,
        md5,
    } = body;
    let (tx, rx) = mpsc::channel(IN_FLIGHT);
    let writer = tokio::task::spawn_blocking(move || {
        let written = write_file(file, &dir, rx)?;
        if let Some(expected) = md5
            && expected != written.md5
        {
            return Err(StorageError::BadDigest {
                expected: hex(&expected),
                actual: hex(&written.md5),
            });
        }
        commit(written)
    });
    match pump(stream, &tx, length, budget.as_ref()).await {
        Ok(Pumped::Done) => {
            // A failed send means the writer already stopped: its result says why.
            let _ = tx.send(Msg::Finish).await;
            drop(tx);
            join(writer).await
        }
        Ok(Pumped::WriterGone) => {
            drop(tx);
            join(writer).await
        }
        Err(e) => {
            // Without `Finish` the writer removes the file; wait so that it is gone when
            // the caller hears of the failure.
            drop(tx);
            let _ = join(writer).await;
            Err(e)
        }
    }
}

/// Reads the body into batches for the writer, checking its length against what was
/// declared and the byte budget.
async fn pump<S, E>(
    stream: S,
    tx: &mpsc::Sender<Msg>,
    declared: Option<u64>,
    budget: Option<&Budget>,
) -> Result<Pumped>
where
    S: Stream<Item = Result<Bytes, E>>,
    E: Into<BoxError>,
{
    let mut stream = std::pin::pin!(stream);
    let mut received = 0u64;
    let mut batch = Vec::new();
    let mut batched = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| StorageError::Body { source: e.into() })?;
        received += chunk.len() as u64;
        if let Some(declared) = declared
            && received > declared
        {
            return Err(StorageError::IncompleteBody { declared, received });
        }
        if let Some(b) = budget
            && b.used + received > b.limit
        {
            return Err(StorageError::QuotaExceeded {
                bucket: b.bucket.clone(),
                what: "bytes",
                limit: b.limit,
                needed: b.used + received,
            });
        }
        batched += chunk.len();
        batch.push(chunk);
        if batched >= BATCH {
            batched = 0;
            if tx
                .send(Msg::Data(std::mem::take(&mut batch)))
                .await
                .is_err()
            {
                return Ok(Pumped::WriterGone);
            }
        }
    }
    if let Some(declared) = declared
        && received != declared
    {
        return Err(StorageError::IncompleteBody { declared, received });
    }
    if !batch.is_empty() && tx.send(Msg::Data(batch)).await.is_err() {
        return Ok(Pumped::WriterGone);
    }
    Ok(Pumped::Done)
}

/// The writer: batches to the file until `Finish`, then fsync of the file and its directory.
fn write_file(file: NewFile, dir: &Path, mut rx: mpsc::Receiver<Msg>) -> Result<Written> {
    let path = file.path.clone();
    let mut out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(io_err("create", &path))?;
    let mut md5 = Md5::new();
    let mut size = 0u64;
    std::thread::scope(|scope| {
        let mut flusher = Flusher::default();
        loop {
            match rx.blocking_recv() {
                Some(Msg::Data(chunks)) => {
                    for chunk in &chunks {
                        md5.update(chunk);
                        size += chunk.len() as u64;
                    }
                    write_all_vectored(&mut out, &chunks).map_err(io_err("write", &path))?;
                    flusher.wrote(scope, &out, size);
                }
                Some(Msg::Finish) => break,
                // The body failed or the caller went away: `file` removes itself.
                None => return Err(StorageError::Cancelled),
            }
        }
        flusher.finish().map_err(io_err("fdatasync", &path))
    })?;
    out.sync_data().map_err(io_err("fdatasync", &path))?;
    sync_dir(dir)?;
    Ok(Written {
        file,
        size,
        md5: md5.finalize().into(),
    })
}

/// A helper thread that fdatasyncs a file being written, started once it grows past
/// [`FLUSH_AHEAD`], so that the disk writes during the upload instead of after it.
#[derive(Default)]
struct Flusher<'scope> {
    running: Option<(
        sync_mpsc::SyncSender<()>,
        std::thread::ScopedJoinHandle<'scope, io::Result<()>>,
    )>,
    asked_at: u64,
}

impl<'scope> Flusher<'scope> {
    fn wrote<'env>(
        &mut self,
        scope: &'scope std::thread::Scope<'scope, 'env>,
        file: &File,
        size: u64,
    ) {
        if size < self.asked_at + FLUSH_AHEAD {
            return;
        }
        self.asked_at = size;
        if self.running.is_none() {
            // Without a second handle there is no early flush; the final fsync does it all.
            let Ok(clone) = file.try_clone() else { return };
            let (tx, rx) = sync_mpsc::sync_channel::<()>(1);
            let handle = scope.spawn(move || {
                while rx.recv().is_ok() {
                    clone.sync_data()?;
                }
                Ok(())
            });
            self.running = Some((tx, handle));
        }
        if let Some((tx, _)) = &self.running {
            // Full means a flush is already asked for: it will cover this data too.
            let _ = tx.try_send(());
        }
    }

    fn finish(self) -> io::Result<()> {
        let Some((tx, handle)) = self.running else {
            return Ok(());
        };
        drop(tx);
        handle
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the flush thread panicked")))
    }
}

fn write_all_vectored(out: &mut File, chunks: &[Bytes]) -> io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = chunks.iter().map(|c| IoSlice::new(c)).collect();
    let mut slices = &mut slices[..];
    IoSlice::advance_slices(&mut slices, 0);
    while !slices.is_empty() {
        match out.write_vectored(slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Makes the entries of `dir` durable (a new file's name, a removal).
pub(super) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync", dir))
}

/// Fills `file` with the data of `sources` one after the other, durably. The kernel copies
/// (`copy_file_range`), sharing extents where the file system can.
pub(super) fn concat(file: &NewFile, sources: &mut [File], dir: &Path) -> Result<u64> {
    let mut out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&file.path)
        .map_err(io_err("create", &file.path))?;
    let mut size = 0;
    for source in sources {
        size += io::copy(source, &mut out).map_err(io_err("copy into", &file.path))?;
    }
    out.sync_data().map_err(io_err("fdatasync", &file.path))?;
    sync_dir(dir)?;
    Ok(size)
}

/// Gives `file` the data of `source` (open at `source_path`): a hard link when it can,
/// since data files never change, else a copy. Either way durable, and independent of
/// the source's name: removing that later leaves this one whole.
pub(super) fn link_or_copy(
    file: &NewFile,
    source_path: &Path,
    source: &mut File,
    dir: &Path,
) -> Result<()> {
    if std::fs::hard_link(source_path, &file.path).is_ok() {
        return sync_dir(dir);
    }
    concat(file, std::slice::from_mut(source), dir).map(drop)
}

/// Lower-case hex of `bytes`.
pub(super) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    out
}

/// Waits for a blocking task; a panic in it is re-raised here.
pub(super) async fn join<T>(handle: tokio::task::JoinHandle<Result<T>>) -> Result<T> {
    match handle.await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(StorageError::Cancelled),
    }
}
