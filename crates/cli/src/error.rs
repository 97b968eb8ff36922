//! Failures and their exit codes: 0 ok, 1 other errors (service unreachable, conflicts, a
//! webhook test the endpoint failed), 2 usage (bad arguments, refused input), 3
//! authentication or permission, 4 not found, 5 the job failed or was canceled. A
//! refusal's exit code and advice follow its gRPC code and its reason
//! (`google.rpc.ErrorInfo`), never the wording of its message.

use tonic::Code;

/// A failure with its exit code and a message that says what to do.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CliError {
    /// Process exit code.
    pub code: u8,
    /// For people.
    pub message: String,
}

impl CliError {
    /// Exit 2.
    pub fn usage(m: impl Into<String>) -> Self {
        Self { code: 2, message: m.into() }
    }
    /// Exit 3.
    pub fn auth(m: impl Into<String>) -> Self {
        Self { code: 3, message: m.into() }
    }
    /// Exit 4.
    pub fn not_found(m: impl Into<String>) -> Self {
        Self { code: 4, message: m.into() }
    }
    /// Exit 5: the job ended without succeeding.
    pub fn job_ended(m: impl Into<String>) -> Self {
        Self { code: 5, message: m.into() }
    }
    /// Exit 1.
    pub fn other(m: impl Into<String>) -> Self {
        Self { code: 1, message: m.into() }
    }
}

impl From<tonic::Status> for CliError {
    fn from(s: tonic::Status) -> Self {
        let msg = s.message().to_owned();
        // What to do depends on the refusal's reason code (google.rpc.ErrorInfo), never on
        // the message's wording.
        let reason = sakuga_mesh::auth::reason_of(&s);
        match s.code() {
            Code::Unauthenticated if reason.as_deref() == Some("TOKEN_EXPIRED") => {
                Self::auth("token expired: run `sakuga login`")
            }
            Code::Unauthenticated => {
                Self::auth(format!("{msg}: run `sakuga login` (or use --api-key-file / $SAKUGA_API_KEY)"))
            }
            Code::PermissionDenied => Self::auth(format!("permission denied: {msg}")),
            Code::NotFound => Self::not_found(msg),
            Code::InvalidArgument | Code::OutOfRange => Self::usage(msg),
            Code::ResourceExhausted => Self::other(format!("{msg} (slow down and retry)")),
            Code::Unavailable => Self::other(format!(
                "service unavailable: {msg} (is it running? check the profile's addresses)"
            )),
            _ => Self::other(msg),
        }
    }
}
