//! Streamed exec and interactive PTYs over WebSocket; the messages are
//! `wrenn_api_types::streams`' types.

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::response::Response;
use futures::{SinkExt, StreamExt};
use serde::Serialize;
use wrenn_api_types::streams::{ExecStart, ProcessMessage, PtyControl, PtyMessage, PtyOpen};

use crate::App;
use crate::auth::Caller;
use crate::dataplane::{self, Envd, Event, Events};
use crate::error::{ApiError, ApiResult};
use crate::sandboxes::running_sandbox;

/// A message as a JSON text frame.
fn text(m: &impl Serialize) -> Message {
    Message::Text(serde_json::to_string(m).unwrap_or_default().into())
}

/// The first text frame (`None`: the socket closed first); binary frames
/// before it are skipped.
async fn first_text(socket: &mut WebSocket) -> Option<String> {
    while let Some(Ok(msg)) = socket.recv().await {
        match msg {
            Message::Text(t) => return Some(t.to_string()),
            Message::Close(_) => return None,
            _ => continue,
        }
    }
    None
}

/// GET /{id}/exec/stream: `{"type":"start","cmd","args"}` in; `start`,
/// `stdout`, `stderr`, `exit` or `error` events out.
pub(crate) async fn exec_stream(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
    upgrade: WebSocketUpgrade,
) -> ApiResult<Response> {
    let s = running_sandbox(&app, &caller, &id).await?;
    let envd = Envd::of(&app, &s).await?;
    Ok(upgrade.on_upgrade(move |mut socket| async move {
        let Some(first) = first_text(&mut socket).await else {
            return;
        };
        let start = match serde_json::from_str::<ExecStart>(&first) {
            Ok(s) => s,
            Err(e) => {
                let e = ApiError::bad_request(format!(
                    "the first message must be {{\"type\":\"start\",\"cmd\",\"args\"}}: {e}"
                ));
                return send_error(&mut socket, e).await;
            }
        };
        let cmd = start.cmd.unwrap_or_else(|| "/bin/sh".into());
        // Its stdin stays open, as it always has (nothing writes to it:
        // a command that reads stdin waits, as in a terminal).
        let req = dataplane::command(cmd, start.args, [], None, None, true);
        relay(&envd, envd.start(req, None).await, socket).await
    }))
}

/// Sends an error as an `error` message.
async fn send_error(socket: &mut WebSocket, e: ApiError) {
    let _ = socket
        .send(text(&ProcessMessage::Error { data: e.message }))
        .await;
}

/// Forwards a process's events (or envd's refusal to start them) to a
/// socket as `start`, `stdout`, `stderr`, `exit` or `error` JSON
/// messages, then closes it.
async fn relay(envd: &Envd, started: ApiResult<Events>, mut socket: WebSocket) {
    let mut events = match started {
        Ok(s) => s,
        Err(e) => return send_error(&mut socket, e).await,
    };
    loop {
        let out = match events.next().await {
            Ok(Some(Event::Start(pid))) => ProcessMessage::Start { pid },
            Ok(Some(Event::Stdout(b) | Event::Pty(b))) => ProcessMessage::Stdout {
                data: String::from_utf8_lossy(&b).into_owned(),
            },
            Ok(Some(Event::Stderr(b))) => ProcessMessage::Stderr {
                data: String::from_utf8_lossy(&b).into_owned(),
            },
            Ok(Some(Event::End(exit_code))) => ProcessMessage::Exit { exit_code },
            Ok(None) => break,
            Err(e) => {
                send_error(&mut socket, envd.failed(e)).await;
                break;
            }
        };
        if socket.send(text(&out)).await.is_err() {
            return; // the caller left; the process runs on
        }
    }
    let _ = socket.close().await;
}

/// GET /{id}/processes/{pid}/stream: re-attaches to a running process;
/// the same events as exec/stream, from now on.
pub(crate) async fn process_stream(
    State(app): State<App>,
    caller: Caller,
    Path((id, pid)): Path<(String, u32)>,
    upgrade: WebSocketUpgrade,
) -> ApiResult<Response> {
    let s = running_sandbox(&app, &caller, &id).await?;
    let envd = Envd::of(&app, &s).await?;
    Ok(upgrade.on_upgrade(move |socket| async move {
        relay(&envd, envd.connect(pid).await, socket).await
    }))
}

/// GET /{id}/pty: `start` (cmd, args, cols, rows, envs, cwd) or
/// `connect` (tag) in; binary frames are keystrokes; `resize`, `kill`.
/// Out: `started` {pid, tag}, binary output, `exit`. The process outlives
/// a dropped socket; `connect` with its tag re-attaches.
pub(crate) async fn pty(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
    upgrade: WebSocketUpgrade,
) -> ApiResult<Response> {
    let s = running_sandbox(&app, &caller, &id).await?;
    let envd = Envd::of(&app, &s).await?;
    Ok(upgrade.on_upgrade(move |socket| pty_session(envd, socket)))
}

/// The most rows or columns a PTY has (envd's bound).
const PTY_MAX: u32 = 65_535;

/// A new terminal's dimension: `default` when not given, within 1 to
/// [`PTY_MAX`].
fn dimension(v: Option<u32>, default: u32) -> u32 {
    v.unwrap_or(default).clamp(1, PTY_MAX)
}

