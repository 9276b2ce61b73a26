//! `wrenn template ...`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use wrenn_host_agent::runtime::namespaces::Config;
use wrenn_host_agent::templates::TemplateStore;

use crate::table::{Align, Table};

/// Template subcommands. `ls` and `rm` ask the running control plane
/// (the templates its hosts have), or, with `--local`, the store in this
/// host's data dir; `build` and `import` work on that store.
#[derive(clap::Subcommand, Debug)]
pub enum TemplateCommand {
    /// List the templates sandboxes can start from.
    Ls {
        /// The templates in this host's data dir, not the control plane's.
        #[arg(long)]
        local: bool,
    },
    /// Build a template; `base` is Debian bookworm with bash, coreutils,
    /// python3 (also as `python`), pip, curl, git, ca-certificates and
    /// sudo, and the accounts root and `user` (uid 1000, passwordless
    /// sudo), built with debootstrap. A `base` from an older recipe is
    /// built again.
    Build {
        /// Template to build (only `base` can be built from scratch).
        name: String,
        /// Debian mirror debootstrap downloads from.
        #[arg(
            long,
            env = "WRENN_DEBIAN_MIRROR",
            default_value = "http://deb.debian.org/debian"
        )]
        mirror: String,
        /// Rebuild even if it exists and is current.
        #[arg(long)]
        force: bool,
    },
    /// Import a root filesystem directory as a template.
    Import {
        /// Template name.
        name: String,
        /// Directory holding the root filesystem.
        dir: PathBuf,
        /// The user commands and file calls run as when they name none
        /// (an account in the tree's /etc/passwd). Without it, sandboxes
        /// made through E2B's API run as `user` when the tree has that
        /// account, and as root otherwise; Wrenn's own API, as root.
        #[arg(long)]
        user: Option<String>,
        /// The working directory of commands and relative paths when a
        /// call names none (absolute). Without it, the user's home.
        #[arg(long)]
        workdir: Option<String>,
    },
    /// Remove a template (through the control plane: from every host;
    /// platform admins only).
    Rm {
        /// Template name.
        name: String,
        /// From this host's data dir, not through the control plane.
        #[arg(long)]
        local: bool,
    },
}

fn store(data_dir: &Path) -> anyhow::Result<TemplateStore> {
    let cfg = Config::new(data_dir.to_path_buf());
    let dir = data_dir.join("templates");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(TemplateStore::new(dir, cfg.uid_base))
}

/// Builds `base` with a progress bar.
pub fn build_base(store: &TemplateStore, mirror: &str) -> anyhow::Result<()> {
    // debootstrap prints about five lines per package, ~140 packages.
    let pb = ProgressBar::new(700);
    pb.set_style(
        ProgressStyle::with_template(
            "{spinner} building template base [{elapsed_precise}] [{bar:30}] {percent:>3}% {msg}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    pb.enable_steady_tick(Duration::from_millis(120));
    let quiet = pb.is_hidden();
    let t = store.build_base(mirror, |line| {
        pb.inc(1);
        // Without a terminal the bar is hidden: log a line now and then.
        if quiet
            && (pb.position() % 50 == 1
                || !line.starts_with("I: R")
                    && !line.starts_with("I: V")
                    && !line.starts_with("I: E")
                    && !line.starts_with("I: U")
                    && !line.starts_with("I: C"))
        {
            eprintln!("building template base: {line}");
        }
        if pb.position() + 5 > pb.length().unwrap_or(0) {
            pb.set_length(pb.position() + 50);
        }
        pb.set_message(
            line.trim_start_matches("I: ")
                .chars()
                .take(60)
                .collect::<String>(),
        );
    });
    match t {
        Ok(t) => {
            pb.set_length(pb.position());
            pb.finish_with_message(format!("done: {}", t.rootfs.display()));
            Ok(())
        }
        Err(e) => {
            pb.abandon_with_message("failed");
            Err(e.into())
        }
    }
}

/// Runs a template subcommand.
pub fn run(data_dir: &Path, conn: crate::cli::Conn, cmd: TemplateCommand) -> anyhow::Result<()> {
    match cmd {
        TemplateCommand::Ls { local: false } => return crate::cli::list_templates(conn),
        TemplateCommand::Rm { name, local: false } => {
            return crate::cli::remove_template(conn, &name);
        }
        _ => {}
    }
    // Only the local store from here on: nothing is created by reading it.
    if let TemplateCommand::Ls { .. } = cmd {
        let dir = data_dir.join("templates");
        let store = TemplateStore::new(dir, Config::new(data_dir.to_path_buf()).uid_base);
        let mut t = Table::new(&[("NAME", Align::Left), ("SIZE MB", Align::Right)]);
        for name in store.list() {
            t.row([name.clone(), (store.size(&name) / 1_000_000).to_string()]);
        }
        t.print();
        return Ok(());
    }
    let store = store(data_dir)?;
    match cmd {
        TemplateCommand::Ls { .. } => {}
        TemplateCommand::Build {
            name,
            mirror,
            force,
        } => {
            if name != "base" {
                anyhow::bail!(
                    "only 'base' can be built from scratch; import others with `wrenn template import {name} DIR`"
                );
            }
            if store.get(&name).is_ok() {
                if store.base_is_current() && !force {
                    println!("template base already exists (use --force to rebuild)");
                    return Ok(());
                }
                if !store.base_is_current() {
                    println!("template base is from an older recipe; building it again");
                }
            }
            build_base(&store, &mirror)?;
        }
        TemplateCommand::Import {
            name,
            dir,
            user,
            workdir,
        } => {
            let defaults = wrenn_host_agent::templates::Defaults { user, workdir };
            let t = store.import(&name, &dir, &defaults)?;
            println!("imported {} into {}", dir.display(), t.rootfs.display());
        }
        TemplateCommand::Rm { name, .. } => {
            store.remove(&name)?;
            println!("removed template {name}");
        }
    }
    Ok(())
}
