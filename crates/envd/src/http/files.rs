//! `GET /files` (download) and `POST /files` (upload: multipart with one
//! or many files, or a raw octet-stream body, optionally gzip-compressed).
//! Bodies stream through a bounded queue in both directions, so memory
//! stays flat whatever the file size.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Multipart, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};

use super::http_error;
use crate::filesystem::metadata;
use crate::filesystem::service::{chown_to, create_dirs};
use crate::state::{AppState, resolve_path};
use crate::users::User;

/// Bytes per chunk when reading a file for download.
const READ_CHUNK: usize = 256 * 1024;
/// Bytes gathered before a write to disk.
const WRITE_BATCH: usize = 1024 * 1024;
/// Chunks in flight between the network and the disk.
const QUEUE: usize = 4;

/// Query of `/files`.
#[derive(Debug, Deserialize)]
pub struct FilesQuery {
    /// Destination or source path; relative paths start at the user's home.
    pub path: Option<String>,
    /// User who owns written files and whose home relative paths use.
    pub username: Option<String>,
}

/// One written file, as E2B's envd reports it.
#[derive(Debug, Serialize)]
pub struct WrittenFile {
    /// Absolute path.
    pub path: String,
    /// File name.
    pub name: String,
    /// Always "file".
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Its metadata (`user.e2b.*` attributes), when it has any.
    #[serde(skip_serializing_if = "HashMap::is_empty")]
    pub metadata: HashMap<String, String>,
}

fn io_status(e: &std::io::Error) -> StatusCode {
    use std::io::ErrorKind::*;
    match e.kind() {
        NotFound => StatusCode::NOT_FOUND,
        PermissionDenied => StatusCode::FORBIDDEN,
        IsADirectory | NotADirectory | InvalidInput | InvalidData | InvalidFilename => {
            StatusCode::BAD_REQUEST
        }
        StorageFull | QuotaExceeded => StatusCode::INSUFFICIENT_STORAGE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn user_and_path(
    state: &AppState,
    q: &FilesQuery,
    path: Option<&str>,
) -> Result<(User, PathBuf), Response> {
    let user = state
        .resolve_user(q.username.as_deref())
        .map_err(|e| http_error(StatusCode::UNAUTHORIZED, e.to_string()))?;
    let Some(path) = path.filter(|p| !p.is_empty()) else {
        return Err(http_error(
            StatusCode::BAD_REQUEST,
            "the 'path' query parameter is required",
        ));
    };
    let workdir = state.defaults().workdir;
    let p = resolve_path(path, &user, workdir.as_deref())
        .map_err(|e| http_error(StatusCode::BAD_REQUEST, e.to_string()))?;
    Ok((user, p))
}

fn wants_gzip(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|e| e.trim().split(';').next() == Some("gzip"))
        })
}

/// `GET /files?path=&username=`: the file's bytes.
pub async fn download(
    State(state): State<AppState>,
    Query(q): Query<FilesQuery>,
    headers: HeaderMap,
) -> Response {
    let (_, path) = match user_and_path(&state, &q, q.path.as_deref()) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) => {
            return http_error(
                io_status(&e),
                format!("cannot read '{}': {e}", path.display()),
            );
        }
    };
    let meta = match file.metadata() {
        Ok(m) => m,
        Err(e) => {
            return http_error(
                io_status(&e),
                format!("cannot read '{}': {e}", path.display()),
            );
        }
    };
    if meta.is_dir() {
        return http_error(
            StatusCode::BAD_REQUEST,
            format!("'{}' is a directory; download files only", path.display()),
        );
    }
    let gzip = wants_gzip(&headers);
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(QUEUE);
    tokio::task::spawn_blocking(move || {
        let mut file = file;
        let send = |r| tx.blocking_send(r).is_ok();
        if gzip {
            let mut enc = flate2::write::GzEncoder::new(
                ChunkWriter {
                    send: &send,
                    buf: Vec::new(),
                },
                flate2::Compression::fast(),
            );
            let mut buf = vec![0u8; READ_CHUNK];
            loop {
                match file.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if enc.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        send(Err(e));
                        return;
                    }
                }
            }
            if let Ok(mut w) = enc.finish() {
                let _ = w.flush();
            }
        } else {
            loop {
                let mut buf = vec![0u8; READ_CHUNK];
                match file.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        buf.truncate(n);
                        if !send(Ok(Bytes::from(buf))) {
                            return;
                        }
                    }
                    Err(e) => {
                        send(Err(e));
                        return;
                    }
                }
            }
        }
    });
    let body = Body::from_stream(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|c| (c, rx))
    }));
    let mut resp = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(
            header::CONTENT_DISPOSITION,
            content_disposition(
                &path
                    .file_name()
                    .map(|n| n.to_string_lossy())
                    .unwrap_or_default(),
            ),
        );
    resp = if gzip {
        resp.header(header::CONTENT_ENCODING, "gzip")
    } else {
        resp.header(header::CONTENT_LENGTH, meta.len())
    };
    match resp.body(body) {
        Ok(r) => r,
        Err(e) => http_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("building the response for {}: {e}", path.display()),
        ),
    }
}

