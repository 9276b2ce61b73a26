//! Creating a sandbox: a request checked and completed with its defaults
//! ([`NewSandbox::check`], the one place both APIs' rules live), placed
//! on a host with an atomic reservation, created by its agent, recorded.

use std::collections::HashMap;

use wrenn_protocol::hostagent::v1 as pb;
use wrenn_protocol::sandbox as defaults;

use super::SandboxState;
use super::events::{Event, emit};
use crate::App;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::hosts::{Candidate, Demand};
use crate::ids;
use crate::store::{Reserved, Sandbox, now};

/// Which API a create came through: its defaults and the names its
/// callers know the fields by differ, its limits do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// Wrenn's `/v1/sandboxes`.
    Native,
    /// E2B's `/sandboxes`: `templateID` required, `timeout` 300 s by
    /// default and at least 1, commands and files as `user`.
    E2b,
}

impl Dialect {
    /// The name a caller of this API knows a field by.
    fn field(self, native: &'static str) -> &'static str {
        match (self, native) {
            (Dialect::E2b, "template") => "templateID",
            (Dialect::E2b, "timeout_sec") => "timeout",
            (Dialect::E2b, "envs") => "envVars",
            (_, name) => name,
        }
    }
}

/// The most seconds an idle timeout may be: 30 days.
pub const MAX_TIMEOUT_SEC: u32 = 30 * 86400;

/// What a caller asks for; `None` (or empty) takes the default.
#[derive(Debug, Clone, Default)]
pub struct NewSandbox {
    /// Template name.
    pub template: Option<String>,
    /// CPUs.
    pub vcpus: Option<u32>,
    /// Memory limit, MiB.
    pub memory_mb: Option<u32>,
    /// Disk size, MiB.
    pub disk_size_mb: Option<u32>,
    /// Idle timeout, seconds (0: none, native API only).
    pub timeout_sec: Option<u32>,
    /// Labels.
    pub metadata: HashMap<String, String>,
    /// Environment of every process.
    pub envs: HashMap<String, String>,
    /// Egress (default: allowed).
    pub allow_internet_access: Option<bool>,
    /// Pause rather than destroy at the timeout.
    pub auto_pause: bool,
    /// That pause keeps only its files (E2B's `autoPauseMemory: false`).
    pub auto_pause_drop_memory: bool,
    /// Traffic resumes it when paused (default: yes in the native API,
    /// no in E2B's, as E2B's own).
    pub auto_resume: Option<bool>,
    /// Ports open to anyone through the proxy.
    pub public_ports: Vec<u16>,
    /// Only hosts with all these tags.
    pub host_tags: Vec<String>,
    /// IPv4 addresses and networks it may reach (win over `deny_out`).
    pub allow_out: Vec<String>,
    /// IPv4 addresses and networks it may not reach.
    pub deny_out: Vec<String>,
    /// Anyone may reach its ports through the proxy (default: yes in E2B's
    /// API, as E2B's, no in the native one).
    pub public_traffic: Option<bool>,
    /// The Host header its apps see (`${PORT}` replaced by the port).
    pub mask_request_host: Option<String>,
}

/// A create request checked, every default applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateSpec {
    /// Template name.
    pub template: String,
    /// CPUs.
    pub vcpus: u32,
    /// Memory limit, MiB.
    pub memory_mb: u32,
    /// Disk size, MiB.
    pub disk_size_mb: u32,
    /// Idle timeout, seconds; 0 = none.
    pub timeout_sec: u32,
    /// Labels.
    pub metadata: HashMap<String, String>,
    /// Environment of every process.
    pub envs: HashMap<String, String>,
    /// Egress.
    pub allow_internet_access: bool,
    /// Pause rather than destroy at the timeout.
    pub auto_pause: bool,
    /// That pause keeps only its files.
    pub auto_pause_drop_memory: bool,
    /// Traffic resumes it when paused.
    pub auto_resume: bool,
    /// Ports open to anyone through the proxy, sorted, no duplicates.
    pub public_ports: Vec<u16>,
    /// Only hosts with all these tags.
    pub host_tags: Vec<String>,
    /// Who calls that name no user run as, unless the template says:
    /// E2B's `user` for E2B's API, root (none) for the native one.
    pub default_user: Option<&'static str>,
    /// Egress rules, public traffic, the Host its apps see.
    pub network: super::network::Network,
}

fn range(d: Dialect, name: &'static str, v: u32, lo: u32, hi: u32) -> ApiResult<u32> {
    if v < lo || v > hi {
        return Err(ApiError::bad_request(format!(
            "{}: must be between {lo} and {hi}, got {v}",
            d.field(name)
        )));
    }
    Ok(v)
}

