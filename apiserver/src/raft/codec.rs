//! A tonic codec that carries serde types as bincode, so the gRPC services need no .proto
//! files: the Rust types are the schema, and both ends are the same build of Keel.

use std::marker::PhantomData;

use bincode::Options;
use bytes::{Buf, BufMut};
use serde::{Serialize, de::DeserializeOwned};
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

/// The largest message or record Keel decodes; a length beyond it is damage or an attack,
/// and is refused before anything is allocated for it.
pub const MAX_MESSAGE: u64 = 256 << 20;

/// bincode with fixed-width integers and a size limit: the one encoding of messages, log
/// entries and snapshot headers.
fn options() -> impl Options {
    bincode::options()
        .with_fixint_encoding()
        .allow_trailing_bytes()
        .with_limit(MAX_MESSAGE)
}

/// Encodes a value.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, bincode::Error> {
    options().serialize(value)
}

/// How many bytes [`encode`] would write.
pub fn encoded_size<T: Serialize>(value: &T) -> Result<u64, bincode::Error> {
    options().serialized_size(value)
}

/// Decodes a value that [`encode`] wrote.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, bincode::Error> {
    options().deserialize(bytes)
}

/// Encodes `T` and decodes `U` with bincode.
#[derive(Debug)]
pub struct BincodeCodec<T, U>(PhantomData<(T, U)>);

/// The encoder half of [`BincodeCodec`].
#[derive(Debug)]
pub struct BincodeEncoder<T>(PhantomData<T>);

/// The decoder half of [`BincodeCodec`].
#[derive(Debug)]
pub struct BincodeDecoder<U>(PhantomData<U>);

// === impl BincodeCodec ===

impl<T, U> Default for BincodeCodec<T, U> {
    fn default() -> Self {
        BincodeCodec(PhantomData)
    }
}

impl<T, U> Codec for BincodeCodec<T, U>
where
    T: Serialize + Send + 'static,
    U: DeserializeOwned + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = BincodeEncoder<T>;
    type Decoder = BincodeDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        BincodeEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        BincodeDecoder(PhantomData)
    }
}

// === impl BincodeEncoder ===

impl<T: Serialize> Encoder for BincodeEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        options()
            .serialize_into(dst.writer(), &item)
            .map_err(|e| Status::internal(format!("cannot encode message: {e}")))
    }
}

// === impl BincodeDecoder ===

impl<U: DeserializeOwned> Decoder for BincodeDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        let item = options()
            .deserialize_from(src.reader())
            .map_err(|e| Status::invalid_argument(format!("cannot decode message: {e}")))?;
        Ok(Some(item))
    }
}
