//! The bodies of Wrenn's native REST API (`/v1/…`), one type per body:
//! the control plane serializes them, its OpenAPI document describes them
//! (feature `openapi`: a schema for each), and `wrenn-client` sends and
//! reads them. A change to a body is a change here, seen by all three.
//!
//! Requests refuse unknown fields (a typo is a 400 naming the field, not
//! an option silently ignored), except an agent's heartbeat, which an
//! agent of another version may fill differently; optional fields are
//! `Option`s the server
//! fills with its defaults (`wrenn_protocol::sandbox::DEFAULT_*`).
//! Timestamps are RFC 3339 strings unless a field says unix seconds.
//!
//! E2B's REST API (`/sandboxes`, `/v2/sandboxes`, …) keeps E2B's own
//! shapes; its types live with its routes in the control plane.

#![warn(missing_docs)]

pub mod files;
pub mod hosts;
pub mod identity;
pub mod processes;
pub mod sandboxes;
pub mod streams;
pub mod templates;

use serde::{Deserialize, Serialize};

/// The shape of every error answer: `{"error": {"code", "message"}}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// Code and message of an error.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `not_found`, `invalid_state`.
    pub code: String,
    /// What went wrong and what to do.
    pub message: String,
    /// With `host_has_sandboxes` (a host delete refused): the live
    /// sandboxes on the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox_ids: Option<Vec<String>>,
}

/// `{"status": "ok"}`: `GET /health`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Health {
    /// `ok`.
    pub status: String,
}

#[cfg(test)]
mod tests {
    //! The wire shapes clients already read: field names, flattening,
    //! what is left out.

    use serde_json::json;

    use super::*;

    #[test]
    fn bodies_keep_their_wire_shapes() {
        let key = identity::Key {
            id: "key-1".into(),
            name: "ci".into(),
            prefix: "wrn_ab".into(),
            last4: "wxyz".into(),
            team_id: "team-1".into(),
            created_by: "usr-1".into(),
            created_at: Some("2026-01-01T00:00:00Z".into()),
            last_used_at: None,
        };
        let entry = files::Entry {
            name: "d".into(),
            path: "/d".into(),
            kind: "directory".into(),
            size: 0,
            mode: 0o755,
            owner: "root".into(),
            group: "root".into(),
            modified_at: 1,
        };
        let cases = [
            (
                serde_json::to_value(identity::NewKey {
                    info: key,
                    key: "wrn_secret".into(),
                }),
                json!({
                    "id": "key-1", "name": "ci", "prefix": "wrn_ab", "last4": "wxyz",
                    "team_id": "team-1", "created_by": "usr-1",
                    "created_at": "2026-01-01T00:00:00Z", "last_used_at": null,
                    "key": "wrn_secret",
                }),
            ),
            (
                serde_json::to_value(&entry),
                json!({
                    "name": "d", "path": "/d", "type": "directory", "size": 0, "mode": 493,
                    "owner": "root", "group": "root", "modified_at": 1,
                }),
            ),
            (
                serde_json::to_value(processes::ExecResult::Started(processes::Started {
                    sandbox_id: "sb-1".into(),
                    pid: 7,
                    tag: String::new(),
                })),
                json!({ "sandbox_id": "sb-1", "pid": 7, "tag": "" }),
            ),
            (
                serde_json::to_value(sandboxes::CreateSandbox {
                    vcpus: Some(2),
                    ..Default::default()
                }),
                json!({ "vcpus": 2 }),
            ),
            (
                serde_json::to_value(ErrorBody {
                    error: ErrorDetail {
                        code: "not_found".into(),
                        message: "sandbox 'x' not found".into(),
                        sandbox_ids: None,
                    },
                }),
                json!({ "error": { "code": "not_found", "message": "sandbox 'x' not found" } }),
            ),
        ];
        for (got, want) in cases {
            assert_eq!(got.unwrap(), want);
        }
    }

    #[test]
    fn requests_refuse_unknown_fields() {
        let e =
            serde_json::from_value::<sandboxes::CreateSandbox>(json!({ "vcpu": 2 })).unwrap_err();
        assert!(e.to_string().contains("unknown field `vcpu`"), "{e}");
        let r: processes::Exec = serde_json::from_value(json!({ "cmd": "ls" })).unwrap();
        assert_eq!(
            (r.cmd.as_str(), r.args.len(), r.background),
            ("ls", 0, false)
        );
    }

    #[test]
    fn an_exec_answer_reads_as_what_it_is() {
        let fg = json!({
            "sandbox_id": "sb-1", "cmd": "true", "stdout": "", "stderr": "", "exit_code": 0,
            "duration_ms": 1, "encoding": "utf-8", "stdout_truncated": false,
            "stderr_truncated": false,
        });
        let bg = json!({ "sandbox_id": "sb-1", "pid": 7, "tag": "t" });
        assert!(matches!(
            serde_json::from_value(fg).unwrap(),
            processes::ExecResult::Finished(_)
        ));
        assert!(matches!(
            serde_json::from_value(bg).unwrap(),
            processes::ExecResult::Started(_)
        ));
    }
}
