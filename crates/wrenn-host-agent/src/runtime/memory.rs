//! [`MemoryRuntime`]: a test double of [`Runtime`] for tests without root.
//! Built only with the `test-double` feature, which only tests enable: it
//! is never a runtime a shipped binary can choose.
//!
//! A sandbox is a record in memory and a real envd (the `envd` library)
//! served in this process on a loopback port of its own, running commands
//! as the current user in a scratch directory. The agent's service, the
//! control plane and the REST API then run their real code over it, in
//! seconds and without namespaces, cgroups or templates on disk. What it
//! does not do: isolate anything, freeze on pause (pause only flips the
//! state), reach any port but envd's, or survive its process (`recover`
//! finds nothing).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;

use super::{Instance, RunState, Runtime, RuntimeError, SandboxSpec, Usage};

struct Entry {
    instance: Instance,
    /// Stops its envd.
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// Its scratch directory (envd's working directory).
    dir: PathBuf,
}

/// Sandboxes in memory, each with a real envd on loopback.
pub struct MemoryRuntime {
    templates: Mutex<Vec<String>>,
    sandboxes: Mutex<HashMap<String, Entry>>,
    scratch: PathBuf,
    /// Creates to fail (with [`RuntimeError::Failed`]) before any works.
    failures: AtomicUsize,
}

impl MemoryRuntime {
    /// A runtime that can start `templates`, keeping each sandbox's scratch
    /// directory under `scratch`.
    pub fn new(templates: &[&str], scratch: PathBuf) -> std::sync::Arc<Self> {
        std::sync::Arc::new(MemoryRuntime {
            templates: Mutex::new(templates.iter().map(|t| t.to_string()).collect()),
            sandboxes: Mutex::default(),
            scratch,
            failures: AtomicUsize::new(0),
        })
    }

    /// Makes the next `n` creates fail as a broken host would.
    pub fn fail_next_creates(&self, n: usize) {
        self.failures.store(n, Ordering::SeqCst);
    }

    fn entry<T>(
        &self,
        id: &str,
        f: impl FnOnce(&mut Entry) -> Result<T, RuntimeError>,
    ) -> Result<T, RuntimeError> {
        match self.sandboxes.lock().get_mut(id) {
            Some(e) => f(e),
            None => Err(RuntimeError::NotFound(id.to_string())),
        }
    }
}

