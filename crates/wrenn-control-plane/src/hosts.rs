//! Host agents: a pool of clients (one per host, made on first use) and
//! the schedulers that pick a host for a new sandbox.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::{Duration, Instant};

use connectrpc::client::{ClientConfig, HttpClient};
use wrenn_protocol::hostagent::v1::HostAgentServiceClient;

use crate::error::ApiError;
use crate::store::{Allocated, Host};

/// The host record of the agent that runs inside `wrenn up`'s own process.
pub const LOCAL_HOST_ID: &str = "host-local";

/// A client for one agent.
pub type AgentClient = HostAgentServiceClient<HttpClient>;

/// How long a name's resolution is trusted before it is looked up again.
const RESOLVE_TTL: Duration = Duration::from_secs(5);

/// Why the control plane will not call a host at its address.
#[derive(Debug, thiserror::Error)]
pub enum AddressError {
    /// Not `host:port`.
    #[error("address '{0}' is not host:port (e.g. 203.0.113.5:7070 or agent.example.com:7070)")]
    Malformed(String),
    /// An address the control plane must never call for a team's host.
    #[error(
        "address {addr} is {why}; a team's host must have an address the control plane may call{hint}"
    )]
    Forbidden {
        /// The address (as resolved).
        addr: SocketAddr,
        /// What kind of address it is.
        why: &'static str,
        /// How to allow it, when that is possible.
        hint: &'static str,
    },
    /// The name did not resolve.
    #[error("resolving host address '{0}': {1}")]
    Resolve(String, String),
}

/// Which addresses hosts may have. Shared hosts (added by a platform admin)
/// may be anywhere; a team's own hosts are registered by tenants, so their
/// addresses are checked at registration and again on every connection (a
/// name can resolve differently later) and the control plane connects to
/// the address it checked.
#[derive(Debug, Clone, Default)]
pub struct AddressPolicy {
    /// Team hosts may use private addresses (10/8, 172.16/12, 192.168/16,
    /// 100.64/10, fc00::/7): on for fleets on one private network.
    pub allow_private: bool,
    /// More addresses that reach the control plane (a load balancer's, say);
    /// this machine's own addresses are refused anyway.
    pub own: Vec<SocketAddr>,
}

/// Splits `host:port` (`[v6]:port` for IPv6) into its parts, checking that
/// the host is an IP address or a DNS name.
pub fn parse_address(address: &str) -> Result<(String, u16), AddressError> {
    let bad = || AddressError::Malformed(address.to_string());
    if let Ok(sa) = address.parse::<SocketAddr>() {
        return Ok((sa.ip().to_string(), sa.port()));
    }
    let (host, port) = address.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let valid_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if port == 0 || host.is_empty() || host.len() > 253 || !host.split('.').all(valid_label) {
        return Err(bad());
    }
    Ok((host.to_ascii_lowercase(), port))
}

impl AddressPolicy {
    /// Whether a team's host may be called at `addr`.
    pub fn check(&self, addr: SocketAddr) -> Result<(), AddressError> {
        let ip = match addr.ip() {
            IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map(IpAddr::V4)
                .unwrap_or(IpAddr::V6(v6)),
            v4 => v4,
        };
        let forbid = |why, hint| Err(AddressError::Forbidden { addr, why, hint });
        let own = self
            .own
            .iter()
            .any(|o| o.port() == addr.port() && o.ip() == ip);
        // Binding succeeds only to this machine's own addresses: any service
        // of the control plane's machine is off limits, whatever its port.
        if own || (!ip.is_loopback() && std::net::UdpSocket::bind((ip, 0)).is_ok()) {
            return forbid("the control plane's own machine", "");
        }
        match ip {
            IpAddr::V4(v4) => {
                let o = v4.octets();
                if v4.is_loopback() {
                    return forbid("a loopback address", "");
                }
                if v4.is_link_local() {
                    return forbid("link-local (cloud metadata lives there)", "");
                }
                if v4.is_unspecified() || v4.is_broadcast() || v4.is_multicast() || o[0] == 0 {
                    return forbid("not a unicast address", "");
                }
                let private = v4.is_private() || (o[0] == 100 && (64..128).contains(&o[1]));
                if private && !self.allow_private {
                    return forbid(
                        "private",
                        " (a platform admin allows private addresses with --allow-private-host-addresses)",
                    );
                }
            }
            IpAddr::V6(v6) => {
                let seg = v6.segments();
                if v6.is_loopback() {
                    return forbid("a loopback address", "");
                }
                if (seg[0] & 0xffc0) == 0xfe80 {
                    return forbid("link-local", "");
                }
                if v6.is_unspecified() || v6.is_multicast() {
                    return forbid("not a unicast address", "");
                }
                if (seg[0] & 0xfe00) == 0xfc00 && !self.allow_private {
                    return forbid(
                        "private (unique local)",
                        " (a platform admin allows private addresses with --allow-private-host-addresses)",
                    );
                }
            }
        }
        Ok(())
    }