async fn pty_session(envd: Envd, mut socket: WebSocket) {
    let Some(first) = first_text(&mut socket).await else {
        return;
    };
    let fail = |data: String| text(&PtyMessage::Error { data, fatal: true });
    let started = match serde_json::from_str::<PtyOpen>(&first) {
        Ok(PtyOpen::Start {
            cmd,
            args,
            cols,
            rows,
            mut envs,
            cwd,
        }) => {
            let tag = format!("pty-{}", crate::ids::hex(6));
            let (cmd, args) = match cmd {
                Some(cmd) if !cmd.is_empty() => (cmd, args),
                _ => ("/bin/bash".to_string(), vec!["-i".into(), "-l".into()]),
            };
            envs.entry("TERM".into())
                .or_insert_with(|| "xterm-256color".into());
            let mut req = dataplane::command(cmd, args, envs, cwd, Some(tag.clone()), true);
            req.pty = dataplane::pty(dimension(cols, 80), dimension(rows, 24)).into();
            start_pty(&envd, req, tag).await
        }
        Ok(PtyOpen::Connect { tag }) => attach_pty(&envd, tag).await,
        Err(e) => Err(format!(
            "the first message must be {{\"type\":\"start\"}} or {{\"type\":\"connect\",\"tag\":…}}: {e}"
        )),
    };
    let (mut events, pid, tag) = match started {
        Ok(s) => s,
        Err(m) => {
            let _ = socket.send(fail(m)).await;
            return;
        }
    };
    if socket
        .send(text(&PtyMessage::Started { pid, tag }))
        .await
        .is_err()
    {
        return;
    }
    let (mut tx, mut rx) = socket.split();
    let output = async {
        loop {
            match events.next().await {
                Ok(Some(Event::Pty(b) | Event::Stdout(b) | Event::Stderr(b))) => {
                    if tx.send(Message::Binary(b.into())).await.is_err() {
                        return;
                    }
                }
                Ok(Some(Event::End(exit_code))) => {
                    let _ = tx.send(text(&PtyMessage::Exit { exit_code })).await;
                    let _ = tx.close().await;
                    return;
                }
                Ok(Some(Event::Start(_))) => {}
                Ok(None) => return,
                Err(e) => {
                    let data = envd.failed(e).message;
                    let _ = tx
                        .send(text(&PtyMessage::Error { data, fatal: true }))
                        .await;
                    return;
                }
            }
        }
    };
    let input = async {
        while let Some(Ok(msg)) = rx.next().await {
            let r = match msg {
                Message::Binary(b) => envd.send_input(pid, b.to_vec(), true).await,
                // Anything else a client sends is ignored.
                Message::Text(t) => match serde_json::from_str::<PtyControl>(&t) {
                    // A size out of bounds is ignored: the terminal keeps its own.
                    Ok(PtyControl::Resize { cols, rows }) => {
                        let (cols, rows) = (cols.unwrap_or(80), rows.unwrap_or(24));
                        if (1..=PTY_MAX).contains(&cols) && (1..=PTY_MAX).contains(&rows) {
                            envd.resize(pid, cols, rows).await
                        } else {
                            Ok(())
                        }
                    }
                    Ok(PtyControl::Kill) => envd.signal(pid, true).await,
                    Ok(PtyControl::Input { data }) => {
                        envd.send_input(pid, data.into_bytes(), true).await
                    }
                    Err(_) => Ok(()),
                },
                Message::Close(_) => break,
                _ => Ok(()),
            };
            if let Err(e) = r {
                tracing::debug!("pty input: {}", e.message);
            }
        }
    };
    // Whichever side ends first ends the session; the process lives on
    // unless it exited or was killed. When the output side ends first
    // (the client is closing), what the client sent before its close
    // (a resize, last keystrokes) is still carried out, for 2 s at most.
    tokio::pin!(output, input);
    tokio::select! {
        _ = &mut output => {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), &mut input).await;
        }
        _ = &mut input => {}
    }
}

/// Starts a PTY process: its events, pid and tag, or why not.
async fn start_pty(
    envd: &Envd,
    req: wrenn_protocol::envd::process::StartRequest,
    tag: String,
) -> Result<(Events, u32, String), String> {
    let mut events = envd.start(req, None).await.map_err(|e| e.message)?;
    let pid = events.pid().await.map_err(|e| envd.failed(e).message)?;
    Ok((events, pid, tag))
}

/// Re-attaches to the PTY process tagged `tag`: its events from now on.
async fn attach_pty(envd: &Envd, tag: String) -> Result<(Events, u32, String), String> {
    let gone = || format!("no PTY session with tag '{tag}'; it may have exited");
    let procs = envd.processes().await.map_err(|_| gone())?;
    let Some(pid) = procs
        .iter()
        .find(|p| p.tag.as_deref() == Some(tag.as_str()))
        .map(|p| p.pid)
    else {
        return Err(gone());
    };
    let mut events = envd.connect(pid).await.map_err(|e| e.message)?;
    events.pid().await.map_err(|e| envd.failed(e).message)?; // its start event
    Ok((events, pid, tag))
}