/// What RFC 5987's `attr-char` keeps as it is in `filename*`.
const ATTR_CHAR: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'!')
    .remove(b'#')
    .remove(b'$')
    .remove(b'&')
    .remove(b'+')
    .remove(b'-')
    .remove(b'.')
    .remove(b'^')
    .remove(b'_')
    .remove(b'`')
    .remove(b'|')
    .remove(b'~');

/// `Content-Disposition` for a download of `name`: any file name a sandbox
/// can hold (quotes, newlines, non-ASCII) gives a valid header, an ASCII
/// fallback in `filename` and the exact name in RFC 5987's `filename*`.
pub fn content_disposition(name: &str) -> header::HeaderValue {
    let fallback: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let encoded = percent_encoding::utf8_percent_encode(name, ATTR_CHAR);
    let v = format!("attachment; filename=\"{fallback}\"; filename*=UTF-8''{encoded}");
    header::HeaderValue::from_str(&v).unwrap_or(header::HeaderValue::from_static("attachment"))
}

/// A `Write` that hands full chunks to the response body.
struct ChunkWriter<'a, F: Fn(std::io::Result<Bytes>) -> bool> {
    send: &'a F,
    buf: Vec<u8>,
}

impl<F: Fn(std::io::Result<Bytes>) -> bool> Write for ChunkWriter<'_, F> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= READ_CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() && !(self.send)(Ok(Bytes::from(std::mem::take(&mut self.buf)))) {
            return Err(std::io::ErrorKind::BrokenPipe.into());
        }
        Ok(())
    }
}

/// Writes a stream of chunks to `path` on a blocking thread, decompressing
/// gzip if asked; parent directories are created and everything new is
/// handed to `user`.
async fn write_stream<S, E>(
    path: &Path,
    user: &User,
    gzip: bool,
    mut body: S,
) -> Result<(), (StatusCode, String)>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let fail = |e: std::io::Error, what: &str| {
        (
            io_status(&e),
            format!("cannot {what} '{}': {e}", path.display()),
        )
    };
    if path.is_dir() {
        return Err((
            StatusCode::BAD_REQUEST,
            format!("'{}' is a directory; give a file path", path.display()),
        ));
    }
    let parent = path.parent().unwrap_or(Path::new("/"));
    let created = create_dirs(parent).map_err(|e| fail(e, "create the directory of"))?;
    chown_to(user, &created).map_err(|e| fail(e, "hand over the directory of"))?;
    let file = std::fs::File::create(path).map_err(|e| fail(e, "write"))?;
    chown_to(user, &[path.to_path_buf()]).map_err(|e| fail(e, "hand over"))?;

    let (tx, rx) = std::sync::mpsc::sync_channel::<Bytes>(QUEUE);
    let writer = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        let mut out: Box<dyn Write> = if gzip {
            Box::new(flate2::write::GzDecoder::new(file))
        } else {
            Box::new(file)
        };
        for chunk in rx {
            out.write_all(&chunk)?;
        }
        out.flush()
    });
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    let mut failed = None;
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(c) => {
                batch.extend_from_slice(&c);
                if batch.len() >= WRITE_BATCH {
                    let full = std::mem::replace(&mut batch, Vec::with_capacity(WRITE_BATCH));
                    if tx.send(Bytes::from(full)).is_err() {
                        break; // the writer failed; its error is reported below
                    }
                }
            }
            Err(e) => {
                failed = Some((
                    StatusCode::BAD_REQUEST,
                    format!("upload of '{}' broke off: {e}", path.display()),
                ));
                break;
            }
        }
    }
    if failed.is_none() && !batch.is_empty() {
        let _ = tx.send(Bytes::from(batch));
    }
    drop(tx);
    let written = writer
        .await
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    if let Some(f) = failed {
        let _ = std::fs::remove_file(path);
        return Err(f);
    }
    written.map_err(|e| {
        let _ = std::fs::remove_file(path);
        if e.kind() == std::io::ErrorKind::InvalidInput
            || e.kind() == std::io::ErrorKind::InvalidData
        {
            (
                StatusCode::BAD_REQUEST,
                format!("body of '{}' is not valid gzip: {e}", path.display()),
            )
        } else {
            fail(e, "write")
        }
    })
}

