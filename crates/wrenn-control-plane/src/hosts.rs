//! Host agents: a pool of clients (one per host, made on first use) and
//! the schedulers that pick a host for a new sandbox.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use connectrpc::client::{ClientConfig, HttpClient};
use wrenn_protocol::hostagent::v1::HostAgentServiceClient;

use crate::store::{Allocated, Host};

/// A client for one agent.
pub type AgentClient = HostAgentServiceClient<HttpClient>;

/// Clients to every host, created lazily.
#[derive(Clone, Default)]
pub struct HostPool {
    http: Arc<Mutex<Option<HttpClient>>>,
    clients: Arc<Mutex<HashMap<String, AgentClient>>>,
}

impl HostPool {
    /// The client for `host`.
    pub fn client(&self, host: &Host) -> AgentClient {
        let mut clients = self.clients.lock().expect("clients");
        if let Some(c) = clients.get(&host.id) {
            return c.clone();
        }
        let http = self
            .http
            .lock()
            .expect("http")
            .get_or_insert_with(HttpClient::plaintext)
            .clone();
        let cfg = ClientConfig::new(
            format!("http://{}", host.address)
                .parse()
                .expect("host address is host:port"),
        )
        .with_default_header("authorization", format!("Bearer {}", host.token));
        let c = HostAgentServiceClient::new(http, cfg);
        clients.insert(host.id.clone(), c.clone());
        c
    }

    /// Forgets a host's client (host deleted or re-registered).
    pub fn evict(&self, host_id: &str) {
        self.clients.lock().expect("clients").remove(host_id);
    }
}

/// A host that may take a sandbox, with what its sandboxes already have.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The host (online, allowed for the team, with the wanted tags).
    pub host: Host,
    /// Given to its live sandboxes.
    pub allocated: Allocated,
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
/// Memory and disk are not overcommitted; CPUs are. Hosts that reported no
/// capacity (static agents) count 1 CPU, 1 GiB and 10 GiB per sandbox slot
/// of 64.
pub struct LeastLoaded;

impl LeastLoaded {
    /// The load after adding `d`, or `None` if it does not fit.
    pub fn load(c: &Candidate, d: &Demand) -> Option<f64> {
        let h = &c.host;
        let (cpus, mem, disk) = if h.cpu_count > 0 && h.memory_mb > 0 {
            (h.cpu_count, h.memory_mb, h.disk_mb.max(1))
        } else {
            (64, 64 << 10, 640 << 10)
        };
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
    fn pick<'a>(&self, candidates: &'a [Candidate], demand: &Demand) -> Option<&'a Host> {
        candidates
            .iter()
            .filter_map(|c| Some((Self::load(c, demand)?, c)))
            .min_by(|(la, a), (lb, b)| {
                la.total_cmp(lb)
                    .then(a.allocated.sandboxes.cmp(&b.allocated.sandboxes))
                    .then(a.host.id.cmp(&b.host.id))
            })
            .map(|(_, c)| &c.host)
    }
}

/// A scheduler by name: `round-robin` or `least-loaded`.
pub fn scheduler(name: &str) -> Option<std::sync::Arc<dyn Scheduler>> {
    match name {
        "round-robin" => Some(std::sync::Arc::new(RoundRobin::default())),
        "least-loaded" => Some(std::sync::Arc::new(LeastLoaded)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
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
            LeastLoaded
                .pick(&[small.clone(), big.clone()], &d)
                .unwrap()
                .id,
            "big"
        );
        // Full memory: never there.
        let full = cand("full", 64, 1024, (1, 1024, 0));
        assert_eq!(LeastLoaded.pick(&[full.clone()], &d), None);
        assert_eq!(LeastLoaded.pick(&[full, small], &d).unwrap().id, "small");
        // Even spreading over equal hosts.
        let mut hosts = vec![
            cand("a", 4, 8192, (0, 0, 0)),
            cand("b", 4, 8192, (0, 0, 0)),
            cand("c", 4, 8192, (0, 0, 0)),
        ];
        for _ in 0..30 {
            let id = LeastLoaded.pick(&hosts, &d).unwrap().id.clone();
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
