//! What requests to a PBS server and its answers look like on the wire, whether they go over
//! the HTTP/1.1 API connection ([`client`](super::client)) or a session's HTTP/2 streams
//! ([`session`](super::session)): our user agent, the content types, the `data` member of JSON
//! answers and the error a non-2xx status means (protocol.md §4).

use http::StatusCode;
use serde_json::Value;

use super::error::RemoteError;

pub const USER_AGENT: &str = concat!("pbsfs/", env!("CARGO_PKG_VERSION"));
/// Large enough for the index of a multi-terabyte archive.
pub const DOWNLOAD_LIMIT: usize = 256 << 20;

pub const FORM: &str = "application/x-www-form-urlencoded";
pub const OCTETS: &str = "application/octet-stream";
pub const JSON: &str = "application/json";

/// The `data` member of a PBS JSON answer.
pub(crate) fn parse_data(raw: &[u8], server: &str) -> Result<Value, RemoteError> {
    let mut value: Value = serde_json::from_slice(raw).map_err(|err| RemoteError::Protocol {
        server: server.to_string(),
        message: format!("invalid JSON: {err}"),
    })?;
    match value.get_mut("data") {
        Some(data) => Ok(data.take()),
        None => Err(RemoteError::Protocol {
            server: server.to_string(),
            message: "JSON answer without 'data'".into(),
        }),
    }
}

/// A non-2xx answer; the body is the server's plain-text message (protocol.md §4).
pub(crate) fn status_error(
    status: StatusCode,
    body: &[u8],
    server: &str,
    auth_id: &str,
) -> RemoteError {
    let text = String::from_utf8_lossy(&body[..body.len().min(4096)])
        .trim()
        .to_string();
    let message = if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("no message")
            .to_string()
    } else {
        text
    };
    match status {
        StatusCode::UNAUTHORIZED if !message.starts_with("download chunk") => {
            RemoteError::AuthenticationFailed {
                server: server.to_string(),
                auth_id: auth_id.to_string(),
                message,
            }
        }
        StatusCode::FORBIDDEN => RemoteError::Forbidden { message },
        _ => RemoteError::Status {
            status: status.as_u16(),
            message,
        },
    }
}
