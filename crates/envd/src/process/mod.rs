//! Processes started through `process.Process`: spawning (pipes or a PTY,
//! as a chosen user), output fan-out with backpressure, input, signals and
//! the table that `List`, `Connect` and the input calls look processes up in.

pub(crate) mod output;
pub mod service;
mod spawn;

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use parking_lot::Mutex;

use bytes::Bytes;
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;

pub use spawn::{SpawnError, SpawnRequest, WORK_CGROUP_FDS_ENV, spawn, start_children_in};

/// Capacity, in chunks, of each subscriber's queue. With 64 KiB chunks a
/// subscriber holds at most 1 MiB before the process's output pauses.
pub const SUBSCRIBER_QUEUE: usize = 16;

/// Which stream a chunk of output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
    /// The PTY (stdout and stderr merged by the terminal).
    Pty,
}

/// How a process ended, in the terms of E2B's `EndEvent`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    /// Exit code, or -1 when a signal ended the process.
    pub exit_code: i32,
    /// Whether the process exited (as opposed to being killed by a signal).
    pub exited: bool,
    /// "exit status N" or "signal: NAME".
    pub status: String,
    /// Set when the process did not exit with status 0.
    pub error: Option<String>,
}

impl Exit {
    /// Describes an [`std::process::ExitStatus`].
    pub fn from_status(status: std::process::ExitStatus) -> Self {
        use std::os::unix::process::ExitStatusExt;
        if let Some(code) = status.code() {
            let text = format!("exit status {code}");
            Exit {
                exit_code: code,
                exited: true,
                error: (code != 0).then(|| text.clone()),
                status: text,
            }
        } else {
            let sig = status.signal().unwrap_or(0);
            let text = format!("signal: {}", signal_name(sig));
            Exit {
                exit_code: -1,
                exited: false,
                error: Some(text.clone()),
                status: text,
            }
        }
    }
}

/// The name Go's os package gives a signal, which E2B clients show.
fn signal_name(sig: i32) -> String {
    match sig {
        1 => "hangup".into(),
        2 => "interrupt".into(),
        3 => "quit".into(),
        6 => "aborted".into(),
        9 => "killed".into(),
        11 => "segmentation fault".into(),
        13 => "broken pipe".into(),
        15 => "terminated".into(),
        n => format!("signal {n}"),
    }
}

/// One event a subscriber receives.
#[derive(Debug, Clone)]
pub enum Event {
    /// A chunk of output.
    Data(Stream, Bytes),
    /// The process ended; nothing follows.
    End(Exit),
}

/// What was asked for when the process started.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// Program.
    pub cmd: String,
    /// Arguments.
    pub args: Vec<String>,
    /// Environment given in the request.
    pub envs: HashMap<String, String>,
    /// Working directory given in the request.
    pub cwd: Option<String>,
}

/// A running process.
pub struct Process {
    /// Its pid (and process group id).
    pub pid: u32,
    /// Its tag, if started with one.
    pub tag: Option<String>,
    /// The request it was started with.
    pub config: Config,
    /// Write end of its stdin pipe; `None` once closed or when disabled.
    stdin: tokio::sync::Mutex<Option<AsyncFd<OwnedFd>>>,
    /// PTY master, when started with a PTY.
    pty: Option<Arc<AsyncFd<OwnedFd>>>,
    subscribers: Mutex<Subscribers>,
}

#[derive(Default)]
struct Subscribers {
    queues: Vec<mpsc::Sender<Event>>,
    ended: bool,
}

/// Errors of calls on a running process.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The process has a PTY, so stdin is the terminal.
    #[error("process {0} has a PTY: send input to the PTY (Ctrl-D for EOF) instead of stdin")]
    HasPty(u32),
    /// The process has no PTY.
    #[error("process {0} has no PTY; start it with a PTY to resize or write to one")]
    NoPty(u32),
    /// stdin was closed or never opened.
    #[error("stdin of process {0} is closed or was not enabled at start (stdin=false)")]
    StdinClosed(u32),
    /// An I/O error talking to the process.
    #[error("process {pid}: {source}")]
    Io {
        /// The process.
        pid: u32,
        /// What failed.
        source: std::io::Error,
    },
}

impl Process {
    /// Adds a subscriber; `None` when the process already ended.
    pub fn subscribe(&self) -> Option<mpsc::Receiver<Event>> {
        let mut subs = self.subscribers.lock();
        if subs.ended {
            return None;
        }
        let (tx, rx) = mpsc::channel(SUBSCRIBER_QUEUE);
        subs.queues.push(tx);
        Some(rx)
    }

