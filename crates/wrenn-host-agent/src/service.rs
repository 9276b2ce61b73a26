//! `hostagent.v1.HostAgentService` over an [`Agent`]: small handlers that
//! translate between the wire and the agent, the runtime and envd.
//!
//! Why this file is long (~1,000 lines): it relays every native exec,
//! process and file call to envd. ARCHITECTURE.md's data-plane decision
//! removes these relays (the control plane speaks envd through the
//! agent's `/proxy` hop), and with them most of this file.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use connectrpc::client::CallOptions;
use connectrpc::{
    ConnectError, InboundStream, RequestContext, Response, ServiceRequest, ServiceResult,
    ServiceStream,
};
use futures::{Stream, StreamExt};
use http_body_util::BodyExt;
use wrenn_protocol::envd::filesystem as efs;
use wrenn_protocol::envd::process as ep;
use wrenn_protocol::hostagent;
use wrenn_protocol::hostagent::v1::{self as pb, exec_event, write_file_chunk};

use crate::agent::{Agent, Meta};
use crate::envd::{Envd, basic_user};
use crate::runtime::{Instance, RunState, Runtime, RuntimeError, SandboxSpec};

/// The Connect service.
pub struct HostAgentService<R: Runtime> {
    agent: Arc<Agent<R>>,
}

impl<R: Runtime> HostAgentService<R> {
    /// Serves `agent`.
    pub fn new(agent: Arc<Agent<R>>) -> Self {
        HostAgentService { agent }
    }

    fn instance(&self, id: &str) -> Result<Instance, ConnectError> {
        self.agent.runtime.get(id).ok_or_else(|| {
            ConnectError::not_found(format!("sandbox '{id}' not found on this host"))
        })
    }

    /// What a failed call to a sandbox's envd tells the caller: if the
    /// sandbox went away meanwhile (destroyed, or died), that it is not
    /// found, rather than envd's broken connection as a 503.
    fn envd_failed(&self, id: &str, e: ConnectError) -> ConnectError {
        use connectrpc::ErrorCode as C;
        if matches!(e.code, C::Unavailable | C::Unknown | C::Internal) && self.instance(id).is_err()
        {
            ConnectError::not_found(format!(
                "sandbox '{id}' was destroyed while the request ran"
            ))
        } else {
            e
        }
    }

    /// The sandbox's envd, if the sandbox runs (not paused).
    fn envd(&self, id: &str) -> Result<Envd, ConnectError> {
        let inst = self.instance(id)?;
        if inst.state == RunState::Paused {
            return Err(ConnectError::failed_precondition(format!(
                "sandbox '{id}' is paused; resume it first"
            )));
        }
        self.agent.touch(id, None);
        Ok(Envd::new(&self.agent.pools, &inst))
    }
}

/// Runs a lifecycle step (create, destroy, pause, resume) to its end even
/// when the caller goes away: one cut off halfway (the control plane died,
/// the client hung up) would leave a sandbox half made — its directory,
/// cgroup, link — until the agent restarts.
async fn to_the_end<T: Send + 'static>(
    step: impl std::future::Future<Output = Result<T, RuntimeError>> + Send + 'static,
) -> Result<T, RuntimeError> {
    tokio::spawn(step)
        .await
        .unwrap_or_else(|e| Err(RuntimeError::failed(format!("the step failed: {e}"))))
}

/// Maps runtime errors to Connect codes.
pub fn runtime_error(e: RuntimeError) -> ConnectError {
    let msg = e.to_string();
    match e {
        RuntimeError::InvalidSpec(_) => ConnectError::invalid_argument(msg),
        RuntimeError::AlreadyExists(_) => ConnectError::already_exists(msg),
        RuntimeError::NotFound(_) => ConnectError::not_found(msg),
        RuntimeError::InvalidState(_) => ConnectError::failed_precondition(msg),
        RuntimeError::Exhausted(_) => ConnectError::resource_exhausted(msg),
        RuntimeError::Failed { .. } => ConnectError::internal(msg),
    }
}

