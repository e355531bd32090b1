//! Ceph entity addresses (`entity_addr_t` text forms), parsed instead of passed as strings.
//!
//! Forms accepted: `127.0.0.1:0/3710147553`, `v1:127.0.0.1:6789/0`, `v2:10.0.0.1:3300/0`,
//! `any:127.0.0.1:0/42`, `[::1]:0/42`, `v2:[fe80::1]:3300/0`, a bare IP (`10.0.0.1`, whole
//! host), and address vectors `[v2:1.2.3.4:3300/0,v1:1.2.3.4:6789/0]`.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// The messenger protocol an address is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AddrType {
    /// Legacy messenger (`v1:`).
    V1,
    /// Messenger v2 (`v2:`).
    V2,
    /// Either (`any:`); clients report this.
    Any,
}

/// One Ceph entity address: type, IP, port and nonce.
///
/// A client's address (from `rados_getaddrs`, `rbd status` or sysfs `client_addr`) is
/// unique per client instance thanks to its nonce, which is what makes exact fencing
/// possible: blocklisting `127.0.0.1:0/1234` fences that one client and no other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EntityAddr {
    /// The protocol prefix, if the text had one.
    pub kind: Option<AddrType>,
    /// The IP address.
    pub ip: IpAddr,
    /// The port (0 for clients).
    pub port: u16,
    /// The per-instance nonce.
    pub nonce: u32,
}

impl EntityAddr {
    /// An address that matches every client on `ip` (port 0, nonce 0).
    ///
    /// Blocklisting it fences a whole host: only do that when the operator asks.
    pub fn whole_host(ip: IpAddr) -> Self {
        Self {
            kind: None,
            ip,
            port: 0,
            nonce: 0,
        }
    }

    /// True when this address names a whole host rather than one client instance.
    pub fn is_whole_host(&self) -> bool {
        self.port == 0 && self.nonce == 0
    }

    /// The address without its type prefix, in the `IP:PORT/NONCE` form that
    /// `ceph osd blocklist` and `rbd status` print.
    pub fn to_legacy_string(&self) -> String {
        match self.ip {
            IpAddr::V4(ip) => format!("{ip}:{}/{}", self.port, self.nonce),
            IpAddr::V6(ip) => format!("[{ip}]:{}/{}", self.port, self.nonce),
        }
    }

    /// True when `other` is the same client instance (IP, port, nonce), ignoring the type.
    pub fn same_instance(&self, other: &EntityAddr) -> bool {
        self.ip == other.ip && self.port == other.port && self.nonce == other.nonce
    }
}

impl fmt::Display for EntityAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            Some(AddrType::V1) => write!(f, "v1:")?,
            Some(AddrType::V2) => write!(f, "v2:")?,
            Some(AddrType::Any) => write!(f, "any:")?,
            None => {}
        }
        f.write_str(&self.to_legacy_string())
    }
}

fn bad(s: &str, reason: &str) -> Error {
    Error::invalid("Ceph address", s, reason)
}

impl FromStr for EntityAddr {
    type Err = Error;

    fn from_str(input: &str) -> Result<Self, Error> {
        let s = input.trim();
        if s.is_empty() {
            return Err(bad(input, "empty"));
        }
        let (kind, rest) = if let Some(r) = s.strip_prefix("v1:") {
            (Some(AddrType::V1), r)
        } else if let Some(r) = s.strip_prefix("v2:") {
            (Some(AddrType::V2), r)
        } else if let Some(r) = s.strip_prefix("any:") {
            (Some(AddrType::Any), r)
        } else {
            (None, s)
        };
        // Split off "/nonce".
        let (hostport, nonce) = match rest.rsplit_once('/') {
            Some((hp, n)) => (
                hp,
                n.parse::<u32>()
                    .map_err(|_| bad(input, "nonce is not a 32-bit unsigned number"))?,
            ),
            None => (rest, 0),
        };
        // "[v6]:port", "[v6]", "v4:port", "v4", or a bare v6 without brackets.
        let (ip, port) = if let Some(r) = hostport.strip_prefix('[') {
            let (ip, after) = r
                .split_once(']')
                .ok_or_else(|| bad(input, "missing ']' after IPv6 address"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => p
                    .parse::<u16>()
                    .map_err(|_| bad(input, "port is not a number"))?,
                None if after.is_empty() => 0,
                None => return Err(bad(input, "unexpected text after ']'")),
            };
            let ip: IpAddr = ip.parse().map_err(|_| bad(input, "not an IPv6 address"))?;
            (ip, port)
        } else if hostport.matches(':').count() == 1 {
            let (ip, p) = hostport.split_once(':').unwrap_or((hostport, "0"));
            let ip: IpAddr = ip.parse().map_err(|_| bad(input, "not an IP address"))?;
            let port = p
                .parse::<u16>()
                .map_err(|_| bad(input, "port is not a number"))?;
            (ip, port)
        } else {
            let ip: IpAddr = hostport
                .parse()
                .map_err(|_| bad(input, "not an IP address"))?;
            (ip, 0)
        };
        Ok(EntityAddr {
            kind,
            ip,
            port,
            nonce,
        })
    }
}

impl Serialize for EntityAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for EntityAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A vector of addresses, as mons and OSDs advertise (`[v2:...,v1:...]`), or a single one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AddrVec(pub Vec<EntityAddr>);

impl AddrVec {
    /// The first address, preferring a typed `v1`/`any`/untyped one as the blocklist form.
    pub fn primary(&self) -> Option<&EntityAddr> {
        self.0
            .iter()
            .find(|a| a.kind != Some(AddrType::V2))
            .or_else(|| self.0.first())
    }
}

impl FromStr for AddrVec {
    type Err = Error;

