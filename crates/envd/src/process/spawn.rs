//! Starting a process: pipes or a PTY, user and groups, environment and
//! working directory, then the tasks that pump its output and reap it.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;

use parking_lot::Mutex;

use rustix::fs::OFlags;
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, watch};

use super::output::pump;
use super::{Config, Event, Exit, Process, ProcessTable, Stream, Subscribers};
use crate::users::User;

/// PATH for processes when envd itself has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Everything needed to start one process.
#[derive(Debug, Clone)]
pub struct SpawnRequest {
    /// What the client asked for.
    pub config: Config,
    /// The user to run as.
    pub user: User,
    /// Absolute working directory.
    pub cwd: PathBuf,
    /// Environment from `/init`, overridden by the request's own.
    pub default_env: HashMap<String, String>,
    /// Tag to find the process by.
    pub tag: Option<String>,
    /// Start under a PTY of this size (cols, rows).
    pub pty: Option<(u16, u16)>,
    /// Keep a stdin pipe open (ignored with a PTY).
    pub stdin: bool,
}

/// Why a process could not start.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The working directory does not exist.
    #[error("cwd '{0}' does not exist; create it first or pick another directory")]
    NoCwd(PathBuf),
    /// Creating pipes or a PTY failed.
    #[error("could not set up the process's {what}: {source}")]
    Setup {
        /// pipes or PTY
        what: &'static str,
        /// the cause
        source: std::io::Error,
    },
    /// exec failed (no such program, permission denied, ...).
    #[error("could not start '{cmd}': {source}")]
    Exec {
        /// the program
        cmd: String,
        /// the cause
        source: std::io::Error,
    },
}

fn setup(what: &'static str) -> impl Fn(rustix::io::Errno) -> SpawnError {
    move |e| SpawnError::Setup {
        what,
        source: e.into(),
    }
}

fn nonblocking(fd: OwnedFd) -> std::io::Result<AsyncFd<OwnedFd>> {
    let flags = rustix::fs::fcntl_getfl(&fd)?;
    rustix::fs::fcntl_setfl(&fd, flags | OFlags::NONBLOCK)?;
    super::output::register(fd)
}

/// Sets a terminal's size.
pub fn set_winsize(fd: &OwnedFd, cols: u16, rows: u16) -> std::io::Result<()> {
    let ws = rustix::termios::Winsize {
        ws_col: cols,
        ws_row: rows,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    rustix::termios::tcsetwinsize(fd, ws).map_err(Into::into)
}

/// Opens a PTY pair: (master, slave).
fn open_pty(cols: u16, rows: u16) -> Result<(OwnedFd, OwnedFd), SpawnError> {
    use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)
        .map_err(setup("PTY"))?;
    grantpt(&master).map_err(setup("PTY"))?;
    unlockpt(&master).map_err(setup("PTY"))?;
    let name = ptsname(&master, Vec::new()).map_err(setup("PTY"))?;
    let slave = rustix::fs::open(
        name.as_c_str(),
        OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(setup("PTY"))?;
    set_winsize(&slave, cols, rows).map_err(|source| SpawnError::Setup {
        what: "PTY",
        source,
    })?;
    Ok((master, slave))
}

fn environment(req: &SpawnRequest) -> Vec<(String, String)> {
    let path = std::env::var("PATH").unwrap_or_else(|_| DEFAULT_PATH.to_string());
    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), path),
        ("HOME".into(), req.user.home.display().to_string()),
        ("USER".into(), req.user.name.clone()),
        ("LOGNAME".into(), req.user.name.clone()),
    ];
    if req.pty.is_some() {
        env.push(("TERM".into(), "xterm-256color".into()));
    }
    env.extend(req.default_env.iter().map(|(k, v)| (k.clone(), v.clone())));
    env.extend(req.config.envs.iter().map(|(k, v)| (k.clone(), v.clone())));
    env
}

pub use wrenn_protocol::envd::WORK_CGROUP_FDS_ENV;

/// Descriptors every started process writes itself into before its exec.
static WORK_CGROUP: std::sync::OnceLock<Vec<OwnedFd>> = std::sync::OnceLock::new();

/// Makes every process envd starts from now on join the cgroup whose
/// `cgroup.procs` files `fds` are (one per hierarchy), so that envd's own
/// cgroup keeps its reserve of memory, pids and CPU time whatever they do.
/// Only the first call counts.
pub fn start_children_in(fds: Vec<OwnedFd>) {
    let _ = WORK_CGROUP.set(fds);
}