fn sandbox_pb(inst: &Instance, meta: &Meta) -> pb::Sandbox {
    let mut s = pb::Sandbox {
        sandbox_id: inst.spec.id.clone(),
        template: inst.spec.template.clone(),
        state: match inst.state {
            RunState::Running => pb::SandboxState::SANDBOX_STATE_RUNNING,
            RunState::Paused => pb::SandboxState::SANDBOX_STATE_PAUSED,
        }
        .into(),
        vcpus: inst.spec.vcpus,
        memory_mb: inst.spec.memory_mb,
        disk_size_mb: inst.spec.disk_size_mb,
        timeout_sec: meta.timeout_sec,
        allow_internet_access: inst.spec.allow_internet_access,
        created_at: meta.created_at,
        expires_at: meta.expires_at,
        envd_address: inst.envd_addr.to_string(),
        envd_access_token: inst.envd_token.clone(),
        envd_version: wrenn_protocol::envd::VERSION.into(),
        init_pid: inst.init_pid,
        auto_pause: meta.auto_pause,
        ..Default::default()
    };
    s.metadata.extend(meta.metadata.clone());
    s
}

type Boxed<T> = Pin<Box<dyn Stream<Item = Result<T, ConnectError>> + Send>>;

fn start_request(
    cmd: &str,
    args: &[String],
    envs: &std::collections::HashMap<String, String>,
    cwd: &str,
    tag: &str,
    stdin: bool,
) -> ep::StartRequest {
    let mut pc = ep::ProcessConfig {
        cmd: cmd.to_string(),
        args: args.to_vec(),
        cwd: (!cwd.is_empty()).then(|| cwd.to_string()),
        ..Default::default()
    };
    pc.envs
        .extend(envs.iter().map(|(k, v)| (k.clone(), v.clone())));
    ep::StartRequest {
        process: pc.into(),
        tag: (!tag.is_empty()).then(|| tag.to_string()),
        stdin: Some(stdin),
        ..Default::default()
    }
}

fn user_opts(user: &str, timeout_sec: u32) -> CallOptions {
    let mut o = CallOptions::default();
    if !user.is_empty() {
        o = o.with_header("authorization", basic_user(user));
    }
    if timeout_sec > 0 {
        o = o.with_timeout(Duration::from_secs(u64::from(timeout_sec)));
    }
    o
}

fn selector(pid: u32) -> ep::ProcessSelector {
    ep::ProcessSelector {
        selector: Some(ep::process_selector::Selector::Pid(pid)),
        ..Default::default()
    }
}

/// envd's event as ours.
fn exec_event(ev: ep::ProcessEvent) -> Option<pb::ExecEvent> {
    use ep::process_event::data_event::Output;
    let e: exec_event::Event = match ev.event? {
        ep::process_event::Event::Start(s) => exec_event::Start {
            pid: s.pid,
            ..Default::default()
        }
        .into(),
        ep::process_event::Event::Data(d) => match d.output? {
            Output::Stdout(b) => exec_event::Event::Stdout(b),
            Output::Stderr(b) => exec_event::Event::Stderr(b),
            Output::Pty(b) => exec_event::Event::Pty(b),
        },
        ep::process_event::Event::End(e) => exec_event::End {
            exit_code: e.exit_code,
            exited: e.exited,
            status: e.status,
            error: e.error.unwrap_or_default(),
            ..Default::default()
        }
        .into(),
        ep::process_event::Event::Keepalive(_) => return None,
    };
    Some(pb::ExecEvent {
        event: Some(e),
        ..Default::default()
    })
}

/// Streams envd's Start/Connect responses as ExecEvents.
macro_rules! relay {
    ($stream:expr, $msg:ty) => {{
        let stream = $stream;
        let s: Boxed<pb::ExecEvent> =
            Box::pin(futures::stream::unfold(Some(stream), |st| async move {
                let mut stream = st?;
                loop {
                    match stream.message::<$msg>().await {
                        Ok(Some(m)) => {
                            if let Some(ev) = m
                                .to_owned_message()
                                .event
                                .into_option()
                                .and_then(exec_event)
                            {
                                return Some((Ok(ev), Some(stream)));
                            }
                        }
                        Ok(None) => return None,
                        Err(e) => return Some((Err(e), None)),
                    }
                }
            }));
        s
    }};
}

