//! `filesystem.Filesystem`: the Connect service.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use connectrpc::{
    ConnectError, RequestContext, Response, ServiceRequest, ServiceResult, ServiceStream,
};
use futures::Stream;
use wrenn_protocol::envd::filesystem::{
    self as pb, EntryInfo, FilesystemEvent, WatchDirResponse, watch_dir_response,
};

use super::entry::{entry_from_metadata, entry_info};
use super::watch::{FsEvent, Watcher};
use crate::errors::{io_error, user_error};
use crate::process::service::keepalive_interval;
use crate::state::{AppState, resolve_path};
use crate::users::{Names, User};

/// The `filesystem.Filesystem` service.
#[derive(Clone)]
pub struct FilesystemService {
    state: AppState,
}

impl FilesystemService {
    /// Serves the filesystem envd sees.
    pub fn new(state: AppState) -> Self {
        FilesystemService { state }
    }

    fn user_and_path(
        &self,
        ctx: &RequestContext,
        path: &str,
    ) -> Result<(User, PathBuf), ConnectError> {
        let user = self
            .state
            .resolve_user(crate::auth::basic_user(ctx.headers()).as_deref())
            .map_err(user_error)?;
        let workdir = self.state.defaults().workdir;
        let p = resolve_path(path, &user, workdir.as_deref())
            .map_err(|e| ConnectError::invalid_argument(e.to_string()))?;
        Ok((user, p))
    }
}

/// Hands ownership of `path` (and the directories in `created`) to `user`
/// when envd runs as someone else, as root does for sandbox users.
pub fn chown_to(user: &User, paths: &[PathBuf]) -> std::io::Result<()> {
    if user.uid == rustix::process::getuid().as_raw() {
        return Ok(());
    }
    for p in paths {
        std::os::unix::fs::lchown(p, Some(user.uid), Some(user.gid))?;
    }
    Ok(())
}

/// Creates `dir` and its missing parents, returning those it created.
pub fn create_dirs(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut missing = Vec::new();
    let mut cur = Some(dir);
    while let Some(d) = cur {
        if d.exists() {
            break;
        }
        missing.push(d.to_path_buf());
        cur = d.parent();
    }
    missing.reverse();
    for d in &missing {
        match std::fs::create_dir(d) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Ok(missing)
}

fn list_dir(
    root: &Path,
    depth: u32,
    names: &Names,
    out: &mut Vec<EntryInfo>,
) -> std::io::Result<()> {
    let mut stack = vec![(root.to_path_buf(), 1u32)];
    while let Some((dir, level)) = stack.pop() {
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if dir == root => return Err(e),
            Err(_) => continue, // unreadable subdirectory: list what we can
        };
        let mut entries: Vec<_> = rd.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let path = e.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            out.push(entry_from_metadata(&path, &meta, names));
            if meta.is_dir() && level < depth {
                stack.push((path, level + 1));
            }
        }
    }
    Ok(())
}

fn fs_event(e: FsEvent, include_entry: bool, names: Option<&Names>) -> FilesystemEvent {
    let entry = if include_entry {
        names.and_then(|n| entry_info(&e.path, n).ok())
    } else {
        None
    };
    FilesystemEvent {
        name: e.name,
        r#type: e.kind.into(),
        entry: entry.into(),
        ..Default::default()
    }
}

fn open_watcher(path: &Path) -> Result<(), ConnectError> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(ConnectError::invalid_argument(format!(
            "path '{}' is not a directory; watch a directory",
            path.display()
        ))),
        Err(e) => Err(io_error(e, "cannot watch", path)),
    }
}

type Boxed<T> = Pin<Box<dyn Stream<Item = Result<T, ConnectError>> + Send>>;

