//! Sandbox networking: a veth pair per sandbox (host side `wrenn<slot>`,
//! sandbox side `eth0`), addresses from a slot allocator, NAT for egress and
//! an nftables table that keeps sandboxes away from the host, from each
//! other and from private ranges. All link work goes through netlink.

use parking_lot::Mutex;
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;

use futures::TryStreamExt;
use rtnetlink::packet_route::link::{InfoData, InfoVeth};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};

/// Sandboxes with internet access live in 10.200.0.0/16.
pub const NET_INTERNET: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 0);
/// Sandboxes without internet access live in 10.201.0.0/16.
pub const NET_NO_INTERNET: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 0);
/// Slots per /16 (one /30 each).
pub const SLOTS: u32 = 16384;
/// Prefix of host-side interface names.
pub const IF_PREFIX: &str = "wrenn";

/// Network errors.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// Every slot is taken.
    #[error("no free network slot: {SLOTS} sandboxes already have addresses on this host")]
    Exhausted,
    /// A netlink call failed.
    #[error("netlink: {what}: {source}")]
    Netlink {
        /// What was being done.
        what: String,
        /// The cause.
        source: rtnetlink::Error,
    },
    /// Entering the sandbox's network namespace failed.
    #[error("network namespace of pid {pid}: {source}")]
    Netns {
        /// Sandbox init.
        pid: u32,
        /// The cause.
        source: std::io::Error,
    },
    /// The firewall could not be installed.
    #[error("installing nftables rules (is the nftables package installed?): {0}")]
    Firewall(String),
}

fn nl(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetError {
    let what = what.into();
    move |source| NetError::Netlink { what, source }
}

/// A sandbox's place in the address plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Slot {
    /// Index within the /16.
    pub index: u32,
    /// Whether the sandbox may reach the internet.
    pub internet: bool,
}

impl Slot {
    fn base(&self) -> u32 {
        let net = if self.internet {
            NET_INTERNET
        } else {
            NET_NO_INTERNET
        };
        u32::from(net) + self.index * 4
    }

    /// The host side's address (the sandbox's gateway).
    pub fn host_ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.base() + 1)
    }

    /// The sandbox's address.
    pub fn sandbox_ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.base() + 2)
    }

    /// Name of the host-side interface.
    pub fn host_if(&self) -> String {
        format!("{IF_PREFIX}{}", self.index)
    }
}

/// Hands out slot indexes.
#[derive(Default)]
pub struct Slots {
    used: Mutex<BTreeSet<u32>>,
}

impl Slots {
    /// Takes the lowest free index.
    pub fn take(&self, internet: bool) -> Result<Slot, NetError> {
        let mut used = self.used.lock();
        let index = (0..SLOTS)
            .find(|i| !used.contains(i))
            .ok_or(NetError::Exhausted)?;
        used.insert(index);
        Ok(Slot { index, internet })
    }

    /// Marks an index used (re-adopted sandboxes).
    pub fn mark(&self, slot: Slot) {
        self.used.lock().insert(slot.index);
    }

    /// Returns an index.
    pub fn release(&self, slot: Slot) {
        self.used.lock().remove(&slot.index);
    }
}

/// A netlink connection in the host's network namespace.
#[derive(Clone)]
pub struct Network {
    host: Handle,
}

async fn link_index(h: &Handle, name: &str) -> Result<Option<u32>, NetError> {
    let mut links = h.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(l)) => Ok(Some(l.header.index)),
        Ok(None) => Ok(None),
        // ENODEV: no such link.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(nl(format!("looking up {name}"))(e)),
    }
}

impl Network {
    /// Opens netlink in the current (host) namespace; needs a tokio runtime.
    pub fn new() -> std::io::Result<Self> {
        let (conn, host, _) = rtnetlink::new_connection()?;
        tokio::spawn(conn);
        Ok(Network { host })
    }