fn dir_entry(e: efs::EntryInfo) -> pb::DirEntry {
    let kind = match e.r#type.as_known() {
        Some(efs::FileType::FILE_TYPE_DIRECTORY) => "directory",
        Some(efs::FileType::FILE_TYPE_SYMLINK) => "symlink",
        _ => "file",
    };
    pb::DirEntry {
        name: e.name,
        path: e.path,
        r#type: kind.into(),
        size: e.size,
        mode: e.mode,
        owner: e.owner,
        group: e.group,
        modified_unix: e.modified_time.as_option().map_or(0, |t| t.seconds),
        ..Default::default()
    }
}

fn host_info<R: Runtime>(agent: &Agent<R>, templates: Vec<String>) -> pb::Host {
    let info = rustix::system::sysinfo();
    let disk_mb = rustix::fs::statvfs("/")
        .map(|s| s.f_blocks * s.f_frsize >> 20)
        .unwrap_or(0);
    pb::Host {
        arch: std::env::consts::ARCH.into(),
        cores: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
        memory_mb: info.totalram as u64 * u64::from(info.mem_unit) >> 20,
        disk_mb,
        runtime: agent.runtime.name().into(),
        sandboxes: agent.runtime.list().len() as u32,
        version: env!("CARGO_PKG_VERSION").into(),
        templates,
        ..Default::default()
    }
}

/// Templates the runtime can start sandboxes from.
pub trait TemplateList {
    /// Template names.
    fn template_names(&self) -> Vec<String>;
    /// Removes a template; `Ok(false)` when there is none by that name.
    fn remove_template(&self, name: &str) -> Result<bool, String>;
}

impl TemplateList for crate::runtime::namespaces::NamespaceRuntime {
    fn template_names(&self) -> Vec<String> {
        self.templates().list()
    }

    fn remove_template(&self, name: &str) -> Result<bool, String> {
        match self.templates().remove(name) {
            Ok(()) => Ok(true),
            Err(crate::templates::TemplateError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.to_string()),
        }
    }
}

#[allow(refining_impl_trait)]
impl<R: Runtime + TemplateList> pb::HostAgentService for HostAgentService<R> {
    async fn get_host(
        &self,
        _ctx: RequestContext,
        _r: ServiceRequest<'_, pb::GetHostRequest>,
    ) -> ServiceResult<pb::Host> {
        Response::ok(host_info(&self.agent, self.agent.runtime.template_names()))
    }

    async fn create_sandbox(
        &self,
        _ctx: RequestContext,
        r: ServiceRequest<'_, pb::CreateSandboxRequest>,
    ) -> ServiceResult<pb::Sandbox> {
        let r = r.to_owned_message();
        use wrenn_protocol::sandbox as d;
        let or = |v: u32, default: u32| if v == 0 { default } else { v };
        let spec = SandboxSpec {
            id: r.sandbox_id,
            template: if r.template.is_empty() {
                d::DEFAULT_TEMPLATE.into()
            } else {
                r.template
            },
            vcpus: or(r.vcpus, d::DEFAULT_VCPUS),
            memory_mb: or(r.memory_mb, d::DEFAULT_MEMORY_MB),
            disk_size_mb: or(r.disk_size_mb, d::DEFAULT_DISK_SIZE_MB),
            allow_internet_access: r.allow_internet_access,
            envs: r.envs.into_iter().collect(),
        };
        let agent = self.agent.clone();
        let (inst, meta) = to_the_end(async move {
            agent
                .create(
                    spec,
                    r.timeout_sec,
                    r.metadata.into_iter().collect(),
                    r.auto_pause,
                )
                .await
        })
        .await
        .map_err(runtime_error)?;
        Response::ok(sandbox_pb(&inst, &meta))
    }

    async fn get_sandbox(
        &self,
        _ctx: RequestContext,
        r: ServiceRequest<'_, pb::SandboxRef>,
    ) -> ServiceResult<pb::Sandbox> {
        let inst = self.instance(r.sandbox_id)?;
        Response::ok(sandbox_pb(&inst, &self.agent.meta(r.sandbox_id)))
    }

    async fn list_sandboxes(
        &self,
        _ctx: RequestContext,
        _r: ServiceRequest<'_, pb::ListSandboxesRequest>,
    ) -> ServiceResult<pb::ListSandboxesResponse> {
        let sandboxes = self
            .agent
            .listed()
            .iter()
            .map(|i| sandbox_pb(i, &self.agent.meta(&i.spec.id)))
            .collect();
        Response::ok(pb::ListSandboxesResponse {
            sandboxes,
            ..Default::default()
        })
    }

