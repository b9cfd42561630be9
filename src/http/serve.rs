//! Serving connections: the accept loop.
//!
//! An HTTP/1.1 subscription (`GET /.well-known/mercure`) that passes every check takes a
//! lean path: relais reads the request head itself, writes the response head and then
//! the stream's bytes straight to the socket (the body ends when the connection closes,
//! as HTTP/1.1 allows), one write per coalesced batch. A connection that is only a
//! stream then costs its socket and a small task, not a general HTTP connection with its
//! read and write buffers: this is what lets one process hold tens of thousands of idle
//! subscribers.
//!
//! Every other request, and every subscription that is refused (so every error answer),
//! goes to hyper and the axum router with the bytes already read replayed first, so both
//! paths answer exactly alike.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::HeaderMap;
use axum::Router;
use bytes::{Buf, Bytes, BytesMut};
use futures::StreamExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::task::TaskTracker;

use super::head::{self, Head, SubscribeRequest};
use super::subscribe::{prepare, stream_headers};
use super::AppState;

/// Largest request head read before handing the connection to hyper.
const MAX_HEAD: usize = 16 * 1024;
/// Time a client has to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// Time in-flight requests get to finish after SIGTERM.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts connections until shutdown, then lets in-flight requests finish.
pub async fn run(listener: TcpListener, router: Router, app: AppState) {
    let tracker = TaskTracker::new();
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let stream = tokio::select! {
            _ = app.shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: pause instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        tracker.spawn(connection(
            stream,
            router.clone(),
            app.clone(),
            builder.clone(),
        ));
    }
    drop(listener);
    tracker.close();
    if tokio::time::timeout(DRAIN_TIMEOUT, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("shutdown: some requests did not finish within {DRAIN_TIMEOUT:?}");
    }
}

/// One connection: the lean stream path when it applies, else hyper.
async fn connection(
    mut stream: TcpStream,
    router: Router,
    app: AppState,
    builder: auto::Builder<TokioExecutor>,
) {
    let mut head = BytesMut::with_capacity(1024);
    let request =
        match tokio::time::timeout(HEAD_TIMEOUT, read_subscribe_head(&mut stream, &mut head)).await
        {
            Ok(Ok(request)) => request,
            // No complete head in time, or the client left: nothing to answer.
            Ok(Err(_)) | Err(_) => return,
        };
    if let Some(request) = request {
        // Refused requests fall through: hyper and the router answer them like any other.
        if let Ok(prepared) = prepare(app.clone(), &request.headers, request.query.as_deref()).await
        {
            drop(head);
            let cors = cors_headers(&app.config.server.cors_origins, &request.headers);
            drop(request);
            stream_to_socket(stream, prepared, cors).await;
            return;
        }
    }
    let io = TokioIo::new(Prefixed {
        prefix: head.freeze(),
        inner: stream,
    });
    let service = TowerToHyperService::new(router);
    let conn = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!("connection ended with an error: {e}");
            }
        }
        _ = app.shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// Reads the request head into `buf`. `Some` for an HTTP/1.x `GET` of the hub path;
/// `None` for anything else (hyper takes over with what was read).
async fn read_subscribe_head(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
) -> io::Result<Option<SubscribeRequest>> {
    loop {
        if stream.read_buf(buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        match head::parse(buf) {
            Head::Subscribe(request) => return Ok(Some(request)),
            Head::Partial if buf.len() < MAX_HEAD => continue,
            _ => return Ok(None),
        }
    }
}

/// The CORS response headers for an allowed `Origin` (the same as the router's layer).
fn cors_headers(allowed: &[String], headers: &HeaderMap) -> String {
    let Some(origin) = headers
        .get(axum::http::header::ORIGIN)
        .and_then(|o| o.to_str().ok())
    else {
        return String::new();
    };
    if !allowed.iter().any(|a| a == origin) {
        return String::new();
    }
    format!(
        "access-control-allow-origin: {origin}\r\naccess-control-allow-credentials: true\r\naccess-control-expose-headers: last-event-id\r\nvary: origin, access-control-request-method, access-control-request-headers\r\n"
    )
}

/// Writes the response head, then the stream, until it ends or the client leaves.
async fn stream_to_socket(
    mut socket: TcpStream,
    prepared: super::subscribe::Prepared,
    cors: String,
) {
    let mut head = String::from("HTTP/1.1 200 OK\r\n");
    for (name, value) in stream_headers(prepared.history_gap) {
        head.push_str(name);
        head.push_str(": ");
        head.push_str(value);
        head.push_str("\r\n");
    }
    head.push_str(&cors);
    head.push_str("connection: close\r\n\r\n");
    let mut events = prepared.stream;
    // The head goes out with the first chunk (retry: and the replay) in one write.
    let mut pending = Some(Bytes::from(head));
    let mut scratch = [0u8; 256];
    loop {
        tokio::select! {
            item = events.next() => {
                let Some(Ok(bytes)) = item else { break };
                let written = match pending.take() {
                    Some(head) => {
                        let mut first = BytesMut::with_capacity(head.len() + bytes.len());
                        first.extend_from_slice(&head);
                        first.extend_from_slice(&bytes);
                        socket.write_all(&first).await
                    }
                    None => socket.write_all(&bytes).await,
                };
                if written.is_err() {
                    break;
                }
            }
            // The client closed (or sent something we do not expect on a stream).
            ready = socket.readable() => {
                if ready.is_err() {
                    break;
                }
                match socket.try_read(&mut scratch) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => break,
                }
            }
        }
    }
    drop(events);
    let _ = socket.shutdown().await;
}

/// A connection whose first bytes were already read: they are read again first.
struct Prefixed {
    prefix: Bytes,
    inner: TcpStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(out.remaining());
            out.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, out)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
