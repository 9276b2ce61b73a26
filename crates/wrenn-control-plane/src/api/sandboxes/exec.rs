//! Commands in a sandbox: a buffered exec (output held within the
//! team's and the control plane's budgets), its processes, kill.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use wrenn_api_types::processes::{Exec, ExecOutput, ExecResult, Process, Processes, Started};

use super::super::ApiJson;
use crate::App;
use crate::auth::Caller;
use crate::dataplane::{self, Envd, Event};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::sandboxes::{running_sandbox, touch};

/// Output a buffered exec keeps per stream when the request names no
/// `max_output_bytes`.
const OUTPUT_DEFAULT_BYTES: usize = 16 << 20;
/// The most a buffered exec keeps per stream, whatever it asks for.
const OUTPUT_MAX_BYTES: usize = 64 << 20;

/// What a buffered exec keeps per stream for a request's
/// `max_output_bytes`: the default for 0, at most the maximum.
fn output_limit(max_output_bytes: u64) -> usize {
    match max_output_bytes {
        0 => OUTPUT_DEFAULT_BYTES,
        n => usize::try_from(n)
            .unwrap_or(usize::MAX)
            .min(OUTPUT_MAX_BYTES),
    }
}

fn text_or_base64(stdout: Vec<u8>, stderr: Vec<u8>) -> (String, String, &'static str) {
    match (String::from_utf8(stdout), String::from_utf8(stderr)) {
        (Ok(o), Ok(e)) => (o, e, "utf-8"),
        (o, e) => {
            let b = |r: Result<String, std::string::FromUtf8Error>| match r {
                Ok(s) => s.into_bytes(),
                Err(e) => e.into_bytes(),
            };
            let enc = base64::engine::general_purpose::STANDARD;
            (enc.encode(b(o)), enc.encode(b(e)), "base64")
        }
    }
}

#[utoipa::path(post, path = "/v1/sandboxes/{id}/exec", tag = "processes", params(("id" = String, Path, description = "Sandbox id (sb-…)")), request_body = Exec, responses((status = 200, body = ExecResult, description = "stdout, stderr (utf-8 or base64 per `encoding`; each at most `max_output_bytes`, 16 MiB by default, with `stdout_truncated`/`stderr_truncated` set when more was dropped), exit_code, duration_ms; or pid and tag when background"), (status = 404, description = "No such sandbox in the team", body = ErrorBody), (status = 409, description = "Wrong state (e.g. paused)", body = ErrorBody), (status = 504, description = "timeout_sec passed; the command was killed", body = ErrorBody)), security(("api_key" = []), ("bearer" = [])))]
pub(crate) async fn exec(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(r): ApiJson<Exec>,
) -> ApiResult<Response> {
    if r.cmd.is_empty() {
        return Err(ApiError::bad_request("cmd: must not be empty"));
    }
    let s = running_sandbox(&app, &caller, &id).await?;
    let envd = Envd::of(&app, &s).await?;
    let timeout_sec = r.timeout_sec.unwrap_or(if r.background { 0 } else { 60 });
    let req = dataplane::command(
        r.cmd.clone(),
        r.args.clone(),
        r.envs,
        r.cwd,
        r.tag.clone(),
        false,
    );
    let timeout = (timeout_sec > 0).then(|| Duration::from_secs(u64::from(timeout_sec)));
    let mut events = envd.start(req, timeout).await?;
    if r.background {
        let pid = events.pid().await.map_err(|e| envd.failed(e))?;
        touch(&app, &s);
        return Ok(Json(ExecResult::Started(Started {
            sandbox_id: id,
            pid,
            tag: r.tag.unwrap_or_default(),
        }))
        .into_response());
    }
    let limit = output_limit(r.max_output_bytes.unwrap_or(0));
    let started = std::time::Instant::now();
    // Output is kept chunk by chunk, each charged to the team's and the
    // global budget (crate::output), until the answer is sent.
    let mut held = crate::output::Held::default();
    let mut kept = [Vec::new(), Vec::new()];
    let mut truncated = [false, false];
    let mut exit_code = -1;
    loop {
        let (i, bytes) = match events.next().await {
            Ok(Some(Event::Stdout(b) | Event::Pty(b))) => (0, b),
            Ok(Some(Event::Stderr(b))) => (1, b),
            Ok(Some(Event::End(code))) => {
                exit_code = code;
                continue;
            }
            Ok(Some(Event::Start(_))) => continue,
            Ok(None) => break,
            Err(e) if e.code == connectrpc::ErrorCode::DeadlineExceeded => {
                return Err(ApiError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "timeout",
                    format!(
                        "the command did not finish within timeout_sec={timeout_sec}; it was killed"
                    ),
                ));
            }
            Err(e) => return Err(envd.failed(e)),
        };
        let take = bytes.len().min(limit - kept[i].len());
        if take > 0
            && app
                .output
                .try_charge(&caller.team_id, &bytes[..take], &mut held)
        {
            kept[i].extend_from_slice(&bytes[..take]);
        } else if take > 0 {
            truncated[i] = true;
        }
        truncated[i] |= take < bytes.len();
    }
    touch(&app, &s);
    let [stdout, stderr] = kept;
    let (stdout, stderr, encoding) = text_or_base64(stdout, stderr);
    let cmd = std::iter::once(r.cmd)
        .chain(r.args)
        .collect::<Vec<_>>()
        .join(" ");
    let body = ExecResult::Finished(ExecOutput {
        sandbox_id: id,
        cmd,
        stdout,
        stderr,
        exit_code,
        duration_ms: started.elapsed().as_millis() as u64,
        encoding: encoding.to_string(),
        stdout_truncated: truncated[0],
        stderr_truncated: truncated[1],
    });
    // Serialized while the budget is held: the body is the largest copy.
    let bytes = serde_json::to_vec(&body).map_err(|e| ApiError::internal(e.to_string()))?;
    drop(body);
    let resp = (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        bytes,
    )
        .into_response();
    drop(held);
    Ok(resp)
}

#[utoipa::path(get, path = "/v1/sandboxes/{id}/processes", tag = "processes", params(("id" = String, Path, description = "Sandbox id (sb-…)")), responses((status = 200, description = "Running processes", body = Processes), (status = 404, description = "No such sandbox in the team", body = ErrorBody)), security(("api_key" = []), ("bearer" = [])))]
pub(crate) async fn processes(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Processes>> {
    let s = running_sandbox(&app, &caller, &id).await?;
    let processes = Envd::of(&app, &s)
        .await?
        .processes()
        .await?
        .into_iter()
        .map(|p| {
            let c = p.config.into_option().unwrap_or_default();
            Process {
                pid: p.pid,
                tag: p.tag.unwrap_or_default(),
                cmd: c.cmd,
                args: c.args,
            }
        })
        .collect();
    Ok(Json(Processes { processes }))
}

#[utoipa::path(delete, path = "/v1/sandboxes/{id}/processes/{pid}", tag = "processes", params(("id" = String, Path), ("pid" = u32, Path)), responses((status = 204, description = "Killed"), (status = 404, description = "No such sandbox in the team", body = ErrorBody)), security(("api_key" = []), ("bearer" = [])))]
pub(crate) async fn kill(
    State(app): State<App>,
    caller: Caller,
    Path((id, pid)): Path<(String, u32)>,
) -> ApiResult<StatusCode> {
    let s = running_sandbox(&app, &caller, &id).await?;
    Envd::of(&app, &s).await?.signal(pid, true).await?;
    Ok(StatusCode::NO_CONTENT)
}