    async fn destroy_sandbox(
        &self,
        _ctx: RequestContext,
        r: ServiceRequest<'_, pb::SandboxRef>,
    ) -> ServiceResult<pb::DestroySandboxResponse> {
        let (agent, id) = (self.agent.clone(), r.sandbox_id.to_string());
        to_the_end(async move { agent.destroy(&id).await })
            .await
            .map_err(runtime_error)?;
        Response::ok(pb::DestroySandboxResponse::default())
    }

    async fn pause_sandbox(
        &self,
        _ctx: RequestContext,
        r: ServiceRequest<'_, pb::SandboxRef>,
    ) -> ServiceResult<pb::Sandbox> {
        let (agent, id) = (self.agent.clone(), r.sandbox_id.to_string());
        let inst = to_the_end(async move { agent.runtime.pause(&id).await })
            .await
            .map_err(runtime_error)?;
        Response::ok(sandbox_pb(&inst, &self.agent.meta(r.sandbox_id)))
    }

    async fn resume_sandbox(
        &self,
        _ctx: RequestContext,
        r: ServiceRequest<'_, pb::SandboxRef>,
    ) -> ServiceResult<pb::Sandbox> {
        let (agent, id) = (self.agent.clone(), r.sandbox_id.to_string());
        let inst = to_the_end(async move { agent.runtime.resume(&id).await })
            .await
            .map_err(runtime_error)?;
        let meta = self.agent.touch(r.sandbox_id, None);
        Response::ok(sandbox_pb(&inst, &meta))
    }

    async fn ping(
        &self,
        _ctx: RequestContext,
        r: ServiceRequest<'_, pb::PingRequest>,
    ) -> ServiceResult<pb::Sandbox> {
        let inst = self.instance(r.sandbox_id)?;
        let meta = self.agent.touch(r.sandbox_id, r.timeout_sec);
        Response::ok(sandbox_pb(&inst, &meta))
    }

    async fn get_sandbox_metrics(
        &self,
        _ctx: RequestContext,
        r: ServiceRequest<'_, pb::SandboxRef>,
    ) -> ServiceResult<pb::SandboxMetrics> {
        let inst = self.instance(r.sandbox_id)?;
        let u = self
            .agent
            .runtime
            .usage(r.sandbox_id)
            .map_err(runtime_error)?;
        Response::ok(pb::SandboxMetrics {
            sandbox_id: inst.spec.id.clone(),
            cpu_usage_usec: u.cpu_usec,
            cpu_used_pct: self
                .agent
                .cpu_pct(&inst.spec.id, u.cpu_usec, inst.spec.vcpus),
            vcpus: inst.spec.vcpus,
            memory_bytes: u.memory_bytes,
            memory_limit_bytes: u.memory_limit_bytes,
            disk_used_bytes: u.disk_used_bytes,
            disk_limit_bytes: u.disk_limit_bytes,
            pids: u.pids,
            timestamp: crate::agent::now(),
            ..Default::default()
        })
    }

