//! The client half of SPDY/3.1 framing, as much as the container runtime's stream server
//! needs: Kubernetes' exec and attach protocols (`v4.channel.k8s.io`) run over SPDY there,
//! one stream per channel (error, stdin, stdout, stderr, resize) named by a `streamtype`
//! header.
//!
//! - Frames: control frames (SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS, PING, GOAWAY,
//!   HEADERS, WINDOW_UPDATE) and data frames, each an 8-byte header and a payload of at most
//!   2^24 - 1 bytes.
//! - Header blocks are a zlib stream over the whole connection, primed with SPDY's
//!   dictionary. This client writes its blocks as deflate *stored* blocks, each header
//!   block ended by a sync flush as zlib's own are — a valid zlib stream that any inflater
//!   reads, needing no compressor — and never reads the server's
//!   (a SYN_REPLY's headers say nothing exec needs), so it keeps no inflater either.
//! - Flow control: the runtime's SPDY library (spdystream) does none; neither does this.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// SPDY's header dictionary (draft 3), which the zlib stream's header names by its Adler-32.
const DICTIONARY: &[u8] = include_bytes!("spdy-dictionary.bin");
/// The version in every control frame.
const VERSION: u16 = 3;
/// The largest payload a frame can carry.
pub const MAX_PAYLOAD: usize = (1 << 24) - 1;
/// The flag that ends a stream's half.
const FLAG_FIN: u8 = 0x01;

const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const PING: u16 = 6;
const GOAWAY: u16 = 7;

/// A frame the server sent, as far as a client of the stream server cares.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// Data on a stream; `fin` ends the server's half of it.
    Data {
        /// The stream.
        stream: u32,
        /// Whether it is the last.
        fin: bool,
        /// The bytes.
        data: Vec<u8>,
    },
    /// The server accepted a stream (its headers are skipped).
    Reply {
        /// The stream.
        stream: u32,
        /// Whether the server's half is already ended.
        fin: bool,
    },
    /// The server reset a stream.
    Reset {
        /// The stream.
        stream: u32,
        /// SPDY's status code.
        status: u32,
    },
    /// A ping, to be answered with the same id.
    Ping(u32),
    /// The server ends the session.
    GoAway,
    /// A frame with nothing for the client (SETTINGS, HEADERS, WINDOW_UPDATE, ...).
    Other,
}

/// Writes a client's frames; it holds the header zlib stream's state.
pub struct Writer<W> {
    out: W,
    /// Whether the zlib stream's header was written (it starts the first header block).
    started: bool,
}

// === impl Writer ===

impl<W: AsyncWrite + Unpin> Writer<W> {
    /// A writer on `out`, a connection that just switched to SPDY/3.1.
    pub fn new(out: W) -> Writer<W> {
        Writer {
            out,
            started: false,
        }
    }

    /// Opens stream `stream` (odd, increasing) with `headers`.
    pub async fn open(&mut self, stream: u32, headers: &[(&str, &str)]) -> std::io::Result<()> {
        let block = self.header_block(headers);
        let mut payload = Vec::with_capacity(10 + block.len());
        payload.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
        payload.extend_from_slice(&0u32.to_be_bytes()); // associated-to stream
        payload.extend_from_slice(&[0, 0]); // priority, slot
        payload.extend_from_slice(&block);
        self.control(SYN_STREAM, 0, &payload).await
    }

    /// Sends `data` on `stream`, in frames of at most [`MAX_PAYLOAD`] bytes; `fin` ends the
    /// client's half (an empty `data` with `fin` only ends it).
    pub async fn data(&mut self, stream: u32, data: &[u8], fin: bool) -> std::io::Result<()> {
        let mut chunks = data.chunks(MAX_PAYLOAD).peekable();
        if chunks.peek().is_none() {
            return self.data_frame(stream, &[], fin).await;
        }
        while let Some(chunk) = chunks.next() {
            let last = chunks.peek().is_none();
            self.data_frame(stream, chunk, fin && last).await?;
        }
        Ok(())
    }

    /// Answers a ping.
    pub async fn pong(&mut self, id: u32) -> std::io::Result<()> {
        self.control(PING, 0, &id.to_be_bytes()).await
    }

    /// Ends the session (GOAWAY, status OK) and flushes.
    pub async fn go_away(&mut self) -> std::io::Result<()> {
        self.control(GOAWAY, 0, &[0; 8]).await
    }

    async fn data_frame(&mut self, stream: u32, data: &[u8], fin: bool) -> std::io::Result<()> {
        let mut frame = Vec::with_capacity(8 + data.len());
        frame.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
        frame.push(if fin { FLAG_FIN } else { 0 });
        frame.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
        frame.extend_from_slice(data);
        self.out.write_all(&frame).await?;
        self.out.flush().await
    }

    async fn control(&mut self, kind: u16, flags: u8, payload: &[u8]) -> std::io::Result<()> {
        let mut frame = Vec::with_capacity(8 + payload.len());
        frame.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
        frame.extend_from_slice(&kind.to_be_bytes());
        frame.push(flags);
        frame.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
        frame.extend_from_slice(payload);
        self.out.write_all(&frame).await?;
        self.out.flush().await
    }

