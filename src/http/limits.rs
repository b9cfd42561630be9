//! Request body deadline: a body must arrive whole within `server.body_timeout` of its
//! head, and be at most `server.max_body_bytes` long. A client that starts a POST and
//! never finishes it is answered 408 and disconnected instead of holding the connection
//! (and its buffers) forever.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;

use super::error::ApiError;
use super::AppState;

/// Reads the whole body under the deadline and size limit, then runs the handler with it.
pub async fn body_deadline(State(app): State<AppState>, request: Request, next: Next) -> Response {
    let max = app.config.server.max_body_bytes;
    let headers = request.headers();
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let chunked = headers.contains_key(header::TRANSFER_ENCODING);
    if declared.unwrap_or(0) == 0 && !chunked {
        return next.run(request).await;
    }
    if declared.is_some_and(|n| n > max as u64) {
        return ApiError::PayloadTooLarge(max).into_response();
    }
    let (parts, body) = request.into_parts();
    let read = async {
        let mut data = body.into_data_stream();
        // A body that arrives in one chunk is passed on as is, without a copy.
        let mut first: Option<Bytes> = None;
        let mut joined = BytesMut::new();
        while let Some(chunk) = data.next().await {
            let chunk = chunk.map_err(|e| ApiError::BadRequest {
                field: None,
                message: format!("could not read the request body: {e}"),
            })?;
            let so_far = first.as_ref().map_or(0, Bytes::len) + joined.len();
            if so_far + chunk.len() > max {
                return Err(ApiError::PayloadTooLarge(max));
            }
            match first.take() {
                None if joined.is_empty() => first = Some(chunk),
                None => joined.extend_from_slice(&chunk),
                Some(head) => {
                    joined.reserve(declared.unwrap_or(0).min(max as u64) as usize);
                    joined.extend_from_slice(&head);
                    joined.extend_from_slice(&chunk);
                }
            }
        }
        Ok(first.unwrap_or_else(|| joined.freeze()))
    };
    match tokio::time::timeout(app.config.server.body_timeout, read).await {
        Ok(Ok(bytes)) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Ok(Err(e)) => e.into_response(),
        Err(_) => ApiError::RequestTimeout(app.config.server.body_timeout).into_response(),
    }
}
