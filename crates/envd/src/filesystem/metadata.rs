//! User metadata on files, as E2B's envd keeps it: extended attributes
//! `user.e2b.<key>`, set from an upload's `X-Metadata-<key>` headers and
//! reported (prefix stripped) in every `EntryInfo` and written-file answer,
//! including attributes set inside the sandbox by other means.

use std::collections::HashMap;
use std::path::Path;

use axum::http::HeaderMap;

/// The attribute namespace the metadata lives in.
pub const XATTR_PREFIX: &str = "user.e2b.";
/// The upload headers that carry it, lower-cased as HTTP names arrive.
pub const HEADER_PREFIX: &str = "x-metadata-";
/// Most keys one upload may set.
pub const MAX_KEYS: usize = 64;
/// Most bytes of one value (ext4 keeps all of a file's attributes in one
/// 4 KiB block; the file system refuses what does not fit).
pub const MAX_VALUE: usize = 4096;
/// Most bytes of one key: an attribute's name is at most 255 bytes,
/// prefix included.
pub const MAX_KEY: usize = 255 - XATTR_PREFIX.len();
/// Most bytes of all keys and values of one upload together: what fits,
/// with ext4's ~20 bytes per entry, beside its own attributes in its one
/// 4 KiB block.
pub const MAX_TOTAL: usize = 2048;

/// Why an upload's metadata headers were refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum BadMetadata {
    /// `X-Metadata-` with nothing after it.
    #[error("a metadata header needs a key after 'X-Metadata-'")]
    EmptyKey,
    /// A value with bytes outside printable US-ASCII.
    #[error("metadata '{0}': the value must be printable US-ASCII")]
    Value(String),
    /// A value over [`MAX_VALUE`] bytes.
    #[error("metadata '{0}': the value is over {MAX_VALUE} bytes")]
    TooLong(String),
    /// A key over [`MAX_KEY`] bytes.
    #[error("a metadata key is over {MAX_KEY} bytes")]
    KeyTooLong,
    /// Keys and values over [`MAX_TOTAL`] bytes together.
    #[error("the metadata of one upload is over {MAX_TOTAL} bytes, keys and values together")]
    TooBig,
    /// More than [`MAX_KEYS`] keys.
    #[error("more than {MAX_KEYS} metadata keys in one upload")]
    TooMany,
}

/// The metadata an upload's headers carry: `X-Metadata-<key>: value`,
/// keys lower-cased (HTTP names are case-insensitive, so E2B's envd
/// lower-cases them too), sorted; empty when there is none.
pub fn from_headers(headers: &HeaderMap) -> Result<Vec<(String, String)>, BadMetadata> {
    let mut out = Vec::new();
    for (name, value) in headers {
        let Some(key) = name.as_str().strip_prefix(HEADER_PREFIX) else {
            continue;
        };
        if key.is_empty() {
            return Err(BadMetadata::EmptyKey);
        }
        if key.len() > MAX_KEY {
            return Err(BadMetadata::KeyTooLong);
        }
        let bytes = value.as_bytes();
        if !bytes.iter().all(|b| (0x20..=0x7e).contains(b)) {
            return Err(BadMetadata::Value(key.into()));
        }
        if bytes.len() > MAX_VALUE {
            return Err(BadMetadata::TooLong(key.into()));
        }
        out.push((key.to_string(), String::from_utf8_lossy(bytes).into_owned()));
        if out.len() > MAX_KEYS {
            return Err(BadMetadata::TooMany);
        }
    }
    out.sort();
    out.dedup_by(|a, b| a.0 == b.0);
    if out.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>() > MAX_TOTAL {
        return Err(BadMetadata::TooBig);
    }
    Ok(out)
}

