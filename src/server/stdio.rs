//! Stdio framing: newline-delimited JSON-RPC over a reader and a writer, in which every line gets an answer.
//!
//! rmcp's own line transport drops a line it cannot parse (invalid JSON, a number out of range, a lone surrogate,
//! nesting past serde_json's depth limit) or one over its length limit, so the client that sent it waits forever.
//! This transport answers such a line as JSON-RPC 2.0 says — `-32700 Parse error` for text that is not JSON it can
//! read, `-32600 Invalid Request` for JSON that is no JSON-RPC message or a line over [`MAX_LINE_BYTES`] — with the
//! request's `id` when one can be found at the top level of the line (so the client stops waiting), else `null`.
//! Notifications that do not parse get no answer, as JSON-RPC requires.
//!
//! Every outgoing line is written whole under one lock, so an error answer never interleaves with a message the
//! service sends. The service's messages are written by the futures that send them (a reply leaves without a hop
//! to another task); error answers, found while reading, are queued for a task, so reading never stops midway
//! through a write when the service stops waiting for the next message.

use std::borrow::Cow;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use rmcp::RoleServer;
use rmcp::service::{RxJsonRpcMessage, TxJsonRpcMessage};
use rmcp::transport::Transport;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use crate::jsonrpc::{INVALID_REQUEST, PARSE_ERROR, error_answer};

/// Longest line read; a longer one is answered with `-32600` and skipped without being buffered.
pub const MAX_LINE_BYTES: usize = 16 << 20;

/// Error answers queued for the writer task.
const WRITE_QUEUE: usize = 64;

/// The transport over `read` and `write`.
pub struct LineTransport<R> {
    read: BufReader<R>,
    line: Vec<u8>,
    /// Skipping the rest of an oversized line.
    discarding: bool,
    /// Ids of lines answered as errors, whose answer is not yet queued (the queue was full).
    pending: Vec<Vec<u8>>,
    /// Error answers, for the writer task.
    out: mpsc::Sender<Vec<u8>>,
    write: Arc<Output>,
}

/// The writing end, shared by the writer task and every send.
struct Output {
    write: tokio::sync::Mutex<Pin<Box<dyn AsyncWrite + Send>>>,
    /// Lines waiting for the lock or being written: the last one flushes, so a burst goes out in one write.
    waiting: AtomicUsize,
    /// A line's write was given up midway (its sender dropped, at shutdown): the next line starts on a line of
    /// its own rather than completing the torn one.
    torn: AtomicBool,
}

impl Output {
    async fn write_line(&self, line: &[u8]) -> std::io::Result<()> {
        /// Counts its line as waiting until written or given up (the future dropped).
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        self.waiting.fetch_add(1, Ordering::AcqRel);
        let waiting = Waiting(&self.waiting);
        let mut write = self.write.lock().await;
        // Marked torn until the line is whole (cleared below), so a drop anywhere in between is seen.
        if self.torn.swap(true, Ordering::AcqRel) {
            write.write_all(b"\n").await?;
        }
        write.write_all(line).await?;
        self.torn.store(false, Ordering::Release);
        drop(waiting);
        if self.waiting.load(Ordering::Acquire) == 0 {
            write.flush().await?;
        }
        Ok(())
    }
}

/// The writer's failure, as the service sees it.
#[derive(Debug, thiserror::Error)]
#[error("the client's stream is closed")]
pub struct Closed;