    fn from_str(input: &str) -> Result<Self, Error> {
        let s = input.trim();
        // An address vector is bracketed and its entries have a type prefix; "[::1]:0/1" is
        // a single IPv6 address.
        if let Some(inner) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']'))
            && (inner.starts_with("v1:") || inner.starts_with("v2:") || inner.starts_with("any:"))
        {
            let addrs = inner
                .split(',')
                .map(str::parse)
                .collect::<Result<Vec<EntityAddr>, _>>()?;
            return Ok(AddrVec(addrs));
        }
        Ok(AddrVec(vec![s.parse()?]))
    }
}

impl fmt::Display for AddrVec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.len() == 1 {
            return write!(f, "{}", self.0[0]);
        }
        f.write_str("[")?;
        for (i, a) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{a}")?;
        }
        f.write_str("]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_forms() {
        let a: EntityAddr = "127.0.0.1:0/3710147553".parse().unwrap();
        assert_eq!(a.port, 0);
        assert_eq!(a.nonce, 3710147553);
        assert_eq!(a.kind, None);
        assert_eq!(a.to_string(), "127.0.0.1:0/3710147553");

        let b: EntityAddr = "v2:10.1.2.3:3300/0".parse().unwrap();
        assert_eq!(b.kind, Some(AddrType::V2));
        assert_eq!(b.port, 3300);

        let c: EntityAddr = "any:[::1]:0/42".parse().unwrap();
        assert_eq!(c.ip, "::1".parse::<IpAddr>().unwrap());
        assert_eq!(c.to_legacy_string(), "[::1]:0/42");

        let d: EntityAddr = "10.0.0.9".parse().unwrap();
        assert!(d.is_whole_host());

        let v: AddrVec = "[v2:1.2.3.4:3300/0,v1:1.2.3.4:6789/0]".parse().unwrap();
        assert_eq!(v.0.len(), 2);
        assert_eq!(v.primary().unwrap().port, 6789);
        assert_eq!(v.to_string(), "[v2:1.2.3.4:3300/0,v1:1.2.3.4:6789/0]");

        let single: AddrVec = "[::1]:0/7".parse().unwrap();
        assert_eq!(single.0.len(), 1);
    }

    #[test]
    fn rejects_garbage() {
        for s in [
            "",
            "x",
            "1.2.3.4:99999/1",
            "1.2.3.4:0/-1",
            "[::1:0/1",
            "1.2.3.4:0/abc",
            "v3:1.2.3.4:0/0",
        ] {
            let e = s.parse::<EntityAddr>();
            assert!(e.is_err(), "{s:?} parsed");
            if !s.is_empty() {
                assert!(e.unwrap_err().to_string().contains(s));
            }
        }
    }

    proptest! {
        #[test]
        fn roundtrip_v4(a in any::<[u8; 4]>(), port in any::<u16>(), nonce in any::<u32>(),
                        k in 0u8..4) {
            let kind = match k { 0 => None, 1 => Some(AddrType::V1), 2 => Some(AddrType::V2),
                                 _ => Some(AddrType::Any) };
            let addr = EntityAddr { kind, ip: IpAddr::from(a), port, nonce };
            let back: EntityAddr = addr.to_string().parse().unwrap();
            prop_assert_eq!(back, addr);
        }

        #[test]
        fn roundtrip_v6(a in any::<[u16; 8]>(), port in any::<u16>(), nonce in any::<u32>()) {
            let addr = EntityAddr { kind: Some(AddrType::V2), ip: IpAddr::from(a), port, nonce };
            let back: EntityAddr = addr.to_string().parse().unwrap();
            prop_assert_eq!(back, addr);
        }

        #[test]
        fn never_panics(s in ".{0,40}") {
            let _ = s.parse::<EntityAddr>();
            let _ = s.parse::<AddrVec>();
        }
    }
}
