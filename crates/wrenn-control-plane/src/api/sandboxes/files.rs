//! Files in a sandbox: read and write (streamed), list, mkdir, remove.

use axum::Json;
use axum::body::Body;
use axum::extract::{Multipart, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use wrenn_api_types::files::{DirMade, Entries, Entry, PathRequest, Written};
use wrenn_protocol::envd::filesystem as efs;

use super::super::ApiJson;
use crate::App;
use crate::auth::Caller;
use crate::dataplane::Envd;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::sandboxes::running_sandbox;

fn check_path(p: &str) -> ApiResult<()> {
    if p.is_empty() || p.contains('\0') {
        return Err(ApiError::bad_request("path: must be a non-empty path"));
    }
    Ok(())
}

/// POST files/read and files/stream/read: the file's bytes, streamed.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/files/read", tag = "files", params(("id" = String, Path, description = "Sandbox id (sb-…)")), request_body = PathRequest, responses((status = 200, description = "The file's bytes (streamed)", content_type = "application/octet-stream"), (status = 404, description = "No such sandbox in the team", body = ErrorBody)), security(("api_key" = []), ("bearer" = [])))]
pub(crate) async fn file_read(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(r): ApiJson<PathRequest>,
) -> ApiResult<Response> {
    check_path(&r.path)?;
    let sb = running_sandbox(&app, &caller, &id).await?;
    // Through the agent's proxy hop to envd's `/files`: the bytes pass
    // unparsed, and a missing file is envd's 404 before any byte.
    let body = Envd::of(&app, &sb).await?.read_file(&r.path).await?;
    Ok((
        [(http::header::CONTENT_TYPE, "application/octet-stream")],
        Body::new(body),
    )
        .into_response())
}

/// POST files/write and files/stream/write: multipart `path` then `file`,
/// streamed to the sandbox in chunks (a large upload never sits in memory).
#[utoipa::path(post, path = "/v1/sandboxes/{id}/files/write", tag = "files", params(("id" = String, Path, description = "Sandbox id (sb-…)")), request_body(content_type = "multipart/form-data", description = "Parts `path` then `file`; streamed, no size limit"), responses((status = 200, description = "Path and size written", body = Written), (status = 404, description = "No such sandbox in the team", body = ErrorBody)), security(("api_key" = []), ("bearer" = [])))]
pub(crate) async fn file_write(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
    mut form: Multipart,
) -> ApiResult<Json<Written>> {
    let sb = running_sandbox(&app, &caller, &id).await?;
    // Through the agent's proxy hop to envd's `/files`, streamed: a large
    // upload never sits in memory, and its bytes are not re-framed.
    let envd = Envd::of(&app, &sb).await?;
    let bad = |e: axum::extract::multipart::MultipartError| {
        ApiError::bad_request(format!("multipart body: {}", e.body_text()))
    };
    let mut path: Option<String> = None;
    let mut buffered: Option<Vec<u8>> = None;
    let mut written: Option<(String, u64)> = None;
    while let Some(mut field) = form.next_field().await.map_err(bad)? {
        match field.name() {
            Some("path") => path = Some(field.text().await.map_err(bad)?),
            Some("file") => match &path {
                Some(p) => {
                    check_path(p)?;
                    let (tx, rx) =
                        tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(8);
                    let body =
                        Body::from_stream(futures::stream::unfold(rx, |mut rx| async move {
                            rx.recv().await.map(|c| (c, rx))
                        }));
                    let upload = envd.write_file(p, body);
                    let feed = async {
                        let mut size = 0u64;
                        loop {
                            match field.chunk().await {
                                Ok(Some(chunk)) => {
                                    size += chunk.len() as u64;
                                    if tx.send(Ok(chunk)).await.is_err() {
                                        break;
                                    }
                                }
                                Ok(None) => break,
                                Err(e) => {
                                    // envd must not keep half a file as if whole.
                                    let _ = tx
                                        .send(Err(std::io::Error::other("the upload broke off")))
                                        .await;
                                    return Err(bad(e));
                                }
                            }
                        }
                        drop(tx);
                        Ok::<_, ApiError>(size)
                    };
                    let (up, fed) = tokio::join!(upload, feed);
                    let size = fed?;
                    up?;
                    written = Some((p.clone(), size));
                }
                None => {
                    let mut data = Vec::new();
                    while let Some(c) = field.chunk().await.map_err(bad)? {
                        if data.len() + c.len() > 64 << 20 {
                            return Err(ApiError::new(
                                StatusCode::PAYLOAD_TOO_LARGE,
                                "too_large",
                                "send the path part before the file part for uploads over 64 MiB",
                            ));
                        }
                        data.extend_from_slice(&c);
                    }
                    buffered = Some(data);
                }
            },
            _ => {}
        }
    }
    if let (Some(p), Some(data)) = (&path, buffered) {
        check_path(p)?;
        let size = data.len() as u64;
        envd.write_file(p, Body::from(data)).await?;
        written = Some((p.clone(), size));
    }
    let Some((path, size)) = written else {
        return Err(ApiError::bad_request(
            "multipart body needs a 'path' part and a 'file' part",
        ));
    };
    Ok(Json(Written { path, size }))
}

/// One of envd's entries as the native API shows it.
fn entry(e: &efs::EntryInfo) -> Entry {
    let kind = match e.r#type.as_known() {
        Some(efs::FileType::FILE_TYPE_DIRECTORY) => "directory",
        Some(efs::FileType::FILE_TYPE_SYMLINK) => "symlink",
        _ => "file",
    };
    Entry {
        name: e.name.clone(),
        path: e.path.clone(),
        kind: kind.into(),
        size: e.size,
        mode: e.mode,
        owner: e.owner.clone(),
        group: e.group.clone(),
        modified_at: e.modified_time.as_option().map_or(0, |t| t.seconds),
    }
}

