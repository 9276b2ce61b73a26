//! Identity: argon2id passwords, HS256 JWTs for users, `wrn_` API keys
//! (only their SHA-256 is stored), and the [`Caller`] every route gets.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::App;
use crate::error::ApiError;

/// Hashes a password with argon2id and a random salt.
pub fn hash_password(password: &str) -> String {
    let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>()).expect("16 bytes encode");
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 hashes")
        .to_string()
}

/// Checks a password against its PHC string.
pub fn verify_password(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|h| {
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

/// SHA-256 of a secret, hex.
pub fn sha256_hex(secret: &str) -> String {
    Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// How an API key's secret looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyFormat {
    /// `wrn_` + 32 hex.
    #[default]
    Wrenn,
    /// `e2b_` + 40 hex, the form E2B's SDKs validate.
    E2b,
}

/// A new API key: (secret, its hash, display prefix, last 4).
pub fn new_api_key(format: KeyFormat) -> (String, String, String, String) {
    let secret = match format {
        KeyFormat::Wrenn => format!("wrn_{}", crate::ids::hex(16)),
        KeyFormat::E2b => format!("e2b_{}", crate::ids::hex(20)),
    };
    let hash = sha256_hex(&secret);
    let prefix = secret[..8].to_string();
    let last4 = secret[secret.len() - 4..].to_string();
    (secret, hash, prefix, last4)
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    iat: u64,
    /// `host` for host tokens; empty (or `user`) for users'.
    #[serde(default)]
    typ: String,
}

/// Issues and checks user JWTs (HS256).
#[derive(Clone)]
pub struct Jwt {
    secret: Vec<u8>,
}

/// How long a login lasts.
pub const JWT_TTL_SECS: u64 = 24 * 3600;

/// How long a host's JWT lasts.
pub const HOST_JWT_TTL_SECS: u64 = 7 * 24 * 3600;

impl Jwt {
    /// With `secret` (at least 16 bytes).
    pub fn new(secret: &[u8]) -> Self {
        Jwt {
            secret: secret.to_vec(),
        }
    }

    /// A token for `user_id`.
    pub fn issue(&self, user_id: &str) -> String {
        self.encode(user_id, "user", JWT_TTL_SECS)
    }

    /// A host's token (7 days) and when it expires.
    pub fn issue_host(&self, host_id: &str) -> (String, i64) {
        let exp = crate::store::now() + HOST_JWT_TTL_SECS as i64;
        (self.encode(host_id, "host", HOST_JWT_TTL_SECS), exp)
    }

    fn encode(&self, sub: &str, typ: &str, ttl: u64) -> String {
        let now = crate::store::now() as u64;
        let claims = Claims {
            sub: sub.into(),
            iat: now,
            exp: now + ttl,
            typ: typ.into(),
        };
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(&self.secret),
        )
        .expect("HS256 encodes")
    }

    /// The user a valid user token names.
    pub fn verify(&self, token: &str) -> Option<String> {
        self.decode(token)
            .filter(|c| c.typ != "host")
            .map(|c| c.sub)
    }

    /// The host a valid host token names.
    pub fn verify_host(&self, token: &str) -> Option<String> {
        self.decode(token)
            .filter(|c| c.typ == "host")
            .map(|c| c.sub)
    }

    fn decode(&self, token: &str) -> Option<Claims> {
        let v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        jsonwebtoken::decode::<Claims>(
            token,
            &jsonwebtoken::DecodingKey::from_secret(&self.secret),
            &v,
        )
        .ok()
        .map(|d| d.claims)
    }
}

/// Who is calling, and for which team.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The team the call acts for.
    pub team_id: String,
    /// User id or API key id, for the audit log.
    pub actor: String,
    /// The user, when logged in as one.
    pub user_id: Option<String>,
    /// owner, admin or member (API keys act as admin of their team).
    pub role: String,
    /// Whether the user is a platform admin.
    pub is_admin: bool,
}

impl Caller {
    /// Refuses callers below `admin` in their team.
    pub fn require_team_admin(&self) -> Result<(), ApiError> {
        if self.role == "owner" || self.role == "admin" {
            Ok(())
        } else {
            Err(ApiError::forbidden(
                "this needs the owner or admin role in the team",
            ))
        }
    }
}

impl FromRequestParts<App> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, ApiError> {
        if let Some(key) = parts.headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
            let found = app.store.api_key_by_hash(&sha256_hex(key.trim())).await?;
            let Some(k) = found else {
                return Err(ApiError::unauthorized(
                    "invalid API key; create one with `wrenn key create` or POST /v1/api-keys",
                ));
            };
            let store = app.store.clone();
            let id = k.id.clone();
            tokio::spawn(async move {
                let _ = store.touch_api_key(&id).await;
            });
            return Ok(Caller {
                team_id: k.team_id,
                actor: k.id,
                user_id: None,
                role: "admin".into(),
                is_admin: k.platform_admin,
            });
        }
        let bearer = parts
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let Some(token) = bearer else {
            return Err(ApiError::unauthorized(
                "missing credentials: send X-API-Key: wrn_… (or e2b_…) or Authorization: Bearer <token from /v1/auth/login>",
            ));
        };
        let user_id = app
            .jwt
            .verify(token.trim())
            .ok_or_else(|| ApiError::unauthorized("invalid or expired token; log in again"))?;
        let user = app
            .store
            .user_by_id(&user_id)
            .await?
            .ok_or_else(|| ApiError::unauthorized("the token's user no longer exists"))?;
        let teams = app.store.teams_of(&user_id).await?;
        let wanted = parts.headers.get("x-team-id").and_then(|v| v.to_str().ok());
        let (team, role) = match wanted {
            Some(t) => teams
                .into_iter()
                .find(|(team, _)| team.id == t)
                .ok_or_else(|| ApiError::not_found(format!("team '{t}'")))?,
            None => teams.into_iter().next().ok_or_else(|| {
                ApiError::forbidden("you belong to no team; create one with POST /v1/teams")
            })?,
        };
        Ok(Caller {
            team_id: team.id,
            actor: user.id.clone(),
            user_id: Some(user.id),
            role,
            is_admin: user.is_admin,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_keys_and_tokens() {
        let h = hash_password("correct horse");
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("wrong", &h));
        let (secret, hash, prefix, last4) = new_api_key(KeyFormat::Wrenn);
        assert!(secret.starts_with("wrn_") && secret.len() == 36);
        let (e2b, e2b_hash, ..) = new_api_key(KeyFormat::E2b);
        assert!(e2b.starts_with("e2b_") && e2b.len() == 44, "{e2b}");
        assert!(e2b[4..].bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(e2b_hash, sha256_hex(&e2b));
        assert_eq!(hash, sha256_hex(&secret));
        assert!(secret.starts_with(&prefix) && secret.ends_with(&last4));
        let jwt = Jwt::new(b"0123456789abcdef0123456789abcdef");
        let t = jwt.issue("usr-1");
        assert_eq!(jwt.verify(&t).as_deref(), Some("usr-1"));
        assert_eq!(
            Jwt::new(b"another secret, another secret!").verify(&t),
            None
        );
        assert_eq!(jwt.verify("garbage"), None);
        // Host and user tokens are not interchangeable.
        let (h, exp) = jwt.issue_host("host-1");
        assert!(exp > crate::store::now() + 6 * 86400);
        assert_eq!(jwt.verify_host(&h).as_deref(), Some("host-1"));
        assert_eq!(jwt.verify(&h), None);
        assert_eq!(jwt.verify_host(&t), None);
    }
}
