//! Streamed exec and interactive PTYs over WebSocket.

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::response::Response;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use wrenn_protocol::hostagent::v1::{self as pb, exec_event};

use crate::App;
use crate::auth::Caller;
use crate::error::ApiResult;
use crate::hosts::AgentClient;
use crate::sandboxes::running;

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
    let (_, agent) = running(&app, &caller, &id).await?;
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
        let req = pb::ExecRequest {
            sandbox_id: id,
            cmd,
            args,
            ..Default::default()
        };
        relay(agent.exec_stream(req).await, socket).await
    }))
}

/// Sends an agent's error as an `error` message.
async fn send_error(socket: &mut WebSocket, e: connectrpc::ConnectError) {
    let _ = socket
        .send(text(
            json!({ "type": "error", "data": e.message.unwrap_or_default() }),
        ))
        .await;
}

/// Forwards an agent's exec events (or its refusal to start them) to a
/// socket as `start`, `stdout`, `stderr`, `exit` or `error` JSON
/// messages, then closes it.
async fn relay(
    started: Result<
        connectrpc::client::ServerStream<
            hyper::body::Incoming,
            pb::__buffa::view::ExecEventView<'static>,
        >,
        connectrpc::ConnectError,
    >,
    mut socket: WebSocket,
) {
    let mut stream = match started {
        Ok(s) => s,
        Err(e) => return send_error(&mut socket, e).await,
    };
    loop {
        let ev = match stream.message::<pb::ExecEvent>().await {
            Ok(Some(m)) => m.to_owned_message().event,
            Ok(None) => break,
            Err(e) => {
                send_error(&mut socket, e).await;
                break;
            }
        };
        let out = match ev {
            Some(exec_event::Event::Start(s)) => json!({ "type": "start", "pid": s.pid }),
            Some(exec_event::Event::Stdout(b)) | Some(exec_event::Event::Pty(b)) => {
                json!({ "type": "stdout", "data": String::from_utf8_lossy(&b) })
            }
            Some(exec_event::Event::Stderr(b)) => {
                json!({ "type": "stderr", "data": String::from_utf8_lossy(&b) })
            }
            Some(exec_event::Event::End(e)) => {
                json!({ "type": "exit", "exit_code": e.exit_code })
            }
            None => continue,
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
    let (_, agent) = running(&app, &caller, &id).await?;
    Ok(upgrade.on_upgrade(move |socket| async move {
        let started = agent
            .connect_process(pb::ProcessRef {
                sandbox_id: id,
                pid,
                ..Default::default()
            })
            .await;
        relay(started, socket).await
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
    let (_, agent) = running(&app, &caller, &id).await?;
    Ok(upgrade.on_upgrade(move |socket| pty_session(agent, id, socket)))
}

async fn pty_session(agent: AgentClient, id: String, mut socket: WebSocket) {
    let Some(first) = first_json(&mut socket).await else {
        return;
    };
    let fail = |m: String| text(json!({ "type": "error", "data": m, "fatal": true }));
    let (stream, pid, tag) = match first["type"].as_str() {
        Some("start") => {
            let tag = format!("pty-{}", crate::ids::hex(6));
            let mut req = pb::PtyStartRequest {
                sandbox_id: id.clone(),
                cmd: first["cmd"].as_str().unwrap_or_default().to_string(),
                args: first["args"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|x| x.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default(),
                cols: first["cols"].as_u64().unwrap_or(80) as u32,
                rows: first["rows"].as_u64().unwrap_or(24) as u32,
                cwd: first["cwd"].as_str().unwrap_or_default().to_string(),
                tag: tag.clone(),
                ..Default::default()
            };
            if let Some(envs) = first["envs"].as_object() {
                req.envs.extend(
                    envs.iter()
                        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))),
                );
            }
            let mut stream = match agent.pty_start(req).await {
                Ok(s) => s,
                Err(e) => {
                    let _ = socket.send(fail(e.message.unwrap_or_default())).await;
                    return;
                }
            };
            let pid = match stream.message::<pb::ExecEvent>().await {
                Ok(Some(m)) => match m.to_owned_message().event {
                    Some(exec_event::Event::Start(s)) => s.pid,
                    _ => 0,
                },
                _ => 0,
            };
            (stream, pid, tag)
        }
        Some("connect") => {
            let tag = first["tag"].as_str().unwrap_or_default().to_string();
            let procs = agent
                .list_processes(pb::SandboxRef {
                    sandbox_id: id.clone(),
                    ..Default::default()
                })
                .await;
            let pid = procs.ok().and_then(|p| {
                p.into_owned()
                    .processes
                    .into_iter()
                    .find(|p| p.tag == tag)
                    .map(|p| p.pid)
            });
            let Some(pid) = pid else {
                let _ = socket
                    .send(fail(format!(
                        "no PTY session with tag '{tag}'; it may have exited"
                    )))
                    .await;
                return;
            };
            let mut stream = match agent
                .connect_process(pb::ProcessRef {
                    sandbox_id: id.clone(),
                    pid,
                    ..Default::default()
                })
                .await
            {
                Ok(s) => s,
                Err(e) => {
                    let _ = socket.send(fail(e.message.unwrap_or_default())).await;
                    return;
                }
            };
            let _ = stream.message::<pb::ExecEvent>().await; // its start event
            (stream, pid, tag)
        }
        _ => {
            let _ = socket.send(fail("the first message must be {\"type\":\"start\"} or {\"type\":\"connect\",\"tag\":…}".into())).await;
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
    let mut stream = stream;
    let output = async {
        loop {
            match stream.message::<pb::ExecEvent>().await {
                Ok(Some(m)) => match m.to_owned_message().event {
                    Some(exec_event::Event::Pty(b))
                    | Some(exec_event::Event::Stdout(b))
                    | Some(exec_event::Event::Stderr(b)) => {
                        if tx.send(Message::Binary(b.into())).await.is_err() {
                            return;
                        }
                    }
                    Some(exec_event::Event::End(e)) => {
                        let _ = tx
                            .send(text(json!({ "type": "exit", "exit_code": e.exit_code })))
                            .await;
                        let _ = tx.close().await;
                        return;
                    }
                    _ => {}
                },
                Ok(None) => return,
                Err(e) => {
                    let _ = tx.send(text(json!({ "type": "error", "data": e.message.unwrap_or_default(), "fatal": true }))).await;
                    return;
                }
            }
        }
    };
    let input = async {
        while let Some(Ok(msg)) = rx.next().await {
            let r = match msg {
                Message::Binary(b) => agent
                    .send_input(pb::SendInputRequest {
                        sandbox_id: id.clone(),
                        pid,
                        data: b.to_vec(),
                        pty: true,
                        ..Default::default()
                    })
                    .await
                    .map(|_| ()),
                Message::Text(t) => {
                    let v: Value = serde_json::from_str(&t).unwrap_or(Value::Null);
                    match v["type"].as_str() {
                        Some("resize") => agent
                            .pty_resize(pb::PtyResizeRequest {
                                sandbox_id: id.clone(),
                                pid,
                                cols: v["cols"].as_u64().unwrap_or(80) as u32,
                                rows: v["rows"].as_u64().unwrap_or(24) as u32,
                                ..Default::default()
                            })
                            .await
                            .map(|_| ()),
                        Some("kill") => agent
                            .kill_process(pb::KillProcessRequest {
                                sandbox_id: id.clone(),
                                pid,
                                signal: 9,
                                ..Default::default()
                            })
                            .await
                            .map(|_| ()),
                        Some("input") => agent
                            .send_input(pb::SendInputRequest {
                                sandbox_id: id.clone(),
                                pid,
                                data: v["data"].as_str().unwrap_or_default().as_bytes().to_vec(),
                                pty: true,
                                ..Default::default()
                            })
                            .await
                            .map(|_| ()),
                        _ => Ok(()),
                    }
                }
                Message::Close(_) => break,
                _ => Ok(()),
            };
            if let Err(e) = r {
                tracing::debug!("pty input: {e:?}");
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
