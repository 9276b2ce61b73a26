//! Non-blocking reads and writes on pipes and PTY masters.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use bytes::Bytes;
use rustix::io::Errno;
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;

use super::{Event, Process, Stream};

/// Bytes read from a pipe or PTY in one go.
pub const CHUNK: usize = 64 * 1024;

/// Reads one chunk; `Ok(None)` at end of file (EIO on a PTY whose other
/// side closed counts as end of file).
fn read_chunk(fd: &OwnedFd) -> io::Result<Option<Bytes>> {
    let mut buf = vec![0u8; CHUNK];
    loop {
        match rustix::io::read(fd, &mut buf) {
            Ok(0) => return Ok(None),
            Ok(n) => {
                buf.truncate(n);
                return Ok(Some(Bytes::from(buf)));
            }
            Err(Errno::INTR) => continue,
            Err(Errno::IO) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Copies everything `fd` yields to the process's subscribers until end of
/// file, or, once `exited` turns true, until what is buffered is drained (a
/// grandchild that keeps the pipe open does not hold the process's end).
pub async fn pump(
    fd: Arc<AsyncFd<OwnedFd>>,
    stream: Stream,
    proc: Arc<Process>,
    mut exited: watch::Receiver<bool>,
) {
    let mut done = *exited.borrow();
    loop {
        let chunk = if done {
            match read_chunk(fd.get_ref()) {
                Ok(c) => c,
                Err(_) => None, // WouldBlock: drained.
            }
        } else {
            tokio::select! {
                ready = fd.readable() => {
                    let Ok(mut guard) = ready else { return };
                    match guard.try_io(|inner| read_chunk(inner.get_ref())) {
                        Ok(Ok(c)) => c,
                        Ok(Err(_)) => None,
                        Err(_would_block) => continue,
                    }
                }
                _ = exited.changed() => { done = true; continue; }
            }
        };
        match chunk {
            Some(data) => proc.publish(Event::Data(stream, data)).await,
            None => return,
        }
    }
}

/// Writes all of `data`, waiting while the pipe or terminal is full.
pub async fn write_all(fd: &AsyncFd<OwnedFd>, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        let mut guard = fd.writable().await?;
        match guard.try_io(|inner| {
            loop {
                match rustix::io::write(inner.get_ref(), data) {
                    Err(Errno::INTR) => continue,
                    r => return r.map_err(io::Error::from),
                }
            }
        }) {
            Ok(Ok(n)) => data = &data[n..],
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => continue,
        }
    }
    Ok(())
}

/// Registers an owned descriptor with the reactor.
pub fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an OwnedFd keeps its descriptor open, unchanged, until the
    // AsyncFd that owns it drops it.
    unsafe { AsyncFd::register(fd) }.map_err(io::Error::from)
}