    /// Wires the sandbox whose init is `pid` to the host.
    pub async fn attach(&self, pid: u32, slot: Slot) -> Result<(), NetError> {
        let host_if = slot.host_if();
        // A leftover from a crash would block the name.
        self.detach(slot).await?;
        let peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name("eth0".to_string())
            .setns_by_pid(pid)
            .build();
        // The peer is born inside the sandbox's namespace, as its eth0.
        let veth =
            LinkVeth::new(&host_if, "eth0").set_info_data(InfoData::Veth(InfoVeth::Peer(peer)));
        self.host
            .link()
            .add(veth.build())
            .execute()
            .await
            .map_err(nl(format!("creating veth {host_if}")))?;
        let index = link_index(&self.host, &host_if)
            .await?
            .ok_or_else(|| NetError::Netlink {
                what: format!("{host_if} vanished after creation"),
                source: rtnetlink::Error::RequestFailed,
            })?;
        self.host
            .address()
            .add(index, slot.host_ip().into(), 30)
            .execute()
            .await
            .map_err(nl(format!("addressing {host_if}")))?;
        self.host
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(nl(format!("bringing {host_if} up")))?;

        let inside = in_netns(pid)?;
        for name in ["lo", "eth0"] {
            let idx = link_index(&inside, name)
                .await?
                .ok_or_else(|| NetError::Netlink {
                    what: format!("{name} missing in sandbox"),
                    source: rtnetlink::Error::RequestFailed,
                })?;
            if name == "eth0" {
                inside
                    .address()
                    .add(idx, slot.sandbox_ip().into(), 30)
                    .execute()
                    .await
                    .map_err(nl("addressing eth0"))?;
            }
            inside
                .link()
                .set(LinkUnspec::new_with_index(idx).up().build())
                .execute()
                .await
                .map_err(nl(format!("bringing {name} up")))?;
        }
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(slot.host_ip())
            .build();
        inside
            .route()
            .add(route)
            .execute()
            .await
            .map_err(nl("adding the default route"))?;
        Ok(())
    }

    /// Removes the host side of the sandbox's veth (the peer goes with it).
    pub async fn detach(&self, slot: Slot) -> Result<(), NetError> {
        if let Some(index) = link_index(&self.host, &slot.host_if()).await? {
            match self.host.link().del(index).execute().await {
                Ok(()) => {}
                Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => {}
                Err(e) => return Err(nl(format!("deleting {}", slot.host_if()))(e)),
            }
        }
        Ok(())
    }

    /// Host-side interfaces that look like ours, with their slot index.
    pub async fn host_links(&self) -> Result<Vec<(u32, String)>, NetError> {
        let mut out = Vec::new();
        let mut links = self.host.link().get().execute();
        while let Some(l) = links.try_next().await.map_err(nl("listing links"))? {
            for a in &l.attributes {
                if let rtnetlink::packet_route::link::LinkAttribute::IfName(n) = a {
                    if let Some(i) = n.strip_prefix(IF_PREFIX).and_then(|i| i.parse().ok()) {
                        out.push((i, n.clone()));
                    }
                }
            }
        }
        Ok(out)
    }
}