impl Runtime for MemoryRuntime {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn create(&self, spec: SandboxSpec) -> Result<Instance, RuntimeError> {
        if !self.templates.lock().contains(&spec.template) {
            return Err(RuntimeError::InvalidSpec(format!(
                "template '{}' not found on this host",
                spec.template
            )));
        }
        if self
            .failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(RuntimeError::failed("the test asked this create to fail"));
        }
        if self.sandboxes.lock().contains_key(&spec.id) {
            return Err(RuntimeError::AlreadyExists(spec.id));
        }
        let dir = self.scratch.join(&spec.id);
        std::fs::create_dir_all(&dir)
            .map_err(|e| RuntimeError::caused(format!("creating {}", dir.display()), e))?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| RuntimeError::caused("binding envd's port", e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| RuntimeError::caused("reading envd's port", e))?;
        let token = format!("{:032x}", rand::random::<u128>());
        let state = envd::AppState::new(envd::Defaults {
            access_token: Some(token.clone()),
            workdir: Some(dir.clone()),
            ..Default::default()
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(envd::serve_on(listener, state, async move {
            let _ = stopped.await;
        }));
        let instance = Instance {
            spec,
            envd_addr: addr,
            envd_token: token,
            init_pid: std::process::id(),
            state: RunState::Running,
            memory_dropped: false,
        };
        let mut all = self.sandboxes.lock();
        if all.contains_key(&instance.spec.id) {
            return Err(RuntimeError::AlreadyExists(instance.spec.id));
        }
        all.insert(
            instance.spec.id.clone(),
            Entry {
                instance: instance.clone(),
                stop: Some(stop),
                dir,
            },
        );
        Ok(instance)
    }

    async fn destroy(&self, id: &str) -> Result<(), RuntimeError> {
        let mut e = self
            .sandboxes
            .lock()
            .remove(id)
            .ok_or_else(|| RuntimeError::NotFound(id.to_string()))?;
        if let Some(stop) = e.stop.take() {
            let _ = stop.send(());
        }
        let _ = std::fs::remove_dir_all(&e.dir);
        Ok(())
    }

    async fn pause(&self, id: &str) -> Result<Instance, RuntimeError> {
        self.entry(id, |e| {
            if e.instance.state == RunState::Paused {
                return Err(RuntimeError::InvalidState(format!(
                    "sandbox {id} is already paused"
                )));
            }
            e.instance.state = RunState::Paused;
            Ok(e.instance.clone())
        })
    }

    /// Records them: a memory sandbox has no network to filter.
    async fn set_egress(&self, id: &str, egress: super::Egress) -> Result<Instance, RuntimeError> {
        self.entry(id, |e| {
            e.instance.spec.egress = egress;
            Ok(e.instance.clone())
        })
    }

    async fn resume(&self, id: &str) -> Result<Instance, RuntimeError> {
        self.entry(id, |e| {
            if e.instance.state == RunState::Running {
                return Err(RuntimeError::InvalidState(format!(
                    "sandbox {id} is not paused"
                )));
            }
            e.instance.state = RunState::Running;
            Ok(e.instance.clone())
        })
    }

    fn get(&self, id: &str) -> Option<Instance> {
        self.sandboxes.lock().get(id).map(|e| e.instance.clone())
    }

    fn list(&self) -> Vec<Instance> {
        let mut all: Vec<Instance> = self
            .sandboxes
            .lock()
            .values()
            .map(|e| e.instance.clone())
            .collect();
        all.sort_by(|a, b| a.spec.id.cmp(&b.spec.id));
        all
    }

    fn usage(&self, id: &str) -> Result<Usage, RuntimeError> {
        self.entry(id, |e| {
            Ok(Usage {
                memory_limit_bytes: u64::from(e.instance.spec.memory_mb) << 20,
                disk_limit_bytes: u64::from(e.instance.spec.disk_size_mb) << 20,
                pids: 1,
                ..Default::default()
            })
        })
    }

    /// The sandbox's envd port leads to its envd (which listens on a port
    /// of its own here); nothing else listens.
    async fn connect_loopback(
        &self,
        id: &str,
        port: u16,
    ) -> Result<Option<tokio::net::TcpStream>, RuntimeError> {
        let envd = self.entry(id, |e| Ok(e.instance.envd_addr))?;
        if port != wrenn_protocol::envd::PORT {
            return Ok(None);
        }
        tokio::net::TcpStream::connect(envd)
            .await
            .map(Some)
            .map_err(|e| RuntimeError::caused(format!("connecting to the envd of {id}"), e))
    }

    async fn recover(&self) -> Result<Vec<Instance>, RuntimeError> {
        Ok(Vec::new())
    }
}

impl crate::service::TemplateList for MemoryRuntime {
    fn template_names(&self) -> Vec<String> {
        self.templates.lock().clone()
    }

    fn remove_template(&self, name: &str) -> Result<bool, String> {
        let in_use = self
            .sandboxes
            .lock()
            .values()
            .any(|e| e.instance.spec.template == name);
        if in_use {
            return Err(format!("template '{name}' is in use by a sandbox"));
        }
        let mut t = self.templates.lock();
        let before = t.len();
        t.retain(|n| n != name);
        Ok(t.len() < before)
    }

    /// Nothing: its envds run as the test's own process, whose host has
    /// no template accounts.
    fn run_as(&self, _name: &str, _requested: Option<&str>) -> crate::templates::Defaults {
        crate::templates::Defaults::default()
    }
}

impl Drop for MemoryRuntime {
    fn drop(&mut self) {
        for (_, mut e) in self.sandboxes.lock().drain() {
            if let Some(stop) = e.stop.take() {
                let _ = stop.send(());
            }
            let _ = std::fs::remove_dir_all(&e.dir);
        }
    }
}
