//! Request bodies on their way to Machines. fly-proxy buffers a request body so it can replay
//! it; past the limit the body streams through and the request can no longer be replayed.
//! Fly's replay page says 1 MB ("Requests larger than 1MB cannot be replayed"); whether that is
//! 10^6 or 2^20 bytes is undocumented: 2^20 here.

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use std::{
    pin::Pin,
    task::{Context, Poll},
};

/// The largest request body the proxy keeps for a replay.
pub const REPLAY_BODY_LIMIT: usize = 1 << 20;

/// A client's request body, read as far as the proxy needs.
#[derive(Debug)]
pub enum RequestBody {
    /// The whole body (at most [`REPLAY_BODY_LIMIT`]): sent again, byte for byte, on replay.
    Buffered(Bytes),
    /// Too large to keep: what was read, then the rest of the client's stream. Taken by the
    /// first request that sends it; `None` afterwards.
    Streaming(Option<Streaming>),
}

impl RequestBody {
    /// Reads the body unless it announces itself as too large.
    pub async fn read(
        mut incoming: Incoming,
        content_length: Option<u64>,
    ) -> Result<RequestBody, hyper::Error> {
        if incoming.is_end_stream() {
            return Ok(RequestBody::Buffered(Bytes::new()));
        }
        if content_length.is_some_and(|n| n > REPLAY_BODY_LIMIT as u64) {
            return Ok(RequestBody::Streaming(Some(Streaming {
                head: None,
                rest: incoming,
            })));
        }
        // Most bodies arrive in one frame: keep it without copying.
        let mut first: Option<Bytes> = None;
        let mut buffer = BytesMut::new();
        while let Some(frame) = incoming.frame().await {
            let Ok(data) = frame?.into_data() else {
                // Trailers: HTTP/1.1 clients hardly send them, and Machines cannot rely on
                // them behind fly-proxy either; dropped.
                continue;
            };
            let read = first.as_ref().map_or(0, Bytes::len) + buffer.len() + data.len();
            if first.is_none() && buffer.is_empty() {
                first = Some(data);
            } else {
                if let Some(first) = first.take() {
                    buffer.extend_from_slice(&first);
                }
                buffer.extend_from_slice(&data);
            }
            if read > REPLAY_BODY_LIMIT {
                let head = first.unwrap_or_else(|| buffer.freeze());
                return Ok(RequestBody::Streaming(Some(Streaming {
                    head: Some(head),
                    rest: incoming,
                })));
            }
        }
        Ok(RequestBody::Buffered(
            first.unwrap_or_else(|| buffer.freeze()),
        ))
    }

    pub fn is_replayable(&self) -> bool {
        matches!(self, RequestBody::Buffered(_))
    }

    /// The body for one more request to a Machine; `None` once a streaming body was sent.
    pub fn take(&mut self) -> Option<UpstreamBody> {
        match self {
            RequestBody::Buffered(bytes) => Some(UpstreamBody::Full(
                (!bytes.is_empty()).then(|| bytes.clone()),
            )),
            RequestBody::Streaming(streaming) => streaming.take().map(UpstreamBody::Streaming),
        }
    }

    /// A copy for a later replay (buffered bodies only).
    pub fn replay_copy(&self) -> Option<RequestBody> {
        match self {
            RequestBody::Buffered(bytes) => Some(RequestBody::Buffered(bytes.clone())),
            RequestBody::Streaming(_) => None,
        }
    }
}

/// The part of a too-large body already read, then the rest from the client.
#[derive(Debug)]
pub struct Streaming {
    head: Option<Bytes>,
    rest: Incoming,
}

/// The body of a request to a Machine.
#[derive(Debug)]
pub enum UpstreamBody {
    /// A buffered body (`None` once sent, or when empty).
    Full(Option<Bytes>),
    Streaming(Streaming),
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            UpstreamBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            UpstreamBody::Streaming(streaming) => {
                if let Some(head) = streaming.head.take() {
                    return Poll::Ready(Some(Ok(Frame::data(head))));
                }
                Pin::new(&mut streaming.rest).poll_frame(cx)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Full(bytes) => bytes.is_none(),
            UpstreamBody::Streaming(streaming) => {
                streaming.head.is_none() && streaming.rest.is_end_stream()
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            UpstreamBody::Streaming(streaming) => {
                let head = streaming.head.as_ref().map_or(0, |b| b.len() as u64);
                let rest = streaming.rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower() + head);
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper + head);
                }
                hint
            }
        }
    }
}