/// A netlink connection inside the network namespace of `pid`: the socket
/// is opened on a thread that entered the namespace, and stays bound to it.
fn in_netns(pid: u32) -> Result<Handle, NetError> {
    let rt = tokio::runtime::Handle::current();
    std::thread::scope(|s| {
        s.spawn(|| {
            let _guard = rt.enter();
            let err = |source| NetError::Netns { pid, source };
            let ns = std::fs::File::open(format!("/proc/{pid}/ns/net")).map_err(err)?;
            rustix::thread::move_into_link_name_space(
                ns.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .map_err(|e| err(e.into()))?;
            let (conn, handle, _) = rtnetlink::new_connection().map_err(err)?;
            tokio::spawn(conn);
            Ok(handle)
        })
        .join()
        .expect("netns thread panicked")
    })
}

/// The nftables table `inet wrenn`: sandboxes reach the internet through
/// NAT (unless in the no-internet range), DNS on `resolvers`, and nothing
/// else: not the host, not each other, not private ranges. A sandbox with
/// egress rules has a chain of its own, reached through the `egress` map
/// by its address (one lookup, whatever the number of sandboxes): its
/// allowed networks return to the common rules, its denied ones drop
/// ([`egress_script`]).
pub fn firewall_rules(resolvers: &[Ipv4Addr]) -> String {
    let dns: String = resolvers
        .iter()
        .map(|r| {
            format!(
                "    iifname \"{IF_PREFIX}*\" ip saddr {NET_INTERNET}/16 ip daddr {r} udp dport 53 accept\n    iifname \"{IF_PREFIX}*\" ip saddr {NET_INTERNET}/16 ip daddr {r} tcp dport 53 accept\n"
            )
        })
        .collect();
    format!(
        "table inet wrenn\n\
delete table inet wrenn\n\
table inet wrenn {{\n\
  map egress {{\n\
    type ipv4_addr : verdict;\n\
  }}\n\
  chain input {{\n\
    type filter hook input priority -10; policy accept;\n\
    iifname \"{IF_PREFIX}*\" ct state established,related accept\n\
    iifname \"{IF_PREFIX}*\" drop\n\
  }}\n\
  chain forward {{\n\
    type filter hook forward priority -10; policy accept;\n\
    iifname \"{IF_PREFIX}*\" oifname \"{IF_PREFIX}*\" drop\n\
    oifname \"{IF_PREFIX}*\" ct state established,related accept\n\
    oifname \"{IF_PREFIX}*\" drop\n\
    iifname \"{IF_PREFIX}*\" ip saddr != {NET_INTERNET}/16 drop\n\
    iifname \"{IF_PREFIX}*\" ip saddr vmap @egress\n\
{dns}\
    iifname \"{IF_PREFIX}*\" ip daddr {{ 0.0.0.0/8, 10.0.0.0/8, 100.64.0.0/10, 127.0.0.0/8, 169.254.0.0/16, 172.16.0.0/12, 192.168.0.0/16, 224.0.0.0/3 }} drop\n\
    iifname \"{IF_PREFIX}*\" meta nfproto ipv6 drop\n\
    iifname \"{IF_PREFIX}*\" accept\n\
  }}\n\
  chain postrouting {{\n\
    type nat hook postrouting priority 100; policy accept;\n\
    ip saddr {NET_INTERNET}/16 oifname != \"{IF_PREFIX}*\" masquerade\n\
  }}\n\
}}\n"
    )
}

/// Runs an nftables script (one transaction) with `nft -f -`.
fn nft(script: &str) -> Result<(), NetError> {
    use std::io::Write;
    let mut child = std::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| NetError::Firewall(format!("running nft: {e}")))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(script.as_bytes())
        .map_err(|e| NetError::Firewall(e.to_string()))?;
    let out = child
        .wait_with_output()
        .map_err(|e| NetError::Firewall(e.to_string()))?;
    if !out.status.success() {
        return Err(NetError::Firewall(
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ));
    }
    Ok(())
}

/// The chain of the sandbox at `ip` in the `egress` map.
fn egress_chain(ip: Ipv4Addr) -> String {
    format!("egress_{}", ip.to_string().replace('.', "_"))
}