    /// The socket address to call `host` at: `address` resolved, and for a
    /// team's host every resolved address checked.
    pub async fn resolve(
        &self,
        address: &str,
        team_owned: bool,
    ) -> Result<SocketAddr, AddressError> {
        let (name, port) = parse_address(address)?;
        let addrs: Vec<SocketAddr> = match name.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => tokio::net::lookup_host((name.as_str(), port))
                .await
                .map_err(|e| AddressError::Resolve(address.to_string(), e.to_string()))?
                .collect(),
        };
        if team_owned {
            for a in &addrs {
                self.check(*a)?;
            }
        }
        addrs
            .first()
            .copied()
            .ok_or_else(|| AddressError::Resolve(address.to_string(), "no addresses".into()))
    }
}

struct Cached {
    client: AgentClient,
    addr: SocketAddr,
    /// The stored address the client was made for.
    address: String,
    /// When a name must be resolved (and checked) again; `None` for an IP
    /// address, which never changes.
    stale_at: Option<Instant>,
}

/// Clients to every host, created lazily, each bound to the address that
/// was checked against the [`AddressPolicy`].
#[derive(Clone, Default)]
pub struct HostPool {
    http: Arc<Mutex<Option<HttpClient>>>,
    clients: Arc<Mutex<HashMap<String, Cached>>>,
    /// Host rows read recently, for the calls that only route by them.
    rows: Arc<crate::ttl::TtlMap<Option<Host>, HOST_ROW_TTL_MS>>,
    /// Which addresses hosts may have.
    pub policy: Arc<AddressPolicy>,
}

impl HostPool {
    /// A pool that calls hosts only where `policy` allows.
    pub fn new(policy: AddressPolicy) -> Self {
        HostPool {
            policy: Arc::new(policy),
            ..Default::default()
        }
    }

    /// The client for `host`, and the address it calls.
    pub async fn endpoint(&self, host: &Host) -> Result<(AgentClient, SocketAddr), AddressError> {
        {
            let clients = self.clients.lock();
            if let Some(c) = clients.get(&host.id) {
                let fresh = c.stale_at.is_none_or(|t| Instant::now() < t);
                if c.address == host.address && fresh {
                    return Ok((c.client.clone(), c.addr));
                }
            }
        }
        let addr = self
            .policy
            .resolve(&host.address, !host.team_id.is_empty())
            .await?;
        let http = self
            .http
            .lock()
            .get_or_insert_with(HttpClient::plaintext)
            .clone();
        let uri = format!("http://{addr}")
            .parse()
            .map_err(|_| AddressError::Malformed(host.address.clone()))?;
        let mut cfg = ClientConfig::new(uri)
            .with_default_max_message_size(wrenn_protocol::hostagent::MAX_MESSAGE_BYTES)
            // File chunks are mostly incompressible or cheap to carry:
            // gzip would cost more CPU than the link saves.
            .with_compression(connectrpc::compression::CompressionRegistry::new());
        if let Ok(v) = format!("Bearer {}", host.token).parse::<http::HeaderValue>() {
            cfg = cfg.with_default_header(http::header::AUTHORIZATION, v);
        }
        let client = HostAgentServiceClient::new(http, cfg);
        self.clients.lock().insert(
            host.id.clone(),
            Cached {
                client: client.clone(),
                addr,
                address: host.address.clone(),
                stale_at: host
                    .address
                    .parse::<SocketAddr>()
                    .is_err()
                    .then(|| Instant::now() + RESOLVE_TTL),
            },
        );
        Ok((client, addr))
    }

    /// The client for `host`.
    pub async fn client(&self, host: &Host) -> Result<AgentClient, AddressError> {
        Ok(self.endpoint(host).await?.0)
    }