/// Makes `pairs` the file's whole metadata (none clears it, as E2B's envd
/// does on every upload): the `user.e2b.*` attributes not among them
/// removed first (so the new set always has the room it needs), then the
/// new ones set. Follows symlinks, as the upload that wrote the file did.
pub fn replace(path: &Path, pairs: &[(String, String)]) -> std::io::Result<()> {
    for old in keys(path) {
        if !pairs.iter().any(|(k, _)| *k == old) {
            match rustix::fs::removexattr(path, format!("{XATTR_PREFIX}{old}")) {
                Ok(()) | Err(rustix::io::Errno::NODATA) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    for (k, v) in pairs {
        rustix::fs::setxattr(
            path,
            format!("{XATTR_PREFIX}{k}"),
            v.as_bytes(),
            rustix::fs::XattrFlags::empty(),
        )?;
    }
    Ok(())
}

/// The keys of the file's `user.e2b.*` attributes, prefix stripped
/// (following symlinks: a link has none of its own); none when they
/// cannot be listed.
fn keys(path: &Path) -> Vec<String> {
    // Most files have no attributes at all: one call with a small buffer
    // answers for them; ERANGE means a longer list.
    let mut names = vec![0u8; 256];
    let len = match rustix::fs::listxattr(path, &mut names[..]) {
        Ok(n) => n,
        Err(rustix::io::Errno::RANGE) => {
            // The kernel's own limit on a list is 64 KiB.
            names = vec![0u8; 64 << 10];
            match rustix::fs::listxattr(path, &mut names[..]) {
                Ok(n) => n,
                Err(_) => return Vec::new(),
            }
        }
        Err(_) => return Vec::new(),
    };
    names[..len.min(names.len())]
        .split(|b| *b == 0)
        .filter_map(|name| name.strip_prefix(XATTR_PREFIX.as_bytes()))
        .filter(|key| !key.is_empty())
        .filter_map(|key| std::str::from_utf8(key).ok())
        .map(str::to_string)
        .collect()
}

/// The file's metadata: its `user.e2b.*` attributes, prefix stripped
/// (a symlink shows its target's). Empty when it has none, or when they
/// cannot be read; values that are not UTF-8 are shown lossily, values
/// over [`MAX_VALUE`] bytes (set by other means) are left out.
pub fn read(path: &Path) -> HashMap<String, String> {
    let keys = keys(path);
    let mut out = HashMap::with_capacity(keys.len());
    if keys.is_empty() {
        return out;
    }
    let mut value = vec![0u8; MAX_VALUE];
    for key in keys {
        if let Ok(n) = rustix::fs::getxattr(path, format!("{XATTR_PREFIX}{key}"), &mut value[..]) {
            let v = String::from_utf8_lossy(&value[..n.min(value.len())]).into_owned();
            out.insert(key, v);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&str, &[u8])]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_bytes(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn headers_become_lower_cased_sorted_pairs() {
        type Case<'a> = (
            &'a [(&'a str, &'a [u8])],
            Result<Vec<(&'a str, &'a str)>, BadMetadata>,
        );
        let cases: &[Case] = &[
            (&[], Ok(vec![])),
            (
                &[
                    ("X-Metadata-Owner", b"ann"),
                    ("x-metadata-a.b", b"1 2"),
                    ("content-type", b"x"),
                ],
                Ok(vec![("a.b", "1 2"), ("owner", "ann")]),
            ),
            (&[("x-metadata-", b"v")], Err(BadMetadata::EmptyKey)),
            (
                &[("x-metadata-k", b"caf\xc3\xa9")],
                Err(BadMetadata::Value("k".into())),
            ),
            (
                &[("x-metadata-k", b"a\tb")],
                Err(BadMetadata::Value("k".into())),
            ),
        ];
        for (input, want) in cases {
            let got = from_headers(&headers(input));
            let want = want.clone().map(|v| {
                v.into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<Vec<_>>()
            });
            assert_eq!(got, want, "{input:?}");
        }
        let long = vec![b'x'; MAX_VALUE + 1];
        assert_eq!(
            from_headers(&headers(&[("x-metadata-k", &long)])),
            Err(BadMetadata::TooLong("k".into()))
        );
        let key = format!("x-metadata-{}", "k".repeat(MAX_KEY + 1));
        assert_eq!(
            from_headers(&headers(&[(key.as_str(), b"v")])),
            Err(BadMetadata::KeyTooLong)
        );
        let big = vec![b'v'; MAX_TOTAL / 2];
        assert_eq!(
            from_headers(&headers(&[("x-metadata-a", &big), ("x-metadata-b", &big)])),
            Err(BadMetadata::TooBig)
        );
        let many: Vec<(String, &[u8])> = (0..=MAX_KEYS)
            .map(|i| (format!("x-metadata-k{i}"), &b"v"[..]))
            .collect();
        let many: Vec<(&str, &[u8])> = many.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        assert_eq!(from_headers(&headers(&many)), Err(BadMetadata::TooMany));
    }

    #[test]
    fn metadata_is_replaced_and_read_back() {
        let dir = std::env::temp_dir().join(format!("envd-meta-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("f");
        std::fs::write(&f, b"x").unwrap();
        let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        if let Err(e) = replace(&f, &pairs(&[("a", "1"), ("b", "2")])) {
            // tmpfs before 6.6 and some CI file systems keep no user.* attributes.
            eprintln!("skipped: {} keeps no user attributes ({e})", dir.display());
            std::fs::remove_dir_all(&dir).unwrap();
            return;
        }
        // One set by other means shows too; other namespaces do not.
        rustix::fs::lsetxattr(&f, "user.other", b"no", rustix::fs::XattrFlags::empty()).unwrap();
        rustix::fs::lsetxattr(&f, "user.e2b.c", b"3", rustix::fs::XattrFlags::empty()).unwrap();
        let got = read(&f);
        assert_eq!(got.len(), 3);
        assert_eq!(
            (got["a"].as_str(), got["b"].as_str(), got["c"].as_str()),
            ("1", "2", "3")
        );
        replace(&f, &pairs(&[("b", "two")])).unwrap();
        assert_eq!(
            read(&f),
            HashMap::from([("b".to_string(), "two".to_string())])
        );
        // Through a symlink: the target's.
        let link = dir.join("link");
        std::os::unix::fs::symlink(&f, &link).unwrap();
        assert_eq!(read(&link), read(&f));
        replace(&link, &[]).unwrap();
        assert!(read(&f).is_empty(), "none clears");
        assert!(read(&dir.join("missing")).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
