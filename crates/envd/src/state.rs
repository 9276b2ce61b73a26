//! State shared by every handler: the settings `/init` can change, the
//! process table and the polling watchers.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;

use crate::filesystem::watch::WatcherTable;
use crate::process::ProcessTable;
use crate::users::{self, User, UserError};

/// Settings given on the command line and changed by `POST /init`.
///
/// With a state file (`--state-file`), `/init` saves them there and a
/// restarted envd (after `kill -9 -1` in its sandbox, say) loads them back,
/// so the sandbox keeps its token, environment, user and workdir.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Defaults {
    /// Token every call must carry in `X-Access-Token`, once set.
    pub access_token: Option<String>,
    /// Environment variables given to every process.
    pub env_vars: HashMap<String, String>,
    /// User for calls that name none.
    pub user: Option<String>,
    /// Working directory for processes and relative paths.
    pub workdir: Option<PathBuf>,
}

impl Defaults {
    /// The defaults saved in `path` by an earlier envd, if any.
    pub fn load(path: &Path) -> Option<Defaults> {
        let bytes = std::fs::read(path).ok()?;
        match serde_json::from_slice(&bytes) {
            Ok(d) => Some(d),
            Err(e) => {
                tracing::warn!(path = %path.display(), "ignoring an unreadable state file: {e}");
                None
            }
        }
    }

    /// Saves the defaults to `path` (mode 0600), through a temporary file
    /// and a rename so that a crash never leaves half a file.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&serde_json::to_vec(self).map_err(std::io::Error::other)?)?;
        f.sync_data()?;
        std::fs::rename(&tmp, path)
    }
}

/// Everything envd's handlers share.
#[derive(Clone)]
pub struct AppState(pub Arc<Inner>);

/// The contents of [`AppState`].
pub struct Inner {
    /// Mutable defaults.
    pub defaults: RwLock<Defaults>,
    /// Processes started through `process.Process/Start`.
    pub processes: Arc<ProcessTable>,
    /// Watchers made by `filesystem.Filesystem/CreateWatcher`.
    pub watchers: WatcherTable,
    /// CPU sample of the previous `/metrics` call, for a usage delta.
    pub last_cpu: parking_lot::Mutex<Option<(u64, u64)>>,
    /// Where `/init` saves the defaults (see [`Defaults::save`]).
    pub state_file: Option<PathBuf>,
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    /// Creates the state with the given defaults.
    pub fn new(defaults: Defaults) -> Self {
        Self::with_state_file(defaults, None)
    }

    /// Creates the state with the given defaults, which `/init` saves to
    /// `state_file`.
    pub fn with_state_file(defaults: Defaults, state_file: Option<PathBuf>) -> Self {
        AppState(Arc::new(Inner {
            defaults: RwLock::new(defaults),
            processes: Arc::new(ProcessTable::default()),
            watchers: WatcherTable::default(),
            last_cpu: parking_lot::Mutex::new(None),
            state_file,
        }))
    }

    /// A snapshot of the current defaults.
    pub fn defaults(&self) -> Defaults {
        self.defaults.read().clone()
    }

    /// Resolves the user a call acts as: the one named in the request, else
    /// the default user, else the user envd runs as.
    pub fn resolve_user(&self, requested: Option<&str>) -> Result<User, UserError> {
        match requested.filter(|u| !u.is_empty()) {
            Some(name) => users::lookup(name),
            None => match self.defaults().user {
                Some(name) => users::lookup(&name),
                None => Ok(users::current()),
            },
        }
    }
}

/// Errors turning a request's path into an absolute one.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    /// A path that is not valid in a sandbox.
    #[error("invalid path '{0}': {1}")]
    Invalid(String, &'static str),
}

/// Turns a request path into a clean absolute path: `~` means the user's
/// home, and relative paths start at the default workdir or else the home.
pub fn resolve_path(path: &str, user: &User, workdir: Option<&Path>) -> Result<PathBuf, PathError> {
    if path.contains('\0') {
        return Err(PathError::Invalid(path.into(), "it contains a NUL byte"));
    }
    let base = workdir
        .map(Path::to_path_buf)
        .unwrap_or_else(|| user.home.clone());
    let joined = if path == "~" {
        user.home.clone()
    } else if let Some(rest) = path.strip_prefix("~/") {
        user.home.join(rest)
    } else if path.starts_with('/') {
        PathBuf::from(path)
    } else {
        base.join(path)
    };
    let mut clean = PathBuf::from("/");
    for c in joined.components() {
        match c {
            Component::ParentDir => {
                clean.pop();
            }
            Component::Normal(p) => clean.push(p),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    Ok(clean)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_paths_like_a_shell() {
        let user = User {
            name: "u".into(),
            uid: 1000,
            gid: 1000,
            home: "/home/u".into(),
            groups: vec![],
        };
        let cases: &[(&str, Option<&str>, &str)] = &[
            ("/etc/passwd", None, "/etc/passwd"),
            ("~", None, "/home/u"),
            ("~/a/b", None, "/home/u/a/b"),
            ("rel.txt", None, "/home/u/rel.txt"),
            ("rel.txt", Some("/work"), "/work/rel.txt"),
            ("/a/../b/./c", None, "/b/c"),
            ("../../..", None, "/"),
            ("", None, "/home/u"),
        ];
        for (input, workdir, want) in cases {
            let got = resolve_path(input, &user, workdir.map(Path::new)).unwrap();
            assert_eq!(
                got,
                PathBuf::from(want),
                "input {input:?} workdir {workdir:?}"
            );
        }
        assert!(resolve_path("a\0b", &user, None).is_err());
    }
}
