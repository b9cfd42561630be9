//! The lean path's request-head parser: decides, from the bytes read so far, whether a
//! connection is an HTTP/1.x subscription (`GET /.well-known/mercure`) that relais can
//! stream itself, or something hyper must answer. Pure: no I/O (the accept loop in
//! `serve` reads the socket and calls [`parse`]), so it is unit-tested and fuzzed.

use axum::http::{header, HeaderMap, HeaderName, HeaderValue};

use super::MERCURE_PATH;

/// Most headers parsed on the lean path (more: hyper handles the request).
pub const MAX_HEADERS: usize = 48;

/// A subscribe request read by the lean path.
#[derive(Debug)]
pub struct SubscribeRequest {
    /// The request headers, as sent (names lowercased by `HeaderName`).
    pub headers: HeaderMap,
    /// The raw query string (after `?`), if any.
    pub query: Option<String>,
}

/// What the bytes read so far say.
#[derive(Debug)]
pub enum Head {
    /// The head is not complete yet: read more.
    Partial,
    /// A complete head of a request the lean path can stream.
    Subscribe(SubscribeRequest),
    /// Anything else (another method, path or version, a body, a malformed or
    /// too-many-headers head): hyper takes over with the bytes already read.
    Other,
}

/// Parses the request head at the start of `buf` (bytes after the head are ignored).
pub fn parse(buf: &[u8]) -> Head {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut slots);
    match request.parse(buf) {
        Ok(httparse::Status::Complete(_)) => match subscribe_request(&request) {
            Some(request) => Head::Subscribe(request),
            None => Head::Other,
        },
        Ok(httparse::Status::Partial) => Head::Partial,
        Err(_) => Head::Other,
    }
}

fn subscribe_request(request: &httparse::Request<'_, '_>) -> Option<SubscribeRequest> {
    if request.method != Some("GET") || request.version != Some(1) {
        return None;
    }
    let (path, query) = match request.path?.split_once('?') {
        Some((p, q)) => (p, Some(q.to_string())),
        None => (request.path?, None),
    };
    if path != MERCURE_PATH {
        return None;
    }
    let mut headers = HeaderMap::with_capacity(request.headers.len());
    for h in request.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        let value = HeaderValue::from_bytes(h.value).ok()?;
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
            // A GET with a body: let hyper deal with it.
            return None;
        }
        headers.append(name, value);
    }
    Some(SubscribeRequest { headers, query })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscription_heads_take_the_lean_path() {
        let head = b"GET /.well-known/mercure?topic=a&topic=b HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t\r\n\r\n";
        let Head::Subscribe(request) = parse(head) else {
            panic!("not a subscription")
        };
        assert_eq!(request.query.as_deref(), Some("topic=a&topic=b"));
        assert_eq!(request.headers["authorization"], "Bearer t");
        assert!(matches!(parse(&head[..head.len() - 1]), Head::Partial));
    }

    #[test]
    fn everything_else_goes_to_hyper() {
        for head in [
            &b"POST /.well-known/mercure HTTP/1.1\r\n\r\n"[..],
            b"GET /.well-known/mercure HTTP/1.0\r\n\r\n",
            b"GET /healthz HTTP/1.1\r\n\r\n",
            b"GET /.well-known/mercure HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
            b"GET /.well-known/mercure HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"\x00\x01garbage\r\n\r\n",
        ] {
            assert!(matches!(parse(head), Head::Other), "{head:?}");
        }
        let mut many = b"GET /.well-known/mercure HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("x-{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert!(matches!(parse(&many), Head::Other));
    }
}
