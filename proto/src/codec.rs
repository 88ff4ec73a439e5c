//! The protobuf codec every generated client and server uses.
//!
//! It is tonic-prost's codec with one difference: bytes that do not decode as the expected message give
//! `INVALID_ARGUMENT` instead of `INTERNAL`. A malformed body is the sender's fault, and over NATS anyone on the
//! bus can send one, so it must read as a bad request, never as a fault of ours.

use std::marker::PhantomData;

use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};

/// A gRPC codec for prost messages that reports undecodable input as `INVALID_ARGUMENT`.
#[derive(Debug, Clone)]
pub struct ProtobufCodec<T, U> {
    _types: PhantomData<(T, U)>,
}

impl<T, U> Default for ProtobufCodec<T, U> {
    fn default() -> Self {
        Self { _types: PhantomData }
    }
}

impl<T, U> Codec for ProtobufCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = tonic_prost::ProstEncoder<T>;
    type Decoder = StrictDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        tonic_prost::ProstEncoder::new(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        StrictDecoder { _type: PhantomData }
    }
}

/// Decodes a prost message; a decode error is `INVALID_ARGUMENT` naming the expected type.
#[derive(Debug, Clone)]
pub struct StrictDecoder<U> {
    _type: PhantomData<U>,
}

impl<U: prost::Message + Default> Decoder for StrictDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf).map(Some).map_err(|error| {
            Status::invalid_argument(format!(
                "the message body is not a valid {}: {error}",
                std::any::type_name::<U>().rsplit("::").next().unwrap_or("message")
            ))
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}
