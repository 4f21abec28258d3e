//! Typed request/reply over the NATS service API: a request body in an envelope, a [`Reply`] back.
//! Every call has a timeout; "nobody is listening" is its own error so callers can say so.

use crate::codec::{CodecError, Envelope, decode, encode};
use crate::messages::{Reply, RpcError};
use async_nats::{Client, RequestErrorKind};
use bytes::Bytes;
use ebb_domain::OrgId;
use serde::{Serialize, de::DeserializeOwned};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("no service is listening on {0}")]
    NoResponders(String),
    #[error("{0} did not answer in time")]
    Timeout(String),
    #[error("request to {subject} failed")]
    Transport {
        subject: String,
        source: async_nats::RequestError,
    },
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error(transparent)]
    Remote(RpcError),
}

/// Sends `body` to `subject` and decodes the typed reply.
pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
    client: &Client,
    subject: &str,
    org: Option<OrgId>,
    body: Req,
    timeout: Duration,
) -> Result<Resp, CallError> {
    let payload = encode(&Envelope::new(org, body))?;
    let req = async_nats::Request::new()
        .payload(Bytes::from(payload))
        .timeout(Some(timeout));
    let msg = client
        .send_request(subject.to_owned(), req)
        .await
        .map_err(|e| match e.kind() {
            RequestErrorKind::NoResponders => CallError::NoResponders(subject.to_owned()),
            RequestErrorKind::TimedOut => CallError::Timeout(subject.to_owned()),
            _ => CallError::Transport {
                subject: subject.to_owned(),
                source: e,
            },
        })?;
    match decode::<Reply<Resp>>(&msg.payload)?.body {
        Reply::Ok { value } => Ok(value),
        Reply::Err { error } => Err(CallError::Remote(error)),
    }
}

/// Encodes a handler's result as a reply payload.
pub fn reply<T: Serialize>(result: Result<T, RpcError>) -> Result<Bytes, CodecError> {
    let body = match result {
        Ok(value) => Reply::Ok { value },
        Err(error) => Reply::Err { error },
    };
    Ok(Bytes::from(encode(&Envelope::new(None, body))?))
}