/// Gives the written file at `path` the upload's metadata (its whole
/// metadata: an upload without any clears it, as E2B's envd does), and
/// describes it. A file system without user attributes keeps none, and
/// the upload still succeeds (logged), as with E2B's.
fn written(path: &Path, meta: &[(String, String)]) -> Result<WrittenFile, (StatusCode, String)> {
    match metadata::replace(path, meta) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NOTSUP.raw_os_error()) => {
            tracing::warn!("{}: no metadata kept ({e})", path.display());
        }
        Err(e) => {
            return Err((
                io_status(&e),
                format!(
                    "'{}' was written, but its metadata could not be set: {e}",
                    path.display()
                ),
            ));
        }
    }
    Ok(WrittenFile {
        path: path.display().to_string(),
        name: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        kind: "file",
        metadata: metadata::read(path),
    })
}

/// `POST /files`: writes one file from an octet-stream body, or one or
/// more from a multipart form (parts named `file`; the part's filename is
/// its destination unless `path` is given). `X-Metadata-<key>` headers
/// become each written file's whole metadata.
pub async fn upload(
    State(state): State<AppState>,
    Query(q): Query<FilesQuery>,
    req: Request,
) -> Response {
    let meta = match metadata::from_headers(req.headers()) {
        Ok(m) => m,
        Err(e) => return http_error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if content_type.starts_with("multipart/form-data") {
        return upload_multipart(state, q, req, &meta).await;
    }
    let gzip = req
        .headers()
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("gzip"));
    let (user, path) = match user_and_path(&state, &q, q.path.as_deref()) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let body = req.into_body().into_data_stream();
    match write_stream(&path, &user, gzip, body).await {
        Ok(()) => match written(&path, &meta) {
            Ok(w) => axum::Json(vec![w]).into_response(),
            Err((status, msg)) => http_error(status, msg),
        },
        Err((status, msg)) => http_error(status, msg),
    }
}

async fn upload_multipart(
    state: AppState,
    q: FilesQuery,
    req: Request,
    meta: &[(String, String)],
) -> Response {
    let mut form = match Multipart::from_request(req, &()).await {
        Ok(m) => m,
        Err(e) => {
            return http_error(
                StatusCode::BAD_REQUEST,
                format!("invalid multipart body: {e}"),
            );
        }
    };
    let mut out = Vec::new();
    loop {
        let field = match form.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                return http_error(
                    StatusCode::BAD_REQUEST,
                    format!("invalid multipart body: {e}"),
                );
            }
        };
        if field.name() != Some("file") {
            continue;
        }
        if q.path.is_some() && !out.is_empty() {
            return http_error(
                StatusCode::BAD_REQUEST,
                "several files with one 'path' parameter; drop 'path' and name each part's filename instead",
            );
        }
        let target = q
            .path
            .clone()
            .or_else(|| field.file_name().map(str::to_string));
        let (user, path) = match user_and_path(&state, &q, target.as_deref()) {
            Ok(v) => v,
            Err(r) => return r,
        };
        let stream = futures::stream::unfold(field, |mut f| async move {
            match f.chunk().await {
                Ok(Some(c)) => Some((Ok(c), f)),
                Ok(None) => None,
                Err(e) => Some((Err(e), f)),
            }
        });
        if let Err((status, msg)) = write_stream(&path, &user, false, Box::pin(stream)).await {
            return http_error(status, msg);
        }
        match written(&path, meta) {
            Ok(w) => out.push(w),
            Err((status, msg)) => return http_error(status, msg),
        }
    }
    if out.is_empty() {
        return http_error(
            StatusCode::BAD_REQUEST,
            "the multipart body has no part named 'file'",
        );
    }
    axum::Json(out).into_response()
}

#[cfg(test)]
mod disposition_tests {
    use super::content_disposition;

    #[test]
    fn every_file_name_gives_a_valid_header() {
        for (name, want) in [
            (
                "a.txt",
                "attachment; filename=\"a.txt\"; filename*=UTF-8''a.txt",
            ),
            (
                "a\nb",
                "attachment; filename=\"a_b\"; filename*=UTF-8''a%0Ab",
            ),
            (
                "q\"uote",
                "attachment; filename=\"q_uote\"; filename*=UTF-8''q%22uote",
            ),
            ("é", "attachment; filename=\"_\"; filename*=UTF-8''%C3%A9"),
            (
                "a b",
                "attachment; filename=\"a b\"; filename*=UTF-8''a%20b",
            ),
        ] {
            assert_eq!(
                content_disposition(name).to_str().unwrap(),
                want,
                "{name:?}"
            );
        }
    }
}