/// Starts the process, registers it in `table`, and returns it with a
/// subscription that sees all of its output from the first byte.
pub fn spawn(
    table: &Arc<ProcessTable>,
    req: SpawnRequest,
) -> Result<(Arc<Process>, mpsc::Receiver<Event>), SpawnError> {
    if !req.cwd.is_dir() {
        return Err(SpawnError::NoCwd(req.cwd.clone()));
    }
    let mut cmd = tokio::process::Command::new(&req.config.cmd);
    cmd.args(&req.config.args)
        .env_clear()
        .envs(environment(&req))
        .current_dir(&req.cwd)
        .kill_on_drop(false);

    let mut pty_master = None;
    let mut pipes = None;
    let mut stdin_w = None;
    let is_pty = req.pty.is_some();
    if let Some((cols, rows)) = req.pty {
        let (master, slave) = open_pty(cols, rows)?;
        let dup = |fd: &OwnedFd| {
            fd.try_clone().map_err(|source| SpawnError::Setup {
                what: "PTY",
                source,
            })
        };
        cmd.stdin(Stdio::from(dup(&slave)?))
            .stdout(Stdio::from(dup(&slave)?))
            .stderr(Stdio::from(slave));
        pty_master = Some(master);
    } else {
        let flags = rustix::pipe::PipeFlags::CLOEXEC;
        let (out_r, out_w) = rustix::pipe::pipe_with(flags).map_err(setup("pipes"))?;
        let (err_r, err_w) = rustix::pipe::pipe_with(flags).map_err(setup("pipes"))?;
        cmd.stdout(Stdio::from(out_w)).stderr(Stdio::from(err_w));
        if req.stdin {
            let (in_r, in_w) = rustix::pipe::pipe_with(flags).map_err(setup("pipes"))?;
            cmd.stdin(Stdio::from(in_r));
            stdin_w = Some(in_w);
        } else {
            cmd.stdin(Stdio::null());
        }
        // Its own process group, so that a signal reaches its children too.
        cmd.process_group(0);
        pipes = Some((out_r, err_r));
    }

    let user = req.user.clone();
    let switch_user = user.uid != rustix::process::getuid().as_raw();
    let work_cgroup: Vec<std::os::fd::RawFd> = WORK_CGROUP
        .get()
        .map(|fds| fds.iter().map(std::os::fd::AsRawFd::as_raw_fd).collect())
        .unwrap_or_default();
    let join_cgroup = !work_cgroup.is_empty();
    // Without a pre_exec hook the standard library can spawn with
    // posix_spawn (vfork-like), which is several times faster than fork.
    // SAFETY: the closure runs between fork and exec and only makes
    // async-signal-safe system calls; it allocates nothing.
    if is_pty || switch_user || join_cgroup {
        unsafe {
            cmd.pre_exec(move || {
                for &fd in &work_cgroup {
                    // "0": the writing process itself, before it can fork.
                    rustix::io::write(std::os::fd::BorrowedFd::borrow_raw(fd), b"0")?;
                }
                if is_pty {
                    rustix::process::setsid()?;
                    // fd 0 is the PTY slave by now.
                    rustix::process::ioctl_tiocsctty(std::os::fd::BorrowedFd::borrow_raw(0))?;
                }
                if switch_user {
                    let groups: [rustix::process::Gid; 32] = std::array::from_fn(|i| {
                        rustix::process::Gid::from_raw(*user.groups.get(i).unwrap_or(&user.gid))
                    });
                    let n = user.groups.len().clamp(1, 32);
                    rustix::thread::set_thread_groups(&groups[..n])?;
                    rustix::thread::set_thread_gid(rustix::process::Gid::from_raw(user.gid))?;
                    rustix::thread::set_thread_uid(rustix::process::Uid::from_raw(user.uid))?;
                }
                Ok(())
            });
        }
    }

    let mut child = cmd.spawn().map_err(|source| SpawnError::Exec {
        cmd: req.config.cmd.clone(),
        source,
    })?;
    drop(cmd); // closes our copies of the child's ends
    let pid = child.id().expect("a just-spawned child has a pid");

    let as_async =
        |fd: OwnedFd, what| nonblocking(fd).map_err(|source| SpawnError::Setup { what, source });
    let pty = pty_master
        .map(|m| as_async(m, "PTY"))
        .transpose()?
        .map(Arc::new);
    let stdin = stdin_w.map(|w| as_async(w, "pipes")).transpose()?;
    let readers: Vec<(Arc<AsyncFd<OwnedFd>>, Stream)> = match (&pty, pipes) {
        (Some(m), _) => vec![(m.clone(), Stream::Pty)],
        (None, Some((out, err))) => vec![
            (Arc::new(as_async(out, "pipes")?), Stream::Stdout),
            (Arc::new(as_async(err, "pipes")?), Stream::Stderr),
        ],
        (None, None) => vec![],
    };

    let (tx, rx) = mpsc::channel(super::SUBSCRIBER_QUEUE);
    let proc = Arc::new(Process {
        pid,
        tag: req.tag.clone(),
        config: req.config.clone(),
        stdin: tokio::sync::Mutex::new(stdin),
        pty,
        subscribers: Mutex::new(Subscribers {
            queues: vec![tx],
            ended: false,
        }),
    });
    table.insert(proc.clone());

    let (exited_tx, exited_rx) = watch::channel(false);
    let pumps: Vec<_> = readers
        .into_iter()
        .map(|(fd, stream)| tokio::spawn(pump(fd, stream, proc.clone(), exited_rx.clone())))
        .collect();
    let table = table.clone();
    let supervised = proc.clone();
    tokio::spawn(async move {
        let exit = match child.wait().await {
            Ok(status) => Exit::from_status(status),
            Err(e) => Exit {
                exit_code: -1,
                exited: false,
                status: "unknown".into(),
                error: Some(e.to_string()),
            },
        };
        let _ = exited_tx.send(true);
        for p in pumps {
            let _ = p.await;
        }
        table.remove(supervised.pid);
        tracing::debug!(pid = supervised.pid, status = %exit.status, "process ended");
        supervised.finish(exit).await;
    });
    Ok((proc, rx))
}
