//! A small OpenAI-compatible HTTP server on 127.0.0.1 whose answers come from a
//! closure: for tests (oracle and adversarial backends) and offline demos.
//!
//! It speaks just enough HTTP/1.1 for [`OpenAiLlm`](crate::OpenAiLlm): one
//! request per connection, a `Content-Length` body, `Connection: close`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use llmrec_core::{Error, Result};
use serde_json::Value;

/// One request the server received.
#[derive(Debug, Clone)]
pub struct MockRequest {
    /// Request path (`/v1/chat/completions`).
    pub path: String,
    /// The `Authorization` header (empty if none).
    pub authorization: String,
    /// The body parsed as JSON (`Value::Null` if it is not JSON).
    pub body: Value,
}

impl MockRequest {
    /// The `content` of the last message of a chat request (empty if none).
    pub fn last_message(&self) -> &str {
        self.body
            .get("messages")
            .and_then(Value::as_array)
            .and_then(|m| m.last())
            .and_then(|m| m.get("content"))
            .and_then(Value::as_str)
            .unwrap_or("")
    }
}

/// What the server answers.
#[derive(Debug, Clone)]
pub enum MockReply {
    /// A successful chat completion with this text.
    Chat(String),
    /// Any status, extra headers and raw body.
    Raw {
        /// HTTP status.
        status: u16,
        /// Extra headers.
        headers: Vec<(String, String)>,
        /// Body, sent as is.
        body: String,
    },
    /// Headers that promise more body than is sent, then a closed connection.
    Truncated,
}

type Handler = dyn Fn(&MockRequest) -> MockReply + Send + Sync;

/// The running server; it stops when dropped.
pub struct MockServer {
    url: String,
    addr: std::net::SocketAddr,
    requests: Arc<Mutex<Vec<MockRequest>>>,
    stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for MockServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockServer")
            .field("url", &self.url)
            .finish()
    }
}

fn read_request(s: &TcpStream) -> Option<MockRequest> {
    let mut r = BufReader::new(s.try_clone().ok()?);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let path = line.split_whitespace().nth(1)?.to_string();
    let (mut len, mut authorization) = (0usize, String::new());
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        if h == "\r\n" || h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        match k.to_ascii_lowercase().as_str() {
            "content-length" => len = v.trim().parse().ok()?,
            "authorization" => authorization = v.trim().to_string(),
            _ => {}
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some(MockRequest {
        path,
        authorization,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    })
}

fn write_reply(s: &mut TcpStream, reply: MockReply) {
    let (status, headers, body) = match reply {
        MockReply::Chat(text) => (
            200,
            Vec::new(),
            serde_json::json!({
                "choices": [{"message": {"role": "assistant", "content": text},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 0, "completion_tokens": 0}
            })
            .to_string(),
        ),
        MockReply::Raw {
            status,
            headers,
            body,
        } => (status, headers, body),
        MockReply::Truncated => {
            let _ = s.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 500\r\nConnection: close\r\n\r\n{\"choices\": [{\"mess",
            );
            return;
        }
    };
    let mut h = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        h.push_str(&format!("{k}: {v}\r\n"));
    }
    h.push_str("\r\n");
    h.push_str(&body);
    let _ = s.write_all(h.as_bytes());
    let _ = s.flush();
}

impl MockServer {
    /// Starts a server on a free port of 127.0.0.1; each request is answered
    /// by `handler`, on its own thread.
    pub fn start(
        handler: impl Fn(&MockRequest) -> MockReply + Send + Sync + 'static,
    ) -> Result<Self> {
        let listener =
            TcpListener::bind("127.0.0.1:0").map_err(|e| Error::Network(format!("bind: {e}")))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::Network(format!("local address: {e}")))?;
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let handler: Arc<Handler> = Arc::new(handler);
        let (reqs, stop2) = (requests.clone(), stop.clone());
        std::thread::spawn(move || {
            for s in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(mut s) = s else { continue };
                let (reqs, handler) = (reqs.clone(), handler.clone());
                std::thread::spawn(move || {
                    let Some(req) = read_request(&s) else {
                        return;
                    };
                    if let Ok(mut r) = reqs.lock() {
                        r.push(req.clone());
                    }
                    let reply = handler(&req);
                    write_reply(&mut s, reply);
                });
            }
        });
        Ok(MockServer {
            url: format!("http://{addr}/v1"),
            addr,
            requests,
            stop,
        })
    }

    /// Base URL including `/v1`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The requests received so far (recorded before they are answered), in order.
    pub fn requests(&self) -> Vec<MockRequest> {
        self.requests
            .lock()
            .map(|r| r.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}