#[allow(refining_impl_trait)]
impl pb::Filesystem for FilesystemService {
    async fn stat(
        &self,
        ctx: RequestContext,
        req: ServiceRequest<'_, pb::StatRequest>,
    ) -> ServiceResult<pb::StatResponse> {
        let (_, path) = self.user_and_path(&ctx, req.path)?;
        let entry =
            entry_info(&path, &Names::load()).map_err(|e| io_error(e, "cannot stat", &path))?;
        Response::ok(pb::StatResponse {
            entry: entry.into(),
            ..Default::default()
        })
    }

    async fn make_dir(
        &self,
        ctx: RequestContext,
        req: ServiceRequest<'_, pb::MakeDirRequest>,
    ) -> ServiceResult<pb::MakeDirResponse> {
        let (user, path) = self.user_and_path(&ctx, req.path)?;
        if std::fs::symlink_metadata(&path).is_ok() {
            return Err(ConnectError::already_exists(format!(
                "'{}' already exists",
                path.display()
            )));
        }
        let created =
            create_dirs(&path).map_err(|e| io_error(e, "cannot create directory", &path))?;
        chown_to(&user, &created).map_err(|e| io_error(e, "cannot hand over directory", &path))?;
        let entry =
            entry_info(&path, &Names::load()).map_err(|e| io_error(e, "cannot stat", &path))?;
        Response::ok(pb::MakeDirResponse {
            entry: entry.into(),
            ..Default::default()
        })
    }

