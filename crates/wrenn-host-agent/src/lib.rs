//! Wrenn's host agent: owns the sandboxes on one host.
//!
//! - [`runtime`]: the [`runtime::Runtime`] trait and its implementations
//!   (the namespace runtime first), which know nothing of HTTP;
//! - [`templates`]: the on-disk template store and the `base` builder;
//! - [`agent`]: timeouts, metadata and the reaper over a runtime;
//! - [`envd`]: clients for the envd inside each sandbox;
//! - [`service`]: `hostagent.v1.HostAgentService` over the agent;
//! - [`server`]: the authenticated HTTP server around it.

pub mod agent;
pub mod envd;
pub mod metrics;
pub mod proxy;
pub mod registration;
pub mod runtime;
pub mod server;
pub mod service;
pub mod templates;

/// Writes `data` to `path` (with `mode`) through a temporary file beside it
/// and a rename, so that a crash leaves the old file or the new one, never
/// half of either.
pub(crate) fn write_atomic(
    path: &std::path::Path,
    data: &[u8],
    mode: u32,
    durability: Durability,
) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(data)?;
    if durability == Durability::Reboot {
        f.sync_data()?;
    }
    std::fs::rename(&tmp, path)
}

/// What a write done with [`write_atomic`] must survive.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Durability {
    /// A crash of this process: the page cache keeps it (no fsync). For
    /// what describes running processes, which a reboot ends anyway.
    ProcessCrash,
    /// A crash of the machine: flushed to disk before the rename.
    Reboot,
}
