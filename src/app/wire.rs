//! How the pages call their server functions, in the browser: a `fetch` for a call and a
//! `WebSocket` for a live channel, speaking exactly what the server functions speak (postcard
//! bodies; on a channel, binary frames of a tag byte, 0 for a value and 1 for an error, then
//! postcard). The server side stays Leptos's `#[server]` functions; their browser client
//! (gloo-net, byte streams, the futures adapters around them) was about a tenth of a bundle
//! that only ever makes a handful of calls (BENCHMARKS.md, row 6).

use super::AppError;
use futures::channel::mpsc;
use serde::{de::DeserializeOwned, Serialize};
use std::{cell::RefCell, future::Future, rc::Rc};
use wasm_bindgen::{closure::Closure, JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{
    js_sys::{Promise, Uint8Array},
    BinaryType, MessageEvent, RequestInit, Response, WebSocket,
};

const CONTENT_TYPE: &str = "application/x-postcard";

/// Calls the server function at `path` with its arguments (the struct `#[server]` makes of
/// them). An error the server answered is its [`AppError`]; a request that never got an
/// answer is [`AppError::Unreachable`]. The request leaves when `call` is called, not when its
/// future is first polled: a page sends first and then redraws while the request travels.
pub fn call<A: Serialize, T: DeserializeOwned>(
    path: &'static str,
    args: A,
) -> impl Future<Output = Result<T, AppError>> {
    let sent = send(path, &args);
    async move {
        let fetched = JsFuture::from(sent?)
            .await
            .map_err(|_| AppError::Unreachable)?;
        let response: Response = fetched.unchecked_into();
        let bytes = match response.array_buffer() {
            Ok(buffer) => JsFuture::from(buffer)
                .await
                .map(|b| Uint8Array::new(&b).to_vec())
                .map_err(|_| AppError::Unreachable)?,
            Err(_) => return Err(AppError::Unreachable),
        };
        if response.ok() {
            postcard::from_bytes(&bytes).map_err(|_| AppError::Internal)
        } else {
            Err(postcard::from_bytes(&bytes).unwrap_or(AppError::Internal))
        }
    }
}

/// The call's `fetch`, started: the promise of its response.
fn send<A: Serialize>(path: &str, args: &A) -> Result<Promise, AppError> {
    let body = postcard::to_allocvec(args).map_err(|_| AppError::Internal)?;
    let init = RequestInit::new();
    init.set_method("POST");
    let headers = web_sys::Headers::new().map_err(|_| AppError::Internal)?;
    let _ = headers.set("content-type", CONTENT_TYPE);
    let _ = headers.set("accept", CONTENT_TYPE);
    init.set_headers(&headers);
    init.set_body(&Uint8Array::from(&body[..]));
    Ok(leptos::prelude::window().fetch_with_str_and_init(path, &init))
}

/// The page's end of a live channel: what it sends goes out as frames, in order, once the
/// socket is open. Dropping it closes the channel.
pub struct Channel {
    socket: WebSocket,
    /// Frames sent before the socket opened, sent when it does.
    waiting: Rc<RefCell<Option<Vec<Vec<u8>>>>>,
    /// The socket's handlers, which must live as long as it does.
    _handlers: [Closure<dyn FnMut(JsValue)>; 3],
}

impl Channel {
    /// Opens the channel of the server function at `path`; its messages arrive on the
    /// receiver, which ends when the channel closes (or never opens).
    pub fn open<T: DeserializeOwned + 'static>(
        path: &str,
    ) -> Option<(Self, mpsc::UnboundedReceiver<Result<T, AppError>>)> {
        let location = leptos::prelude::window().location();
        let scheme = match location.protocol().ok()?.as_str() {
            "https:" => "wss:",
            _ => "ws:",
        };
        let socket = WebSocket::new(&format!("{scheme}//{}{path}", location.host().ok()?)).ok()?;
        socket.set_binary_type(BinaryType::Arraybuffer);
        let (tx, rx) = mpsc::unbounded();
        let waiting: Rc<RefCell<Option<Vec<Vec<u8>>>>> = Rc::new(RefCell::new(Some(Vec::new())));
        let on_open = Closure::<dyn FnMut(JsValue)>::new({
            let (socket, waiting) = (socket.clone(), waiting.clone());
            move |_| {
                for frame in waiting.borrow_mut().take().unwrap_or_default() {
                    let _ = socket.send_with_u8_array(&frame);
                }
            }
        });
        let on_message = Closure::<dyn FnMut(JsValue)>::new({
            let tx = tx.clone();
            move |event: JsValue| {
                let data = event.unchecked_into::<MessageEvent>().data();
                let bytes = Uint8Array::new(&data).to_vec();
                let _ = tx.unbounded_send(unframe(&bytes));
            }
        });
        let on_close = Closure::<dyn FnMut(JsValue)>::new(move |_| tx.close_channel());
        socket.set_onopen(Some(on_open.as_ref().unchecked_ref()));
        socket.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
        socket.set_onclose(Some(on_close.as_ref().unchecked_ref()));
        let channel = Channel {
            socket,
            waiting,
            _handlers: [on_open, on_message, on_close],
        };
        Some((channel, rx))
    }

    /// Sends `message`, now or once the socket is open.
    pub fn send<T: Serialize>(&self, message: &T) {
        let Ok(body) = postcard::to_allocvec(message) else {
            return;
        };
        let mut frame = Vec::with_capacity(body.len() + 1);
        frame.push(0);
        frame.extend_from_slice(&body);
        match self.waiting.borrow_mut().as_mut() {
            Some(waiting) => waiting.push(frame),
            None => {
                let _ = self.socket.send_with_u8_array(&frame);
            }
        }
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        self.socket.set_onopen(None);
        self.socket.set_onmessage(None);
        self.socket.set_onclose(None);
        let _ = self.socket.close();
    }
}

/// A frame of a server function's channel: a value, or the error the server sent.
fn unframe<T: DeserializeOwned>(frame: &[u8]) -> Result<T, AppError> {
    match frame.split_first() {
        Some((0, body)) => postcard::from_bytes(body).map_err(|_| AppError::Internal),
        Some((_, body)) => Err(postcard::from_bytes(body).unwrap_or(AppError::Internal)),
        None => Err(AppError::Internal),
    }
}
