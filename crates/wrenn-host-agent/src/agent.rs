//! The agent's own bookkeeping over a runtime: timeouts and metadata,
//! the reaper that enforces them, and the sampler that keeps every
//! sandbox's recent usage ([`crate::metrics`]).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::envd::Pools;
use crate::runtime::{Instance, Runtime, RuntimeError, SandboxSpec};

/// What the agent keeps per sandbox beyond the runtime's view.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Meta {
    /// Seconds of idleness before the sandbox is destroyed; 0 = never.
    pub timeout_sec: u32,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds; 0 = never.
    pub expires_at: i64,
    /// Caller's labels.
    pub metadata: HashMap<String, String>,
    /// At the timeout, pause instead of destroying.
    #[serde(default)]
    pub auto_pause: bool,
    /// That pause drops its memory.
    #[serde(default)]
    pub auto_pause_drop_memory: bool,
}

/// Unix time in seconds.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The agent: a runtime plus bookkeeping.
pub struct Agent<R: Runtime> {
    /// The runtime sandboxes run on.
    pub runtime: Arc<R>,
    /// Connection pools to every envd.
    pub pools: Pools,
    meta_dir: PathBuf,
    meta: Mutex<HashMap<String, Meta>>,
    /// Every sandbox's recent usage, sampled by [`Agent::sample_forever`].
    pub metrics: crate::metrics::History,
    /// Fires when the agent should stop.
    pub shutdown: tokio::sync::watch::Sender<bool>,
    /// How long a new sandbox's envd may take to answer once its runtime
    /// started it.
    pub envd_timeout: Duration,
    /// Sandboxes being created: not listed until they are whole.
    starting: Mutex<std::collections::HashSet<String>>,
}

/// Takes a sandbox off the `starting` set when its create ends, however.
struct Shown<'a>(&'a Mutex<std::collections::HashSet<String>>, &'a str);

impl Drop for Shown<'_> {
    fn drop(&mut self) {
        self.0.lock().remove(self.1);
    }
}

/// How long a new sandbox's envd may take to answer, by default.
pub const ENVD_TIMEOUT: Duration = Duration::from_secs(10);

impl<R: Runtime> Agent<R> {
    /// An agent over `runtime`, keeping its records in `meta_dir`.
    pub fn new(runtime: Arc<R>, meta_dir: PathBuf) -> std::io::Result<Arc<Self>> {
        std::fs::create_dir_all(&meta_dir)?;
        Ok(Arc::new(Agent {
            runtime,
            pools: Pools::default(),
            meta_dir,
            meta: Mutex::new(HashMap::new()),
            metrics: crate::metrics::History::default(),
            shutdown: tokio::sync::watch::channel(false).0,
            envd_timeout: ENVD_TIMEOUT,
            starting: Mutex::default(),
        }))
    }