/// Checks an idle timeout a caller gives later (E2B's `timeout` and
/// `refreshes`): the create's rules of `d`.
pub fn check_timeout(d: Dialect, timeout_sec: u32) -> ApiResult<u32> {
    let lo = if d == Dialect::E2b { 1 } else { 0 };
    range(d, "timeout_sec", timeout_sec, lo, MAX_TIMEOUT_SEC)
}

/// Checks public ports: up to 64 numbers from 1 to 65535; sorted, each
/// once.
pub fn check_ports(mut ports: Vec<u16>) -> ApiResult<Vec<u16>> {
    if ports.contains(&0) || ports.len() > 64 {
        return Err(ApiError::bad_request(
            "public_ports: up to 64 port numbers from 1 to 65535",
        ));
    }
    ports.sort_unstable();
    ports.dedup();
    Ok(ports)
}

fn check_metadata(m: &HashMap<String, String>) -> ApiResult<()> {
    if m.len() > 64
        || m.iter()
            .any(|(k, v)| k.is_empty() || k.len() > 128 || v.len() > 1024)
    {
        return Err(ApiError::bad_request(
            "metadata: at most 64 keys, keys 1-128 and values up to 1024 characters",
        ));
    }
    Ok(())
}

fn check_envs(d: Dialect, envs: &HashMap<String, String>) -> ApiResult<()> {
    let total: usize = envs.iter().map(|(k, v)| k.len() + v.len()).sum();
    let bad_name = |k: &str| k.is_empty() || k.contains(['=', '\0']);
    if envs.len() > 1024
        || total > 1 << 20
        || envs.iter().any(|(k, v)| bad_name(k) || v.contains('\0'))
    {
        return Err(ApiError::bad_request(format!(
            "{}: up to 1024 variables and 1 MiB in all; names non-empty without '=' or NUL, values without NUL",
            d.field("envs")
        )));
    }
    Ok(())
}

impl NewSandbox {
    /// Checks the request as `d`'s callers wrote it and applies the
    /// defaults (from `wrenn_protocol::sandbox`): 400 with the field's
    /// name and what it must be.
    pub fn check(self, d: Dialect) -> ApiResult<CreateSpec> {
        let template = self.template.filter(|t| !t.is_empty());
        let template = match (template, d) {
            (Some(t), _) => t,
            (None, Dialect::Native) => defaults::DEFAULT_TEMPLATE.to_string(),
            (None, Dialect::E2b) => {
                return Err(ApiError::bad_request(format!(
                    "{}: required (e.g. \"{}\")",
                    d.field("template"),
                    defaults::DEFAULT_TEMPLATE
                )));
            }
        };
        if template.len() > 256 || template.contains(['\0', '\n']) {
            return Err(ApiError::bad_request(format!(
                "{}: a template name of up to 256 characters",
                d.field("template")
            )));
        }
        let default_timeout = match d {
            Dialect::Native => defaults::DEFAULT_TIMEOUT_SEC,
            Dialect::E2b => defaults::E2B_DEFAULT_TIMEOUT_SEC,
        };
        check_metadata(&self.metadata)?;
        check_envs(d, &self.envs)?;
        crate::hosts::check_tags("host_tags", &self.host_tags)?;
        Ok(CreateSpec {
            template,
            vcpus: range(
                d,
                "vcpus",
                self.vcpus.unwrap_or(defaults::DEFAULT_VCPUS),
                1,
                64,
            )?,
            memory_mb: range(
                d,
                "memory_mb",
                self.memory_mb.unwrap_or(defaults::DEFAULT_MEMORY_MB),
                32,
                1 << 20,
            )?,
            disk_size_mb: range(
                d,
                "disk_size_mb",
                self.disk_size_mb.unwrap_or(defaults::DEFAULT_DISK_SIZE_MB),
                64,
                1 << 22,
            )?,
            timeout_sec: check_timeout(d, self.timeout_sec.unwrap_or(default_timeout))?,
            metadata: self.metadata,
            envs: self.envs,
            allow_internet_access: self.allow_internet_access.unwrap_or(true),
            auto_pause: self.auto_pause,
            auto_pause_drop_memory: {
                if self.auto_pause_drop_memory && !self.auto_pause {
                    return Err(ApiError::bad_request(
                        "autoPauseMemory: false needs autoPause: true (it says how the timeout pauses)",
                    ));
                }
                if self.auto_pause_drop_memory && self.auto_resume == Some(true) {
                    return Err(ApiError::bad_request(
                        "autoResume: a sandbox that pauses keeping only its files cannot be resumed by traffic; drop autoResume or keep its memory",
                    ));
                }
                self.auto_pause_drop_memory
            },
            auto_resume: self.auto_resume.unwrap_or(d == Dialect::Native),
            public_ports: check_ports(self.public_ports)?,
            host_tags: self.host_tags,
            default_user: (d == Dialect::E2b).then_some(defaults::E2B_USER),
            network: {
                if self.allow_internet_access == Some(false)
                    && (!self.allow_out.is_empty() || !self.deny_out.is_empty())
                {
                    return Err(ApiError::bad_request(
                        "allow_out/deny_out: a sandbox without internet access reaches nothing they could allow; drop allow_internet_access=false and deny 0.0.0.0/0 instead",
                    ));
                }
                let (allow_out, deny_out) =
                    super::network::check_egress(d, self.allow_out, self.deny_out)?;
                super::network::Network {
                    allow_out,
                    deny_out,
                    public_traffic: self.public_traffic.unwrap_or(d == Dialect::E2b),
                    mask_request_host: self
                        .mask_request_host
                        .map(|m| super::network::check_mask(d, &m))
                        .transpose()?,
                }
            },
        })
    }
}

