//! Loopback port forwarding: a server that a process binds on 127.0.0.1
//! (or ::1) inside the sandbox is reachable from outside too, as E2B's envd
//! does it. Every half second envd reads `/proc/net/tcp{,6}`; for each port
//! that listens only on loopback it listens on the same port of the
//! sandbox's own addresses and pipes each connection to loopback. When the
//! server goes away, so does the forwarder.
//!
//! Only for envd inside a sandbox (`--forward-loopback-ports`): on a shared
//! host it would expose the host's loopback services.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// A listening TCP socket from `/proc/net/tcp{,6}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listener {
    /// Local address.
    pub addr: SocketAddr,
}

/// Parses `/proc/net/tcp` or `/proc/net/tcp6` text: the sockets in LISTEN.
pub fn parse_proc_net_tcp(text: &str) -> Vec<Listener> {
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let mut f = line.split_whitespace();
        let (Some(_sl), Some(local), Some(_remote), Some(state)) =
            (f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        if state != "0A" {
            continue;
        }
        let Some((ip, port)) = local.split_once(':') else {
            continue;
        };
        let Ok(port) = u16::from_str_radix(port, 16) else {
            continue;
        };
        // The kernel prints addresses as native-endian 32-bit words.
        let ip = match ip.len() {
            8 => match u32::from_str_radix(ip, 16) {
                Ok(v) => IpAddr::V4(Ipv4Addr::from(v.to_ne_bytes())),
                Err(_) => continue,
            },
            32 => {
                let mut bytes = [0u8; 16];
                let mut ok = true;
                for (i, chunk) in bytes.chunks_mut(4).enumerate() {
                    match u32::from_str_radix(&ip[i * 8..i * 8 + 8], 16) {
                        Ok(v) => chunk.copy_from_slice(&v.to_ne_bytes()),
                        Err(_) => ok = false,
                    }
                }
                if !ok {
                    continue;
                }
                IpAddr::V6(Ipv6Addr::from(bytes))
            }
            _ => continue,
        };
        out.push(Listener {
            addr: SocketAddr::new(ip, port),
        });
    }
    out
}

/// Ports served only on loopback, with the loopback address to reach them.
pub fn loopback_only(listeners: &[Listener]) -> HashMap<u16, IpAddr> {
    let wildcard: HashSet<u16> = listeners
        .iter()
        .filter(|l| l.addr.ip().is_unspecified())
        .map(|l| l.addr.port())
        .collect();
    let mut out = HashMap::new();
    for l in listeners {
        let ip = match l.addr.ip() {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        if ip.is_loopback() && !wildcard.contains(&l.addr.port()) {
            // Prefer IPv4 loopback when a server listens on both.
            let e = out.entry(l.addr.port()).or_insert(ip);
            if ip.is_ipv4() {
                *e = ip;
            }
        }
    }
    out
}

/// The machine's IPv4 addresses other than loopback.
fn own_addresses() -> Vec<Ipv4Addr> {
    let mut out = Vec::new();
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a list we walk read-only and free once.
    unsafe {
        if libc::getifaddrs(&mut ifap) != 0 {
            return out;
        }
        let mut cur = ifap;
        while !cur.is_null() {
            let a = (*cur).ifa_addr;
            if !a.is_null() && i32::from((*a).sa_family) == libc::AF_INET {
                let sin = &*(a as *const libc::sockaddr_in);
                let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                if !ip.is_loopback() {
                    out.push(ip);
                }
            }
            cur = (*cur).ifa_next;
        }
        libc::freeifaddrs(ifap);
    }
    out
}

fn read_listeners() -> Vec<Listener> {
    let mut all = Vec::new();
    for p in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(t) = std::fs::read_to_string(p) {
            all.extend(parse_proc_net_tcp(&t));
        }
    }
    all
}

async fn pipe_forever(listener: tokio::net::TcpListener, to: SocketAddr) {
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        tokio::spawn(async move {
            let _ = inbound.set_nodelay(true);
            match tokio::net::TcpStream::connect(to).await {
                Ok(mut out) => {
                    let _ = out.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                }
                Err(e) => tracing::debug!(%to, "forwarding: {e}"),
            }
        });
    }
}

/// Keeps forwarders in step with loopback-only listeners, every `period`.
pub async fn forward_loopback_forever(period: Duration) {
    let mut active: HashMap<u16, Vec<tokio::task::JoinHandle<()>>> = HashMap::new();
    let mut failed: HashSet<(Ipv4Addr, u16)> = HashSet::new();
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let wanted = loopback_only(&read_listeners());
        active.retain(|port, tasks| {
            let keep = wanted.contains_key(port);
            if !keep {
                tracing::info!(port, "loopback server gone; stopped forwarding");
                tasks.iter().for_each(|t| t.abort());
            }
            keep
        });
        failed.retain(|(_, p)| wanted.contains_key(p));
        for (port, lo) in wanted {
            if active.contains_key(&port) {
                continue;
            }
            let mut tasks = Vec::new();
            for ip in own_addresses() {
                if failed.contains(&(ip, port)) {
                    continue;
                }
                match tokio::net::TcpListener::bind((ip, port)).await {
                    Ok(l) => {
                        tracing::info!(%ip, port, "forwarding to the loopback server");
                        tasks.push(tokio::spawn(pipe_forever(l, SocketAddr::new(lo, port))));
                    }
                    Err(e) => {
                        tracing::warn!(%ip, port, "cannot forward the loopback server: {e}");
                        failed.insert((ip, port));
                    }
                }
            }
            if !tasks.is_empty() {
                active.insert(port, tasks);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F40 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 00000000:C353 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0 100 0 0 10 0
   2: 0100007F:1F41 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0 100 0 0 10 0
   3: 0100007F:0BB8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4 1 0 100 0 0 10 0
   4: 0201C80A:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5 1 0 100 0 0 10 0
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:1388 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 6 1 0 100 0 0 10 0
   1: 00000000000000000000000000000000:0BB8 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 7 1 0 100 0 0 10 0
";

    #[test]
    fn parses_listeners() {
        let l = parse_proc_net_tcp(TCP);
        let addrs: Vec<String> = l.iter().map(|l| l.addr.to_string()).collect();
        assert_eq!(
            addrs,
            [
                "127.0.0.1:8000",
                "0.0.0.0:50003",
                "127.0.0.1:3000",
                "10.200.1.2:8080"
            ]
        );
        let l6 = parse_proc_net_tcp(TCP6);
        let addrs: Vec<String> = l6.iter().map(|l| l.addr.to_string()).collect();
        assert_eq!(addrs, ["[::1]:5000", "[::]:3000"]);
    }

    #[test]
    fn only_loopback_only_ports_are_forwarded() {
        let mut all = parse_proc_net_tcp(TCP);
        all.extend(parse_proc_net_tcp(TCP6));
        let want = loopback_only(&all);
        let mut ports: Vec<(u16, String)> =
            want.iter().map(|(p, ip)| (*p, ip.to_string())).collect();
        ports.sort();
        // 3000 also listens on [::] (which takes IPv4 too): already reachable.
        assert_eq!(
            ports,
            [(5000, "::1".to_string()), (8000, "127.0.0.1".to_string())]
        );
    }
}