    /// Runs a command to its end and answers with its output, at most
    /// `max_output_bytes` of each stream (the rest is read and dropped, so
    /// the command never blocks on a full pipe and memory stays bounded).
    async fn exec(
        &self,
        _ctx: RequestContext,
        r: ServiceRequest<'_, pb::ExecRequest>,
    ) -> ServiceResult<pb::ExecResponse> {
        let r = r.to_owned_message();
        if r.cmd.is_empty() {
            return Err(ConnectError::invalid_argument(
                "cmd is empty; name the program to run",
            ));
        }
        let envd = self.envd(&r.sandbox_id)?;
        let envs = r.envs.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let has_stdin = !r.stdin.is_empty();
        let req = start_request(&r.cmd, &r.args, &envs, &r.cwd, &r.tag, has_stdin);
        let started = Instant::now();
        let mut stream = envd
            .process
            .start_with_options(req, user_opts(&r.user, r.timeout_sec))
            .await
            .map_err(|e| self.envd_failed(&r.sandbox_id, e))?;
        let mut out = pb::ExecResponse::default();
        let limit = hostagent::exec_output_limit(r.max_output_bytes);
        loop {
            let msg = match stream.message::<ep::StartResponse>().await {
                Ok(Some(m)) => m.to_owned_message(),
                Ok(None) => break,
                Err(e) if e.code == connectrpc::ErrorCode::DeadlineExceeded => {
                    return Err(ConnectError::deadline_exceeded(format!(
                        "command did not finish within timeout_sec={}; it was killed",
                        r.timeout_sec
                    )));
                }
                Err(e) => return Err(e),
            };
            let Some(ev) = msg
                .event
                .into_option()
                .and_then(exec_event)
                .and_then(|e| e.event)
            else {
                continue;
            };
            match ev {
                exec_event::Event::Start(s) => {
                    out.pid = s.pid;
                    if has_stdin {
                        let input = ep::ProcessInput {
                            input: Some(ep::process_input::Input::Stdin(r.stdin.clone())),
                            ..Default::default()
                        };
                        envd.process
                            .send_input(ep::SendInputRequest {
                                process: selector(s.pid).into(),
                                input: input.into(),
                                ..Default::default()
                            })
                            .await
                            .map_err(|e| self.envd_failed(&r.sandbox_id, e))?;
                        envd.process
                            .close_stdin(ep::CloseStdinRequest {
                                process: selector(s.pid).into(),
                                ..Default::default()
                            })
                            .await
                            .map_err(|e| self.envd_failed(&r.sandbox_id, e))?;
                    }
                    if r.background {
                        break;
                    }
                }
                exec_event::Event::Stdout(b) | exec_event::Event::Pty(b) => {
                    out.stdout_truncated |= keep_bounded(&mut out.stdout, &b, limit);
                }
                exec_event::Event::Stderr(b) => {
                    out.stderr_truncated |= keep_bounded(&mut out.stderr, &b, limit);
                }
                exec_event::Event::End(e) => {
                    out.exit_code = e.exit_code;
                    out.error = e.error;
                }
            }
        }
        out.duration_ms = started.elapsed().as_millis() as u64;
        Response::ok(out)
    }

    async fn exec_stream(
        &self,
        _ctx: RequestContext,
        r: ServiceRequest<'_, pb::ExecRequest>,
    ) -> ServiceResult<ServiceStream<pb::ExecEvent>> {
        let r = r.to_owned_message();
        if r.cmd.is_empty() {
            return Err(ConnectError::invalid_argument(
                "cmd is empty; name the program to run",
            ));
        }
        let envd = self.envd(&r.sandbox_id)?;
        let envs = r.envs.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let req = start_request(&r.cmd, &r.args, &envs, &r.cwd, &r.tag, !r.close_stdin);
        let stream = envd
            .process
            .start_with_options(req, user_opts(&r.user, r.timeout_sec))
            .await
            .map_err(|e| self.envd_failed(&r.sandbox_id, e))?;
        Ok(Response::new(relay!(stream, ep::StartResponse)))
    }

    async fn list_processes(
        &self,
        _ctx: RequestContext,
        r: ServiceRequest<'_, pb::SandboxRef>,
    ) -> ServiceResult<pb::ListProcessesResponse> {
        let envd = self.envd(r.sandbox_id)?;
        let list = envd
            .process
            .list(ep::ListRequest::default())
            .await
            .map_err(|e| self.envd_failed(r.sandbox_id, e))?
            .into_owned();
        let processes = list
            .processes
            .into_iter()
            .map(|p| {
                let c = p.config.into_option().unwrap_or_default();
                pb::ProcessInfo {
                    pid: p.pid,
                    cmd: c.cmd,
                    args: c.args,
                    tag: p.tag.unwrap_or_default(),
                    cwd: c.cwd.unwrap_or_default(),
                    ..Default::default()
                }
            })
            .collect();
        Response::ok(pb::ListProcessesResponse {
            processes,
            ..Default::default()
        })
    }

    async fn kill_process(
        &self,
        _ctx: RequestContext,
        r: ServiceRequest<'_, pb::KillProcessRequest>,
    ) -> ServiceResult<pb::KillProcessResponse> {
        let envd = self.envd(r.sandbox_id)?;
        let signal = match r.signal {
            0 | 9 => ep::Signal::SIGNAL_SIGKILL,
            15 => ep::Signal::SIGNAL_SIGTERM,
            s => {
                return Err(ConnectError::invalid_argument(format!(
                    "signal {s} is not supported; use 9 (KILL) or 15 (TERM)"
                )));
            }
        };
        envd.process
            .send_signal(ep::SendSignalRequest {
                process: selector(r.pid).into(),
                signal: signal.into(),
                ..Default::default()
            })
            .await
            .map_err(|e| self.envd_failed(r.sandbox_id, e))?;
        Response::ok(pb::KillProcessResponse::default())
    }

