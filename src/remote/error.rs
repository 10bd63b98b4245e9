//! What can go wrong talking to a PBS server, in words a user can act on.

use std::time::Duration;

/// Errors of the connection, authentication and HTTP layers. Protocol-level failures the
/// server reports (a non-2xx status) keep the server's plain-text message.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error(
        "the certificate of {server} has fingerprint {actual}, but {expected} was expected \
         (--fingerprint / PBS_FINGERPRINT); refusing to connect"
    )]
    FingerprintMismatch {
        server: String,
        expected: String,
        actual: String,
    },
    #[error(
        "the certificate of {server} is not trusted ({reason}); if this is your server, check \
         its fingerprint {fingerprint} and pass it with --fingerprint or PBS_FINGERPRINT"
    )]
    UntrustedCertificate {
        server: String,
        reason: String,
        fingerprint: String,
    },
    #[error("TLS handshake with {server} failed: {message}")]
    Tls { server: String, message: String },
    #[error("cannot connect to {server}: {message}")]
    Unreachable { server: String, message: String },
    #[error("{what} timed out after {} s", .after.as_secs_f32())]
    Timeout { what: String, after: Duration },
    #[error("authentication as {auth_id} on {server} failed ({message}): check the password or token secret (PBS_PASSWORD)")]
    AuthenticationFailed {
        server: String,
        auth_id: String,
        message: String,
    },
    #[error("permission denied: {message}")]
    Forbidden { message: String },
    #[error("server error {status}: {message}")]
    Status { status: u16, message: String },
    #[error("connection to {server} lost: {message}")]
    ConnectionLost { server: String, message: String },
    #[error("unexpected answer from {server}: {message}")]
    Protocol { server: String, message: String },
}

impl RemoteError {
    /// True when the connection itself failed (worth reconnecting), as opposed to the server
    /// answering with an error.
    pub fn is_connection_error(&self) -> bool {
        matches!(
            self,
            RemoteError::ConnectionLost { .. }
                | RemoteError::Unreachable { .. }
                | RemoteError::Timeout { .. }
        )
    }

    /// The HTTP status the server answered with, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            RemoteError::Status { status, .. } => Some(*status),
            RemoteError::AuthenticationFailed { .. } => Some(401),
            RemoteError::Forbidden { .. } => Some(403),
            _ => None,
        }
    }
}