/// envd's listing of `path` to `depth`, through the agent's hop.
async fn listing(envd: &Envd, path: &str, depth: u32) -> ApiResult<Vec<efs::EntryInfo>> {
    let l = envd
        .fs
        .list_dir(efs::ListDirRequest {
            path: path.to_string(),
            depth,
            ..Default::default()
        })
        .await
        .map_err(|e| envd.failed(e))?
        .into_owned();
    Ok(l.entries)
}

#[utoipa::path(post, path = "/v1/sandboxes/{id}/files/list", tag = "files", params(("id" = String, Path, description = "Sandbox id (sb-…)")), request_body = PathRequest, responses((status = 200, description = "Entries", body = Entries), (status = 404, description = "No such sandbox in the team", body = ErrorBody)), security(("api_key" = []), ("bearer" = [])))]
pub(crate) async fn file_list(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(r): ApiJson<PathRequest>,
) -> ApiResult<Json<Entries>> {
    check_path(&r.path)?;
    let sb = running_sandbox(&app, &caller, &id).await?;
    let envd = Envd::of(&app, &sb).await?;
    let entries = listing(&envd, &r.path, r.depth.unwrap_or(1).max(1)).await?;
    Ok(Json(Entries {
        entries: entries.iter().map(entry).collect(),
    }))
}

#[utoipa::path(post, path = "/v1/sandboxes/{id}/files/mkdir", tag = "files", params(("id" = String, Path, description = "Sandbox id (sb-…)")), request_body = PathRequest, responses((status = 200, description = "The new directory", body = DirMade), (status = 404, description = "No such sandbox in the team", body = ErrorBody), (status = 409, description = "Already exists", body = ErrorBody)), security(("api_key" = []), ("bearer" = [])))]
pub(crate) async fn file_mkdir(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(r): ApiJson<PathRequest>,
) -> ApiResult<Json<DirMade>> {
    check_path(&r.path)?;
    let sb = running_sandbox(&app, &caller, &id).await?;
    let envd = Envd::of(&app, &sb).await?;
    envd.fs
        .make_dir(efs::MakeDirRequest {
            path: r.path.clone(),
            ..Default::default()
        })
        .await
        .map_err(|e| envd.failed(e))?;
    // Describe the new directory from its parent's listing.
    let parent = std::path::Path::new(&r.path)
        .parent()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "/".into());
    let entries = listing(&envd, &parent, 1).await?;
    let entry = entries.iter().find(|e| e.path == r.path).map(entry);
    Ok(Json(DirMade { entry }))
}

#[utoipa::path(post, path = "/v1/sandboxes/{id}/files/remove", tag = "files", params(("id" = String, Path, description = "Sandbox id (sb-…)")), request_body = PathRequest, responses((status = 204, description = "Removed"), (status = 404, description = "No such sandbox in the team", body = ErrorBody)), security(("api_key" = []), ("bearer" = [])))]
pub(crate) async fn file_remove(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(r): ApiJson<PathRequest>,
) -> ApiResult<StatusCode> {
    check_path(&r.path)?;
    let sb = running_sandbox(&app, &caller, &id).await?;
    let envd = Envd::of(&app, &sb).await?;
    envd.fs
        .remove(efs::RemoveRequest {
            path: r.path,
            ..Default::default()
        })
        .await
        .map_err(|e| envd.failed(e))?;
    Ok(StatusCode::NO_CONTENT)
}