    /// Forgets a host's client (host deleted or re-registered).
    pub fn evict(&self, host_id: &str) {
        self.clients.lock().remove(host_id);
        self.rows.remove(host_id);
    }

    /// Host `id`'s row, read from `store` at most once per
    /// [`HOST_ROW_TTL_MS`]: what a call to a sandbox needs to reach its host
    /// (address, token, state), so that every exec or file call does not
    /// read it again. A change made through another control plane shows
    /// here within the TTL.
    pub async fn row(
        &self,
        store: &crate::store::Store,
        id: &str,
    ) -> Result<Option<Host>, sqlx::Error> {
        if let Some(h) = self.rows.get(id) {
            return Ok(h);
        }
        let h = store.host(id).await?;
        self.rows.insert(id.to_string(), h.clone());
        Ok(h)
    }
}

/// How long a host row read for routing is trusted, in milliseconds.
pub const HOST_ROW_TTL_MS: u64 = 1_000;

/// A host that may take a sandbox, with what its sandboxes already have.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The host (online, allowed for the team, with the wanted tags).
    pub host: Host,
    /// Given to its live sandboxes.
    pub allocated: Allocated,
}

/// A host's (vCPUs, memory MiB, disk MiB) as scheduling counts them: what
/// it reported, or, before it has, a generous 64 / 64 GiB / 640 GiB.
pub fn capacity(h: &Host) -> (i64, i64, i64) {
    if h.cpu_count > 0 && h.memory_mb > 0 {
        (h.cpu_count, h.memory_mb, h.disk_mb.max(1))
    } else {
        (64, 64 << 10, 640 << 10)
    }
}

/// Whether a sandbox of `d` could ever run on `h` (on an empty host; disk
/// only where the host reported it, as the scheduler counts it).
pub fn could_ever_fit(h: &Host, d: &Demand) -> bool {
    let (cpus, mem, disk) = capacity(h);
    d.vcpus <= cpus && d.memory_mb <= mem && (h.disk_mb <= 0 || d.disk_mb <= disk)
}

/// What a new sandbox asks for.
#[derive(Debug, Clone, Copy, Default)]
pub struct Demand {
    /// CPUs.
    pub vcpus: i64,
    /// Memory.
    pub memory_mb: i64,
    /// Disk.
    pub disk_mb: i64,
}

/// Chooses where a sandbox goes.
pub trait Scheduler: Send + Sync {
    /// One of `candidates`, or `None` when none can take `demand`.
    fn pick<'a>(&self, candidates: &'a [Candidate], demand: &Demand) -> Option<&'a Host>;

    /// Whether `demand` still fits on `candidate` (with what its sandboxes
    /// hold now): asked again inside the placement's transaction, so that
    /// concurrent creates never promise a host more than this scheduler
    /// allows. By default everything fits.
    fn fits(&self, candidate: &Candidate, demand: &Demand) -> bool {
        let _ = (candidate, demand);
        true
    }
}

/// Checks the tags a request names (host tags, or tags a sandbox asks
/// for): at most 32, each 1-64 of letters, digits and `- _ . : =`.
pub fn check_tags(field: &str, tags: &[String]) -> Result<(), ApiError> {
    if tags.len() > 32
        || tags.iter().any(|t| {
            t.is_empty()
                || t.len() > 64
                || !t
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:=".contains(&b))
        })
    {
        return Err(ApiError::bad_request(format!(
            "{field}: up to 32 tags of 1-64 letters, digits or - _ . : ="
        )));
    }
    Ok(())
}

/// Whether `h` has `template`, as far as the control plane knows: a host
/// that never reported its templates (a static host) may have any.
pub fn has_template(h: &Host, template: &str) -> bool {
    h.templates
        .as_ref()
        .is_none_or(|t| t.iter().any(|n| n == template))
}

