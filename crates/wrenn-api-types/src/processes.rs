//! Commands in a sandbox: a buffered exec, background processes.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// `POST /v1/sandboxes/{id}/exec`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Exec {
    /// The program (a path, or a name looked up in `PATH`).
    pub cmd: String,
    /// Its arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Environment variables added to the sandbox's.
    #[serde(default)]
    pub envs: HashMap<String, String>,
    /// Working directory (default: the user's home).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Seconds until it is killed (default 60 in the foreground, none in
    /// the background; 0 = none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_sec: Option<u32>,
    /// Start it and answer with its pid (an [`Started`]) at once.
    #[serde(default)]
    pub background: bool,
    /// A name to find it by among the processes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Most bytes of stdout (and of stderr) to return; the rest is dropped
    /// and `stdout_truncated`/`stderr_truncated` say so. Default 16 MiB,
    /// at most 64 MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_bytes: Option<u64>,
}

/// What a foreground exec did.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ExecOutput {
    /// The sandbox.
    pub sandbox_id: String,
    /// The command line, joined by spaces.
    pub cmd: String,
    /// Its stdout, in `encoding`.
    pub stdout: String,
    /// Its stderr, in `encoding`.
    pub stderr: String,
    /// Its exit code; -1 when a signal ended it.
    pub exit_code: i32,
    /// How long it ran.
    pub duration_ms: u64,
    /// `utf-8`, or `base64` when either stream was not UTF-8.
    pub encoding: String,
    /// Whether stdout was cut at `max_output_bytes`.
    pub stdout_truncated: bool,
    /// Whether stderr was cut at `max_output_bytes`.
    pub stderr_truncated: bool,
}

/// A process started in the background.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Started {
    /// The sandbox.
    pub sandbox_id: String,
    /// Its pid inside the sandbox.
    pub pid: u32,
    /// The tag it was given (empty for none).
    pub tag: String,
}

/// The answer to an exec: its output, or (with `background`) its pid.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(untagged)]
pub enum ExecResult {
    /// In the foreground: what it did.
    Finished(ExecOutput),
    /// In the background: where it runs.
    Started(Started),
}

/// `GET /v1/sandboxes/{id}/processes`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Processes {
    /// The processes envd started that still run.
    pub processes: Vec<Process>,
}

/// A running process.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Process {
    /// Its pid inside the sandbox.
    pub pid: u32,
    /// Its tag (empty for none).
    pub tag: String,
    /// Its program.
    pub cmd: String,
    /// Its arguments.
    pub args: Vec<String>,
}
