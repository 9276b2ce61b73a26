//! Mapping of envd's errors onto Connect error codes.

use connectrpc::ConnectError;

use crate::users::UserError;

/// A user that does not exist: `unauthenticated`, as E2B's envd answers.
pub fn user_error(e: UserError) -> ConnectError {
    ConnectError::unauthenticated(e.to_string())
}

/// An I/O error on `path`, with the Connect code a client can act on.
pub fn io_error(e: std::io::Error, what: &str, path: &std::path::Path) -> ConnectError {
    use std::io::ErrorKind::*;
    let msg = format!("{what} '{}': {e}", path.display());
    match e.kind() {
        NotFound => ConnectError::not_found(msg),
        AlreadyExists => ConnectError::already_exists(msg),
        PermissionDenied => ConnectError::permission_denied(msg),
        NotADirectory | IsADirectory | InvalidInput | InvalidFilename | DirectoryNotEmpty => {
            ConnectError::invalid_argument(msg)
        }
        StorageFull | QuotaExceeded => ConnectError::resource_exhausted(msg),
        _ => ConnectError::internal(msg),
    }
}