    /// Sends an event to every subscriber, waiting while any queue is full;
    /// subscribers that went away are dropped.
    async fn publish(&self, event: Event) {
        let queues = self.subscribers.lock().queues.clone();
        let mut gone = Vec::new();
        for q in &queues {
            if q.send(event.clone()).await.is_err() {
                gone.push(q.clone());
            }
        }
        if !gone.is_empty() {
            let mut subs = self.subscribers.lock();
            subs.queues
                .retain(|q| !gone.iter().any(|g| g.same_channel(q)));
        }
    }

    /// Marks the process ended and sends `end` to everyone subscribed.
    async fn finish(&self, exit: Exit) {
        let queues = {
            let mut subs = self.subscribers.lock();
            subs.ended = true;
            std::mem::take(&mut subs.queues)
        };
        for q in queues {
            let _ = q.send(Event::End(exit.clone())).await;
        }
    }

    /// Writes bytes to stdin (or to the PTY when `to_pty`).
    pub async fn write_input(&self, data: &[u8], to_pty: bool) -> Result<(), ProcessError> {
        if let Some(pty) = &self.pty {
            // A PTY process reads everything from the terminal.
            return output::write_all(pty, data)
                .await
                .map_err(|source| ProcessError::Io {
                    pid: self.pid,
                    source,
                });
        }
        if to_pty {
            return Err(ProcessError::NoPty(self.pid));
        }
        let guard = self.stdin.lock().await;
        let Some(fd) = guard.as_ref() else {
            return Err(ProcessError::StdinClosed(self.pid));
        };
        output::write_all(fd, data)
            .await
            .map_err(|source| ProcessError::Io {
                pid: self.pid,
                source,
            })
    }

    /// Closes stdin so the process reads EOF.
    pub async fn close_stdin(&self) -> Result<(), ProcessError> {
        if self.pty.is_some() {
            return Err(ProcessError::HasPty(self.pid));
        }
        self.stdin.lock().await.take();
        Ok(())
    }

    /// Resizes the PTY.
    pub fn resize(&self, cols: u16, rows: u16) -> Result<(), ProcessError> {
        let pty = self.pty.as_ref().ok_or(ProcessError::NoPty(self.pid))?;
        spawn::set_winsize(pty.get_ref(), cols, rows).map_err(|source| ProcessError::Io {
            pid: self.pid,
            source,
        })
    }

    /// Sends a signal to the process's group, so that its children get it too.
    pub fn signal(&self, sig: rustix::process::Signal) -> Result<(), ProcessError> {
        let pid = rustix::process::Pid::from_raw(self.pid as i32).expect("pid > 0");
        rustix::process::kill_process_group(pid, sig)
            .or_else(|_| rustix::process::kill_process(pid, sig))
            .map_err(|e| ProcessError::Io {
                pid: self.pid,
                source: e.into(),
            })
    }
}

/// Running processes by pid.
#[derive(Default)]
pub struct ProcessTable {
    inner: Mutex<HashMap<u32, Arc<Process>>>,
}

/// How a request names a process.
#[derive(Debug, Clone)]
pub enum Selector {
    /// By pid.
    Pid(u32),
    /// By tag.
    Tag(String),
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Selector::Pid(p) => write!(f, "pid {p}"),
            Selector::Tag(t) => write!(f, "tag '{t}'"),
        }
    }
}

impl ProcessTable {
    fn insert(&self, p: Arc<Process>) {
        self.inner.lock().insert(p.pid, p);
    }

    fn remove(&self, pid: u32) {
        self.inner.lock().remove(&pid);
    }

    /// Finds a running process.
    pub fn get(&self, sel: &Selector) -> Option<Arc<Process>> {
        let t = self.inner.lock();
        match sel {
            Selector::Pid(pid) => t.get(pid).cloned(),
            Selector::Tag(tag) => t.values().find(|p| p.tag.as_deref() == Some(tag)).cloned(),
        }
    }

    /// All running processes.
    pub fn list(&self) -> Vec<Arc<Process>> {
        let mut v: Vec<_> = self.inner.lock().values().cloned().collect();
        v.sort_by_key(|p| p.pid);
        v
    }

    /// Number of running processes.
    pub fn len(&self) -> usize {
        self.inner.lock().len()
    }

    /// Whether no process is running.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn exit_descriptions_match_e2b() {
        let cases = [
            (
                0,
                Exit {
                    exit_code: 0,
                    exited: true,
                    status: "exit status 0".into(),
                    error: None,
                },
            ),
            (
                3 << 8,
                Exit {
                    exit_code: 3,
                    exited: true,
                    status: "exit status 3".into(),
                    error: Some("exit status 3".into()),
                },
            ),
            (
                9,
                Exit {
                    exit_code: -1,
                    exited: false,
                    status: "signal: killed".into(),
                    error: Some("signal: killed".into()),
                },
            ),
        ];
        for (raw, want) in cases {
            assert_eq!(
                Exit::from_status(std::process::ExitStatus::from_raw(raw)),
                want,
                "raw {raw}"
            );
        }
    }
}
