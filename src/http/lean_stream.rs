//! The lean path's stream: a subscription's feed written straight to its socket.
//!
//! After the response head, the stream's frames go out with vectored writes of the
//! shared bytes (the head with the first ones, nothing copied). A write that stays
//! blocked longer than `server.write_timeout` ends the stream, and so does the token's
//! expiry, even in the middle of a blocked write: a client that stops reading holds at
//! most one chunk and its socket buffers. While nothing is to be written, the socket is
//! watched for the client closing.
//!
//! [`LeanStream`] is a hand-written future, run as the connection's own task once the
//! request head is handled, on the streams' runtime (see [`super::serve`]): an idle
//! subscriber costs this struct, its feed's timers and its socket, not the state of every
//! step that led to it.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use super::feed::{Feed, Frames};
use super::subscribe::{stream_headers, EndReason, Prepared, StreamEnd};

/// Most slices handed to one `writev`.
const MAX_IOV: usize = 256;

/// Frames kept allocated between writes; a larger list is freed once written.
const KEEP_FRAMES: usize = 64;

/// The stream's socket. The stream is built on the runtime that read its request and runs
/// on the streams' runtime: the socket leaves the first one's reactor when the stream is
/// built, and is registered with the second's at its first poll.
enum Socket {
    /// Between the two runtimes (`None` once taken, if registering failed).
    Detached(Option<std::net::TcpStream>),
    /// Registered with the reactor of the runtime that polls the stream.
    Attached(TcpStream),
}

/// A subscription streamed on its own socket; resolves when the stream ends.
pub struct LeanStream {
    socket: Socket,
    feed: Feed,
    /// What is being written, and how far: `frames[written.0][written.1..]` is next.
    /// The response head waits here for the feed's first frames, to go out with them.
    frames: Frames,
    started: bool,
    written: (usize, usize),
    /// Armed while a write is blocked.
    deadline: Option<Pin<Box<Sleep>>>,
    write_timeout: Duration,
    end: StreamEnd,
}

impl LeanStream {
    /// The stream of `prepared` on `socket`, starting with the response head (with the
    /// CORS lines `cors`, possibly empty). The socket leaves the current runtime's
    /// reactor: the stream may be run on another runtime.
    pub fn new(socket: TcpStream, prepared: Prepared, cors: &str) -> io::Result<Self> {
        let socket = Socket::Detached(Some(socket.into_std()?));
        let mut head = String::from("HTTP/1.1 200 OK\r\n");
        for (name, value) in stream_headers(&prepared) {
            head.push_str(name);
            head.push_str(": ");
            head.push_str(value);
            head.push_str("\r\n");
        }
        head.push_str(cors);
        head.push_str("connection: close\r\n\r\n");
        let Prepared {
            feed,
            write_timeout,
            end,
            ..
        } = prepared;
        Ok(Self {
            socket,
            feed,
            frames: vec![Bytes::from(head)],
            started: false,
            written: (0, 0),
            deadline: None,
            write_timeout,
            end,
        })
    }

    /// Registers the socket with the current runtime's reactor if it is not yet; `false`
    /// if that failed (the stream then ends).
    fn attach(&mut self) -> bool {
        let Socket::Detached(detached) = &mut self.socket else {
            return true;
        };
        match detached.take().map(TcpStream::from_std) {
            Some(Ok(socket)) => {
                self.socket = Socket::Attached(socket);
                true
            }
            Some(Err(e)) => {
                tracing::warn!("cannot register a stream's socket with its runtime: {e}");
                false
            }
            None => false,
        }
    }

    /// Writes what is pending: `Ready(Ok)` once all of it is written.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), EndReason>> {
        let Socket::Attached(socket) = &mut self.socket else {
            return Poll::Ready(Err(EndReason::ClientGone));
        };
        match poll_write_frames(socket, cx, &self.frames, &mut self.written) {
            Poll::Ready(Ok(())) => {
                self.deadline = None;
                self.written = (0, 0);
                if self.frames.capacity() > KEEP_FRAMES {
                    self.frames = Frames::new();
                } else {
                    self.frames.clear();
                }
                return Poll::Ready(Ok(()));
            }
            Poll::Ready(Err(_)) => return Poll::Ready(Err(EndReason::ClientGone)),
            Poll::Pending => {}
        }
        // Blocked: one deadline per write, the write timeout or the token's expiry if it
        // comes first.
        let (timeout, expires_at) = (self.write_timeout, self.feed.expires_at());
        let deadline = self.deadline.get_or_insert_with(|| {
            let mut at = Instant::now() + timeout;
            if let Some(expiry) = expires_at {
                at = at.min(expiry);
            }
            Box::pin(tokio::time::sleep_until(at))
        });
        if deadline.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        let expired = expires_at.is_some_and(|at| Instant::now() >= at);
        Poll::Ready(Err(if expired {
            EndReason::TokenExpired
        } else {
            EndReason::WriteTimeout
        }))
    }

    /// Whether the client closed its side (or the socket failed); a client sends nothing
    /// on a stream, and what it sends anyway is read and dropped.
    fn poll_client_gone(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Socket::Attached(socket) = &mut self.socket else {
            return Poll::Ready(());
        };
        let mut scratch = [0u8; 16];
        loop {
            match socket.poll_read_ready(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Ready(Ok(())) => match socket.try_read(&mut scratch) {
                    Ok(0) => return Poll::Ready(()),
                    Ok(_) => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(_) => return Poll::Ready(()),
                },
            }
        }
    }
}

