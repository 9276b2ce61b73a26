//! Placement: which hosts may take a sandbox ([`candidates`]), what a
//! sandbox asks for ([`Demand`]), and the schedulers that pick one.

use crate::error::ApiError;
use crate::store::{Allocated, Host};

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
        .filter(|h| h.status == crate::host_status::HostStatus::Online)
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
    use super::*;

    fn cand(id: &str, cpus: i64, mem: i64, used: (i64, i64, i64)) -> Candidate {
        Candidate {
            host: Host {
                id: id.into(),
                status: crate::host_status::HostStatus::Online,
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
