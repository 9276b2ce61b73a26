//! One agent per cgroup parent and per network namespace.
//!
//! An agent owns everything under its cgroup parent (recovery removes
//! cgroups it does not know) and, in its network namespace, the sandbox
//! links (`wrenn<slot>`) and the `wrenn` nftables table. A second agent on
//! the same host would take them over: it would destroy the first one's
//! sandboxes. So before touching anything, an agent takes two exclusive
//! `flock`s in `/run/wrenn` — one named after its cgroup parent, one after
//! its network namespace — and refuses to start, naming the holder's pid
//! and data directory, while another agent holds either. The kernel drops
//! the locks when the process exits, however it exits.

use std::io::{Read, Seek, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Where the locks (and each agent's runtime directory) live.
pub const RUN_ROOT: &str = "/run/wrenn";

/// The locks of a running agent; held until dropped (or the process ends).
pub struct InstanceLock {
    _files: Vec<std::fs::File>,
}

impl std::fmt::Debug for InstanceLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InstanceLock")
    }
}

/// Why an agent may not start here.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another agent holds the lock.
    #[error(
        "another Wrenn agent runs on this host (pid {pid}, data dir {data_dir}) and owns {what}; \
         stop it first, or {how}"
    )]
    Held {
        /// The holder's pid, as it wrote it.
        pid: String,
        /// The holder's data directory.
        data_dir: String,
        /// What it owns.
        what: String,
        /// How to run a second agent beside it.
        how: &'static str,
    },
    /// The lock file could not be used.
    #[error("taking the lock {path}: {source}")]
    Io {
        /// The lock file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Takes the locks for an agent with `cgroup_parent` and `data_dir` in this
/// process's network namespace.
pub fn take(cgroup_parent: &str, data_dir: &Path) -> Result<InstanceLock, LockError> {
    let netns = std::fs::metadata("/proc/self/ns/net").map_or(0, |m| m.ino());
    let wanted = [
        (
            format!("cgroup-{}", sanitize(cgroup_parent)),
            format!("the cgroup parent '{cgroup_parent}'"),
            "run this one with its own --cgroup-parent (in its own network namespace)",
        ),
        (
            format!("netns-{netns}"),
            "this network namespace's sandbox links and firewall table".to_string(),
            "run this one in another network namespace",
        ),
    ];
    let mut files = Vec::new();
    for (name, what, how) in wanted {
        let path = Path::new(RUN_ROOT).join(format!("{name}.lock"));
        let io = |source| LockError::Io {
            path: path.display().to_string(),
            source,
        };
        std::fs::create_dir_all(RUN_ROOT).map_err(io)?;
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        match rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                let mut who = String::new();
                let _ = f.read_to_string(&mut who);
                let mut parts = who.trim().splitn(2, ' ');
                return Err(LockError::Held {
                    pid: parts.next().unwrap_or("?").to_string(),
                    data_dir: parts.next().unwrap_or("?").to_string(),
                    what,
                    how,
                });
            }
            Err(e) => return Err(io(e.into())),
        }
        f.set_len(0).map_err(io)?;
        f.rewind().map_err(io)?;
        writeln!(f, "{} {}", std::process::id(), data_dir.display()).map_err(io)?;
        files.push(f);
    }
    Ok(InstanceLock { _files: files })
}

/// A cgroup parent as a file name.
pub fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid_and_data_dir() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: /run/wrenn needs root");
            return;
        }
        let parent = format!("unit-lock-{}", std::process::id());
        let first = take(&parent, Path::new("/data/one"));
        // The network namespace may be held by a running agent.
        let Ok(first) = first else { return };
        let second = take(&parent, Path::new("/data/two")).unwrap_err();
        let msg = second.to_string();
        assert!(
            msg.contains(&format!("pid {}", std::process::id())) && msg.contains("/data/one"),
            "{msg}"
        );
        drop(first);
        // A process that another test's thread is spawning holds a copy of
        // the lock's descriptor until its exec closes it: try for a second.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
        let mut again = take(&parent, Path::new("/data/two"));
        while again.is_err() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
            again = take(&parent, Path::new("/data/two"));
        }
        assert!(
            again.is_ok(),
            "free once the first is dropped: {:?}",
            again.err()
        );
        let _ = std::fs::remove_file(
            Path::new(RUN_ROOT).join(format!("cgroup-{}.lock", sanitize(&parent))),
        );
    }
}
