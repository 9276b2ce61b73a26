//! The messages of the streaming routes: the WebSockets of
//! `GET /v1/sandboxes/{id}/exec/stream`, `…/processes/{pid}/stream` and
//! `…/pty` (JSON text frames; a PTY's bytes travel as binary frames), and
//! the server-sent events of `GET /v1/events/stream`.
//!
//! What clients send is read leniently, as before these types: missing
//! fields take their defaults and unknown ones are ignored.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// The first message on `exec/stream`: what to run.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ExecStart {
    /// The program (default `/bin/sh`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<String>,
    /// Its arguments.
    #[serde(default)]
    pub args: Vec<String>,
}

/// What `exec/stream` and `processes/{pid}/stream` send: the process's
/// events, in order; the socket closes after `exit` or `error`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ProcessMessage {
    /// It started (or, re-attached, it runs) as `pid`.
    Start {
        /// Its pid inside the sandbox.
        pid: u32,
    },
    /// Output on stdout (or its PTY), as text (invalid UTF-8 replaced).
    Stdout {
        /// The text.
        data: String,
    },
    /// Output on stderr, as text.
    Stderr {
        /// The text.
        data: String,
    },
    /// It ended.
    Exit {
        /// Its exit code; -1 when a signal ended it.
        exit_code: i32,
    },
    /// It could not be started or followed.
    Error {
        /// Why.
        data: String,
    },
}

/// The first message on `pty`: a new session, or an old one again.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PtyOpen {
    /// Starts `cmd` (default: `bash -i -l`) under a PTY.
    Start {
        /// The program.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cmd: Option<String>,
        /// Its arguments.
        #[serde(default)]
        args: Vec<String>,
        /// Columns (default 80).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cols: Option<u32>,
        /// Rows (default 24).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rows: Option<u32>,
        /// Environment variables (`TERM` defaults to `xterm-256color`).
        #[serde(default)]
        envs: HashMap<String, String>,
        /// Working directory.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cwd: Option<String>,
    },
    /// Re-attaches to the session that `started` named `tag`.
    Connect {
        /// The session's tag.
        #[serde(default)]
        tag: String,
    },
}

/// What a client sends on `pty` after the first message, as text frames
/// (keystrokes also go as binary frames).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PtyControl {
    /// The terminal's new size.
    Resize {
        /// Columns.
        #[serde(default)]
        cols: Option<u32>,
        /// Rows.
        #[serde(default)]
        rows: Option<u32>,
    },
    /// SIGKILL to the session's process.
    Kill,
    /// Keystrokes, as text.
    Input {
        /// The text.
        #[serde(default)]
        data: String,
    },
}

/// What `pty` sends as text frames (its output goes as binary frames).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PtyMessage {
    /// The session runs: `tag` re-attaches to it later.
    Started {
        /// Its process.
        pid: u32,
        /// Its tag.
        tag: String,
    },
    /// Its process ended; the socket closes.
    Exit {
        /// Its exit code; -1 when a signal ended it.
        exit_code: i32,
    },
    /// The session could not start, or broke.
    Error {
        /// Why.
        data: String,
        /// Whether the session is over for this socket.
        fatal: bool,
    },
}

/// One server-sent event of `GET /v1/events/stream`: a sandbox of the
/// team changed (the `wrenn` SDK's `capsule.*` names). The stream opens
/// with `{"event": "connected"}`, which has no other field.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LifecycleEvent {
    /// `capsule.create`, `capsule.pause`, `capsule.resume`,
    /// `capsule.destroy`, `capsule.state.changed` (or `connected`).
    pub event: String,
    /// The sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capsule_id: Option<String>,
    /// Its state now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// When.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
}
