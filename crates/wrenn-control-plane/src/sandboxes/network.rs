//! A sandbox's network settings: its egress rules (checked here for both
//! APIs, enforced by its host's firewall), whether anyone may reach its
//! ports through the proxy, and the Host header its apps see. Changing
//! them on a live sandbox ([`set_egress`]) reaches its host at once.

use serde::{Deserialize, Serialize};
use wrenn_protocol::hostagent::v1 as pb;
use wrenn_protocol::sandbox::egress;

use super::{Dialect, agent_for};
use crate::App;
use crate::error::{ApiError, ApiResult};
use crate::store::Sandbox;

/// The placeholder of [`Network::mask_request_host`] for the port.
pub const PORT_PLACEHOLDER: &str = "${PORT}";

/// A sandbox's network settings, as stored (one JSON column).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    /// IPv4 addresses and networks it may reach, normalized
    /// (`1.2.3.4/32`); they win over `deny_out`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_out: Vec<String>,
    /// IPv4 addresses and networks it may not reach.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny_out: Vec<String>,
    /// Anyone may reach its ports (not envd's) through the proxy, without
    /// a token (E2B's `allowPublicTraffic`, its default; the native API's
    /// default is no).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub public_traffic: bool,
    /// The Host header the sandbox's apps see (`${PORT}` replaced by the
    /// port), instead of the one the request came with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask_request_host: Option<String>,
}

impl Network {
    /// Reads the stored column ('' is none of the settings). A value this
    /// version cannot read is logged and read as none.
    pub fn from_column(s: &str) -> Network {
        if s.is_empty() {
            return Network::default();
        }
        serde_json::from_str(s).unwrap_or_else(|e| {
            tracing::warn!("a sandbox's network column does not parse ({e}); read as none");
            Network::default()
        })
    }

