//! Monitor addresses for the kernel client.
//!
//! Ceph's `mon_host` lists monitors as address vectors (`[v2:IP:3300,v1:IP:6789]`), typed
//! addresses (`v1:IP:6789`), untyped ones (`IP`, `IP:PORT`, `[IPv6]:PORT`) or host names,
//! separated by commas, semicolons or spaces. The kernel wants one `IP:PORT` per monitor,
//! comma-separated, of the protocol it will speak: msgr1 (the v1 address) unless an
//! `ms_mode` other than `legacy` is given, then msgr2 (the v2 address).
//!
//! Untyped addresses follow Ceph's rules: no port means both `v2` on 3300 and `v1` on 6789;
//! port 3300 means `v2`; any other port means `v1`.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

use rbd_core::{AddrType, AddrVec, EntityAddr};

use crate::error::{DriverError, Result};

/// The IANA msgr2 monitor port.
pub(crate) const MON_PORT_V2: u16 = 3300;
/// The legacy msgr1 monitor port.
pub(crate) const MON_PORT_V1: u16 = 6789;

/// The `ms_mode` values the kernel accepts.
pub(crate) const MS_MODES: [&str; 5] = ["legacy", "crc", "secure", "prefer-crc", "prefer-secure"];

/// One monitor's addresses, per protocol.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct MonAddrs {
    /// msgr1 address.
    pub(crate) v1: Option<SocketAddr>,
    /// msgr2 address.
    pub(crate) v2: Option<SocketAddr>,
}

impl MonAddrs {
    fn add(&mut self, kind: Option<AddrType>, ip: IpAddr, port: u16) {
        match kind {
            Some(AddrType::V1) => {
                self.v1 = Some(SocketAddr::new(
                    ip,
                    if port == 0 { MON_PORT_V1 } else { port },
                ));
            }
            Some(AddrType::V2) => {
                self.v2 = Some(SocketAddr::new(
                    ip,
                    if port == 0 { MON_PORT_V2 } else { port },
                ));
            }
            Some(AddrType::Any) | None => match port {
                0 => {
                    self.v2 = Some(SocketAddr::new(ip, MON_PORT_V2));
                    self.v1 = Some(SocketAddr::new(ip, MON_PORT_V1));
                }
                MON_PORT_V2 => self.v2 = Some(SocketAddr::new(ip, port)),
                _ => self.v1 = Some(SocketAddr::new(ip, port)),
            },
        }
    }

    fn from_addr(a: &EntityAddr) -> Self {
        let mut m = MonAddrs::default();
        m.add(a.kind, a.ip, a.port);
        m
    }
}

/// True when `ms_mode` makes the kernel speak msgr2. Validates the value.
pub(crate) fn wants_msgr2(ms_mode: Option<&str>) -> Result<bool> {
    match ms_mode {
        None => Ok(false),
        Some(m) if MS_MODES.contains(&m) => Ok(m != "legacy"),
        Some(m) => Err(DriverError::invalid(
            "ms_mode",
            m,
            format!("expected one of: {}", MS_MODES.join(", ")),
        )),
    }
}

/// Splits `mon_host` into entries at commas, semicolons and whitespace outside brackets.
fn split_entries(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut start = 0usize;
    for (i, c) in s.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth = depth.saturating_sub(1),
            ',' | ';' | ' ' | '\t' | '\n' if depth == 0 => {
                if start < i {
                    out.push(&s[start..i]);
                }
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    if start < s.len() {
        out.push(&s[start..]);
    }
    out
}

fn is_vector(entry: &str) -> bool {
    entry
        .strip_prefix('[')
        .is_some_and(|r| r.starts_with("v1:") || r.starts_with("v2:") || r.starts_with("any:"))
}

/// Parses `mon_host` into monitors. Host names are resolved (each address is a monitor).
pub(crate) fn parse_mon_host(mon_host: &str) -> Result<Vec<MonAddrs>> {
    let bad = |entry: &str, why: String| DriverError::invalid("mon_host entry", entry, why);
    let mut mons = Vec::new();
    for entry in split_entries(mon_host) {
        if is_vector(entry) {
            let v: AddrVec = entry.parse().map_err(|e| bad(entry, format!("{e}")))?;
            let mut m = MonAddrs::default();
            for a in &v.0 {
                m.add(a.kind, a.ip, a.port);
            }
            mons.push(m);
            continue;
        }
        if let Ok(a) = entry.parse::<EntityAddr>() {
            mons.push(MonAddrs::from_addr(&a));
            continue;
        }
        // A host name, with or without a port.
        let (host, port) = match entry.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => (
                h,
                p.parse::<u16>()
                    .map_err(|_| bad(entry, "port is not a number".into()))?,
            ),
            _ => (entry, 0),
        };
        if host.is_empty()
            || !host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
        {
            return Err(bad(entry, "not an address or a host name".into()));
        }
        let resolved: Vec<SocketAddr> = (host, port)
            .to_socket_addrs()
            .map_err(|e| bad(entry, format!("cannot resolve the host name: {e}")))?
            .collect();
        if resolved.is_empty() {
            return Err(bad(entry, "the host name resolves to no address".into()));
        }
        for sa in resolved {
            let mut m = MonAddrs::default();
            m.add(None, sa.ip(), port);
            if !mons.contains(&m) {
                mons.push(m);
            }
        }
    }
    if mons.is_empty() {
        return Err(DriverError::invalid(
            "mon_host",
            mon_host,
            "lists no monitor",
        ));
    }
    Ok(mons)
}