    async fn connect_process(
        &self,
        _ctx: RequestContext,
        r: ServiceRequest<'_, pb::ProcessRef>,
    ) -> ServiceResult<ServiceStream<pb::ExecEvent>> {
        let envd = self.envd(r.sandbox_id)?;
        let stream = envd
            .process
            .connect(ep::ConnectRequest {
                process: selector(r.pid).into(),
                ..Default::default()
            })
            .await
            .map_err(|e| self.envd_failed(r.sandbox_id, e))?;
        Ok(Response::new(relay!(stream, ep::ConnectResponse)))
    }

    async fn send_input(
        &self,
        _ctx: RequestContext,
        r: ServiceRequest<'_, pb::SendInputRequest>,
    ) -> ServiceResult<pb::SendInputResponse> {
        let r = r.to_owned_message();
        let envd = self.envd(&r.sandbox_id)?;
        if !r.data.is_empty() {
            let input = if r.pty {
                ep::process_input::Input::Pty(r.data)
            } else {
                ep::process_input::Input::Stdin(r.data)
            };
            let input = ep::ProcessInput {
                input: Some(input),
                ..Default::default()
            };
            envd.process
                .send_input(ep::SendInputRequest {
                    process: selector(r.pid).into(),
                    input: input.into(),
                    ..Default::default()
                })
                .await
                .map_err(|e| self.envd_failed(&r.sandbox_id, e))?;
        }
        if r.eof {
            envd.process
                .close_stdin(ep::CloseStdinRequest {
                    process: selector(r.pid).into(),
                    ..Default::default()
                })
                .await
                .map_err(|e| self.envd_failed(&r.sandbox_id, e))?;
        }
        Response::ok(pb::SendInputResponse::default())
    }

    async fn pty_start(
        &self,
        _ctx: RequestContext,
        r: ServiceRequest<'_, pb::PtyStartRequest>,
    ) -> ServiceResult<ServiceStream<pb::ExecEvent>> {
        let r = r.to_owned_message();
        let envd = self.envd(&r.sandbox_id)?;
        let (cmd, args) = if r.cmd.is_empty() {
            ("/bin/bash".to_string(), vec!["-i".into(), "-l".into()])
        } else {
            (r.cmd, r.args)
        };
        let mut envs: std::collections::HashMap<String, String> = r.envs.into_iter().collect();
        envs.entry("TERM".into())
            .or_insert_with(|| "xterm-256color".into());
        let mut req = start_request(&cmd, &args, &envs, &r.cwd, &r.tag, true);
        let size = ep::pty::Size {
            cols: r.cols.max(1),
            rows: r.rows.max(1),
            ..Default::default()
        };
        req.pty = ep::PTY {
            size: size.into(),
            ..Default::default()
        }
        .into();
        let stream = envd
            .process
            .start_with_options(req, user_opts(&r.user, 0))
            .await
            .map_err(|e| self.envd_failed(&r.sandbox_id, e))?;
        Ok(Response::new(relay!(stream, ep::StartResponse)))
    }

    async fn pty_resize(
        &self,
        _ctx: RequestContext,
        r: ServiceRequest<'_, pb::PtyResizeRequest>,
    ) -> ServiceResult<pb::PtyResizeResponse> {
        let envd = self.envd(r.sandbox_id)?;
        let size = ep::pty::Size {
            cols: r.cols,
            rows: r.rows,
            ..Default::default()
        };
        envd.process
            .update(ep::UpdateRequest {
                process: selector(r.pid).into(),
                pty: ep::PTY {
                    size: size.into(),
                    ..Default::default()
                }
                .into(),
                ..Default::default()
            })
            .await
            .map_err(|e| self.envd_failed(r.sandbox_id, e))?;
        Response::ok(pb::PtyResizeResponse::default())
    }

