//! Host agents: their addresses (and which the control plane may call),
//! a pool of clients (one per host, made on first use), and, in
//! [`placement`], the hosts a sandbox may go to and the schedulers that
//! pick one.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::{Duration, Instant};

use connectrpc::client::{ClientConfig, HttpClient};
use wrenn_protocol::hostagent::v1::HostAgentServiceClient;

use crate::store::Host;

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

    /// The Connect transport every client to an agent (or through one)
    /// shares.
    pub fn connect_http(&self) -> HttpClient {
        self.http
            .lock()
            .get_or_insert_with(HttpClient::plaintext)
            .clone()
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

pub mod placement;
pub use placement::*;

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
}
