//! The store's request and response types: keys and ranges, transactions, reads and watch events.

use serde::{Deserialize, Serialize};

/// A key and its value at one revision, with the key's MVCC counters (etcd's `mvccpb.KeyValue`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    /// The key.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// The value; empty for a tombstone in a delete event.
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// The revision of the write that created the key (reset when it is deleted and put again).
    pub create_revision: u64,
    /// The revision of the last write to the key.
    pub mod_revision: u64,
    /// How many times the key was written since it was created: 1 on create.
    pub version: u64,
}

/// A set of keys: one key, every key under a prefix, or a half-open range `[start, end)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyRange {
    /// Exactly this key.
    Key(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Every key that starts with these bytes (all keys for an empty prefix).
    Prefix(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Keys `k` with `start <= k < end`; an empty `end` means no upper bound.
    Range {
        /// First key, inclusive.
        #[serde(with = "serde_bytes")]
        start: Vec<u8>,
        /// Upper bound, exclusive; empty for none.
        #[serde(with = "serde_bytes")]
        end: Vec<u8>,
    },
}

/// What a [`Compare`] looks at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareTarget {
    /// The key's `mod_revision` (0 when the key does not exist).
    ModRevision(u64),
    /// The key's `create_revision` (0 when the key does not exist).
    CreateRevision(u64),
    /// The key's `version` (0 when the key does not exist).
    Version(u64),
    /// The key's value (a value compare on an absent key fails, whatever the operator).
    Value(#[serde(with = "serde_bytes")] Vec<u8>),
}

/// How a [`Compare`] relates the key's field to the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareOp {
    /// Field equals the target.
    Equal,
    /// Field differs from the target.
    NotEqual,
    /// Field is less than the target.
    Less,
    /// Field is greater than the target.
    Greater,
}

/// A condition of a transaction. For a prefix or range, every key in it must satisfy the
/// condition. As in etcd, when no key matches, the counters compare as 0 (so
/// `ModRevision == 0` means "absent") and a value compare fails.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    /// The keys compared.
    pub range: KeyRange,
    /// The relation.
    pub op: CompareOp,
    /// The field and the value compared with.
    pub target: CompareTarget,
}

/// One operation of a transaction branch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Write `value` under `key`.
    Put {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// The new value.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    /// Delete every key in the range.
    Delete(KeyRange),
    /// Read the keys in the range, as earlier operations of the branch left them.
    Get(KeyRange),
}

/// An atomic transaction: if every compare holds, run `success`, otherwise run `failure`.
/// Every write of a transaction gets the same new revision; a transaction that writes nothing
/// does not advance the revision.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Txn {
    /// Conditions, all of which must hold for `success` to run.
    pub compares: Vec<Compare>,
    /// Operations run when every compare holds.
    pub success: Vec<Op>,
    /// Operations run otherwise.
    pub failure: Vec<Op>,
}

/// The result of one [`Op`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpResult {
    /// A put; `prev` is the value it replaced.
    Put {
        /// The key's previous value, if it existed.
        prev: Option<KeyValue>,
    },
    /// A delete; the keys it removed, with their last values.
    Delete {
        /// The deleted keys as they were before the delete.
        deleted: Vec<KeyValue>,
    },
    /// A read.
    Get {
        /// The keys found, in key order.
        kvs: Vec<KeyValue>,
    },
}

/// The outcome of a [`Txn`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnResponse {
    /// Whether every compare held (and so `success` ran).
    pub succeeded: bool,
    /// The store's revision after the transaction: the revision of its writes if it wrote.
    pub revision: u64,
    /// One result per operation of the branch that ran.
    pub results: Vec<OpResult>,
}

/// A transaction the store refuses as a whole, before changing anything. Every replica refuses
/// it the same way, so it is an answer, not a failure of the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum TxnError {
    /// A key is written twice in one branch (put twice, or put and deleted).
    #[error("key {key:?} is written more than once in one transaction")]
    DuplicateKey {
        /// The key, lossily decoded for display.
        key: String,
    },
    /// A put with an empty key.
    #[error("a key must not be empty")]
    EmptyKey,
}

/// A compaction the store refuses; every replica refuses it the same way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum CompactError {
    /// The history up to that revision is already gone.
    #[error("revision {requested} is already compacted (compacted up to {compacted})")]
    AlreadyCompacted {
        /// The revision asked for.
        requested: u64,
        /// The store's compaction revision.
        compacted: u64,
    },
    /// The revision has not happened yet.
    #[error("cannot compact up to revision {requested}: the current revision is {current}")]
    FutureRevision {
        /// The revision asked for.
        requested: u64,
        /// The store's current revision.
        current: u64,
    },
}

