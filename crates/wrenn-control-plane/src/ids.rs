//! Ids: a prefix, a dash, then random base36 — no other `-` or `.`, so an
//! id fits in a DNS label (`{port}-{sandbox_id}.{domain}`).

use rand::Rng;

/// A new id like `sb-k3j9x0q2m1zt`.
pub fn new(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::rng();
    let tail: String = (0..12)
        .map(|_| ALPHABET[rng.random_range(0..36)] as char)
        .collect();
    format!("{prefix}-{tail}")
}

/// Random bytes as lowercase hex.
pub fn hex(bytes: usize) -> String {
    let mut rng = rand::rng();
    (0..bytes)
        .map(|_| format!("{:02x}", rng.random::<u8>()))
        .collect()
}

/// Whether `id` has `prefix` and the id shape.
pub fn is_valid(prefix: &str, id: &str) -> bool {
    id.strip_prefix(prefix)
        .and_then(|r| r.strip_prefix('-'))
        .is_some_and(|r| {
            !r.is_empty()
                && r.len() <= 32
                && r.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_dns_safe_and_unique() {
        let a = new("sb");
        let b = new("sb");
        assert_ne!(a, b);
        assert!(is_valid("sb", &a), "{a}");
        assert_eq!(a.matches('-').count(), 1);
        for (id, ok) in [
            ("sb-abc", true),
            ("sb-ab.c", false),
            ("sb-a-b", false),
            ("usr-abc", false),
            ("sb-", false),
        ] {
            assert_eq!(is_valid("sb", id), ok, "{id}");
        }
        assert_eq!(hex(16).len(), 32);
    }
}
