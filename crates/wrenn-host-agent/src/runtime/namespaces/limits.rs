//! Host-wide limits that a thousand sandboxes on one host would run into,
//! raised when the runtime starts (never lowered: a host that allows more
//! keeps it). Each is a kernel default sized for a machine without
//! sandboxes:
//!
//! - `kernel.pid_max` (32,768 on many hosts): every sandbox runs an init,
//!   envd and its threads, and what its user starts;
//! - the IPv4 neighbour table (`gc_thresh3` 1,024): each sandbox adds an
//!   entry on its veth, and a full table drops new neighbours ("neighbour
//!   table overflow") so new sandboxes cannot be reached;
//! - `fs.inotify.max_user_instances` (128) and `max_user_watches`: counted
//!   per host uid, and sandboxes' users map to the same few;
//! - the agent's own open files (`RLIMIT_NOFILE`, soft to hard): it holds a
//!   few descriptors per sandbox.

/// `(sysctl file, the least Wrenn wants)`.
pub const SYSCTLS: [(&str, u64); 6] = [
    ("/proc/sys/kernel/pid_max", 4_194_304),
    ("/proc/sys/net/ipv4/neigh/default/gc_thresh1", 4_096),
    ("/proc/sys/net/ipv4/neigh/default/gc_thresh2", 16_384),
    ("/proc/sys/net/ipv4/neigh/default/gc_thresh3", 32_768),
    ("/proc/sys/fs/inotify/max_user_instances", 8_192),
    ("/proc/sys/fs/inotify/max_user_watches", 1_048_576),
];

/// Raises what is lower than Wrenn needs; returns what could not be raised
/// (a read-only /proc/sys in a container, a kernel without the knob), for
/// a warning: sandboxes still run, fewer of them fit.
pub fn raise() -> Vec<String> {
    let mut failed = Vec::new();
    for (path, want) in SYSCTLS {
        let now = std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok());
        match now {
            Some(v) if v >= want => {}
            _ => {
                if let Err(e) = std::fs::write(path, want.to_string()) {
                    failed.push(format!("{path} to {want}: {e}"));
                }
            }
        }
    }
    if let Err(e) = raise_nofile() {
        failed.push(format!("RLIMIT_NOFILE: {e}"));
    }
    failed
}

/// The open-files limit the agent started with, which sandboxes get back.
static STARTED_WITH: std::sync::OnceLock<rustix::process::Rlimit> = std::sync::OnceLock::new();

/// The soft open-files limit up to the hard one.
fn raise_nofile() -> std::io::Result<()> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut l = getrlimit(Resource::Nofile);
    let _ = STARTED_WITH.set(l.clone());
    // The soft limit is never above the hard one (`None` is unlimited).
    if l.current != l.maximum {
        l.current = l.maximum;
        setrlimit(Resource::Nofile, l)?;
    }
    Ok(())
}

/// The open-files limit the agent started with (soft, hard), not the
/// raised one, for the sandbox's init to set on itself: what runs in a
/// sandbox (programs that `select()` or close every descriptor up to the
/// limit) expects the usual. `None` if the agent never raised it.
pub fn original_nofile() -> Option<(Option<u64>, Option<u64>)> {
    STARTED_WITH.get().map(|l| (l.current, l.maximum))
}