    async fn write_file(
        &self,
        _ctx: RequestContext,
        r: ServiceRequest<'_, pb::WriteFileRequest>,
    ) -> ServiceResult<pb::WriteFileResponse> {
        let r = r.to_owned_message();
        let envd = self.envd(&r.sandbox_id)?;
        let size = r.content.len() as u64;
        let body = http_body_util::Full::new(Bytes::from(r.content))
            .map_err(|never| match never {})
            .boxed();
        envd.write_file(&r.path, &r.user, body)
            .await
            .map_err(|e| self.envd_failed(&r.sandbox_id, e))?;
        Response::ok(pb::WriteFileResponse {
            path: r.path,
            size,
            ..Default::default()
        })
    }

    async fn read_file(
        &self,
        _ctx: RequestContext,
        r: ServiceRequest<'_, pb::FileRef>,
    ) -> ServiceResult<pb::ReadFileResponse> {
        let envd = self.envd(r.sandbox_id)?;
        let body = envd
            .read_file(r.path, r.user)
            .await
            .map_err(|e| self.envd_failed(r.sandbox_id, e))?;
        let content = body
            .collect()
            .await
            .map_err(|e| ConnectError::unavailable(format!("reading from envd: {e}")))?
            .to_bytes();
        Response::ok(pb::ReadFileResponse {
            content: content.to_vec(),
            ..Default::default()
        })
    }

