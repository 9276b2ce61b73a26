//! Wire contracts shared by Wrenn's components.
//!
//! - [`envd`]: envd's `process.Process` and `filesystem.Filesystem` Connect
//!   services, field-for-field compatible with E2B's envd, with generated
//!   message types (binary protobuf and proto3 JSON), server traits and
//!   clients (feature `client`).
//! - [`sandbox`]: the defaults of a create request;
//! - [`hostagent`]: `hostagent.v1.HostAgentService`, what the control plane
//!   calls on each host.

#[allow(missing_docs, clippy::all)]
mod generated {
    connectrpc::include_generated!();
}

/// envd's protobuf packages `process` and `filesystem`.
pub mod envd {
    pub use crate::generated::{filesystem, process};

    /// The port envd listens on inside every sandbox (E2B's: SDKs build
    /// `49983-<id>.<domain>` themselves).
    pub const PORT: u16 = 49983;

    /// The E2B envd version whose protocol Wrenn's envd speaks: what envd,
    /// the agent and the E2B API report, and what E2B's SDKs gate features
    /// on (0.6.4: recursive watches with entry info, octet-stream uploads,
    /// file metadata).
    pub const VERSION: &str = "0.6.4";

    /// The path and query of envd's `/files` for `path`, as `user` (none
    /// when empty): both values percent-encoded. The agent (its file RPCs)
    /// and the control plane (files through the proxy hop) build it here.
    pub fn files_path(path: &str, user: &str) -> String {
        let mut q = format!("/files?path={}", query_escape(path));
        if !user.is_empty() {
            q.push_str(&format!("&username={}", query_escape(user)));
        }
        q
    }

    /// What a query value keeps as it is: unreserved characters and `/`.
    const QUERY_VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~')
        .remove(b'/');

    /// Percent-encodes a query value.
    fn query_escape(s: &str) -> percent_encoding::PercentEncode<'_> {
        percent_encoding::utf8_percent_encode(s, QUERY_VALUE)
    }

    /// The variable in which a sandbox's init names the descriptors
    /// (comma-separated) of the workload cgroup's `cgroup.procs` files:
    /// envd keeps them open and each process it starts writes itself into
    /// them before its exec.
    pub const WORK_CGROUP_FDS_ENV: &str = "ENVD_WORK_CGROUP_FDS";

    /// The variable in which a sandbox's init names the descriptor of a
    /// TCP socket already listening on envd's port, which envd serves on
    /// instead of binding its own: connections made before envd runs wait
    /// in its backlog, so nobody polls for envd to come up, and a
    /// restarted envd never leaves a moment with nothing listening.
    pub const LISTEN_FD_ENV: &str = "ENVD_LISTEN_FD";

    #[cfg(test)]
    mod tests {
        #[test]
        fn files_paths_encode_path_and_user() {
            assert_eq!(
                super::files_path("/a b/ü&x=1", ""),
                "/files?path=/a%20b/%C3%BC%26x%3D1"
            );
            assert_eq!(
                super::files_path("f", "us er"),
                "/files?path=f&username=us%20er"
            );
        }
    }
}

/// What a sandbox gets when its create request leaves a field out: the
/// one place these defaults are written (the control plane's native and
/// E2B routes, the agent and the CLI read them here).
pub mod sandbox {
    /// Template.
    pub const DEFAULT_TEMPLATE: &str = "base";
    /// CPUs.
    pub const DEFAULT_VCPUS: u32 = 1;
    /// Memory limit, MiB.
    pub const DEFAULT_MEMORY_MB: u32 = 512;
    /// Disk size, MiB.
    pub const DEFAULT_DISK_SIZE_MB: u32 = 1024;
    /// Idle timeout of the native API, seconds.
    pub const DEFAULT_TIMEOUT_SEC: u32 = 300;
    /// Timeout of the E2B API when a create names none,
    /// seconds: the 5 minutes E2B's documentation promises (its open
    /// source server's constant says 15 s; SDKs since 2.6x send none).
    pub const E2B_DEFAULT_TIMEOUT_SEC: u32 = 300;
    /// The user E2B's sandboxes run commands and file calls as when a call
    /// names none (home `/home/user`, passwordless sudo): the default of
    /// sandboxes made through the E2B API, and the account every template
    /// Wrenn builds has besides root. The native API's default is root.
    pub const E2B_USER: &str = "user";

    /// A sandbox's egress rules: IPv4 addresses and networks it may reach
    /// (`allow_out`) and may not (`deny_out`); an allowed one wins over a
    /// denied one, what neither names is allowed, and the host, other
    /// sandboxes and private ranges stay out of reach whatever they say.
    /// Checked by the control plane for callers and again by the agent,
    /// which renders firewall rules from the parsed networks only.
    pub mod egress {
        pub use ipnet::Ipv4Net;

        /// Most rules in each list.
        pub const MAX_RULES: usize = 256;

