//! `hostagent.v1.HostAgentService` over an [`Agent`]: small handlers that
//! translate between the wire and the agent and its runtime. Commands and
//! files are not here: the control plane speaks envd through the agent's
//! `/proxy` hop (ARCHITECTURE.md, "The data plane").

use std::sync::Arc;

use connectrpc::{ConnectError, RequestContext, Response, ServiceRequest, ServiceResult};
use wrenn_protocol::hostagent::v1 as pb;

use crate::agent::{Agent, Meta};
use crate::runtime::{Egress, Instance, RunState, Runtime, RuntimeError, SandboxSpec};

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
        memory_dropped: inst.memory_dropped,
        auto_pause_drop_memory: meta.auto_pause_drop_memory,
        ..Default::default()
    };
    s.metadata.extend(meta.metadata.clone());
    s
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
    /// Who sandboxes of template `name` run as when a call names no user
    /// or directory: what the template says; else `requested` (the API's
    /// default) when the template has that account and `sudo` to become
    /// root with (a `base` from before recipe 2 has `user` but no `sudo`:
    /// its sandboxes stay root, as they were); else nothing (root).
    fn run_as(&self, name: &str, requested: Option<&str>) -> crate::templates::Defaults;
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

    fn run_as(&self, name: &str, requested: Option<&str>) -> crate::templates::Defaults {
        match self.templates().get(name) {
            Ok(t) => crate::templates::Defaults {
                user: t.defaults.user.clone().or_else(|| {
                    requested
                        .filter(|u| t.has_user(u) && t.has_sudo())
                        .map(str::to_string)
                }),
                workdir: t.defaults.workdir.clone(),
            },
            // The create fails on the missing template, saying so.
            Err(_) => crate::templates::Defaults::default(),
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
        let template = if r.template.is_empty() {
            d::DEFAULT_TEMPLATE.into()
        } else {
            r.template
        };
        let requested = Some(r.default_user.as_str()).filter(|u| !u.is_empty());
        let run_as = self.agent.runtime.run_as(&template, requested);
        let egress = match r.egress.as_option() {
            Some(e) => Egress::parse(&e.allow_out, &e.deny_out).map_err(runtime_error)?,
            None => Egress::default(),
        };
        let spec = SandboxSpec {
            id: r.sandbox_id,
            template,
            vcpus: or(r.vcpus, d::DEFAULT_VCPUS),
            memory_mb: or(r.memory_mb, d::DEFAULT_MEMORY_MB),
            disk_size_mb: or(r.disk_size_mb, d::DEFAULT_DISK_SIZE_MB),
            allow_internet_access: r.allow_internet_access,
            envs: r.envs.into_iter().collect(),
            run_as,
            egress,
        };
        let agent = self.agent.clone();
        let (inst, meta) = to_the_end(async move {
            agent
                .create(
                    spec,
                    r.timeout_sec,
                    r.metadata.into_iter().collect(),
                    r.auto_pause,
                    r.auto_pause_drop_memory,
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
        r: ServiceRequest<'_, pb::PauseRequest>,
    ) -> ServiceResult<pb::Sandbox> {
        let (agent, id, drop) = (self.agent.clone(), r.sandbox_id.to_string(), r.drop_memory);
        let inst = to_the_end(async move { agent.pause(&id, drop).await })
            .await
            .map_err(runtime_error)?;
        Response::ok(sandbox_pb(&inst, &self.agent.meta(r.sandbox_id)))
    }

    async fn resume_sandbox(
        &self,
        _ctx: RequestContext,
        r: ServiceRequest<'_, pb::ResumeRequest>,
    ) -> ServiceResult<pb::Sandbox> {
        let (agent, id, reboot) = (self.agent.clone(), r.sandbox_id.to_string(), r.reboot);
        let inst = to_the_end(async move { agent.resume(&id, reboot).await })
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

    async fn set_sandbox_egress(
        &self,
        _ctx: RequestContext,
        r: ServiceRequest<'_, pb::SetEgressRequest>,
    ) -> ServiceResult<pb::Sandbox> {
        let r = r.to_owned_message();
        let egress = match r.egress.as_option() {
            Some(e) => Egress::parse(&e.allow_out, &e.deny_out).map_err(runtime_error)?,
            None => Egress::default(),
        };
        let agent = self.agent.clone();
        let id = r.sandbox_id;
        let inst = to_the_end(async move { agent.runtime.set_egress(&id, egress).await })
            .await
            .map_err(runtime_error)?;
        Response::ok(sandbox_pb(&inst, &self.agent.meta(&inst.spec.id)))
    }

    async fn get_sandbox_metric_history(
        &self,
        _ctx: RequestContext,
        r: ServiceRequest<'_, pb::MetricHistoryRequest>,
    ) -> ServiceResult<pb::MetricHistory> {
        let inst = self.instance(r.sandbox_id)?;
        let open = |t: i64| (t > 0).then_some(t);
        let samples = self
            .agent
            .metrics
            .range(&inst.spec.id, open(r.start), open(r.end))
            .into_iter()
            .map(|s| pb::SandboxMetrics {
                sandbox_id: inst.spec.id.clone(),
                cpu_usage_usec: s.cpu_usec,
                cpu_used_pct: s.cpu_pct,
                vcpus: inst.spec.vcpus,
                memory_bytes: s.memory_bytes,
                memory_limit_bytes: u64::from(inst.spec.memory_mb) << 20,
                disk_used_bytes: s.disk_used_bytes,
                disk_limit_bytes: s.disk_limit_bytes,
                timestamp: s.at,
                ..Default::default()
            })
            .collect();
        Response::ok(pb::MetricHistory {
            samples,
            ..Default::default()
        })
    }

    /// Removes a template from this host, unless a sandbox uses it.
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
