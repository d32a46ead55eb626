//! A whole-store copy as one byte stream (what a Raft snapshot carries), and its restore.
//!
//! Layout: the magic `KEELSNP1`, a length-prefixed caller header, then one frame per table row
//! (`tag u8, key len u32, key, value len u32, value`), then the end tag and the CRC-32 of
//! everything before it. A restore checks the CRC before it commits, so a damaged or cut
//! stream changes nothing.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};

use redb::{ReadableDatabase, ReadableTable};

use super::{
    CHANGES, HISTORY, INDEX, META, META_COMPACTED, META_REVISION, Result, Revisions, Store,
    StoreError, Writer, caller_meta, db_err,
};

const MAGIC: &[u8; 8] = b"KEELSNP1";
const TAG_META: u8 = 1;
const TAG_INDEX: u8 = 2;
const TAG_HISTORY: u8 = 3;
const TAG_CHANGES: u8 = 4;
const TAG_END: u8 = 0xff;
/// A frame's key or value longer than this is damage, not data.
const MAX_FIELD: usize = 1 << 30;

// === impl Store ===

impl Store {
    /// Writes a consistent copy of the whole store to `out` and returns `out`. `header` sees
    /// the caller's meta entries as of the copy (see [`Writer::put_meta`]); the bytes it
    /// returns open the stream and come back from [`read_header`]. Everything the copy holds
    /// is durable on disk before the copy is written.
    pub fn dump<W: Write>(
        &self,
        out: W,
        header: impl FnOnce(&BTreeMap<String, Vec<u8>>) -> Vec<u8>,
    ) -> Result<W> {
        let rtx = self.inner.db.begin_read().map_err(db_err("begin read"))?;
        // Commits this copy sees may not have been synced; the copy must not be ahead of disk.
        self.sync()?;
        let io = |e| StoreError::SnapshotIo {
            op: "write",
            source: e,
        };
        let mut out = HashingWriter::new(out);
        let header = header(&caller_meta(&rtx)?);
        out.write_all(MAGIC).map_err(io)?;
        write_field(&mut out, &header).map_err(io)?;

        let meta = rtx.open_table(META).map_err(db_err("open meta"))?;
        for item in meta.iter().map_err(db_err("scan meta"))? {
            let (k, v) = item.map_err(db_err("scan meta"))?;
            write_frame(&mut out, TAG_META, k.value().as_bytes(), v.value()).map_err(io)?;
        }
        let index = rtx.open_table(INDEX).map_err(db_err("open index"))?;
        for item in index.iter().map_err(db_err("scan index"))? {
            let (k, v) = item.map_err(db_err("scan index"))?;
            write_frame(&mut out, TAG_INDEX, k.value(), &v.value().to_le_bytes()).map_err(io)?;
        }
        let history = rtx.open_table(HISTORY).map_err(db_err("open history"))?;
        for item in history.iter().map_err(db_err("scan history"))? {
            let (k, v) = item.map_err(db_err("scan history"))?;
            let (key, rev) = k.value();
            let mut composite = key.to_vec();
            composite.extend_from_slice(&rev.to_le_bytes());
            write_frame(&mut out, TAG_HISTORY, &composite, v.value()).map_err(io)?;
        }
        let changes = rtx.open_table(CHANGES).map_err(db_err("open changes"))?;
        for item in changes.iter().map_err(db_err("scan changes"))? {
            let (k, v) = item.map_err(db_err("scan changes"))?;
            write_frame(&mut out, TAG_CHANGES, &k.value().to_le_bytes(), v.value()).map_err(io)?;
        }
        out.write_all(&[TAG_END]).map_err(io)?;
        let crc = out.hasher.clone().finalize();
        let mut inner = out.inner;
        inner.write_all(&crc.to_le_bytes()).map_err(io)?;
        inner.flush().map_err(io)?;
        Ok(inner)
    }
}

/// Reads the caller header at the start of a stream that [`Store::dump`] wrote.
pub fn read_header(input: &mut impl Read) -> Result<Vec<u8>> {
    let mut magic = [0u8; 8];
    input.read_exact(&mut magic).map_err(read_err)?;
    if &magic != MAGIC {
        return Err(StoreError::Corrupt {
            what: "snapshot stream does not start with the snapshot magic".into(),
        });
    }
    read_field(input)
}

// === impl Writer ===

