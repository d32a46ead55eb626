//! How the store lays its records out in redb values, each closed by a CRC-32 so that a
//! damaged file is reported as corrupt instead of being read as data.

use super::types::KeyValue;
use super::{Result, StoreError};

/// A version of a key in the history table: a value, or a tombstone for a delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Record {
    /// The key holds `value` from this revision on.
    Put {
        /// Revision that created the key.
        create_revision: u64,
        /// Writes since creation, 1 on create.
        version: u64,
        /// The value.
        value: Vec<u8>,
    },
    /// The key was deleted at this revision.
    Tombstone,
}

const PUT: u8 = 1;
const TOMBSTONE: u8 = 2;

// === impl Record ===

impl Record {
    /// Encodes the record with its checksum.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        match self {
            Record::Put {
                create_revision,
                version,
                value,
            } => {
                out.push(PUT);
                out.extend_from_slice(&create_revision.to_le_bytes());
                out.extend_from_slice(&version.to_le_bytes());
                out.extend_from_slice(value);
            }
            Record::Tombstone => out.push(TOMBSTONE),
        }
        seal(&mut out);
        out
    }

    fn encoded_len(&self) -> usize {
        match self {
            Record::Put { value, .. } => 1 + 16 + value.len() + 4,
            Record::Tombstone => 1 + 4,
        }
    }

    /// Decodes a record stored under `key` at `revision` (both only for the error message).
    pub(crate) fn decode(bytes: &[u8], key: &[u8], revision: u64) -> Result<Record> {
        let corrupt = |why: &str| StoreError::Corrupt {
            what: format!(
                "history record of key {:?} at revision {revision}: {why}",
                String::from_utf8_lossy(key)
            ),
        };
        let body = unseal(bytes).ok_or_else(|| corrupt("checksum mismatch"))?;
        match body.first() {
            Some(&PUT) if body.len() >= 17 => Ok(Record::Put {
                create_revision: u64_at(body, 1),
                version: u64_at(body, 9),
                value: body[17..].to_vec(),
            }),
            Some(&TOMBSTONE) if body.len() == 1 => Ok(Record::Tombstone),
            _ => Err(corrupt("unknown record layout")),
        }
    }

    /// The key-value this record stands for, or `None` for a tombstone.
    pub(crate) fn into_kv(
        self,
        key: &[u8],
        mod_revision: u64,
        keys_only: bool,
    ) -> Option<KeyValue> {
        match self {
            Record::Put {
                create_revision,
                version,
                value,
            } => Some(KeyValue {
                key: key.to_vec(),
                value: if keys_only { Vec::new() } else { value },
                create_revision,
                mod_revision,
                version,
            }),
            Record::Tombstone => None,
        }
    }
}

/// Encodes the keys changed at one revision (the changes table, read by watches).
pub(crate) fn encode_keys<'a>(keys: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for key in keys {
        out.extend_from_slice(&(key.len() as u32).to_le_bytes());
        out.extend_from_slice(key);
    }
    seal(&mut out);
    out
}

/// Decodes what [`encode_keys`] wrote for `revision`.
pub(crate) fn decode_keys(bytes: &[u8], revision: u64) -> Result<Vec<Vec<u8>>> {
    let corrupt = || StoreError::Corrupt {
        what: format!("change list of revision {revision}"),
    };
    let mut body = unseal(bytes).ok_or_else(corrupt)?;
    let mut keys = Vec::new();
    while !body.is_empty() {
        if body.len() < 4 {
            return Err(corrupt());
        }
        let len = u32::from_le_bytes([body[0], body[1], body[2], body[3]]) as usize;
        let key = body.get(4..4 + len).ok_or_else(corrupt)?;
        keys.push(key.to_vec());
        body = &body[4 + len..];
    }
    Ok(keys)
}

/// Appends the CRC-32 of `buf` to it (the Raft log seals its records the same way).
pub fn seal(buf: &mut Vec<u8>) {
    let crc = crc32fast::hash(buf);
    buf.extend_from_slice(&crc.to_le_bytes());
}

