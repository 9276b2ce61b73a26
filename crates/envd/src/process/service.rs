//! `process.Process`: the Connect service over the process table.

use std::pin::Pin;
use std::time::Duration;

use connectrpc::{
    ConnectError, InboundStream, RequestContext, Response, ServiceRequest, ServiceResult,
    ServiceStream,
};
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use wrenn_protocol::envd::process::{
    self as pb, ConnectResponse, ProcessEvent, StartResponse, process_event, process_input,
    process_selector, stream_input_request,
};

use super::{
    Config, Event, Exit, Process, ProcessError, Selector, SpawnError, SpawnRequest, Stream as Out,
    spawn,
};
use crate::errors::user_error;
use crate::state::{AppState, resolve_path};

/// Header in which clients ask for keepalive events, in seconds.
pub const KEEPALIVE_HEADER: &str = "keepalive-ping-interval";

/// The `process.Process` service.
#[derive(Clone)]
pub struct ProcessService {
    state: AppState,
}

impl ProcessService {
    /// Serves processes from `state`.
    pub fn new(state: AppState) -> Self {
        ProcessService { state }
    }
}

fn selector(sel: Option<&pb::ProcessSelector>) -> Result<Selector, ConnectError> {
    match sel.and_then(|s| s.selector.as_ref()) {
        Some(process_selector::Selector::Pid(pid)) => Ok(Selector::Pid(*pid)),
        Some(process_selector::Selector::Tag(tag)) => Ok(Selector::Tag(tag.clone())),
        None => Err(ConnectError::invalid_argument(
            "process selector (pid or tag) is required",
        )),
    }
}

fn find(
    state: &AppState,
    sel: Option<&pb::ProcessSelector>,
) -> Result<std::sync::Arc<Process>, ConnectError> {
    let sel = selector(sel)?;
    state.processes.get(&sel).ok_or_else(|| {
        ConnectError::not_found(format!("process with {sel} not found; it may have exited"))
    })
}

fn process_error(e: ProcessError) -> ConnectError {
    match e {
        ProcessError::Io { .. } => ConnectError::internal(e.to_string()),
        _ => ConnectError::failed_precondition(e.to_string()),
    }
}

