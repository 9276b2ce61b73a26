//! Host agents: a pool of clients (one per host, made on first use) and
//! the schedulers that pick a host for a new sandbox.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use connectrpc::client::{ClientConfig, HttpClient};
use wrenn_protocol::hostagent::v1::HostAgentServiceClient;

use crate::store::Host;

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

/// Chooses where a sandbox goes.
pub trait Scheduler: Send + Sync {
    /// One of `hosts` (all online), or `None`.
    fn pick<'a>(&self, hosts: &'a [Host]) -> Option<&'a Host>;
}

/// Each host in turn.
#[derive(Default)]
pub struct RoundRobin {
    next: std::sync::atomic::AtomicUsize,
}

impl Scheduler for RoundRobin {
    fn pick<'a>(&self, hosts: &'a [Host]) -> Option<&'a Host> {
        if hosts.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        hosts.get(i % hosts.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_cycles() {
        let h = |id: &str| Host {
            id: id.into(),
            name: id.into(),
            address: "127.0.0.1:1".into(),
            token: String::new(),
            status: "online".into(),
            created_at: 0,
            last_seen_at: 0,
        };
        let hosts = vec![h("a"), h("b"), h("c")];
        let rr = RoundRobin::default();
        let picks: Vec<&str> = (0..6)
            .map(|_| rr.pick(&hosts).unwrap().id.as_str())
            .collect();
        assert_eq!(picks, vec!["a", "b", "c", "a", "b", "c"]);
        assert!(rr.pick(&[]).is_none());
    }
}
