//! Watching directories with inotify, recursively if asked, for
//! `WatchDir` (streamed) and `CreateWatcher` / `GetWatcherEvents` (polled).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};
use rustix::io::Errno;
use tokio::io::unix::AsyncFd;
use wrenn_protocol::envd::filesystem::EventType;

/// Events a polled watcher keeps between two `GetWatcherEvents` calls;
/// older ones are dropped beyond this.
pub const MAX_BUFFERED_EVENTS: usize = 10_000;

/// One change under a watched directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsEvent {
    /// Path relative to the watched directory.
    pub name: String,
    /// Absolute path.
    pub path: PathBuf,
    /// What happened.
    pub kind: EventType,
}

/// An inotify instance watching one directory (and, if recursive, every
/// directory below it, including ones created later).
pub struct Watcher {
    fd: AsyncFd<OwnedFd>,
    root: PathBuf,
    recursive: bool,
    dirs: HashMap<i32, PathBuf>,
}

fn mask() -> WatchFlags {
    WatchFlags::CREATE
        | WatchFlags::MODIFY
        | WatchFlags::DELETE
        | WatchFlags::DELETE_SELF
        | WatchFlags::MOVED_FROM
        | WatchFlags::MOVED_TO
        | WatchFlags::ATTRIB
        | WatchFlags::ONLYDIR
        | WatchFlags::DONT_FOLLOW
}

/// inotify flags to E2B event types; one inotify event can carry several.
fn kinds(flags: ReadFlags) -> Vec<EventType> {
    let mut v = Vec::new();
    if flags.intersects(ReadFlags::CREATE | ReadFlags::MOVED_TO) {
        v.push(EventType::EVENT_TYPE_CREATE);
    }
    if flags.intersects(ReadFlags::MOVED_FROM | ReadFlags::MOVE_SELF) {
        v.push(EventType::EVENT_TYPE_RENAME);
    }
    if flags.contains(ReadFlags::ATTRIB) {
        v.push(EventType::EVENT_TYPE_CHMOD);
    }
    if flags.contains(ReadFlags::MODIFY) {
        v.push(EventType::EVENT_TYPE_WRITE);
    }
    if flags.intersects(ReadFlags::DELETE | ReadFlags::DELETE_SELF) {
        v.push(EventType::EVENT_TYPE_REMOVE);
    }
    v
}