/// The hosts a sandbox of `team` from `template` asking for `demand` on
/// hosts with every tag of `tags` may go to: online, shared or the team's
/// own, tagged, with the template, and large enough, each with what its
/// sandboxes hold now. An error when no host could ever take it (400: the
/// request is wrong) or none is online now (503).
pub async fn candidates(
    store: &crate::store::Store,
    team: &str,
    template: &str,
    tags: &[String],
    demand: &Demand,
) -> Result<Vec<Candidate>, ApiError> {
    let tagged: Vec<Host> = store
        .hosts()
        .await?
        .into_iter()
        .filter(|h| h.team_id.is_empty() || h.team_id == team)
        .filter(|h| tags.iter().all(|t| h.tags.contains(t)))
        .collect();
    if tagged.is_empty() && !tags.is_empty() {
        // Not a passing shortage: no host, up or down, would ever do.
        return Err(ApiError::bad_request(format!(
            "host_tags: no host has all of the tags {tags:?}; tag a host (PUT /v1/hosts/{{id}}/tags) or drop host_tags"
        )));
    }
    let any_host = !tagged.is_empty();
    let tagged: Vec<Host> = tagged
        .into_iter()
        .filter(|h| has_template(h, template))
        .collect();
    if any_host && tagged.is_empty() {
        return Err(ApiError::bad_request(format!(
            "template '{template}' is on no host this sandbox may run on; build or import it there (wrenn template build|import) or pick another (GET /v1/templates)"
        )));
    }
    // A sandbox bigger than every host will never fit: the request is
    // wrong, not the moment.
    if !tagged.is_empty() && !tagged.iter().any(|h| could_ever_fit(h, demand)) {
        let most = |f: fn((i64, i64, i64)) -> i64| {
            tagged.iter().map(|h| f(capacity(h))).max().unwrap_or(0)
        };
        return Err(ApiError::bad_request(format!(
            "no host is that large: the largest has {} vCPUs, {} MiB of memory and {} MiB of disk (asked: {}, {}, {}); ask for less",
            most(|c| c.0),
            most(|c| c.1),
            most(|c| c.2),
            demand.vcpus,
            demand.memory_mb,
            demand.disk_mb
        )));
    }
    let online: Vec<Host> = tagged
        .into_iter()
        .filter(|h| h.status == "online")
        .collect();
    if online.is_empty() {
        let why = if tags.is_empty() {
            "no host is online to run the sandbox; start an agent or register a host".to_string()
        } else {
            format!(
                "no host with the tags {tags:?} is online; start one, tag another (PUT /v1/hosts/{{id}}/tags) or drop host_tags"
            )
        };
        return Err(ApiError::unavailable("no_hosts_available", why));
    }
    let held = store.allocations().await?;
    Ok(online
        .into_iter()
        .map(|h| Candidate {
            allocated: held.get(&h.id).copied().unwrap_or_default(),
            host: h,
        })
        .collect())
}

/// The 503 when every candidate is full.
pub fn no_room() -> ApiError {
    ApiError::unavailable(
        "no_hosts_available",
        "no online host has room for the sandbox (memory or disk); destroy sandboxes, add a host, or let hosts promise more than they have (--memory-overcommit, --disk-overcommit)",
    )
}

/// Each host in turn.
#[derive(Default)]
pub struct RoundRobin {
    next: std::sync::atomic::AtomicUsize,
}

impl Scheduler for RoundRobin {
    fn pick<'a>(&self, candidates: &'a [Candidate], _: &Demand) -> Option<&'a Host> {
        if candidates.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        candidates.get(i % candidates.len()).map(|c| &c.host)
    }
}

/// The host whose most loaded resource (vcpus, memory, disk given to its
/// sandboxes, against what it reported) stays lowest with the new sandbox.
/// Memory and disk are promised up to `overcommit` times a host's (1 by
/// default: not overcommitted); CPUs are overcommitted. Hosts that reported no
/// capacity (static agents) count 1 CPU, 1 GiB and 10 GiB per sandbox slot
/// of 64.
#[derive(Debug, Clone, Copy, Default)]
pub struct LeastLoaded {
    /// How far memory and disk may be promised beyond a host's capacity.
    pub overcommit: Overcommit,
}

/// How many times its memory and disk a host may promise to sandboxes.
/// A sandbox's memory and disk are limits, not reservations: idle
/// sandboxes use a small part of them, so a host can hold more than its
/// capacity divided by the limits. 1.0 (the default) promises no more
/// than there is; a host whose sandboxes all use their whole limits at
/// once, beyond 1.0, runs out (the kernel then kills in the sandboxes).
#[derive(Debug, Clone, Copy)]
pub struct Overcommit {
    /// Memory: promised MiB per MiB of the host's.
    pub memory: f64,
    /// Disk: promised MiB per free MiB of the host's.
    pub disk: f64,
}