    /// Re-adopts sandboxes after a start and drops records of gone ones.
    pub async fn recover(&self) -> Result<Vec<Instance>, RuntimeError> {
        let adopted = self.runtime.recover().await?;
        let mut meta = self.meta.lock();
        if let Ok(rd) = std::fs::read_dir(&self.meta_dir) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let Some(id) = name.strip_suffix(".json") else {
                    continue;
                };
                if adopted.iter().any(|i| i.spec.id == id) {
                    if let Some(m) = std::fs::read(e.path())
                        .ok()
                        .and_then(|b| serde_json::from_slice(&b).ok())
                    {
                        meta.insert(id.to_string(), m);
                    }
                } else {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        for i in &adopted {
            meta.entry(i.spec.id.clone()).or_insert_with(|| Meta {
                created_at: now(),
                ..Default::default()
            });
        }
        Ok(adopted)
    }

    fn save(&self, id: &str, m: &Meta) {
        let p = self.meta_dir.join(format!("{id}.json"));
        if let Err(e) = std::fs::write(&p, serde_json::to_vec(m).expect("meta serializes")) {
            tracing::error!("writing {}: {e}", p.display());
        }
    }

    /// Creates a sandbox: the runtime starts it, then envd is brought up
    /// (health, environment) through [`crate::envd::Envd::start`]; when
    /// envd does not come up, the sandbox is destroyed again.
    pub async fn create(
        &self,
        spec: SandboxSpec,
        timeout_sec: u32,
        metadata: HashMap<String, String>,
        auto_pause: bool,
        auto_pause_drop_memory: bool,
    ) -> Result<(Instance, Meta), RuntimeError> {
        let id = spec.id.clone();
        // Hidden from listings until it is whole: a reconciler must not
        // record as running a sandbox whose envd may yet fail to start.
        self.starting.lock().insert(id.clone());
        let _shown = Shown(&self.starting, &id);
        let inst = self.runtime.create(spec).await?;
        let started = match self.start_envd(&inst).await {
            Ok(()) => self.runtime.confirm(&id).await,
            Err(e) => Err(e),
        };
        if let Err(e) = started {
            if let Err(d) = self.runtime.destroy(&id).await {
                tracing::warn!(sandbox = %id, "removing a sandbox whose envd did not start: {d}");
            }
            return Err(e);
        }
        let t = now();
        let m = Meta {
            timeout_sec,
            created_at: t,
            expires_at: if timeout_sec > 0 {
                t + i64::from(timeout_sec)
            } else {
                0
            },
            metadata,
            auto_pause,
            auto_pause_drop_memory,
        };
        self.save(&id, &m);
        self.meta.lock().insert(id.clone(), m.clone());
        Ok((inst, m))
    }

    /// Brings up the envd of a sandbox its runtime just started (created,
    /// or booted again): its environment and default user, as its spec says.
    async fn start_envd(&self, inst: &Instance) -> Result<(), RuntimeError> {
        crate::envd::Envd::new(&self.pools, inst)
            .start(&inst.spec.envs, &inst.spec.run_as, self.envd_timeout)
            .await
            .map_err(|e| {
                RuntimeError::caused(format!("sandbox {}: envd did not start", inst.spec.id), e)
            })
    }

    /// Pauses a sandbox, keeping its memory (frozen) or dropping it (every
    /// process ends; a resume boots it again from its disk).
    pub async fn pause(&self, id: &str, drop_memory: bool) -> Result<Instance, RuntimeError> {
        if drop_memory {
            self.runtime.pause_dropping_memory(id).await
        } else {
            self.runtime.pause(id).await
        }
    }

    /// Resumes a paused sandbox; with `reboot`, or when its memory was
    /// dropped, it boots again from its disk and envd is brought up as
    /// after a create (environment, default user), then confirmed.
    pub async fn resume(&self, id: &str, reboot: bool) -> Result<Instance, RuntimeError> {
        let before = self
            .runtime
            .get(id)
            .ok_or_else(|| RuntimeError::NotFound(id.into()))?;
        if reboot && before.state == crate::runtime::RunState::Paused && !before.memory_dropped {
            self.runtime.pause_dropping_memory(id).await?;
        }
        let cold = before.memory_dropped || reboot;
        // Its timer restarts first: a deadline that passed while it was
        // paused must not have the reaper pause or destroy it mid-resume.
        self.touch(id, None);
        let inst = self.runtime.resume(id).await?;
        if cold {
            if let Err(e) = self.start_envd(&inst).await {
                // Back to paused without memory, to be resumed again.
                if let Err(p) = self.runtime.pause_dropping_memory(id).await {
                    tracing::warn!(sandbox = %id, "pausing a sandbox whose envd did not start: {p}");
                }
                return Err(e);
            }
            self.runtime.confirm(id).await?;
        }
        Ok(inst)
    }

    /// Destroys a sandbox.
    pub async fn destroy(&self, id: &str) -> Result<(), RuntimeError> {
        let r = self.runtime.destroy(id).await;
        self.meta.lock().remove(id);
        self.metrics.forget(id);
        let _ = std::fs::remove_file(self.meta_dir.join(format!("{id}.json")));
        r
    }

    /// Every whole sandbox on this host (those still being created are
    /// left out): what `ListSandboxes` reports.
    pub fn listed(&self) -> Vec<Instance> {
        let starting = self.starting.lock();
        let mut all = self.runtime.list();
        all.retain(|i| !starting.contains(&i.spec.id));
        all
    }

    /// The agent's record of a sandbox.
    pub fn meta(&self, id: &str) -> Meta {
        self.meta.lock().get(id).cloned().unwrap_or_default()
    }

    /// Restarts the idle timer; with `timeout_sec`, changes the timeout.
    pub fn touch(&self, id: &str, timeout_sec: Option<u32>) -> Meta {
        let mut all = self.meta.lock();
        let m = all.entry(id.to_string()).or_default();
        if let Some(t) = timeout_sec {
            m.timeout_sec = t;
        }
        m.expires_at = if m.timeout_sec > 0 {
            now() + i64::from(m.timeout_sec)
        } else {
            0
        };
        let m = m.clone();
        drop(all);
        self.save(id, &m);
        m
    }

    /// CPU use of `id` since its last sample, as a percentage of its
    /// vcpus (0 before its first sample).
    pub fn cpu_pct(&self, id: &str, cpu_usec: u64, vcpus: u32) -> f32 {
        self.metrics
            .rate_since_last(id, std::time::Instant::now(), cpu_usec, vcpus)
    }

    /// Samples every running sandbox's usage into [`Agent::metrics`] every
    /// `period`: one timer for the whole host. Reading a sandbox's usage
    /// is a few file reads and a `statvfs`, done on the blocking pool.
    pub async fn sample_forever(self: Arc<Self>, period: Duration) {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let agent = self.clone();
            if tokio::task::spawn_blocking(move || agent.sample_once())
                .await
                .is_err()
            {
                tracing::error!("the metrics sampler panicked; it goes on at the next tick");
            }
        }
    }

