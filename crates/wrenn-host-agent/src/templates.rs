//! The on-disk template store: `<data>/templates/<name>/rootfs`, owned by
//! the sandbox uid range so that root inside a sandbox owns its files.
//!
//! The `base` template is a Debian bookworm system built with debootstrap
//! from Debian's archive (no Docker), cached until removed.

use std::io::BufRead;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Packages the base template has beyond debootstrap's minbase.
pub const BASE_PACKAGES: &str =
    "python3,python-is-python3,python3-pip,python3-venv,curl,git,ca-certificates,procps,sudo";

/// The version of the base template's recipe (its packages and accounts),
/// kept in `<template>/recipe`: a `base` built by an older recipe is stale,
/// and `wrenn template build base` builds it again. Raise it whenever the
/// recipe changes. 2: `sudo`, `python`, and `user` in the sudoers.
pub const BASE_RECIPE: u32 = 2;

/// The account every template built by Wrenn has besides root, as E2B's
/// templates do: uid 1000, home `/home/user`, passwordless `sudo`.
pub const TEMPLATE_USER: &str = wrenn_protocol::sandbox::E2B_USER;

/// The file in a template's directory with its [`Defaults`].
const DEFAULTS_FILE: &str = "template.json";

/// Template errors.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// No template of that name.
    #[error(
        "template '{name}' not found; this host has {}; `wrenn template build base` builds the base template, `wrenn template import NAME DIR` adds a root file system as a template",
        if known.is_empty() { "none".to_string() } else { known.join(", ") }
    )]
    NotFound {
        /// The name asked for.
        name: String,
        /// The templates there are.
        known: Vec<String>,
    },
    /// The name cannot be a template name.
    #[error("invalid template name '{0}': use letters, digits, '-' and '_' (at most 64)")]
    InvalidName(String),
    /// Already there.
    #[error("template '{0}' already exists; remove it first with `wrenn template rm {0}`")]
    Exists(String),
    /// The build failed.
    #[error("building template '{name}' failed: {message}")]
    Build {
        /// Template.
        name: String,
        /// What went wrong.
        message: String,
    },
    /// Filesystem error.
    #[error("template store at {path}: {source}")]
    Io {
        /// Where.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TemplateError + '_ {
    move |source| TemplateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A template ready for sandboxes.
#[derive(Debug, Clone)]
pub struct Template {
    /// Its name.
    pub name: String,
    /// The read-only root filesystem.
    pub rootfs: PathBuf,
    /// Who commands run as, and where, when a call names neither.
    pub defaults: Defaults,
}

/// What a template says its sandboxes' commands and file calls run as
/// when a call names no user or directory (`<template>/template.json`).
/// What a template leaves out, the API that made the sandbox decides:
/// `user` in `/home/user` for E2B's, root for Wrenn's own.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Defaults {
    /// The user, by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The working directory, absolute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
}

impl Template {
    /// A file of the template's root, not followed out of it when it is a
    /// symlink (templates are the operator's, but a link in one must not
    /// make the agent read a host file).
    fn read(&self, rel: &str) -> Option<String> {
        let p = self.rootfs.join(rel);
        let m = std::fs::symlink_metadata(&p).ok()?;
        if !m.is_file() {
            return None;
        }
        std::fs::read_to_string(p).ok()
    }

    /// Whether the template has `sudo` (`/usr/bin/sudo`).
    pub fn has_sudo(&self) -> bool {
        std::fs::symlink_metadata(self.rootfs.join("usr/bin/sudo")).is_ok_and(|m| m.is_file())
    }

    /// Whether the template has an account named `user` (a line of its
    /// `/etc/passwd` starting with `user:`).
    pub fn has_user(&self, user: &str) -> bool {
        self.read("etc/passwd").is_some_and(|p| {
            p.lines()
                .any(|l| l.split(':').next() == Some(user) && !user.is_empty())
        })
    }
}