impl Default for Overcommit {
    fn default() -> Self {
        Overcommit {
            memory: 1.0,
            disk: 1.0,
        }
    }
}

impl Overcommit {
    /// Checks the ratios a user gave: finite, at least 1, at most 100.
    pub fn new(memory: f64, disk: f64) -> Result<Overcommit, String> {
        for (what, r) in [("memory", memory), ("disk", disk)] {
            if !(1.0..=100.0).contains(&r) {
                return Err(format!(
                    "{what} overcommit {r} is out of range: give a ratio from 1 (none) to 100"
                ));
            }
        }
        Ok(Overcommit { memory, disk })
    }
}

impl LeastLoaded {
    /// The load after adding `d`, or `None` if it does not fit.
    pub fn load(&self, c: &Candidate, d: &Demand) -> Option<f64> {
        let h = &c.host;
        let (cpus, mem, disk) = capacity(h);
        let mem = (mem as f64 * self.overcommit.memory) as i64;
        let disk = (disk as f64 * self.overcommit.disk) as i64;
        let a = &c.allocated;
        let mem_after = a.memory_mb + d.memory_mb;
        let disk_after = a.disk_mb + d.disk_mb;
        if mem_after > mem || (h.disk_mb > 0 && disk_after > disk) {
            return None;
        }
        let ratios = [
            (a.vcpus + d.vcpus) as f64 / cpus as f64,
            mem_after as f64 / mem as f64,
            disk_after as f64 / disk as f64,
        ];
        Some(ratios.into_iter().fold(0.0, f64::max))
    }
}

impl Scheduler for LeastLoaded {
    fn fits(&self, candidate: &Candidate, demand: &Demand) -> bool {
        self.load(candidate, demand).is_some()
    }

    fn pick<'a>(&self, candidates: &'a [Candidate], demand: &Demand) -> Option<&'a Host> {
        candidates
            .iter()
            .filter_map(|c| Some((self.load(c, demand)?, c)))
            .min_by(|(la, a), (lb, b)| {
                la.total_cmp(lb)
                    .then(a.allocated.sandboxes.cmp(&b.allocated.sandboxes))
                    .then(a.host.id.cmp(&b.host.id))
            })
            .map(|(_, c)| &c.host)
    }
}