    async fn r#move(
        &self,
        ctx: RequestContext,
        req: ServiceRequest<'_, pb::MoveRequest>,
    ) -> ServiceResult<pb::MoveResponse> {
        let (user, src) = self.user_and_path(&ctx, req.source)?;
        let (_, dst) = self.user_and_path(&ctx, req.destination)?;
        std::fs::symlink_metadata(&src).map_err(|e| io_error(e, "cannot move", &src))?;
        if let Some(parent) = dst.parent() {
            let created =
                create_dirs(parent).map_err(|e| io_error(e, "cannot create directory", parent))?;
            chown_to(&user, &created)
                .map_err(|e| io_error(e, "cannot hand over directory", parent))?;
        }
        std::fs::rename(&src, &dst)
            .map_err(|e| io_error(e, &format!("cannot move '{}' to", src.display()), &dst))?;
        let entry =
            entry_info(&dst, &Names::load()).map_err(|e| io_error(e, "cannot stat", &dst))?;
        Response::ok(pb::MoveResponse {
            entry: entry.into(),
            ..Default::default()
        })
    }

    async fn list_dir(
        &self,
        ctx: RequestContext,
        req: ServiceRequest<'_, pb::ListDirRequest>,
    ) -> ServiceResult<pb::ListDirResponse> {
        let depth = req.depth.max(1);
        let (_, path) = self.user_and_path(&ctx, req.path)?;
        let meta = std::fs::metadata(&path).map_err(|e| io_error(e, "cannot list", &path))?;
        if !meta.is_dir() {
            return Err(ConnectError::invalid_argument(format!(
                "'{}' is not a directory",
                path.display()
            )));
        }
        let mut entries = Vec::new();
        let p = path.clone();
        let entries = tokio::task::spawn_blocking(move || {
            list_dir(&p, depth, &Names::load(), &mut entries).map(|()| entries)
        })
        .await
        .map_err(|e| ConnectError::internal(e.to_string()))?
        .map_err(|e| io_error(e, "cannot list", &path))?;
        Response::ok(pb::ListDirResponse {
            entries,
            ..Default::default()
        })
    }

    async fn remove(
        &self,
        ctx: RequestContext,
        req: ServiceRequest<'_, pb::RemoveRequest>,
    ) -> ServiceResult<pb::RemoveResponse> {
        let (_, path) = self.user_and_path(&ctx, req.path)?;
        // As E2B's envd: removing what is not there succeeds (a removal
        // is idempotent); other errors are errors.
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Response::ok(pb::RemoveResponse::default());
            }
            Err(e) => return Err(io_error(e, "cannot remove", &path)),
        };
        let r = if meta.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        match r {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io_error(e, "cannot remove", &path));
            }
            _ => {}
        }
        Response::ok(pb::RemoveResponse::default())
    }

    async fn watch_dir(
        &self,
        ctx: RequestContext,
        req: ServiceRequest<'_, pb::WatchDirRequest>,
    ) -> ServiceResult<ServiceStream<WatchDirResponse>> {
        let (_, path) = self.user_and_path(&ctx, req.path)?;
        open_watcher(&path)?;
        let include_entry = req.include_entry;
        let watcher =
            Watcher::new(&path, req.recursive).map_err(|e| io_error(e, "cannot watch", &path))?;
        let keepalive = keepalive_interval(&ctx);
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<WatchDirResponse, ConnectError>>(64);
        tokio::spawn(async move {
            let mut watcher = watcher;
            let start = WatchDirResponse {
                event: Some(watch_dir_response::StartEvent::default().into()),
                ..Default::default()
            };
            if tx.send(Ok(start)).await.is_err() {
                return;
            }
            let period = keepalive.unwrap_or(Duration::from_secs(3600));
            loop {
                tokio::select! {
                    batch = watcher.next_batch() => {
                        let batch = match batch {
                            Ok(b) => b,
                            Err(e) => { let _ = tx.send(Err(ConnectError::internal(format!("watcher failed: {e}")))).await; return; }
                        };
                        let names = include_entry.then(Names::load);
                        for e in batch {
                            let ev = WatchDirResponse { event: Some(fs_event(e, include_entry, names.as_ref()).into()), ..Default::default() };
                            if tx.send(Ok(ev)).await.is_err() { return; }
                        }
                    }
                    _ = tokio::time::sleep(period), if keepalive.is_some() => {
                        let ka = WatchDirResponse { event: Some(watch_dir_response::KeepAlive::default().into()), ..Default::default() };
                        if tx.send(Ok(ka)).await.is_err() { return; }
                    }
                    _ = tx.closed() => return,
                }
            }
        });
        let s: Boxed<WatchDirResponse> =
            Box::pin(futures::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|item| (item, rx))
            }));
        Ok(Response::new(s))
    }

    async fn create_watcher(
        &self,
        ctx: RequestContext,
        req: ServiceRequest<'_, pb::CreateWatcherRequest>,
    ) -> ServiceResult<pb::CreateWatcherResponse> {
        let (_, path) = self.user_and_path(&ctx, req.path)?;
        open_watcher(&path)?;
        let watcher =
            Watcher::new(&path, req.recursive).map_err(|e| io_error(e, "cannot watch", &path))?;
        let watcher_id = self.state.watchers.create(watcher, req.include_entry);
        Response::ok(pb::CreateWatcherResponse {
            watcher_id,
            ..Default::default()
        })
    }

    async fn get_watcher_events(
        &self,
        _ctx: RequestContext,
        req: ServiceRequest<'_, pb::GetWatcherEventsRequest>,
    ) -> ServiceResult<pb::GetWatcherEventsResponse> {
        let (events, include_entry) =
            self.state.watchers.drain(req.watcher_id).ok_or_else(|| {
                ConnectError::not_found(format!(
                    "watcher '{}' not found; create one first",
                    req.watcher_id
                ))
            })?;
        let names = include_entry.then(Names::load);
        let events = events
            .into_iter()
            .map(|e| fs_event(e, include_entry, names.as_ref()))
            .collect();
        Response::ok(pb::GetWatcherEventsResponse {
            events,
            ..Default::default()
        })
    }

    async fn remove_watcher(
        &self,
        _ctx: RequestContext,
        req: ServiceRequest<'_, pb::RemoveWatcherRequest>,
    ) -> ServiceResult<pb::RemoveWatcherResponse> {
        if !self.state.watchers.remove(req.watcher_id) {
            return Err(ConnectError::not_found(format!(
                "watcher '{}' not found",
                req.watcher_id
            )));
        }
        Response::ok(pb::RemoveWatcherResponse::default())
    }
}