/// How many times a create looks for a host again when another create took
/// the room it was about to reserve.
const PLACEMENT_ATTEMPTS: usize = 8;

/// Creates a sandbox for `caller`: placed on a host the scheduler picks
/// (the room reserved atomically, so concurrent creates never promise a
/// host more than the scheduler allows), recorded `pending`, created by
/// the agent, then recorded `running`, or `error` with the agent's message
/// (or forgotten, when the agent found the request wrong).
pub async fn create(app: &App, caller: &Caller, spec: CreateSpec) -> ApiResult<Sandbox> {
    // How long each step took, logged at debug level.
    let started = std::time::Instant::now();
    let mut steps: Vec<(&str, u128)> = Vec::with_capacity(5);
    let mut step = |name: &'static str| steps.push((name, started.elapsed().as_micros()));
    let demand = Demand {
        vcpus: i64::from(spec.vcpus),
        memory_mb: i64::from(spec.memory_mb),
        disk_mb: i64::from(spec.disk_size_mb),
    };
    let mut s = Sandbox {
        id: ids::new("sb"),
        team_id: caller.team_id.clone(),
        template: spec.template.clone(),
        state: SandboxState::Pending,
        vcpus: demand.vcpus,
        memory_mb: demand.memory_mb,
        disk_size_mb: demand.disk_mb,
        timeout_sec: i64::from(spec.timeout_sec),
        allow_internet_access: spec.allow_internet_access,
        metadata: spec.metadata.clone(),
        created_at: now(),
        traffic_token: ids::hex(16),
        auto_pause: spec.auto_pause,
        auto_resume: spec.auto_resume,
        public_ports: spec.public_ports.clone(),
        network: spec.network.clone(),
        ..Default::default()
    };
    let mut placed = None;
    for _ in 0..PLACEMENT_ATTEMPTS {
        let candidates = crate::hosts::candidates(
            &app.store,
            &caller.team_id,
            &s.template,
            &spec.host_tags,
            &demand,
        )
        .await?;
        let Some(host) = app.scheduler.pick(&candidates, &demand).cloned() else {
            return Err(crate::hosts::no_room());
        };
        s.host_id = host.id.clone();
        let scheduler = &app.scheduler;
        // Everything that made the host a candidate is asked again on the
        // row as locked: a host retagged, given to a team or stripped of
        // the template since the candidates were read does not take it.
        let fits = |h: &crate::store::Host, held: &crate::store::Allocated| {
            let c = Candidate {
                host: h.clone(),
                allocated: *held,
            };
            (h.team_id.is_empty() || h.team_id == caller.team_id)
                && spec.host_tags.iter().all(|t| h.tags.contains(t))
                && crate::hosts::has_template(h, &s.template)
                && scheduler.fits(&c, &demand)
        };
        match app.store.insert_sandbox_if_fits(&s, fits).await? {
            Reserved::Inserted => {
                placed = Some(host);
                break;
            }
            // Another create took the room, or the host went away since
            // the candidates were read: look again.
            Reserved::NoRoom | Reserved::HostGone => continue,
        }
    }
    let Some(host) = placed else {
        return Err(crate::hosts::no_room());
    };
    step("placed");
    let req = pb::CreateSandboxRequest {
        sandbox_id: s.id.clone(),
        template: s.template.clone(),
        vcpus: spec.vcpus,
        memory_mb: spec.memory_mb,
        disk_size_mb: spec.disk_size_mb,
        timeout_sec: spec.timeout_sec,
        allow_internet_access: spec.allow_internet_access,
        envs: spec.envs.into_iter().collect(),
        metadata: spec.metadata.into_iter().collect(),
        auto_pause: spec.auto_pause,
        auto_pause_drop_memory: spec.auto_pause_drop_memory,
        default_user: spec.default_user.unwrap_or_default().into(),
        egress: spec.network.egress().into(),
        ..Default::default()
    };
    let created = match app.hosts.client(&host).await {
        Ok(client) => client.create_sandbox(req).await.map_err(ApiError::from),
        Err(e) => Err(ApiError::from(e)),
    };
    match created {
        Ok(resp) => {
            let info = resp.into_owned();
            s.state = SandboxState::Running;
            s.envd_address = info.envd_address;
            s.envd_token = info.envd_access_token;
            s.started_at = now();
            s.last_active_at = s.started_at;
            step("agent");
            app.store.update_sandbox(&s).await?;
            step("updated");
            if let Some(action) = Event::Create.audit_action() {
                app.store
                    .audit(&caller.team_id, &caller.actor, action, &s.id)
                    .await?;
            }
            step("audited");
            tracing::debug!(sandbox = %s.id, ?steps, "created (µs since the start, per step)");
            emit(app, &s, Event::Create);
            Ok(s)
        }
        Err(err) if err.status.is_client_error() => {
            // The request was wrong (an unknown template, limits the host
            // cannot give): nothing exists, nothing to list.
            app.store.delete_sandbox(&s.id).await?;
            Err(err)
        }
        Err(err) => {
            s.state = SandboxState::Error;
            s.error = err.message.clone();
            app.store.update_sandbox(&s).await?;
            Err(err)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_limits_are_the_same_for_both_apis() {
        let native = NewSandbox::default().check(Dialect::Native).unwrap();
        assert_eq!(native.template, "base");
        assert_eq!(
            (native.vcpus, native.memory_mb, native.disk_size_mb),
            (1, 512, 1024)
        );
        assert_eq!(native.timeout_sec, 300);
        assert!(native.allow_internet_access);
        let e2b = NewSandbox {
            template: Some("base".into()),
            ..Default::default()
        }
        .check(Dialect::E2b)
        .unwrap();
        assert_eq!(e2b.timeout_sec, 300);
        assert_eq!((e2b.vcpus, e2b.memory_mb), (1, 512));
        // Traffic resumes a paused sandbox by default natively, not in E2B's.
        assert!(native.auto_resume && !e2b.auto_resume);
    }

    #[test]
    fn bad_requests_name_the_field_as_their_api_does() {
        let many: HashMap<String, String> =
            (0..65).map(|i| (format!("k{i}"), "v".into())).collect();
        for (req, dialect, needle) in [
            (NewSandbox::default(), Dialect::E2b, "templateID: required"),
            (
                NewSandbox {
                    vcpus: Some(0),
                    ..Default::default()
                },
                Dialect::Native,
                "vcpus: must be between 1 and 64",
            ),
            (
                NewSandbox {
                    timeout_sec: Some(0),
                    template: Some("base".into()),
                    ..Default::default()
                },
                Dialect::E2b,
                "timeout: must be between 1",
            ),
            (
                NewSandbox {
                    metadata: many.clone(),
                    ..Default::default()
                },
                Dialect::Native,
                "metadata: at most 64 keys",
            ),
            // The E2B create checks metadata too.
            (
                NewSandbox {
                    template: Some("base".into()),
                    metadata: many,
                    ..Default::default()
                },
                Dialect::E2b,
                "metadata: at most 64 keys",
            ),
            (
                NewSandbox {
                    template: Some("base".into()),
                    envs: [("A=B".to_string(), "x".to_string())].into(),
                    ..Default::default()
                },
                Dialect::E2b,
                "envVars: up to 1024 variables",
            ),
            (
                NewSandbox {
                    public_ports: vec![0],
                    ..Default::default()
                },
                Dialect::Native,
                "public_ports",
            ),
            (
                NewSandbox {
                    host_tags: vec!["no spaces".into()],
                    ..Default::default()
                },
                Dialect::Native,
                "host_tags",
            ),
            (
                NewSandbox {
                    template: Some("a\nb".into()),
                    ..Default::default()
                },
                Dialect::Native,
                "template: a template name",
            ),
        ] {
            let err = req.check(dialect).unwrap_err();
            assert_eq!(err.status, http::StatusCode::BAD_REQUEST, "{needle}");
            assert!(err.message.contains(needle), "{} !~ {needle}", err.message);
        }
    }

    #[test]
    fn ports_are_sorted_once() {
        assert_eq!(check_ports(vec![8080, 80, 8080]).unwrap(), vec![80, 8080]);
    }
}
