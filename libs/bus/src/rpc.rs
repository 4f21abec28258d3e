//! Typed request/reply over the NATS service API: a request body in an envelope, a [`Reply`] back.
//! Every call has a timeout; "nobody is listening" is its own error so callers can say so. A
//! request carries the caller's trace context in its headers.
//!
//! A request type names its endpoint ([`Request`]): the subject it goes to and the reply it gets
//! are part of its type, so no caller can send it to the wrong subject or decode the wrong reply,
//! and a server decodes exactly the request type of the endpoint it answers ([`answer`]).

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

/// The request of one request/reply endpoint.
pub trait Request: Serialize + DeserializeOwned {
    /// What the endpoint answers.
    type Reply: Serialize + DeserializeOwned;
    /// What the subject needs besides the request type: `()` for a service-wide endpoint, the
    /// site for a per-site one.
    type Route: ?Sized;
    /// The endpoint's name in its service group (`start` in `ebb.svc.planner.start`).
    const VERB: &'static str;
    /// The subject the request is sent to.
    fn subject(route: &Self::Route) -> String;
}

/// Sends `request` to its endpoint (at `route`) and decodes its reply.
pub async fn call<R: Request>(
    client: &Client,
    route: &R::Route,
    org: Option<OrgId>,
    request: &R,
    timeout: Duration,
) -> Result<R::Reply, CallError> {
    send(client, &R::subject(route), org, request, timeout).await
}

/// Answers one request of endpoint `R`: decodes the payload as `R` (an undecodable one gets an
/// `invalid_argument` reply), runs `handle`, and encodes its result.
pub async fn answer<R, F, Fut>(payload: &[u8], handle: F) -> Result<Bytes, CodecError>
where
    R: Request,
    F: FnOnce(R) -> Fut,
    Fut: std::future::Future<Output = Result<R::Reply, RpcError>>,
{
    let result = match decode::<R>(payload) {
        Ok(env) => handle(env.body).await,
        Err(e) => Err(RpcError::new(
            crate::messages::RpcErrorKind::InvalidArgument,
            format!("undecodable {} request: {e}", R::VERB),
        )),
    };
    reply(result)
}

async fn send<Req: Serialize, Resp: DeserializeOwned>(
    client: &Client,
    subject: &str,
    org: Option<OrgId>,
    body: &Req,
    timeout: Duration,
) -> Result<Resp, CallError> {
    let payload = encode(&Envelope::new(org, body))?;
    let req = async_nats::Request::new()
        .payload(Bytes::from(payload))
        .headers(ebb_obs::trace::headers())
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