/// A scheduler by name: `round-robin` or `least-loaded` (which promises
/// memory and disk up to `overcommit` times a host's).
pub fn scheduler(name: &str, overcommit: Overcommit) -> Option<std::sync::Arc<dyn Scheduler>> {
    match name {
        "round-robin" => Some(std::sync::Arc::new(RoundRobin::default())),
        "least-loaded" => Some(std::sync::Arc::new(LeastLoaded { overcommit })),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn host_addresses_parse_or_are_refused() {
        use super::parse_address;
        for (input, want) in [
            ("10.0.0.5:7070", Some(("10.0.0.5", 7070))),
            ("[::1]:80", Some(("::1", 80))),
            (
                "Agent-1.example.com:7070",
                Some(("agent-1.example.com", 7070)),
            ),
            ("x y:1", None),
            ("host", None),
            ("host:", None),
            (":80", None),
            ("host:0", None),
            ("host:99999", None),
            ("-bad.example:80", None),
            ("a..b:80", None),
            ("http://h:80", None),
            ("h/x:80", None),
            ("h\n:80", None),
        ] {
            let got = parse_address(input).ok();
            assert_eq!(
                got.as_ref().map(|(h, p)| (h.as_str(), *p)),
                want,
                "{input:?}"
            );
        }
    }

    #[test]
    fn team_hosts_may_not_point_inside() {
        use super::AddressPolicy;
        let own: std::net::SocketAddr = "198.51.100.7:443".parse().unwrap();
        let strict = AddressPolicy {
            allow_private: false,
            own: vec![own],
        };
        let lax = AddressPolicy {
            allow_private: true,
            own: vec![own],
        };
        for (addr, strict_ok, lax_ok) in [
            ("203.0.113.5:7070", true, true),
            ("127.0.0.1:8080", false, false),
            ("127.0.0.2:7070", false, false),
            ("169.254.169.254:80", false, false),
            ("[::1]:80", false, false),
            ("[fe80::1]:80", false, false),
            ("[::ffff:127.0.0.1]:80", false, false),
            ("[::ffff:169.254.169.254]:80", false, false),
            ("0.0.0.0:7070", false, false),
            ("224.0.0.1:7070", false, false),
            ("10.0.0.1:7070", false, true),
            ("192.168.1.1:7070", false, true),
            ("100.64.0.1:7070", false, true),
            ("[fd00::1]:7070", false, true),
            ("203.0.113.5:8080", true, true),
            ("198.51.100.7:443", false, false),
            ("[2001:db8::1]:7070", true, true),
        ] {
            let a: std::net::SocketAddr = addr.parse().unwrap();
            assert_eq!(strict.check(a).is_ok(), strict_ok, "strict {addr}");
            assert_eq!(lax.check(a).is_ok(), lax_ok, "lax {addr}");
        }
    }

    use super::*;

    fn cand(id: &str, cpus: i64, mem: i64, used: (i64, i64, i64)) -> Candidate {
        Candidate {
            host: Host {
                id: id.into(),
                status: "online".into(),
                cpu_count: cpus,
                memory_mb: mem,
                disk_mb: 100_000,
                ..Default::default()
            },
            allocated: Allocated {
                sandboxes: used.0,
                vcpus: used.0,
                memory_mb: used.1,
                disk_mb: used.2,
            },
        }
    }

    #[test]
    fn round_robin_cycles() {
        let hosts = vec![
            cand("a", 4, 4096, (0, 0, 0)),
            cand("b", 4, 4096, (9, 0, 0)),
            cand("c", 4, 4096, (0, 0, 0)),
        ];
        let rr = RoundRobin::default();
        let d = Demand::default();
        let picks: Vec<&str> = (0..6)
            .map(|_| rr.pick(&hosts, &d).unwrap().id.as_str())
            .collect();
        assert_eq!(picks, vec!["a", "b", "c", "a", "b", "c"]);
        assert!(rr.pick(&[], &d).is_none());
    }

    #[test]
    fn least_loaded_weighs_capacity_and_refuses_what_does_not_fit() {
        let d = Demand {
            vcpus: 1,
            memory_mb: 512,
            disk_mb: 1024,
        };
        // Twice the memory takes the sandbox although it has more of them.
        let big = cand("big", 8, 16384, (4, 2048, 4096));
        let small = cand("small", 2, 2048, (1, 512, 1024));
        assert_eq!(
            LeastLoaded::default()
                .pick(&[small.clone(), big.clone()], &d)
                .unwrap()
                .id,
            "big"
        );
        // Full memory: never there.
        let full = cand("full", 64, 1024, (1, 1024, 0));
        assert_eq!(LeastLoaded::default().pick(&[full.clone()], &d), None);
        assert_eq!(
            LeastLoaded::default()
                .pick(&[full.clone(), small], &d)
                .unwrap()
                .id,
            "small"
        );
        // Overcommitted twice, the full host takes as much again, no more.
        let twice = LeastLoaded {
            overcommit: Overcommit::new(2.0, 1.0).unwrap(),
        };
        assert_eq!(twice.pick(&[full.clone()], &d).unwrap().id, "full");
        let mut fuller = full;
        fuller.allocated.memory_mb = 2048;
        assert_eq!(twice.pick(&[fuller], &d), None);
        for bad in [0.5, 0.0, -1.0, 101.0, f64::NAN, f64::INFINITY] {
            assert!(Overcommit::new(bad, 1.0).is_err(), "{bad}");
            assert!(Overcommit::new(1.0, bad).is_err(), "{bad}");
        }
        // Even spreading over equal hosts.
        let mut hosts = vec![
            cand("a", 4, 8192, (0, 0, 0)),
            cand("b", 4, 8192, (0, 0, 0)),
            cand("c", 4, 8192, (0, 0, 0)),
        ];
        for _ in 0..30 {
            let id = LeastLoaded::default().pick(&hosts, &d).unwrap().id.clone();
            let c = hosts.iter_mut().find(|c| c.host.id == id).unwrap();
            c.allocated.sandboxes += 1;
            c.allocated.vcpus += d.vcpus;
            c.allocated.memory_mb += d.memory_mb;
            c.allocated.disk_mb += d.disk_mb;
        }
        let counts: Vec<i64> = hosts.iter().map(|c| c.allocated.sandboxes).collect();
        assert_eq!(counts, vec![10, 10, 10]);
    }
}