/// A read of keys at one revision.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeRequest {
    /// The keys to read; ignored, but for its revision and position, when `continue_token` is set.
    pub range: Option<KeyRange>,
    /// The revision to read at; `None` for the latest. Must not be compacted.
    pub revision: Option<u64>,
    /// At most this many keys; 0 for no limit.
    pub limit: usize,
    /// A token from a previous page: read on from there, at that page's revision.
    pub continue_token: Option<String>,
    /// Leave values out (only keys and counters).
    pub keys_only: bool,
}

/// The answer to a [`RangeRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeResponse {
    /// The keys, in key order.
    pub kvs: Vec<KeyValue>,
    /// The revision the read was made at (the store's current revision for a latest read).
    pub revision: u64,
    /// When the limit cut the answer short: a token for the next page.
    pub continue_token: Option<String>,
}

/// Whether an event created or updated a key, or deleted it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    /// The key was created or updated.
    Put,
    /// The key was deleted.
    Delete,
}

/// One change of one key, as a watch delivers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Put or delete.
    pub kind: EventKind,
    /// The key after the change; for a delete, the key with an empty value, `mod_revision` the
    /// delete's revision and `version` 0.
    pub kv: KeyValue,
    /// The key before the change, when the watch asked for it and the key existed.
    pub prev_kv: Option<KeyValue>,
}

/// A watch: every change to keys in `range` at or after `start_revision`, in revision order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchRequest {
    /// The keys watched.
    pub range: KeyRange,
    /// The first revision delivered; 0 for "from now on" (the revision after the current one).
    pub start_revision: u64,
    /// Also deliver each key's previous value.
    pub prev_kv: bool,
}

// === impl KeyRange ===

impl KeyRange {
    /// The half-open byte range `[start, end)` this covers; `None` as end means unbounded.
    pub fn bounds(&self) -> (Vec<u8>, Option<Vec<u8>>) {
        match self {
            KeyRange::Key(k) => {
                let mut end = k.clone();
                end.push(0);
                (k.clone(), Some(end))
            }
            KeyRange::Prefix(p) => (p.clone(), prefix_end(p)),
            KeyRange::Range { start, end } => {
                (start.clone(), (!end.is_empty()).then(|| end.clone()))
            }
        }
    }

    /// Whether `key` lies in this range.
    pub fn contains(&self, key: &[u8]) -> bool {
        match self {
            KeyRange::Key(k) => k == key,
            KeyRange::Prefix(p) => key.starts_with(p),
            KeyRange::Range { start, end } => {
                key >= start.as_slice() && (end.is_empty() || key < end.as_slice())
            }
        }
    }
}

/// The smallest key greater than every key with this prefix; `None` when there is none
/// (an empty prefix, or one made only of `0xff` bytes).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

// === impl Txn ===

impl Txn {
    /// A put that succeeds only if the key's `mod_revision` is `expected` (0: the key must not
    /// exist). On failure the transaction reads the key, so the caller sees what is there.
    pub fn put_if(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>, expected: u64) -> Txn {
        let key = key.into();
        Txn {
            compares: vec![Compare::mod_revision(key.clone(), expected)],
            success: vec![Op::Put {
                key: key.clone(),
                value: value.into(),
            }],
            failure: vec![Op::Get(KeyRange::Key(key))],
        }
    }

    /// An unconditional put.
    pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Txn {
        Txn {
            success: vec![Op::Put {
                key: key.into(),
                value: value.into(),
            }],
            ..Txn::default()
        }
    }

    /// An unconditional delete of a key, a prefix or a range.
    pub fn delete(range: KeyRange) -> Txn {
        Txn {
            success: vec![Op::Delete(range)],
            ..Txn::default()
        }
    }

    /// Whether either branch writes.
    pub fn is_read_only(&self) -> bool {
        self.success
            .iter()
            .chain(&self.failure)
            .all(|op| matches!(op, Op::Get(_)))
    }
}

// === impl Compare ===

impl Compare {
    /// `mod_revision(key) == revision`; with 0, "the key does not exist".
    pub fn mod_revision(key: impl Into<Vec<u8>>, revision: u64) -> Compare {
        Compare {
            range: KeyRange::Key(key.into()),
            op: CompareOp::Equal,
            target: CompareTarget::ModRevision(revision),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_carries_over_ff() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        assert_eq!(prefix_end(b""), None);
    }

    #[test]
    fn ranges_contain_what_they_say() {
        assert!(KeyRange::Prefix(b"/a/".to_vec()).contains(b"/a/x"));
        assert!(!KeyRange::Prefix(b"/a/".to_vec()).contains(b"/b"));
        let r = KeyRange::Range {
            start: b"b".to_vec(),
            end: b"d".to_vec(),
        };
        assert!(r.contains(b"b") && r.contains(b"c\xff") && !r.contains(b"d"));
        assert!(KeyRange::Prefix(vec![]).contains(b"anything"));
    }
}