    async fn write_file_stream(
        &self,
        _ctx: RequestContext,
        mut requests: InboundStream<pb::WriteFileChunk>,
    ) -> ServiceResult<pb::WriteFileResponse> {
        let first = requests
            .next()
            .await
            .ok_or_else(|| ConnectError::invalid_argument("empty stream; send the file first"))??;
        let Some(write_file_chunk::Chunk::File(file)) = first.to_owned_message().chunk else {
            return Err(ConnectError::invalid_argument(
                "the first message must name the file",
            ));
        };
        let envd = self.envd(&file.sandbox_id)?;
        let (tx, rx) =
            tokio::sync::mpsc::channel::<Result<http_body::Frame<Bytes>, std::io::Error>>(8);
        let body =
            http_body_util::StreamBody::new(futures::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|f| (f, rx))
            }));
        let upload = envd.write_file(&file.path, &file.user, BodyExt::boxed(body));
        let size = std::sync::atomic::AtomicU64::new(0);
        let feed = async {
            while let Some(msg) = requests.next().await {
                let chunk = match msg {
                    Ok(m) => m.to_owned_message().chunk,
                    Err(e) => {
                        let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                        return Err(e);
                    }
                };
                if let Some(write_file_chunk::Chunk::Data(d)) = chunk {
                    size.fetch_add(d.len() as u64, std::sync::atomic::Ordering::Relaxed);
                    if tx
                        .send(Ok(http_body::Frame::data(Bytes::from(d))))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
            drop(tx);
            Ok(())
        };
        let (up, fed) = tokio::join!(upload, feed);
        fed?;
        up?;
        Response::ok(pb::WriteFileResponse {
            path: file.path.clone(),
            size: size.into_inner(),
            ..Default::default()
        })
    }

    async fn read_file_stream(
        &self,
        _ctx: RequestContext,
        r: ServiceRequest<'_, pb::FileRef>,
    ) -> ServiceResult<ServiceStream<pb::FileChunk>> {
        let envd = self.envd(r.sandbox_id)?;
        let body = envd
            .read_file(r.path, r.user)
            .await
            .map_err(|e| self.envd_failed(r.sandbox_id, e))?;
        let s: Boxed<pb::FileChunk> =
            Box::pin(futures::stream::unfold(Some(body), |b| async move {
                let mut body = b?;
                loop {
                    match body.frame().await {
                        Some(Ok(f)) => {
                            if let Ok(d) = f.into_data() {
                                return Some((
                                    Ok(pb::FileChunk {
                                        data: d.to_vec(),
                                        ..Default::default()
                                    }),
                                    Some(body),
                                ));
                            }
                        }
                        Some(Err(e)) => {
                            return Some((
                                Err(ConnectError::unavailable(format!("reading from envd: {e}"))),
                                None,
                            ));
                        }
                        None => return None,
                    }
                }
            }));
        Ok(Response::new(s))
    }

    async fn list_dir(
        &self,
        _ctx: RequestContext,
        r: ServiceRequest<'_, pb::ListDirRequest>,
    ) -> ServiceResult<pb::ListDirResponse> {
        let envd = self.envd(r.sandbox_id)?;
        let req = efs::ListDirRequest {
            path: r.path.to_string(),
            depth: r.depth.max(1),
            ..Default::default()
        };
        let list = envd
            .fs
            .list_dir_with_options(req, user_opts(r.user, 0))
            .await
            .map_err(|e| self.envd_failed(r.sandbox_id, e))?
            .into_owned();
        Response::ok(pb::ListDirResponse {
            entries: list.entries.into_iter().map(dir_entry).collect(),
            ..Default::default()
        })
    }

    async fn make_dir(
        &self,
        _ctx: RequestContext,
        r: ServiceRequest<'_, pb::FileRef>,
    ) -> ServiceResult<pb::MakeDirResponse> {
        let envd = self.envd(r.sandbox_id)?;
        envd.fs
            .make_dir_with_options(
                efs::MakeDirRequest {
                    path: r.path.to_string(),
                    ..Default::default()
                },
                user_opts(r.user, 0),
            )
            .await
            .map_err(|e| self.envd_failed(r.sandbox_id, e))?;
        Response::ok(pb::MakeDirResponse::default())
    }

    async fn remove_path(
        &self,
        _ctx: RequestContext,
        r: ServiceRequest<'_, pb::FileRef>,
    ) -> ServiceResult<pb::RemovePathResponse> {
        let envd = self.envd(r.sandbox_id)?;
        envd.fs
            .remove_with_options(
                efs::RemoveRequest {
                    path: r.path.to_string(),
                    ..Default::default()
                },
                user_opts(r.user, 0),
            )
            .await
            .map_err(|e| self.envd_failed(r.sandbox_id, e))?;
        Response::ok(pb::RemovePathResponse::default())
    }

    async fn delete_template(
        &self,
        _ctx: RequestContext,
        r: ServiceRequest<'_, pb::DeleteTemplateRequest>,
    ) -> ServiceResult<pb::DeleteTemplateResponse> {
        let name = r.name;
        let users: Vec<String> = self
            .agent
            .runtime
            .list()
            .into_iter()
            .filter(|i| i.spec.template == name)
            .map(|i| i.spec.id)
            .collect();
        if !users.is_empty() {
            return Err(ConnectError::failed_precondition(format!(
                "template '{name}' is in use by {}; destroy them first",
                users.join(", ")
            )));
        }
        match self.agent.runtime.remove_template(name) {
            Ok(true) => Response::ok(pb::DeleteTemplateResponse::default()),
            Ok(false) => Err(ConnectError::not_found(format!(
                "no template '{name}' on this host"
            ))),
            Err(e) => Err(ConnectError::internal(format!(
                "removing template '{name}': {e}"
            ))),
        }
    }

    async fn terminate(
        &self,
        _ctx: RequestContext,
        r: ServiceRequest<'_, pb::TerminateRequest>,
    ) -> ServiceResult<pb::TerminateResponse> {
        if r.destroy_sandboxes {
            for inst in self.agent.runtime.list() {
                self.agent
                    .destroy(&inst.spec.id)
                    .await
                    .map_err(runtime_error)?;
            }
        }
        let _ = self.agent.shutdown.send(true);
        Response::ok(pb::TerminateResponse::default())
    }
}

/// Appends what fits of `chunk` to `buf` under `limit`; true if some was
/// dropped.
fn keep_bounded(buf: &mut Vec<u8>, chunk: &[u8], limit: usize) -> bool {
    let room = limit.saturating_sub(buf.len());
    buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
    chunk.len() > room
}

#[cfg(test)]
mod bounded_output_tests {
    #[test]
    fn output_is_kept_up_to_the_limit_then_dropped() {
        let mut buf = Vec::new();
        assert!(!super::keep_bounded(&mut buf, b"abc", 5));
        assert!(super::keep_bounded(&mut buf, b"defg", 5));
        assert_eq!(buf, b"abcde");
        assert!(super::keep_bounded(&mut buf, b"h", 5));
        assert!(!super::keep_bounded(&mut buf, b"", 5));
        assert_eq!(buf, b"abcde");
    }
}