/// Checks and strips the CRC-32 that [`seal`] appended.
pub fn unseal(bytes: &[u8]) -> Option<&[u8]> {
    let split = bytes.len().checked_sub(4)?;
    let (body, crc) = bytes.split_at(split);
    (crc32fast::hash(body).to_le_bytes() == crc).then_some(body)
}

fn u64_at(buf: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    u64::from_le_bytes(b)
}

/// A position in a paged read: the revision of the first page and the last key returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ContinueToken {
    /// The revision every page is read at.
    pub(crate) revision: u64,
    /// The page after this one starts after this key.
    pub(crate) last_key: Vec<u8>,
    /// The upper bound of the original range (empty for none).
    pub(crate) end: Vec<u8>,
}

// === impl ContinueToken ===

impl ContinueToken {
    /// Encodes the token as lowercase hex, opaque to clients.
    pub(crate) fn encode(&self) -> String {
        let mut raw = Vec::with_capacity(16 + self.last_key.len() + self.end.len());
        raw.extend_from_slice(&self.revision.to_be_bytes());
        raw.extend_from_slice(&(self.last_key.len() as u32).to_be_bytes());
        raw.extend_from_slice(&self.last_key);
        raw.extend_from_slice(&self.end);
        seal(&mut raw);
        raw.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Decodes a token a client sent back.
    pub(crate) fn decode(token: &str) -> Result<ContinueToken> {
        let bad = || StoreError::InvalidContinue {
            token: token.chars().take(64).collect(),
        };
        if !token.len().is_multiple_of(2) || !token.is_ascii() {
            return Err(bad());
        }
        let raw = (0..token.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&token[i..i + 2], 16))
            .collect::<Result<Vec<u8>, _>>()
            .map_err(|_| bad())?;
        let body = unseal(&raw).ok_or_else(bad)?;
        if body.len() < 12 {
            return Err(bad());
        }
        let revision = u64::from_be_bytes(body[..8].try_into().map_err(|_| bad())?);
        let len = u32::from_be_bytes(body[8..12].try_into().map_err(|_| bad())?) as usize;
        let last_key = body.get(12..12 + len).ok_or_else(bad)?.to_vec();
        let end = body[12 + len..].to_vec();
        Ok(ContinueToken {
            revision,
            last_key,
            end,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_detect_damage() {
        let r = Record::Put {
            create_revision: 3,
            version: 2,
            value: b"hello".to_vec(),
        };
        let mut bytes = r.encode();
        assert_eq!(Record::decode(&bytes, b"k", 4).unwrap(), r);
        bytes[5] ^= 1;
        let err = Record::decode(&bytes, b"k", 4).unwrap_err();
        assert!(err.to_string().contains("checksum"), "{err}");
        assert_eq!(
            Record::decode(&Record::Tombstone.encode(), b"k", 1).unwrap(),
            Record::Tombstone
        );
        assert!(Record::decode(&[], b"k", 1).is_err());
    }

    #[test]
    fn key_lists_round_trip() {
        let keys: Vec<&[u8]> = vec![b"a", b"", b"long/key"];
        let enc = encode_keys(keys.iter().copied());
        assert_eq!(decode_keys(&enc, 1).unwrap(), keys);
        assert!(decode_keys(&enc[..enc.len() - 1], 1).is_err());
    }

    #[test]
    fn continue_tokens_round_trip_and_reject_garbage() {
        let t = ContinueToken {
            revision: 42,
            last_key: b"/registry/x".to_vec(),
            end: b"/registry0".to_vec(),
        };
        assert_eq!(ContinueToken::decode(&t.encode()).unwrap(), t);
        for bad in ["", "zz", "abc", "00", &t.encode()[2..]] {
            assert!(ContinueToken::decode(bad).is_err(), "{bad}");
        }
    }
}