impl Writer {
    /// Replaces the whole store with the copy in `input`. Nothing changes unless the whole
    /// stream is read and its checksum matches; live watches re-read from disk after the
    /// commit.
    pub fn restore(&mut self, input: impl Read) -> Result<()> {
        let mut input = HashingReader::new(input);
        read_header(&mut input)?;
        let wtx = self.wtx();
        wtx.delete_table(META).map_err(db_err("clear meta"))?;
        wtx.delete_table(INDEX).map_err(db_err("clear index"))?;
        wtx.delete_table(HISTORY).map_err(db_err("clear history"))?;
        wtx.delete_table(CHANGES).map_err(db_err("clear changes"))?;
        let mut meta = wtx.open_table(META).map_err(db_err("open meta"))?;
        let mut index = wtx.open_table(INDEX).map_err(db_err("open index"))?;
        let mut history = wtx.open_table(HISTORY).map_err(db_err("open history"))?;
        let mut changes = wtx.open_table(CHANGES).map_err(db_err("open changes"))?;
        let mut revs = Revisions {
            current: 0,
            compacted: 0,
        };
        loop {
            let mut tag = [0u8];
            input.read_exact(&mut tag).map_err(read_err)?;
            if tag[0] == TAG_END {
                break;
            }
            let key = read_field(&mut input)?;
            let value = read_field(&mut input)?;
            let bad = |what: &str| StoreError::Corrupt {
                what: format!("snapshot frame: {what}"),
            };
            match tag[0] {
                TAG_META => {
                    let key =
                        std::str::from_utf8(&key).map_err(|_| bad("meta key is not UTF-8"))?;
                    let as_u64 = || -> Result<u64> {
                        Ok(u64::from_le_bytes(
                            value
                                .as_slice()
                                .try_into()
                                .map_err(|_| bad("revision is not 8 bytes"))?,
                        ))
                    };
                    match key {
                        META_REVISION => revs.current = as_u64()?,
                        META_COMPACTED => revs.compacted = as_u64()?,
                        _ => {}
                    }
                    meta.insert(key, value.as_slice())
                        .map_err(db_err("restore meta"))?;
                }
                TAG_INDEX => {
                    let rev = u64::from_le_bytes(
                        value
                            .as_slice()
                            .try_into()
                            .map_err(|_| bad("index value is not 8 bytes"))?,
                    );
                    index
                        .insert(key.as_slice(), rev)
                        .map_err(db_err("restore index"))?;
                }
                TAG_HISTORY => {
                    let split = key
                        .len()
                        .checked_sub(8)
                        .ok_or_else(|| bad("history key too short"))?;
                    let (k, rev) = key.split_at(split);
                    let rev = u64::from_le_bytes(rev.try_into().map_err(|_| bad("history key"))?);
                    history
                        .insert((k, rev), value.as_slice())
                        .map_err(db_err("restore history"))?;
                }
                TAG_CHANGES => {
                    let rev = u64::from_le_bytes(
                        key.as_slice()
                            .try_into()
                            .map_err(|_| bad("changes key is not 8 bytes"))?,
                    );
                    changes
                        .insert(rev, value.as_slice())
                        .map_err(db_err("restore changes"))?;
                }
                other => return Err(bad(&format!("unknown tag {other}"))),
            }
        }
        let expected = input.hasher.clone().finalize();
        let mut crc = [0u8; 4];
        input.inner.read_exact(&mut crc).map_err(read_err)?;
        if u32::from_le_bytes(crc) != expected {
            return Err(StoreError::Corrupt {
                what: "snapshot stream checksum mismatch".into(),
            });
        }
        drop((meta, index, history, changes));
        self.mark_reset(revs);
        Ok(())
    }
}

fn read_err(e: io::Error) -> StoreError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        StoreError::Corrupt {
            what: "snapshot stream is cut short".into(),
        }
    } else {
        StoreError::SnapshotIo {
            op: "read",
            source: e,
        }
    }
}

fn write_field(out: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    out.write_all(&(bytes.len() as u32).to_le_bytes())?;
    out.write_all(bytes)
}

fn write_frame(out: &mut impl Write, tag: u8, key: &[u8], value: &[u8]) -> io::Result<()> {
    out.write_all(&[tag])?;
    write_field(out, key)?;
    write_field(out, value)
}

fn read_field(input: &mut impl Read) -> Result<Vec<u8>> {
    let mut len = [0u8; 4];
    input.read_exact(&mut len).map_err(read_err)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FIELD {
        return Err(StoreError::Corrupt {
            what: format!("snapshot field of {len} bytes"),
        });
    }
    let mut buf = vec![0u8; len];
    input.read_exact(&mut buf).map_err(read_err)?;
    Ok(buf)
}

struct HashingWriter<W> {
    inner: W,
    hasher: crc32fast::Hasher,
}

impl<W: Write> HashingWriter<W> {
    fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: crc32fast::Hasher::new(),
        }
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

struct HashingReader<R> {
    inner: R,
    hasher: crc32fast::Hasher,
}

impl<R: Read> HashingReader<R> {
    fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: crc32fast::Hasher::new(),
        }
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}