impl Future for LeanStream {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if !this.attach() {
            this.end.set(EndReason::ClientGone);
            return Poll::Ready(());
        }
        if !this.started {
            // The first fill is ready at once (`retry:` at least): it joins the head.
            this.started = true;
            if let Poll::Ready(false) = this.feed.poll_fill(cx, &mut this.frames) {
                return Poll::Ready(());
            }
        }
        loop {
            if !this.frames.is_empty() {
                match this.poll_write(cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(reason)) => {
                        this.end.set(reason);
                        return Poll::Ready(());
                    }
                    Poll::Pending => return Poll::Pending,
                }
            }
            match this.feed.poll_fill(cx, &mut this.frames) {
                Poll::Ready(true) => continue,
                Poll::Ready(false) => return Poll::Ready(()),
                // Idle: the list is allocated again with the next frames (an idle
                // subscriber holds no buffer; a busy one keeps its list between writes).
                Poll::Pending => this.frames = Frames::new(),
            }
            return this.poll_client_gone(cx);
        }
    }
}

/// Writes `frames` from `written` on, with vectored writes of the shared bytes (nothing
/// is copied or allocated per write), advancing `written`; `Ready(Ok)` once all is out.
fn poll_write_frames(
    socket: &mut TcpStream,
    cx: &mut Context<'_>,
    frames: &[Bytes],
    written: &mut (usize, usize),
) -> Poll<io::Result<()>> {
    let (index, offset) = written;
    let mut iov = [io::IoSlice::new(&[]); MAX_IOV];
    loop {
        // Past what is written and past empty frames.
        while *index < frames.len() && *offset == frames[*index].len() {
            *index += 1;
            *offset = 0;
        }
        if *index == frames.len() {
            return Poll::Ready(Ok(()));
        }
        let mut n = 0;
        for (i, frame) in frames.iter().enumerate().skip(*index) {
            if n == MAX_IOV {
                break;
            }
            let bytes = if i == *index {
                &frame[*offset..]
            } else {
                &frame[..]
            };
            if !bytes.is_empty() {
                iov[n] = io::IoSlice::new(bytes);
                n += 1;
            }
        }
        let mut sent = match Pin::new(&mut *socket).poll_write_vectored(cx, &iov[..n]) {
            Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
            Poll::Ready(Ok(sent)) => sent,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        };
        while sent > 0 {
            let left = frames[*index].len() - *offset;
            if sent >= left {
                sent -= left;
                *index += 1;
                *offset = 0;
            } else {
                *offset += sent;
                sent = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    async fn write_all(socket: &mut TcpStream, frames: &[Bytes]) {
        let mut written = (0, 0);
        std::future::poll_fn(|cx| poll_write_frames(socket, cx, frames, &mut written))
            .await
            .unwrap();
    }

    /// Every byte of the frames arrives, in order, across partial writes, more frames
    /// than one `writev` takes, and empty frames.
    #[tokio::test]
    async fn frames_are_written_whole_and_in_order() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let reader = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.unwrap();
            got
        });
        let mut socket = TcpStream::connect(addr).await.unwrap();
        let mut frames: Vec<Bytes> = vec![Bytes::from_static(b"HEAD\r\n\r\n")];
        frames.extend((0..500).map(|i| match i % 7 {
            0 => Bytes::new(),
            _ => Bytes::from(format!("{i}:").repeat(i % 50 * 40 + 1)),
        }));
        let mut expected = Vec::new();
        frames.iter().for_each(|f| expected.extend_from_slice(f));
        write_all(&mut socket, &frames).await;
        write_all(&mut socket, &frames[1..4]).await;
        write_all(&mut socket, &[]).await;
        frames[1..4]
            .iter()
            .for_each(|f| expected.extend_from_slice(f));
        drop(socket);
        let got = reader.await.unwrap();
        assert_eq!(got.len(), expected.len());
        assert!(got == expected);
    }
}