    /// One round of the sampler.
    fn sample_once(&self) {
        let listed = self.listed();
        let at = now();
        for i in &listed {
            if i.state != crate::runtime::RunState::Running {
                continue;
            }
            if let Ok(u) = self.runtime.usage(&i.spec.id) {
                self.metrics
                    .record(&i.spec.id, std::time::Instant::now(), at, &u, i.spec.vcpus);
            }
        }
        let live = listed.into_iter().map(|i| i.spec.id).collect();
        self.metrics.retain(&live);
    }

    /// Destroys (or, with `auto_pause`, pauses) running sandboxes whose
    /// timeout passed, every `period`. Paused sandboxes do not expire.
    pub async fn reap_forever(self: Arc<Self>, period: Duration) {
        use futures::FutureExt;
        let mut tick = tokio::time::interval(period);
        loop {
            tick.tick().await;
            // A panic in one round is logged (by the panic hook) and the
            // next round runs: the reaper never stops for good.
            if std::panic::AssertUnwindSafe(self.reap_once())
                .catch_unwind()
                .await
                .is_err()
            {
                tracing::error!("the reaper panicked; it goes on at the next tick");
            }
        }
    }

    /// One round of the reaper: expired sandboxes paused or destroyed,
    /// records of vanished ones forgotten.
    async fn reap_once(&self) {
        let t = now();
        let expired: Vec<String> = self
            .meta
            .lock()
            .iter()
            .filter(|(_, m)| m.expires_at > 0 && m.expires_at <= t)
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            let Some(inst) = self.runtime.get(&id) else {
                continue;
            };
            if inst.state == crate::runtime::RunState::Paused {
                continue;
            }
            let meta = self.meta(&id);
            if meta.auto_pause {
                tracing::info!(sandbox = %id, drop_memory = meta.auto_pause_drop_memory, "timeout reached; pausing (auto-pause)");
                if let Err(e) = self.pause(&id, meta.auto_pause_drop_memory).await {
                    tracing::error!(sandbox = %id, "pausing an expired sandbox: {e}");
                }
                continue;
            }
            tracing::info!(sandbox = %id, "timeout reached; destroying");
            if let Err(e) = self.destroy(&id).await {
                tracing::error!(sandbox = %id, "destroying an expired sandbox: {e}");
            }
        }
        // Forget records of sandboxes the runtime lost (their init died).
        let live: Vec<String> = self.runtime.list().into_iter().map(|i| i.spec.id).collect();
        let gone: Vec<String> = self
            .meta
            .lock()
            .keys()
            .filter(|id| !live.contains(id))
            .cloned()
            .collect();
        for id in gone {
            self.meta.lock().remove(&id);
            let _ = std::fs::remove_file(self.meta_dir.join(format!("{id}.json")));
        }
    }
}