impl Watcher {
    /// Starts watching `root`, which must be a directory.
    pub fn new(root: &Path, recursive: bool) -> std::io::Result<Self> {
        let fd = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK)?;
        let mut w = Watcher {
            fd: crate::process::output::register(fd)?,
            root: root.to_path_buf(),
            recursive,
            dirs: HashMap::new(),
        };
        w.add_tree(root)?;
        Ok(w)
    }

    fn add_dir(&mut self, dir: &Path) -> std::io::Result<()> {
        let wd = inotify::add_watch(self.fd.get_ref(), dir, mask())?;
        self.dirs.insert(wd, dir.to_path_buf());
        Ok(())
    }

    /// Watches `dir` and, when recursive, every directory below it. Entries
    /// found below `dir` are returned: for a directory that appeared while
    /// watching, they were created before their watch existed.
    fn add_tree(&mut self, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
        self.add_dir(dir)?;
        let mut found = Vec::new();
        if !self.recursive {
            return Ok(found);
        }
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            let Ok(rd) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in rd.flatten() {
                let p = e.path();
                // A directory can vanish between listing and watching.
                if e.file_type().is_ok_and(|t| t.is_dir()) && self.add_dir(&p).is_ok() {
                    stack.push(p.clone());
                }
                found.push(p);
            }
        }
        Ok(found)
    }

    fn read_batch(&mut self) -> std::io::Result<Vec<FsEvent>> {
        let mut buf = [MaybeUninit::<u8>::uninit(); 16 * 1024];
        let mut raw = Vec::new();
        {
            let mut reader = inotify::Reader::new(self.fd.get_ref(), &mut buf);
            loop {
                match reader.next() {
                    Ok(ev) => raw.push((
                        ev.wd(),
                        ev.events(),
                        ev.file_name()
                            .map(|n| OsStr::from_bytes(n.to_bytes()).to_os_string()),
                    )),
                    Err(Errno::AGAIN) => break,
                    Err(Errno::INTR) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
        }
        if raw.is_empty() {
            return Err(std::io::ErrorKind::WouldBlock.into());
        }
        let mut out = Vec::new();
        for (wd, flags, name) in raw {
            if flags.contains(ReadFlags::IGNORED) {
                self.dirs.remove(&wd);
                continue;
            }
            let Some(dir) = self.dirs.get(&wd).cloned() else {
                continue;
            };
            let path = match &name {
                Some(n) if !n.is_empty() => dir.join(n),
                _ => dir.clone(),
            };
            // Events about a subdirectory itself are reported by its parent.
            if name.is_none() && path != self.root {
                continue;
            }
            let root = self.root.clone();
            let rel = |p: &Path| p.strip_prefix(&root).unwrap_or(p).display().to_string();
            for kind in kinds(flags) {
                out.push(FsEvent {
                    name: rel(&path),
                    path: path.clone(),
                    kind,
                });
            }
            if self.recursive
                && flags.contains(ReadFlags::ISDIR)
                && flags.intersects(ReadFlags::CREATE | ReadFlags::MOVED_TO)
            {
                for p in self.add_tree(&path).unwrap_or_default() {
                    out.push(FsEvent {
                        name: rel(&p),
                        path: p,
                        kind: EventType::EVENT_TYPE_CREATE,
                    });
                }
            }
        }
        Ok(out)
    }

    /// Waits for the next changes.
    pub async fn next_batch(&mut self) -> std::io::Result<Vec<FsEvent>> {
        loop {
            {
                // Clear readiness before reading: whatever arrives after the
                // clear either is read below or makes the fd ready again.
                let mut guard = self.fd.readable().await?;
                guard.clear_ready();
            }
            match self.read_batch() {
                Ok(v) if !v.is_empty() => return Ok(v),
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// A polled watcher: a task filling a buffer that `GetWatcherEvents` drains.
struct Polled {
    events: Arc<Mutex<Vec<FsEvent>>>,
    include_entry: bool,
    task: tokio::task::JoinHandle<()>,
}

/// Watchers made by `CreateWatcher`, by id.
#[derive(Default)]
pub struct WatcherTable {
    inner: Mutex<HashMap<String, Polled>>,
    next: std::sync::atomic::AtomicU64,
}

impl WatcherTable {
    /// Starts a polled watcher and returns its id.
    pub fn create(&self, mut watcher: Watcher, include_entry: bool) -> String {
        let id = format!(
            "w{}",
            self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1
        );
        let events = Arc::new(Mutex::new(Vec::new()));
        let buf = events.clone();
        let task = tokio::spawn(async move {
            while let Ok(batch) = watcher.next_batch().await {
                let mut b = buf.lock();
                b.extend(batch);
                let excess = b.len().saturating_sub(MAX_BUFFERED_EVENTS);
                b.drain(..excess);
            }
        });
        self.inner.lock().insert(
            id.clone(),
            Polled {
                events,
                include_entry,
                task,
            },
        );
        id
    }

    /// Takes the events seen since the last call, and whether entries were
    /// asked for; `None` for an unknown id.
    pub fn drain(&self, id: &str) -> Option<(Vec<FsEvent>, bool)> {
        let t = self.inner.lock();
        let p = t.get(id)?;
        Some((std::mem::take(&mut *p.events.lock()), p.include_entry))
    }

    /// Stops a watcher; false for an unknown id.
    pub fn remove(&self, id: &str) -> bool {
        match self.inner.lock().remove(id) {
            Some(p) => {
                p.task.abort();
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sees_creates_writes_and_removes_recursively() {
        let root = std::env::temp_dir().join(format!("envd-watch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let mut w = Watcher::new(&root, true).unwrap();
        std::fs::create_dir(root.join("sub")).unwrap();
        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut wrote = false;
        while tokio::time::Instant::now() < deadline {
            let batch =
                tokio::time::timeout(std::time::Duration::from_millis(500), w.next_batch()).await;
            if let Ok(Ok(b)) = batch {
                seen.extend(b.into_iter().map(|e| (e.name, e.kind)));
            }
            if !wrote && seen.iter().any(|(n, _)| n == "sub") {
                std::fs::write(root.join("sub/f.txt"), b"x").unwrap();
                std::fs::remove_file(root.join("sub/f.txt")).unwrap();
                wrote = true;
            }
            if seen
                .iter()
                .any(|(n, k)| n == "sub/f.txt" && *k == EventType::EVENT_TYPE_REMOVE)
            {
                break;
            }
        }
        std::fs::remove_dir_all(&root).unwrap();
        for want in [
            ("sub", EventType::EVENT_TYPE_CREATE),
            ("sub/f.txt", EventType::EVENT_TYPE_CREATE),
            ("sub/f.txt", EventType::EVENT_TYPE_WRITE),
            ("sub/f.txt", EventType::EVENT_TYPE_REMOVE),
        ] {
            assert!(
                seen.iter().any(|(n, k)| (n.as_str(), *k) == want),
                "missing {want:?} in {seen:?}"
            );
        }
    }
}