    /// `headers` as the next piece of the connection's zlib stream: the zlib header (with
    /// the dictionary's id) before the first block, then stored deflate blocks.
    fn header_block(&mut self, headers: &[(&str, &str)]) -> Vec<u8> {
        let mut plain = (headers.len() as u32).to_be_bytes().to_vec();
        for (name, value) in headers {
            for part in [name.to_ascii_lowercase().as_bytes(), value.as_bytes()] {
                plain.extend_from_slice(&(part.len() as u32).to_be_bytes());
                plain.extend_from_slice(part);
            }
        }
        let mut out = Vec::with_capacity(plain.len() + 16);
        if !self.started {
            // CMF 0x78 (deflate, 32 KiB window); FLG 0xBB (FDICT, FCHECK so that the pair is
            // a multiple of 31), then the dictionary's id.
            out.extend_from_slice(&[0x78, 0xbb]);
            out.extend_from_slice(&adler32(DICTIONARY).to_be_bytes());
            self.started = true;
        }
        for chunk in plain.chunks(u16::MAX as usize) {
            let len = chunk.len() as u16;
            out.push(0); // not final, stored; the block header ends on a byte boundary
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(&(!len).to_le_bytes());
            out.extend_from_slice(chunk);
        }
        // A sync flush (an empty stored block), as zlib ends each SPDY header block: an
        // inflater hands out a stored block's bytes only when a block boundary makes it
        // flush (Go's does at this empty block, not at the end of the data block).
        out.extend_from_slice(&[0, 0, 0, 0xff, 0xff]);
        out
    }
}

/// Reads the next frame from `input`; `None` at the end of the connection.
pub async fn read<R: AsyncRead + Unpin>(input: &mut R) -> std::io::Result<Option<Frame>> {
    let mut head = [0u8; 8];
    match input.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let flags = head[4];
    let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
    let mut payload = vec![0u8; len];
    input.read_exact(&mut payload).await?;
    let word = |at: usize| -> std::io::Result<u32> {
        payload
            .get(at..at + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "a SPDY control frame too short for its kind",
                )
            })
    };
    if head[0] & 0x80 == 0 {
        let stream = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        return Ok(Some(Frame::Data {
            stream,
            fin: flags & FLAG_FIN != 0,
            data: payload,
        }));
    }
    let kind = u16::from_be_bytes([head[2], head[3]]);
    Ok(Some(match kind {
        SYN_REPLY => Frame::Reply {
            stream: word(0)? & 0x7fff_ffff,
            fin: flags & FLAG_FIN != 0,
        },
        RST_STREAM => Frame::Reset {
            stream: word(0)? & 0x7fff_ffff,
            status: word(4)?,
        },
        PING => Frame::Ping(word(0)?),
        GOAWAY => Frame::GoAway,
        _ => Frame::Other,
    }))
}

/// Adler-32, which names a zlib stream's dictionary.
fn adler32(bytes: &[u8]) -> u32 {
    const MOD: u32 = 65521;
    let (mut a, mut b) = (1u32, 0u32);
    for chunk in bytes.chunks(5552) {
        for &byte in chunk {
            a += u32::from(byte);
            b += a;
        }
        a %= MOD;
        b %= MOD;
    }
    (b << 16) | a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dictionary_is_spdy_3s() {
        // The id zlib (and Go's compress/zlib, which the runtime uses) computes for it.
        assert_eq!(DICTIONARY.len(), 1423);
        assert_eq!(adler32(DICTIONARY), 0xe3c6_a7c2);
        assert_eq!(adler32(b"Wikipedia"), 0x11e6_0398);
    }

    #[tokio::test]
    async fn frames_round_trip_and_header_blocks_are_stored_zlib() {
        let mut w = Writer::new(Vec::new());
        w.open(1, &[("streamType", "error")]).await.unwrap();
        let first = w.out.clone();
        // Control bit, version 3, SYN_STREAM; the zlib header with the dictionary id.
        assert_eq!(&first[..4], &[0x80, 0x03, 0x00, 0x01]);
        assert_eq!(&first[18..24], &[0x78, 0xbb, 0xe3, 0xc6, 0xa7, 0xc2]);
        // One stored block: 0x00, LEN, NLEN, then the pairs (the name lowercased).
        let plain = &first[29..];
        assert_eq!(&plain[..8], &[0, 0, 0, 1, 0, 0, 0, 10]);
        assert_eq!(&plain[8..18], b"streamtype");
        w.out.clear();
        w.open(3, &[("streamtype", "stdin")]).await.unwrap();
        // The zlib header starts only the first block.
        assert_eq!(w.out[18], 0);
        w.out.clear();
        w.data(3, b"hello", true).await.unwrap();
        w.pong(7).await.unwrap();
        let bytes = w.out.clone();
        let mut input = bytes.as_slice();
        assert_eq!(
            read(&mut input).await.unwrap(),
            Some(Frame::Data {
                stream: 3,
                fin: true,
                data: b"hello".to_vec()
            })
        );
        assert_eq!(read(&mut input).await.unwrap(), Some(Frame::Ping(7)));
        assert_eq!(read(&mut input).await.unwrap(), None);
        // A truncated control frame is an error, not a panic.
        let mut short: &[u8] = &[0x80, 3, 0, 3, 0, 0, 0, 2, 0, 0];
        assert!(read(&mut short).await.is_err());
    }
}