/// The script that makes `egress` the rules of the sandbox at `ip`: its
/// chain made (if new) and emptied, then filled, and its address mapped
/// to it. Every step is idempotent, so it also clears (empty rules) and
/// re-applies after a restart; an emptied chain returns at once, so a
/// slot's map entry may stay behind its sandbox.
pub fn egress_script(ip: Ipv4Addr, egress: &crate::runtime::Egress) -> String {
    let chain = egress_chain(ip);
    let list = |nets: &[wrenn_protocol::sandbox::egress::Ipv4Net]| {
        nets.iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut s = format!("add chain inet wrenn {chain}\nflush chain inet wrenn {chain}\n");
    if !egress.allow.is_empty() {
        s += &format!(
            "add rule inet wrenn {chain} ip daddr {{ {} }} return\n",
            list(&egress.allow)
        );
    }
    if !egress.deny.is_empty() {
        s += &format!(
            "add rule inet wrenn {chain} ip daddr {{ {} }} drop\n",
            list(&egress.deny)
        );
    }
    s += &format!("add element inet wrenn egress {{ {ip} : jump {chain} }}\n");
    s
}

/// Makes `egress` the rules of the sandbox at `ip` (blocking: runs `nft`).
pub fn apply_egress(ip: Ipv4Addr, egress: &crate::runtime::Egress) -> Result<(), NetError> {
    nft(&egress_script(ip, egress))
}

/// Installs [`firewall_rules`] with `nft`, with the egress rules of
/// `kept` sandboxes in the same transaction, and turns on IPv4 forwarding.
pub fn install_firewall(
    resolvers: &[Ipv4Addr],
    kept: &[(Ipv4Addr, crate::runtime::Egress)],
) -> Result<(), NetError> {
    let mut script = firewall_rules(resolvers);
    for (ip, egress) in kept {
        script += &egress_script(*ip, egress);
    }
    nft(&script)?;
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
        .map_err(|e| NetError::Firewall(format!("enabling ip_forward: {e}")))?;
    Ok(())
}

/// IPv4 name servers from the host's resolv.conf that a sandbox can use
/// (loopback ones cannot be reached from a sandbox).
pub fn host_resolvers() -> Vec<Ipv4Addr> {
    std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            l.strip_prefix("nameserver")?
                .trim()
                .parse::<Ipv4Addr>()
                .ok()
        })
        .filter(|ip| !ip.is_loopback())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_map_to_distinct_slash30s() {
        let a = Slot {
            index: 0,
            internet: true,
        };
        let b = Slot {
            index: 1,
            internet: true,
        };
        let c = Slot {
            index: 1,
            internet: false,
        };
        assert_eq!(
            (a.host_ip(), a.sandbox_ip()),
            (Ipv4Addr::new(10, 200, 0, 1), Ipv4Addr::new(10, 200, 0, 2))
        );
        assert_eq!(
            (b.host_ip(), b.sandbox_ip()),
            (Ipv4Addr::new(10, 200, 0, 5), Ipv4Addr::new(10, 200, 0, 6))
        );
        assert_eq!(c.sandbox_ip(), Ipv4Addr::new(10, 201, 0, 6));
        let last = Slot {
            index: SLOTS - 1,
            internet: true,
        };
        assert_eq!(last.sandbox_ip(), Ipv4Addr::new(10, 200, 255, 254));
        assert_eq!(b.host_if(), "wrenn1");
        let slots = Slots::default();
        let s0 = slots.take(true).unwrap();
        let s1 = slots.take(false).unwrap();
        assert_ne!(s0.index, s1.index);
        slots.release(s0);
        assert_eq!(slots.take(true).unwrap().index, s0.index);
    }

    #[test]
    fn egress_scripts_come_from_parsed_networks_only() {
        use wrenn_protocol::sandbox::egress::parse;
        let e = crate::runtime::Egress {
            allow: vec![parse("1.2.3.4").unwrap()],
            deny: vec![parse("0.0.0.0/0").unwrap(), parse("8.8.8.0/24").unwrap()],
        };
        let s = egress_script(Ipv4Addr::new(10, 200, 0, 6), &e);
        assert_eq!(
            s,
            "add chain inet wrenn egress_10_200_0_6\n\
             flush chain inet wrenn egress_10_200_0_6\n\
             add rule inet wrenn egress_10_200_0_6 ip daddr { 1.2.3.4/32 } return\n\
             add rule inet wrenn egress_10_200_0_6 ip daddr { 0.0.0.0/0, 8.8.8.0/24 } drop\n\
             add element inet wrenn egress { 10.200.0.6 : jump egress_10_200_0_6 }\n"
        );
        // No rules: the chain is emptied and stays mapped.
        let s = egress_script(Ipv4Addr::new(10, 200, 0, 6), &Default::default());
        assert!(!s.contains("add rule"), "{s}");
    }

    #[test]
    fn firewall_allows_dns_only_to_resolvers() {
        let rules = firewall_rules(&[Ipv4Addr::new(10, 255, 255, 53)]);
        assert!(rules.contains("ip daddr 10.255.255.53 udp dport 53 accept"));
        assert!(rules.contains("masquerade"));
        // DNS accept comes before the private-range drop.
        assert!(rules.find("udp dport 53").unwrap() < rules.find("10.0.0.0/8").unwrap());
    }
}
