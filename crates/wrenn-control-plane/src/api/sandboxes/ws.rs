//! Streamed exec and interactive PTYs over WebSocket.

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::response::Response;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};

use crate::App;
use crate::auth::Caller;
use crate::dataplane::{self, Envd, Event, Events};
use crate::error::{ApiError, ApiResult};
use crate::sandboxes::running_sandbox;

fn text(v: Value) -> Message {
    Message::Text(v.to_string().into())
}

async fn first_json(socket: &mut WebSocket) -> Option<Value> {
    while let Some(Ok(msg)) = socket.recv().await {
        match msg {
            Message::Text(t) => return serde_json::from_str(&t).ok(),
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
        let Some(start) = first_json(&mut socket).await else {
            return;
        };
        let cmd = start["cmd"].as_str().unwrap_or("/bin/sh").to_string();
        let args: Vec<String> = start["args"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let req = dataplane::command(cmd, args, [], None, None, false);
        relay(&envd, envd.start(req, None).await, socket).await
    }))
}

/// Sends an error as an `error` message.
async fn send_error(socket: &mut WebSocket, e: ApiError) {
    let _ = socket
        .send(text(json!({ "type": "error", "data": e.message })))
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
            Ok(Some(Event::Start(pid))) => json!({ "type": "start", "pid": pid }),
            Ok(Some(Event::Stdout(b) | Event::Pty(b))) => {
                json!({ "type": "stdout", "data": String::from_utf8_lossy(&b) })
            }
            Ok(Some(Event::Stderr(b))) => {
                json!({ "type": "stderr", "data": String::from_utf8_lossy(&b) })
            }
            Ok(Some(Event::End(code))) => json!({ "type": "exit", "exit_code": code }),
            Ok(None) => break,
            Err(e) => {
                send_error(&mut socket, envd.failed(e)).await;
                break;
            }
        };
        if socket.send(text(out)).await.is_err() {
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

/// The strings of a JSON array (others skipped); empty when it is none.
fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// A terminal's dimension from a client message: 1 to 1000, else `default`.
fn dimension(v: &Value, default: u32) -> u32 {
    v.as_u64()
        .filter(|n| (1..=1000).contains(n))
        .map_or(default, |n| n as u32)
}

async fn pty_session(envd: Envd, mut socket: WebSocket) {
    let Some(first) = first_json(&mut socket).await else {
        return;
    };
    let fail = |m: String| text(json!({ "type": "error", "data": m, "fatal": true }));
    let started = match first["type"].as_str() {
        Some("start") => {
            let tag = format!("pty-{}", crate::ids::hex(6));
            let (cmd, args) = match first["cmd"].as_str() {
                Some(cmd) if !cmd.is_empty() => (cmd.to_string(), strings(&first["args"])),
                _ => ("/bin/bash".to_string(), vec!["-i".into(), "-l".into()]),
            };
            let mut envs: std::collections::HashMap<String, String> = first["envs"]
                .as_object()
                .map(|o| {
                    o.iter()
                        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                        .collect()
                })
                .unwrap_or_default();
            envs.entry("TERM".into())
                .or_insert_with(|| "xterm-256color".into());
            let cwd = first["cwd"].as_str().map(str::to_string);
            let mut req = dataplane::command(cmd, args, envs, cwd, Some(tag.clone()), true);
            req.pty =
                dataplane::pty(dimension(&first["cols"], 80), dimension(&first["rows"], 24)).into();
            start_pty(&envd, req, tag).await
        }
        Some("connect") => {
            let tag = first["tag"].as_str().unwrap_or_default().to_string();
            attach_pty(&envd, tag).await
        }
        _ => Err(
            "the first message must be {\"type\":\"start\"} or {\"type\":\"connect\",\"tag\":…}"
                .into(),
        ),
    };
    let (mut events, pid, tag) = match started {
        Ok(s) => s,
        Err(m) => {
            let _ = socket.send(fail(m)).await;
            return;
        }
    };
    if socket
        .send(text(json!({ "type": "started", "pid": pid, "tag": tag })))
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
                Ok(Some(Event::End(code))) => {
                    let _ = tx
                        .send(text(json!({ "type": "exit", "exit_code": code })))
                        .await;
                    let _ = tx.close().await;
                    return;
                }
                Ok(Some(Event::Start(_))) => {}
                Ok(None) => return,
                Err(e) => {
                    let e = envd.failed(e);
                    let _ = tx
                        .send(text(
                            json!({ "type": "error", "data": e.message, "fatal": true }),
                        ))
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
                Message::Text(t) => {
                    let v: Value = serde_json::from_str(&t).unwrap_or(Value::Null);
                    match v["type"].as_str() {
                        Some("resize") => {
                            let (cols, rows) =
                                (dimension(&v["cols"], 80), dimension(&v["rows"], 24));
                            envd.resize(pid, cols, rows).await
                        }
                        Some("kill") => envd.signal(pid, true).await,
                        Some("input") => {
                            let data = v["data"].as_str().unwrap_or_default().as_bytes().to_vec();
                            envd.send_input(pid, data, true).await
                        }
                        _ => Ok(()),
                    }
                }
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