/// Templates under one directory.
#[derive(Debug, Clone)]
pub struct TemplateStore {
    dir: PathBuf,
    uid_base: u32,
}

/// Checks a template name.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && !name.starts_with('-')
}

impl TemplateStore {
    /// The store in `dir`, for sandboxes whose root is host uid `uid_base`.
    pub fn new(dir: PathBuf, uid_base: u32) -> Self {
        TemplateStore { dir, uid_base }
    }

    /// Where templates live.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Finds a template.
    pub fn get(&self, name: &str) -> Result<Template, TemplateError> {
        if !valid_name(name) {
            return Err(TemplateError::InvalidName(name.into()));
        }
        let rootfs = self.dir.join(name).join("rootfs");
        if rootfs.join("bin").exists() || rootfs.join("usr").exists() {
            // A file that cannot be read is logged and taken as none: the
            // template stays listed and removable.
            let file = self.dir.join(name).join(DEFAULTS_FILE);
            let defaults = match std::fs::read(&file) {
                Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
                    tracing::warn!(
                        "{}: {e}; the template runs as the API's default",
                        file.display()
                    );
                    Defaults::default()
                }),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Defaults::default(),
                Err(e) => {
                    tracing::warn!(
                        "{}: {e}; the template runs as the API's default",
                        file.display()
                    );
                    Defaults::default()
                }
            };
            Ok(Template {
                name: name.into(),
                rootfs,
                defaults,
            })
        } else {
            Err(TemplateError::NotFound {
                name: name.into(),
                known: self.list(),
            })
        }
    }

    /// Names of the templates present.
    pub fn list(&self) -> Vec<String> {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return vec![];
        };
        let mut v: Vec<String> = rd
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| valid_name(n) && self.get(n).is_ok())
            .collect();
        v.sort();
        v
    }

    /// Size of a template on disk, in bytes.
    pub fn size(&self, name: &str) -> u64 {
        let mut total = 0;
        let mut stack = vec![self.dir.join(name)];
        while let Some(d) = stack.pop() {
            let Ok(rd) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in rd.flatten() {
                let Ok(m) = e.metadata() else { continue };
                if m.is_dir() {
                    stack.push(e.path());
                } else {
                    total += m.blocks() * 512;
                }
            }
        }
        total
    }

    /// Removes a template.
    pub fn remove(&self, name: &str) -> Result<(), TemplateError> {
        self.get(name)?;
        let dir = self.dir.join(name);
        std::fs::remove_dir_all(&dir).map_err(io_err(&dir))
    }

    /// Copies the tree at `source` in as template `name`, shifting its
    /// ownership into the sandbox uid range; `defaults` are what its
    /// sandboxes run as when a call names no user or directory.
    pub fn import(
        &self,
        name: &str,
        source: &Path,
        defaults: &Defaults,
    ) -> Result<Template, TemplateError> {
        if !valid_name(name) {
            return Err(TemplateError::InvalidName(name.into()));
        }
        if self.get(name).is_ok() {
            return Err(TemplateError::Exists(name.into()));
        }
        let bad = |message: String| TemplateError::Build {
            name: name.into(),
            message,
        };
        if let Some(w) = defaults.workdir.as_ref().filter(|w| !w.starts_with('/')) {
            return Err(bad(format!(
                "the default workdir '{w}' is not an absolute path"
            )));
        }
        if let Some(u) = &defaults.user {
            let probe = Template {
                name: name.into(),
                rootfs: source.to_path_buf(),
                defaults: Defaults::default(),
            };
            if !probe.has_user(u) {
                return Err(bad(format!(
                    "the default user '{u}' is not in {}/etc/passwd; add the account first",
                    source.display()
                )));
            }
        }
        let tmp = self
            .dir
            .join(format!(".{name}.import-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
        let out = Command::new("cp")
            .arg("-a")
            .arg(source)
            .arg(tmp.join("rootfs"))
            .output()
            .map_err(io_err(&tmp))?;
        if !out.status.success() {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(TemplateError::Build {
                name: name.into(),
                message: String::from_utf8_lossy(&out.stderr).into(),
            });
        }
        shift_ownership(&tmp.join("rootfs"), self.uid_base).map_err(io_err(&tmp))?;
        if *defaults != Defaults::default() {
            let file = tmp.join(DEFAULTS_FILE);
            let json = serde_json::to_vec_pretty(defaults).expect("defaults serialize");
            if let Err(e) = std::fs::write(&file, json) {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(io_err(&file)(e));
            }
        }
        let dest = self.dir.join(name);
        std::fs::rename(&tmp, &dest).map_err(io_err(&dest))?;
        self.get(name)
    }

    /// Whether `base` is there and was built by the current recipe
    /// ([`BASE_RECIPE`]).
    pub fn base_is_current(&self) -> bool {
        self.get("base").is_ok()
            && std::fs::read_to_string(self.dir.join("base").join("recipe"))
                .ok()
                .and_then(|r| r.trim().parse::<u32>().ok())
                == Some(BASE_RECIPE)
    }

    /// Builds the `base` template with debootstrap from `mirror`, reporting
    /// each line debootstrap prints to `progress`. A `base` already there
    /// is replaced once the new one is whole; the old one is moved aside
    /// (`.base.replaced-<unix time>`), not removed, since sandboxes made
    /// from it may still run on it: the last progress line names it.
    pub fn build_base(
        &self,
        mirror: &str,
        mut progress: impl FnMut(&str),
    ) -> Result<Template, TemplateError> {
        let name = "base";
        let fail = |message: String| TemplateError::Build {
            name: name.into(),
            message,
        };
        let tmp = self
            .dir
            .join(format!(".{name}.build-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let rootfs = tmp.join("rootfs");
        std::fs::create_dir_all(&rootfs).map_err(io_err(&tmp))?;
        let result = (|| {
            let mut child = Command::new("debootstrap")
                .args([
                    "--variant=minbase",
                    &format!("--include={BASE_PACKAGES}"),
                    "bookworm",
                ])
                .arg(&rootfs)
                .arg(mirror)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| {
                    fail(format!(
                        "running debootstrap (apt-get install debootstrap): {e}"
                    ))
                })?;
            let stdout = child.stdout.take().expect("piped");
            let mut last = Vec::new();
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                progress(&line);
                last.push(line);
                if last.len() > 20 {
                    last.remove(0);
                }
            }
            let out = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
            if !out.status.success() {
                let log = std::fs::read_to_string(rootfs.join("debootstrap/debootstrap.log"))
                    .unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                return Err(fail(format!(
                    "debootstrap exited with {}:\n{}\n{}\n{}",
                    out.status,
                    last.join("\n"),
                    String::from_utf8_lossy(&out.stderr),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )));
            }
            progress("I: Adding the user 'user' (uid 1000, passwordless sudo)");
            let out = Command::new("chroot")
                .arg(&rootfs)
                .args([
                    "useradd",
                    "--create-home",
                    "--uid",
                    "1000",
                    "--shell",
                    "/bin/bash",
                    TEMPLATE_USER,
                ])
                .output()
                .map_err(|e| fail(format!("useradd: {e}")))?;
            if !out.status.success() {
                return Err(fail(format!(
                    "useradd: {}",
                    String::from_utf8_lossy(&out.stderr)
                )));
            }
            let sudoers = rootfs.join("etc/sudoers.d/user");
            std::fs::write(
                &sudoers,
                format!("{TEMPLATE_USER} ALL=(ALL:ALL) NOPASSWD: ALL\n"),
            )
            .and_then(|()| {
                std::fs::set_permissions(&sudoers, std::fs::Permissions::from_mode(0o440))
            })
            .map_err(|e| fail(format!("writing {}: {e}", sudoers.display())))?;
            progress("I: Cleaning package caches");
            for dir in ["var/cache/apt/archives", "var/lib/apt/lists"] {
                if let Ok(rd) = std::fs::read_dir(rootfs.join(dir)) {
                    for e in rd.flatten() {
                        if e.file_type().is_ok_and(|t| t.is_file()) {
                            let _ = std::fs::remove_file(e.path());
                        }
                    }
                }
            }
            progress("I: Shifting ownership into the sandbox uid range");
            shift_ownership(&rootfs, self.uid_base)
                .map_err(|e| fail(format!("shifting ownership: {e}")))?;
            let recipe = tmp.join("recipe");
            std::fs::write(&recipe, format!("{BASE_RECIPE}\n")).map_err(io_err(&recipe))?;
            let dest = self.dir.join(name);
            if dest.exists() {
                // Swapped in one step: creates never find no `base`.
                rustix::fs::renameat_with(
                    rustix::fs::CWD,
                    &tmp,
                    rustix::fs::CWD,
                    &dest,
                    rustix::fs::RenameFlags::EXCHANGE,
                )
                .map_err(|e| io_err(&dest)(e.into()))?;
                let aside = self.dir.join(format!(
                    ".{name}.replaced-{}-{}",
                    crate::agent::now(),
                    std::process::id()
                ));
                if let Err(e) = std::fs::rename(&tmp, &aside) {
                    // The new one is in place; the old one stays at `tmp`.
                    progress(&format!(
                        "W: The previous build is at {} ({e}); remove it once no sandbox made from it runs",
                        tmp.display()
                    ));
                } else {
                    progress(&format!(
                        "I: The previous build is kept at {}; remove it (rm -r) once no sandbox made from it runs",
                        aside.display()
                    ));
                }
                return Ok(());
            }
            std::fs::rename(&tmp, &dest).map_err(io_err(&dest))?;
            Ok(())
        })();
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        result?;
        self.get(name)
    }
}

/// Adds `base` to the owner and group of every entry under `root` (entries
/// already in the range stay), keeping setuid/setgid bits that chown clears.
pub fn shift_ownership(root: &Path, base: u32) -> std::io::Result<()> {
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = std::fs::symlink_metadata(&p)?;
        let (uid, gid) = (m.uid(), m.gid());
        let shift = |id: u32| if id >= base { id } else { base + id };
        if uid < base || gid < base {
            std::os::unix::fs::lchown(&p, Some(shift(uid)), Some(shift(gid)))?;
            if !m.file_type().is_symlink() && m.mode() & 0o6000 != 0 {
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(m.mode() & 0o7777))?;
            }
        }
        if m.is_dir() {
            for e in std::fs::read_dir(&p)? {
                stack.push(e?.path());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_names_are_checked() {
        for (name, ok) in [
            ("base", true),
            ("my_tpl-2", true),
            ("", false),
            ("../etc", false),
            ("a b", false),
            ("-x", false),
        ] {
            assert_eq!(valid_name(name), ok, "{name:?}");
        }
    }

    #[test]
    fn shifting_keeps_setuid_and_is_idempotent() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: chown needs root");
            return;
        }
        let root = std::env::temp_dir().join(format!("shift-{}", std::process::id()));
        std::fs::create_dir_all(root.join("d")).unwrap();
        let f = root.join("d/suid");
        std::fs::write(&f, b"x").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o4755)).unwrap();
        std::os::unix::fs::symlink("suid", root.join("d/link")).unwrap();
        shift_ownership(&root, 1_000_000).unwrap();
        shift_ownership(&root, 1_000_000).unwrap();
        let m = std::fs::metadata(&f).unwrap();
        assert_eq!(
            (m.uid(), m.gid(), m.mode() & 0o7777),
            (1_000_000, 1_000_000, 0o4755)
        );
        assert_eq!(
            std::fs::symlink_metadata(root.join("d/link"))
                .unwrap()
                .uid(),
            1_000_000
        );
        std::fs::remove_dir_all(&root).unwrap();
    }
}
