//! A minimal HTTP/1.1 keep-alive client for the publisher: one connection, one request at
//! a time, responses framed by `Content-Length` or chunked. Small and predictable, so the
//! moment a request is written is the moment its send time is taken.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::wire::{parse_head, Dechunker};

/// One keep-alive connection.
pub struct Http1 {
    addr: SocketAddr,
    host: String,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
}

/// A response.
#[derive(Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Body (decoded).
    pub body: Vec<u8>,
}

impl Http1 {
    /// A client for `addr` (connects on first use).
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            host: addr.to_string(),
            stream: None,
            buf: Vec::with_capacity(64 * 1024),
        }
    }

    /// Another client for the same server (its own connection).
    pub fn fresh(&self) -> Self {
        Self::new(self.addr)
    }

    /// Sends a request and reads its response; reconnects once if the connection was
    /// closed by the server between requests.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Response, String> {
        let mut req = Vec::with_capacity(body.len() + 256);
        req.extend_from_slice(
            format!(
                "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n",
                self.host,
                body.len()
            )
            .as_bytes(),
        );
        for (k, v) in headers {
            req.extend_from_slice(k.as_bytes());
            req.extend_from_slice(b": ");
            req.extend_from_slice(v.as_bytes());
            req.extend_from_slice(b"\r\n");
        }
        req.extend_from_slice(b"\r\n");
        req.extend_from_slice(body);
        let fresh = self.stream.is_none();
        match self.round_trip(&req).await {
            Ok(r) => Ok(r),
            Err(_) if !fresh => {
                self.stream = None;
                self.round_trip(&req).await
            }
            Err(e) => Err(e),
        }
    }

    async fn round_trip(&mut self, req: &[u8]) -> Result<Response, String> {
        if self.stream.is_none() {
            let s = TcpStream::connect(self.addr)
                .await
                .map_err(|e| format!("cannot connect to {}: {e}", self.addr))?;
            s.set_nodelay(true).ok();
            self.stream = Some(s);
            self.buf.clear();
        }
        let result = self.exchange(req).await;
        if result.is_err() {
            self.stream = None;
        }
        result
    }

    async fn exchange(&mut self, req: &[u8]) -> Result<Response, String> {
        let Some(stream) = self.stream.as_mut() else {
            return Err("not connected".into());
        };
        stream
            .write_all(req)
            .await
            .map_err(|e| format!("write: {e}"))?;
        let head = loop {
            // A chunked response's final CRLF may arrive late: it is not part of the head.
            let skip = self
                .buf
                .iter()
                .take_while(|b| **b == b'\r' || **b == b'\n')
                .count();
            self.buf.drain(..skip);
            if let Some(head) = parse_head(&self.buf) {
                break head?;
            }
            read_more(stream, &mut self.buf).await?;
        };
        self.buf.drain(..head.len);
        let mut body = Vec::new();
        if head.chunked {
            let mut d = Dechunker::new(true);
            loop {
                let input = std::mem::take(&mut self.buf);
                d.feed(&input, |p| body.extend_from_slice(p))?;
                if d.done() {
                    // Anything after the last chunk (trailers) is dropped; requests
                    // are not pipelined.
                    break;
                }
                read_more(stream, &mut self.buf).await?;
            }
        } else {
            let len = head.content_length.unwrap_or(0);
            while self.buf.len() < len {
                read_more(stream, &mut self.buf).await?;
            }
            body = self.buf.drain(..len).collect();
        }
        if head.close {
            // Pushpin's publish endpoint closes after every response.
            self.stream = None;
            self.buf.clear();
        }
        Ok(Response {
            status: head.status,
            body,
        })
    }
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(), String> {
    let mut chunk = [0u8; 16 * 1024];
    let n = stream
        .read(&mut chunk)
        .await
        .map_err(|e| format!("read: {e}"))?;
    if n == 0 {
        return Err("connection closed by the server".into());
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}