impl<R: AsyncRead + Unpin + Send> LineTransport<R> {
    /// A transport reading `read` and writing `write` (error answers through a task, until the transport is
    /// dropped).
    pub fn new<W: AsyncWrite + Unpin + Send + 'static>(read: R, write: W) -> LineTransport<R> {
        let (out, mut queue) = mpsc::channel::<Vec<u8>>(WRITE_QUEUE);
        let write = Arc::new(Output {
            write: tokio::sync::Mutex::new(Box::pin(write)),
            waiting: AtomicUsize::new(0),
            torn: AtomicBool::new(false),
        });
        let answers = write.clone();
        tokio::spawn(async move {
            while let Some(line) = queue.recv().await {
                if let Err(e) = answers.write_line(&line).await {
                    tracing::debug!("stdout closed: {e}");
                    return;
                }
            }
        });
        LineTransport {
            read: BufReader::new(read),
            line: Vec::new(),
            discarding: false,
            pending: Vec::new(),
            out,
            write,
        }
    }

    /// Reads up to the next newline into `self.line`, never holding more than [`MAX_LINE_BYTES`]. Cancel-safe:
    /// a partial line stays in `self.line` for the next call.
    async fn read_line(&mut self) -> Option<Result<(), Vec<u8>>> {
        loop {
            let available = match self.read.fill_buf().await {
                Ok([]) => return None,
                Ok(a) => a,
                Err(e) => {
                    tracing::debug!("stdin closed: {e}");
                    return None;
                }
            };
            let newline = memchr::memchr(b'\n', available);
            let take = newline.map_or(available.len(), |i| i + 1);
            let mut done = None;
            if self.discarding {
                if newline.is_some() {
                    self.discarding = false;
                }
            } else if self.line.len() + take > MAX_LINE_BYTES {
                // Keep the head of the line: it may name the request's id.
                let head = [&self.line[..], &available[..take]].concat();
                let head = head[..head.len().min(4096)].to_vec();
                self.line.clear();
                self.discarding = newline.is_none();
                done = Some(Err(head));
            } else {
                self.line.extend_from_slice(&available[..take]);
                if newline.is_some() {
                    done = Some(Ok(()));
                }
            }
            self.read.consume(take);
            if let Some(d) = done {
                return Some(d);
            }
        }
    }

    /// Queues an error answer; if the writer is busy it waits in `pending` for the next `receive`.
    fn answer(&mut self, line: &[u8], code: i64, message: String) {
        let Some(reply) = error_answer(line, code, message) else {
            return;
        };
        let mut bytes = reply.to_string().into_bytes();
        bytes.push(b'\n');
        self.pending.push(bytes);
    }

    async fn flush_pending(&mut self) {
        // `reserve` is cancel-safe: an answer is either queued whole or still pending.
        while !self.pending.is_empty() {
            let Ok(permit) = self.out.reserve().await else {
                self.pending.clear();
                return;
            };
            permit.send(self.pending.remove(0));
        }
    }
}

impl<R: AsyncRead + Unpin + Send + 'static> Transport<RoleServer> for LineTransport<R> {
    type Error = Closed;

    fn name() -> Cow<'static, str> {
        "stdio".into()
    }

    fn send(
        &mut self,
        item: TxJsonRpcMessage<RoleServer>,
    ) -> impl Future<Output = Result<(), Closed>> + Send + 'static {
        let write = self.write.clone();
        async move {
            let mut bytes = serde_json::to_vec(&item).map_err(|e| {
                tracing::error!("an outgoing message did not serialize: {e}");
                Closed
            })?;
            bytes.push(b'\n');
            write.write_line(&bytes).await.map_err(|e| {
                tracing::debug!("stdout closed: {e}");
                Closed
            })
        }
    }

    async fn receive(&mut self) -> Option<RxJsonRpcMessage<RoleServer>> {
        loop {
            self.flush_pending().await;
            match self.read_line().await? {
                Ok(()) => {}
                Err(head) => {
                    self.answer(
                        &head,
                        INVALID_REQUEST,
                        format!(
                            "Invalid Request: the message is longer than {MAX_LINE_BYTES} bytes; send smaller \
                             arguments"
                        ),
                    );
                    continue;
                }
            }
            let mut text: &[u8] = &self.line;
            text = text.strip_suffix(b"\n").unwrap_or(text);
            text = text.strip_suffix(b"\r").unwrap_or(text);
            text = text.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(text);
            if text.iter().all(u8::is_ascii_whitespace) {
                self.line.clear();
                continue;
            }
            let parsed = serde_json::from_slice::<RxJsonRpcMessage<RoleServer>>(text);
            match parsed {
                Ok(message) => {
                    self.line.clear();
                    return Some(message);
                }
                Err(e) => {
                    let text = text.to_vec();
                    self.line.clear();
                    match serde_json::from_slice::<Value>(&text) {
                        Err(_) => self.answer(&text, PARSE_ERROR, format!("Parse error: {e}")),
                        Ok(v) if v.get("method").is_some() && v.get("id").is_none() => {
                            // A notification the server does not know or cannot read: JSON-RPC answers none.
                            tracing::debug!("ignored a notification that did not parse: {e}");
                        }
                        Ok(_) => {
                            self.answer(&text, INVALID_REQUEST, format!("Invalid Request: {e}"))
                        }
                    }
                }
            }
        }
    }

    async fn close(&mut self) -> Result<(), Closed> {
        Ok(())
    }
}