/// The kernel's monitor list: `IP:PORT[,IP:PORT...]` of the protocol chosen by `msgr2`.
/// Monitors without an address of that protocol are left out; none left is an error.
pub(crate) fn kernel_mon_list(mons: &[MonAddrs], msgr2: bool) -> Result<String> {
    let picked: Vec<String> = mons
        .iter()
        .filter_map(|m| if msgr2 { m.v2 } else { m.v1 })
        .map(|sa| sa.to_string())
        .collect();
    if picked.is_empty() {
        let (want, hint) = if msgr2 {
            (
                "msgr2 (v2)",
                "map without ms_mode (or ms_mode=legacy) to use msgr1",
            )
        } else {
            (
                "msgr1 (v1)",
                "set ms_mode (crc, secure, prefer-crc, prefer-secure) to use msgr2",
            )
        };
        return Err(DriverError::invalid(
            "mon_host",
            format!("{mons:?}"),
            format!("no monitor has a {want} address; {hint}"),
        ));
    }
    Ok(picked.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(s: &str, msgr2: bool) -> String {
        kernel_mon_list(&parse_mon_host(s).unwrap(), msgr2).unwrap()
    }

    #[test]
    fn address_vectors() {
        let s = "[v2:127.0.0.1:28600,v1:127.0.0.1:28601]";
        assert_eq!(list(s, false), "127.0.0.1:28601");
        assert_eq!(list(s, true), "127.0.0.1:28600");
        let three = "[v2:10.0.0.1:3300/0,v1:10.0.0.1:6789/0],[v2:10.0.0.2:3300,v1:10.0.0.2:6789] \
                     [v2:10.0.0.3:3300,v1:10.0.0.3:6789]";
        assert_eq!(
            list(three, false),
            "10.0.0.1:6789,10.0.0.2:6789,10.0.0.3:6789"
        );
        assert_eq!(
            list(three, true),
            "10.0.0.1:3300,10.0.0.2:3300,10.0.0.3:3300"
        );
    }

    #[test]
    fn untyped_and_typed() {
        // No port: both defaults.
        assert_eq!(
            list("10.0.0.1, 10.0.0.2", false),
            "10.0.0.1:6789,10.0.0.2:6789"
        );
        assert_eq!(
            list("10.0.0.1;10.0.0.2", true),
            "10.0.0.1:3300,10.0.0.2:3300"
        );
        // 3300 is v2, anything else v1.
        assert_eq!(
            list("10.0.0.1:6789,10.0.0.2:7000", false),
            "10.0.0.1:6789,10.0.0.2:7000"
        );
        assert_eq!(list("10.0.0.1:3300", true), "10.0.0.1:3300");
        assert!(kernel_mon_list(&parse_mon_host("10.0.0.1:3300").unwrap(), false).is_err());
        // Typed single addresses.
        assert_eq!(list("v1:10.0.0.1:6790", false), "10.0.0.1:6790");
        assert!(kernel_mon_list(&parse_mon_host("v1:10.0.0.1:6790").unwrap(), true).is_err());
        assert_eq!(list("v2:10.0.0.1:3301", true), "10.0.0.1:3301");
        // IPv6.
        assert_eq!(
            list("[v2:[fd00::1]:3300,v1:[fd00::1]:6789]", false),
            "[fd00::1]:6789"
        );
        assert_eq!(list("[fd00::2]:6789", false), "[fd00::2]:6789");
    }

    #[test]
    fn host_names_resolve() {
        let l = list("localhost:6789", false);
        assert!(l.split(',').any(|a| a == "127.0.0.1:6789"), "{l}");
    }

    #[test]
    fn mixed_v1_only_and_v2_only_mons_skip() {
        let s = "v1:10.0.0.1:6789,v2:10.0.0.2:3300";
        assert_eq!(list(s, false), "10.0.0.1:6789");
        assert_eq!(list(s, true), "10.0.0.2:3300");
    }

    #[test]
    fn rejects_garbage() {
        for s in [
            "",
            " , ",
            "[v2:1.2.3.4:3300,v1:1.2.3.4:x]",
            "bad host!",
            "host:port",
        ] {
            assert!(parse_mon_host(s).is_err(), "{s:?} accepted");
        }
        assert!(wants_msgr2(Some("fast")).is_err());
        assert!(!wants_msgr2(Some("legacy")).unwrap());
        assert!(wants_msgr2(Some("prefer-crc")).unwrap());
        assert!(!wants_msgr2(None).unwrap());
    }
}