        /// "Everything": `0.0.0.0/0`.
        pub const ALL: &str = "0.0.0.0/0";

        /// Parses one rule: an IPv4 address (`1.2.3.4`, a /32) or network
        /// (`10.1.0.0/16`; host bits are cleared). `None` for anything
        /// else (a domain, IPv6, garbage).
        pub fn parse(rule: &str) -> Option<Ipv4Net> {
            let rule = rule.trim();
            if let Ok(ip) = rule.parse::<std::net::Ipv4Addr>() {
                return Some(Ipv4Net::from(ip));
            }
            rule.parse::<Ipv4Net>().ok().map(|n| n.trunc())
        }

        /// Whether `rule` looks like a domain name (`example.com`,
        /// `*.example.com`): labels of letters, digits and `-`, at least
        /// two, not all digits, an optional leading `*.`.
        pub fn is_domain(rule: &str) -> bool {
            let name = rule.strip_prefix("*.").unwrap_or(rule);
            let labels: Vec<&str> = name.split('.').collect();
            name.len() <= 253
                && labels.len() >= 2
                && labels.iter().all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                        && !l.starts_with('-')
                        && !l.ends_with('-')
                })
                && !labels.iter().all(|l| l.chars().all(|c| c.is_ascii_digit()))
        }

        #[cfg(test)]
        mod tests {
            use super::*;

            #[test]
            fn rules_parse_to_networks() {
                for (rule, want) in [
                    ("1.2.3.4", Some("1.2.3.4/32")),
                    (" 8.8.8.0/24 ", Some("8.8.8.0/24")),
                    ("10.1.2.3/16", Some("10.1.0.0/16")),
                    ("0.0.0.0/0", Some("0.0.0.0/0")),
                    ("1.2.3.4/33", None),
                    ("example.com", None),
                    ("::1", None),
                    ("1.2.3.4; drop", None),
                    ("", None),
                ] {
                    assert_eq!(
                        parse(rule).map(|n| n.to_string()).as_deref(),
                        want,
                        "{rule:?}"
                    );
                }
                for (rule, domain) in [
                    ("example.com", true),
                    ("*.api.example.com", true),
                    ("localhost", false),
                    ("1.2.3.4", false),
                    ("a..b", false),
                    ("-a.com", false),
                    ("a b.com", false),
                ] {
                    assert_eq!(is_domain(rule), domain, "{rule:?}");
                }
            }
        }
    }
}

/// The host agent's API, `hostagent.v1.HostAgentService`, and its HTTP
/// route `/proxy/{sandbox}/{port}/…`.
pub mod hostagent {
    pub use crate::generated::hostagent::v1;

    /// The header that carries the agent token on `/proxy/…` requests,
    /// whose own `Authorization` belongs to the app in the sandbox.
    pub const PROXY_TOKEN_HEADER: &str = "x-wrenn-agent-token";

    /// The header with which the control plane's own calls through
    /// `/proxy/…` (native commands and file calls) ask the agent to restart the
    /// sandbox's idle timer, as its RPCs do; the agent strips it. Traffic
    /// of E2B's SDKs does not carry it: E2B's timeouts are not idle
    /// timers.
    pub const PROXY_TOUCH_HEADER: &str = "x-wrenn-touch";

    /// The header that marks an error the agent's `/proxy/…` route answered
    /// itself (not the sandbox's app); its value is one of [`proxy_error`]'s
    /// codes and the body is `{"code", "message"}`. The control plane
    /// answers such errors in the caller's API family; the agent strips the
    /// header from what sandboxes answer.
    pub const PROXY_ERROR_HEADER: &str = "x-wrenn-proxy-error";

    /// The codes of the agent's own `/proxy/…` errors.
    pub mod proxy_error {
        /// The path is not `/proxy/{sandbox}/{port}/…`.
        pub const INVALID_REQUEST: &str = "invalid_request";
        /// No such sandbox on this host.
        pub const NOT_FOUND: &str = "not_found";
        /// The sandbox is paused.
        pub const INVALID_STATE: &str = "invalid_state";
        /// Nothing listens on the port inside the sandbox.
        pub const PORT_NOT_OPEN: &str = "port_not_open";
        /// The app in the sandbox failed to answer.
        pub const UPSTREAM_FAILED: &str = "upstream_failed";
        /// Every code, for matching one read from a response.
        pub const ALL: [&str; 5] = [
            INVALID_REQUEST,
            NOT_FOUND,
            INVALID_STATE,
            PORT_NOT_OPEN,
            UPSTREAM_FAILED,
        ];
    }

    /// The largest message an agent answers with, which its clients must
    /// accept: a `ListSandboxes` of some 1,700 sandboxes that all carry the
    /// most metadata a create allows (64 × 1 KiB values), or tens of
    /// thousands with little. (A host holding more needs a paged listing.)
    pub const MAX_MESSAGE_BYTES: usize = 128 << 20;
}

pub use connectrpc;