    /// The stored column.
    pub fn to_column(&self) -> String {
        if *self == Network::default() {
            return String::new();
        }
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The egress rules, as the agent takes them.
    pub fn egress(&self) -> pb::Egress {
        pb::Egress {
            allow_out: self.allow_out.clone(),
            deny_out: self.deny_out.clone(),
            ..Default::default()
        }
    }

    /// Whether nothing is reachable but what is allowed (`0.0.0.0/0`
    /// denied): E2B's `allow_internet_access: false`.
    pub fn denies_all(&self) -> bool {
        self.deny_out.iter().any(|r| r == egress::ALL)
    }

    /// The Host header the app at `port` sees, when it is masked.
    pub fn masked_host(&self, port: u16) -> Option<String> {
        self.mask_request_host
            .as_ref()
            .map(|m| m.replace(PORT_PLACEHOLDER, &port.to_string()))
    }
}

/// Checks egress rules as a caller of API `d` gives them: each an IPv4
/// address or network (normalized), at most
/// [`egress::MAX_RULES`] a list. As E2B's API, a domain in the allowed
/// list needs everything (`0.0.0.0/0`) denied, and the denied list takes
/// no domain; Wrenn does not yet enforce rules by domain, so a domain is
/// refused either way, saying so.
pub fn check_egress(
    d: Dialect,
    allow: Vec<String>,
    deny: Vec<String>,
) -> ApiResult<(Vec<String>, Vec<String>)> {
    let (fa, fd) = match d {
        Dialect::E2b => ("allowOut", "denyOut"),
        Dialect::Native => ("allow_out", "deny_out"),
    };
    for (field, list) in [(fa, &allow), (fd, &deny)] {
        if list.len() > egress::MAX_RULES {
            return Err(ApiError::bad_request(format!(
                "{field}: at most {} rules",
                egress::MAX_RULES
            )));
        }
    }
    let all = egress::parse(egress::ALL);
    let denies_all = deny.iter().any(|r| egress::parse(r) == all);
    let mut allowed = Vec::with_capacity(allow.len());
    for r in &allow {
        match egress::parse(r) {
            Some(n) => allowed.push(n.to_string()),
            None if egress::is_domain(r) && !denies_all => {
                return Err(ApiError::bad_request(format!(
                    "{fa}: the domain '{r}' needs {} in {fd} (only what is allowed is then reachable)",
                    egress::ALL
                )));
            }
            None if egress::is_domain(r) => {
                return Err(ApiError::bad_request(format!(
                    "{fa}: rules by domain ('{r}') are not supported by Wrenn yet; give IPv4 addresses or networks"
                )));
            }
            None => {
                return Err(ApiError::bad_request(format!(
                    "{fa}: '{r}' is not an IPv4 address, network or domain"
                )));
            }
        }
    }
    let mut denied = Vec::with_capacity(deny.len());
    for r in &deny {
        match egress::parse(r) {
            Some(n) => denied.push(n.to_string()),
            None if egress::is_domain(r) => {
                return Err(ApiError::bad_request(format!(
                    "{fd}: '{r}' is a domain; {fd} takes IPv4 addresses and networks only"
                )));
            }
            None => {
                return Err(ApiError::bad_request(format!(
                    "{fd}: '{r}' is not an IPv4 address or network"
                )));
            }
        }
    }
    for l in [&mut allowed, &mut denied] {
        l.sort();
        l.dedup();
    }
    Ok((allowed, denied))
}

/// Checks a Host mask: `host[:port]` of letters, digits, `.`, `-` and
/// `${PORT}`, at most 255 bytes.
pub fn check_mask(d: Dialect, mask: &str) -> ApiResult<String> {
    let field = match d {
        Dialect::E2b => "maskRequestHost",
        Dialect::Native => "mask_request_host",
    };
    let bare = mask.replace(PORT_PLACEHOLDER, "1");
    let ok = !mask.is_empty()
        && mask.len() <= 255
        && bare
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'))
        && bare.matches(':').count() <= 1;
    if !ok {
        return Err(ApiError::bad_request(format!(
            "{field}: '{mask}' is not host[:port] (letters, digits, '.', '-', and {PORT_PLACEHOLDER} for the port)"
        )));
    }
    Ok(mask.to_string())
}

/// Replaces a sandbox's egress rules with `allow` and `deny` (already
/// checked): its host applies them (a running or paused sandbox) before
/// they are recorded, so what is stored is what holds.
pub async fn set_egress(
    app: &App,
    mut s: Sandbox,
    allow: Vec<String>,
    deny: Vec<String>,
) -> ApiResult<Sandbox> {
    use super::SandboxState::{Paused, Running};
    if !s.allow_internet_access {
        return Err(ApiError::conflict(
            "invalid_state",
            format!(
                "sandbox {} was made without internet access: egress rules cannot open it (make it with access and deny_out [\"0.0.0.0/0\"] instead)",
                s.id
            ),
        ));
    }
    if !matches!(s.state, Running | Paused) {
        return Err(ApiError::conflict(
            "invalid_state",
            format!(
                "sandbox {} is {}: its network rules change only while it runs or is paused",
                s.id,
                s.state.as_str()
            ),
        ));
    }
    s.network.allow_out = allow;
    s.network.deny_out = deny;
    {
        agent_for(app, &s)
            .await?
            .set_sandbox_egress(pb::SetEgressRequest {
                sandbox_id: s.id.clone(),
                egress: s.network.egress().into(),
                ..Default::default()
            })
            .await?;
    }
    app.store.set_sandbox_network(&s.id, &s.network).await?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn egress_rules_are_checked_as_e2b_checks_them() {
        let v = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        type Case<'a> = (
            &'a [&'a str],
            &'a [&'a str],
            Result<(&'a [&'a str], &'a [&'a str]), &'a str>,
        );
        let cases: &[Case] = &[
            (&[], &[], Ok((&[], &[]))),
            (
                &["1.2.3.4", "8.8.8.0/24", "1.2.3.4/32"],
                &["0.0.0.0/0"],
                Ok((&["1.2.3.4/32", "8.8.8.0/24"], &["0.0.0.0/0"])),
            ),
            (&["example.com"], &[], Err("needs 0.0.0.0/0 in denyOut")),
            (
                &["example.com"],
                &["0.0.0.0/0"],
                Err("not supported by Wrenn yet"),
            ),
            (&[], &["example.com"], Err("is a domain")),
            (&["1.2.3.4; flush ruleset"], &[], Err("is not an IPv4")),
            (&[], &["::/0"], Err("is not an IPv4")),
        ];
        for (allow, deny, want) in cases {
            let got = check_egress(Dialect::E2b, v(allow), v(deny));
            match (got, want) {
                (Ok((a, d)), Ok((wa, wd))) => {
                    assert_eq!((a, d), (v(wa), v(wd)), "{allow:?} {deny:?}")
                }
                (Err(e), Err(w)) => assert!(e.message.contains(w), "{allow:?}: {}", e.message),
                (got, want) => panic!("{allow:?} {deny:?}: got {got:?}, want {want:?}"),
            }
        }
        let many = v(&["1.1.1.1"; egress::MAX_RULES + 1]);
        assert!(check_egress(Dialect::Native, many, vec![]).is_err());
    }

    #[test]
    fn masks_are_host_and_port() {
        for (mask, ok) in [
            ("${PORT}-app.example.com", true),
            ("app.example.com:8080", true),
            ("localhost", true),
            ("a b", false),
            ("evil\r\nX: y", false),
            ("", false),
            ("a:1:2", false),
        ] {
            assert_eq!(check_mask(Dialect::E2b, mask).is_ok(), ok, "{mask:?}");
        }
        let n = Network {
            mask_request_host: Some("${PORT}-app.example.com".into()),
            ..Default::default()
        };
        assert_eq!(n.masked_host(3000).as_deref(), Some("3000-app.example.com"));
        assert_eq!(Network::from_column(&n.to_column()), n);
        assert_eq!(Network::default().to_column(), "");
    }
}