/// The keepalive period a client asked for, if any.
pub(crate) fn keepalive_interval(ctx: &RequestContext) -> Option<Duration> {
    let secs: u64 = ctx
        .header(KEEPALIVE_HEADER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    (secs > 0).then(|| Duration::from_secs(secs))
}

fn start_event(pid: u32) -> ProcessEvent {
    ProcessEvent {
        event: Some(
            process_event::StartEvent {
                pid,
                ..Default::default()
            }
            .into(),
        ),
        ..Default::default()
    }
}

fn to_event(ev: Event) -> ProcessEvent {
    use process_event::data_event::Output;
    let event: process_event::Event = match ev {
        Event::Data(stream, bytes) => {
            let data = bytes.to_vec();
            let output = match stream {
                Out::Stdout => Output::Stdout(data),
                Out::Stderr => Output::Stderr(data),
                Out::Pty => Output::Pty(data),
            };
            process_event::DataEvent {
                output: Some(output),
                ..Default::default()
            }
            .into()
        }
        Event::End(Exit {
            exit_code,
            exited,
            status,
            error,
        }) => process_event::EndEvent {
            exit_code,
            exited,
            status,
            error,
            ..Default::default()
        }
        .into(),
    };
    ProcessEvent {
        event: Some(event),
        ..Default::default()
    }
}

fn keepalive_event() -> ProcessEvent {
    ProcessEvent {
        event: Some(process_event::KeepAlive::default().into()),
        ..Default::default()
    }
}

/// The events of one subscription: `start{pid}` first, output as it comes,
/// keepalives while quiet, and `end` last.
fn event_stream(
    pid: u32,
    rx: mpsc::Receiver<Event>,
    keepalive: Option<Duration>,
) -> impl Stream<Item = ProcessEvent> + Send {
    struct St {
        rx: mpsc::Receiver<Event>,
        tick: Option<tokio::time::Interval>,
        started: bool,
        done: bool,
    }
    let tick = keepalive.map(|d| {
        let mut i = tokio::time::interval_at(tokio::time::Instant::now() + d, d);
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        i
    });
    futures::stream::unfold(
        St {
            rx,
            tick,
            started: false,
            done: false,
        },
        move |mut st| async move {
            if st.done {
                return None;
            }
            if !st.started {
                st.started = true;
                return Some((start_event(pid), st));
            }
            let ev = match st.tick.as_mut() {
                Some(tick) => tokio::select! {
                    biased;
                    ev = st.rx.recv() => { tick.reset(); ev }
                    _ = tick.tick() => return Some((keepalive_event(), st)),
                },
                None => st.rx.recv().await,
            };
            match ev {
                Some(ev) => {
                    st.done = matches!(ev, Event::End(_));
                    Some((to_event(ev), st))
                }
                // The process table dropped us without an end: it is gone.
                None => None,
            }
        },
    )
}

fn spawn_error(e: SpawnError) -> ConnectError {
    match e {
        SpawnError::Setup { .. } => ConnectError::internal(e.to_string()),
        _ => ConnectError::invalid_argument(e.to_string()),
    }
}

type Boxed<T> = Pin<Box<dyn Stream<Item = Result<T, ConnectError>> + Send>>;

#[allow(refining_impl_trait)]
impl pb::Process for ProcessService {
    async fn list(
        &self,
        _ctx: RequestContext,
        _req: ServiceRequest<'_, pb::ListRequest>,
    ) -> ServiceResult<pb::ListResponse> {
        let processes = self
            .state
            .processes
            .list()
            .into_iter()
            .map(|p| pb::ProcessInfo {
                config: config_to_pb(&p.config).into(),
                pid: p.pid,
                tag: p.tag.clone(),
                ..Default::default()
            })
            .collect();
        Response::ok(pb::ListResponse {
            processes,
            ..Default::default()
        })
    }

    async fn connect(
        &self,
        ctx: RequestContext,
        req: ServiceRequest<'_, pb::ConnectRequest>,
    ) -> ServiceResult<ServiceStream<ConnectResponse>> {
        let req = req.to_owned_message();
        let proc = find(&self.state, req.process.as_option())?;
        let rx = proc
            .subscribe()
            .ok_or_else(|| ConnectError::not_found(format!("process {} has exited", proc.pid)))?;
        let s: Boxed<ConnectResponse> = Box::pin(
            event_stream(proc.pid, rx, keepalive_interval(&ctx)).map(|event| {
                Ok(ConnectResponse {
                    event: event.into(),
                    ..Default::default()
                })
            }),
        );
        Ok(Response::new(s))
    }

    async fn start(
        &self,
        ctx: RequestContext,
        req: ServiceRequest<'_, pb::StartRequest>,
    ) -> ServiceResult<ServiceStream<StartResponse>> {
        let req = req.to_owned_message();
        let Some(pc) = req.process.as_option() else {
            return Err(ConnectError::invalid_argument(
                "process (cmd, args, envs, cwd) is required",
            ));
        };
        if pc.cmd.is_empty() {
            return Err(ConnectError::invalid_argument(
                "process.cmd is empty; name the program to run",
            ));
        }
        let user = self
            .state
            .resolve_user(crate::auth::basic_user(ctx.headers()).as_deref())
            .map_err(user_error)?;
        let defaults = self.state.defaults();
        let cwd = match pc.cwd.as_deref().filter(|c| !c.is_empty()) {
            Some(c) => resolve_path(c, &user, defaults.workdir.as_deref())
                .map_err(|e| ConnectError::invalid_argument(e.to_string()))?,
            // No cwd asked for: the workdir or home, or / for users whose
            // home does not exist (nobody's is /nonexistent).
            None => resolve_path("", &user, defaults.workdir.as_deref())
                .ok()
                .filter(|p| p.is_dir())
                .unwrap_or_else(|| "/".into()),
        };
        let pty = req.pty.as_option().map(|p| {
            let size = p.size.as_option();
            let cols = size.map_or(80, |s| s.cols).clamp(1, u16::MAX as u32) as u16;
            let rows = size.map_or(24, |s| s.rows).clamp(1, u16::MAX as u32) as u16;
            (cols, rows)
        });
        let spawn_req = SpawnRequest {
            config: config_from_pb(pc),
            user,
            cwd,
            default_env: defaults.env_vars,
            tag: req.tag.clone(),
            pty,
            stdin: req.stdin.unwrap_or(true),
        };
        let (proc, rx) = spawn(&self.state.processes, spawn_req).map_err(spawn_error)?;
        tracing::debug!(pid = proc.pid, cmd = %proc.config.cmd, "process started");
        // Like E2B's envd, the request's deadline bounds the process: when it
        // passes, the process is killed. A client that merely disconnects
        // leaves the process running.
        if let Some(deadline) = ctx.deadline() {
            let p = proc.clone();
            tokio::spawn(async move {
                tokio::time::sleep_until(deadline.into()).await;
                if p.subscribe().is_some() {
                    tracing::debug!(pid = p.pid, "request deadline passed; killing process");
                    let _ = p.signal(rustix::process::Signal::KILL);
                }
            });
        }
        let s: Boxed<StartResponse> = Box::pin(
            event_stream(proc.pid, rx, keepalive_interval(&ctx)).map(|event| {
                Ok(StartResponse {
                    event: event.into(),
                    ..Default::default()
                })
            }),
        );
        Ok(Response::new(s))
    }

    async fn update(
        &self,
        _ctx: RequestContext,
        req: ServiceRequest<'_, pb::UpdateRequest>,
    ) -> ServiceResult<pb::UpdateResponse> {
        let req = req.to_owned_message();
        let proc = find(&self.state, req.process.as_option())?;
        if let Some(pty) = req.pty.as_option() {
            let size = pty
                .size
                .as_option()
                .ok_or_else(|| ConnectError::invalid_argument("pty.size is required"))?;
            if size.cols == 0
                || size.rows == 0
                || size.cols > u16::MAX as u32
                || size.rows > u16::MAX as u32
            {
                return Err(ConnectError::invalid_argument(format!(
                    "pty size {}x{} is out of range; cols and rows must be 1..=65535",
                    size.cols, size.rows
                )));
            }
            proc.resize(size.cols as u16, size.rows as u16)
                .map_err(process_error)?;
        }
        Response::ok(pb::UpdateResponse::default())
    }

    async fn stream_input(
        &self,
        _ctx: RequestContext,
        mut requests: InboundStream<pb::StreamInputRequest>,
    ) -> ServiceResult<pb::StreamInputResponse> {
        let mut proc = None;
        while let Some(msg) = requests.next().await {
            let msg = msg?.to_owned_message();
            match msg.event {
                Some(stream_input_request::Event::Start(start)) => {
                    proc = Some(find(&self.state, start.process.as_option())?);
                }
                Some(stream_input_request::Event::Data(data)) => {
                    let p = proc.as_ref().ok_or_else(|| {
                        ConnectError::failed_precondition(
                            "send a start event naming the process before data",
                        )
                    })?;
                    if let Some(input) = data.input.as_option() {
                        write_input(p, input).await?;
                    }
                }
                Some(stream_input_request::Event::Keepalive(_)) | None => {}
            }
        }
        Response::ok(pb::StreamInputResponse::default())
    }

    async fn send_input(
        &self,
        _ctx: RequestContext,
        req: ServiceRequest<'_, pb::SendInputRequest>,
    ) -> ServiceResult<pb::SendInputResponse> {
        let req = req.to_owned_message();
        let proc = find(&self.state, req.process.as_option())?;
        if let Some(input) = req.input.as_option() {
            write_input(&proc, input).await?;
        }
        Response::ok(pb::SendInputResponse::default())
    }

    async fn send_signal(
        &self,
        _ctx: RequestContext,
        req: ServiceRequest<'_, pb::SendSignalRequest>,
    ) -> ServiceResult<pb::SendSignalResponse> {
        let req = req.to_owned_message();
        let proc = find(&self.state, req.process.as_option())?;
        let sig = match req.signal.as_known() {
            Some(pb::Signal::SIGNAL_SIGKILL) => rustix::process::Signal::KILL,
            Some(pb::Signal::SIGNAL_SIGTERM) => rustix::process::Signal::TERM,
            _ => {
                return Err(ConnectError::invalid_argument(format!(
                    "signal {} is not supported; use SIGNAL_SIGTERM or SIGNAL_SIGKILL",
                    req.signal.to_i32()
                )));
            }
        };
        proc.signal(sig).map_err(process_error)?;
        Response::ok(pb::SendSignalResponse::default())
    }

    async fn close_stdin(
        &self,
        _ctx: RequestContext,
        req: ServiceRequest<'_, pb::CloseStdinRequest>,
    ) -> ServiceResult<pb::CloseStdinResponse> {
        let req = req.to_owned_message();
        let proc = find(&self.state, req.process.as_option())?;
        proc.close_stdin().await.map_err(process_error)?;
        Response::ok(pb::CloseStdinResponse::default())
    }
}

async fn write_input(p: &Process, input: &pb::ProcessInput) -> Result<(), ConnectError> {
    match &input.input {
        Some(process_input::Input::Stdin(data)) => {
            p.write_input(data, false).await.map_err(process_error)
        }
        Some(process_input::Input::Pty(data)) => {
            p.write_input(data, true).await.map_err(process_error)
        }
        None => Ok(()),
    }
}

fn config_from_pb(pc: &pb::ProcessConfig) -> Config {
    Config {
        cmd: pc.cmd.clone(),
        args: pc.args.clone(),
        envs: pc
            .envs
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        cwd: pc.cwd.clone(),
    }
}

fn config_to_pb(c: &Config) -> pb::ProcessConfig {
    let mut pc = pb::ProcessConfig {
        cmd: c.cmd.clone(),
        args: c.args.clone(),
        cwd: c.cwd.clone(),
        ..Default::default()
    };
    for (k, v) in &c.envs {
        pc.envs.insert(k.clone(), v.clone());
    }
    pc
}
