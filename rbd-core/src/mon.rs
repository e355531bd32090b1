//! Monitor commands ([`Rados::mon_command`]) and the OSD blocklist, which is how a client
//! is fenced: once its exact address ([`Rados::getaddrs`]) is blocklisted, every OSD
//! refuses its operations with [`crate::ErrorKind::Blocklisted`].
//!
//! ```no_run
//! # fn f(admin: &rbd_core::Rados, victim: &rbd_core::EntityAddr) -> rbd_core::Result<()> {
//! use std::time::Duration;
//! admin.blocklist_add(victim, Some(Duration::from_secs(600)))?;
//! assert!(admin.blocklist_ls()?.iter().any(|e| e.addr.same_instance(victim)));
//! admin.blocklist_rm(victim)?;
//! # Ok(()) }
//! ```

use std::ffi::{CString, c_char};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::addr::EntityAddr;
use crate::error::{Context, Error, Result};
use crate::rados::Rados;
use crate::sys;

/// What a monitor command returned: its output buffer and its status string.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MonReply {
    /// The output (JSON when the command was given `"format": "json"`).
    pub out: Vec<u8>,
    /// The human-readable status line, e.g. `listed 2 entries`.
    pub status: String,
}

impl MonReply {
    /// Decodes [`MonReply::out`] as JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(&self.out)
            .map_err(|e| Error::decode("rados_mon_command", Context::none(), e))
    }
}

/// One entry of the OSD blocklist.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BlocklistEntry {
    /// The fenced address (a client instance, or a whole host when port and nonce are 0).
    /// For a [range](BlocklistEntry::range) entry this is the network address and the
    /// nonce holds the prefix length.
    pub addr: EntityAddr,
    /// True for a CIDR range entry (`osd blocklist range add`, Ceph 16.2.11 and newer).
    pub range: bool,
    /// When the entry expires, if the monitor's timestamp could be parsed.
    pub until: Option<SystemTime>,
    /// The expiry exactly as the monitor printed it.
    pub until_raw: String,
}

/// Takes ownership of a librados-allocated buffer: copies it and frees it with
/// `rados_buffer_free`.
///
/// # Safety
/// `p` must be NULL or a buffer of `len` bytes allocated by librados and not freed yet.
pub(crate) unsafe fn take_rados_buffer(p: *mut c_char, len: usize) -> Vec<u8> {
    if p.is_null() {
        return Vec::new();
    }
    let v = if len == 0 {
        Vec::new()
    } else {
        // SAFETY: guaranteed by the caller: `len` readable bytes at `p`.
        unsafe { std::slice::from_raw_parts(p.cast::<u8>(), len) }.to_vec()
    };
    // SAFETY: allocated by librados, freed exactly once here.
    unsafe { sys::rados_buffer_free(p) };
    v
}

fn command_prefix(cmd: &serde_json::Value) -> Result<String> {
    match cmd.get("prefix").and_then(|p| p.as_str()) {
        Some(p) if cmd.is_object() && !p.is_empty() => Ok(p.to_owned()),
        _ => Err(Error::invalid(
            "mon command",
            cmd.to_string(),
            "must be a JSON object with a non-empty string \"prefix\"",
        )),
    }
}

impl Rados {
    /// Sends a command to the monitors (`rados_mon_command`), e.g.
    /// `{"prefix": "osd blocklist ls", "format": "json"}`, with `input` as its input
    /// buffer. Bounded by the mon op timeout.
    ///
    /// A refused command is [`Error::Command`], carrying the monitor's status string.
    pub fn mon_command(&self, cmd: &serde_json::Value, input: &[u8]) -> Result<MonReply> {
        let prefix = command_prefix(cmd)?;
        let text = CString::new(cmd.to_string())
            .map_err(|_| Error::invalid("mon command", cmd.to_string(), "contains a NUL byte"))?;
        let mut cmds: [*const c_char; 1] = [text.as_ptr()];
        let mut out: *mut c_char = std::ptr::null_mut();
        let mut out_len = 0usize;
        let mut status: *mut c_char = std::ptr::null_mut();
        let mut status_len = 0usize;
        // SAFETY: valid connected handle; `cmds` is an array of one live C string; the input
        // buffer is readable for its length; the four out-pointers are valid locals.
        // librados allocates the output buffers, which we free below.
        let ret = unsafe {
            sys::rados_mon_command(
                self.ptr(),
                cmds.as_mut_ptr(),
                1,
                input.as_ptr().cast(),
                input.len(),
                &mut out,
                &mut out_len,
                &mut status,
                &mut status_len,
            )
        };
        // SAFETY: both buffers are NULL or librados allocations of the reported lengths,
        // freed exactly once here (also on error).
        let (out, status) = unsafe {
            (
                take_rados_buffer(out, out_len),
                take_rados_buffer(status, status_len),
            )
        };
        let status = String::from_utf8_lossy(&status).trim_end().to_owned();
        if ret < 0 {
            return Err(Error::command(prefix, ret, status));
        }
        Ok(MonReply { out, status })
    }

    /// Sends a command with `"format": "json"` added (unless it names a format) and decodes
    /// its output (`rados_mon_command`).
    pub fn mon_command_json<T: DeserializeOwned>(&self, cmd: &serde_json::Value) -> Result<T> {
        let mut cmd = cmd.clone();
        if let Some(obj) = cmd.as_object_mut() {
            obj.entry("format").or_insert_with(|| "json".into());
        }
        self.mon_command(&cmd, &[])?.json()
    }

    /// Blocklists (fences) an address until `expire` from now, or for the monitor's
    /// default (one hour) when `None`: `rados_mon_command` with the mon command
    /// `{"prefix": "osd blocklist", "blocklistop": "add", "addr": ..., "expire": ...}`
    /// (`ceph osd blocklist add ADDR [SECS]`). Afterwards waits for the new OSD map
    /// (`rados_wait_for_latest_osdmap`) so this connection's next operations see it.
    ///
    /// Blocklisting a [whole-host](EntityAddr::whole_host) address fences every client on
    /// that host.
    pub fn blocklist_add(&self, addr: &EntityAddr, expire: Option<Duration>) -> Result<()> {
        let mut cmd = serde_json::json!({
            "prefix": "osd blocklist",
            "blocklistop": "add",
            "addr": addr.to_legacy_string(),
        });
        if let Some(d) = expire {
            if d.is_zero() {
                return Err(Error::invalid(
                    "blocklist expiry",
                    "0s",
                    "must be positive (None means the monitor's default)",
                ));
            }
            cmd["expire"] = serde_json::json!(d.as_secs_f64());
        }
        self.mon_command(&cmd, &[])?;
        self.wait_for_latest_osdmap()
    }

    /// Removes an address from the blocklist: `rados_mon_command` with the mon command
    /// `{"prefix": "osd blocklist", "blocklistop": "rm", "addr": ...}` (`ceph osd
    /// blocklist rm ADDR`), then `rados_wait_for_latest_osdmap`. Removing an address that
    /// is not listed succeeds.
    pub fn blocklist_rm(&self, addr: &EntityAddr) -> Result<()> {
        let cmd = serde_json::json!({
            "prefix": "osd blocklist",
            "blocklistop": "rm",
            "addr": addr.to_legacy_string(),
        });
        self.mon_command(&cmd, &[])?;
        self.wait_for_latest_osdmap()
    }

    /// The current OSD blocklist: `rados_mon_command` with the mon command
    /// `{"prefix": "osd blocklist ls", "format": "json"}` (`ceph osd blocklist ls`).
    pub fn blocklist_ls(&self) -> Result<Vec<BlocklistEntry>> {
        let reply = self.mon_command(
            &serde_json::json!({"prefix": "osd blocklist ls", "format": "json"}),
            &[],
        )?;
        parse_blocklist(&reply.out).map_err(|e| {
            Error::decode(
                "rados_mon_command",
                Context::none().with_object("osd blocklist ls"),
                e,
            )
        })
    }

    /// True when `addr`'s client instance is on the blocklist: [`Rados::blocklist_ls`]
    /// (`rados_mon_command`, mon command `osd blocklist ls`), matched by IP, port and nonce
    /// (range entries are not considered).
    pub fn is_blocklisted(&self, addr: &EntityAddr) -> Result<bool> {
        Ok(self
            .blocklist_ls()?
            .iter()
            .any(|e| !e.range && e.addr.same_instance(addr)))
    }
}

fn entry(addr: &str, range: bool, until: &str) -> std::result::Result<BlocklistEntry, String> {
    let addr: EntityAddr = addr.parse().map_err(|e| format!("{e}"))?;
    let until_raw = until.trim().to_owned();
    Ok(BlocklistEntry {
        addr,
        range,
        until: parse_ceph_time(&until_raw),
        until_raw,
    })
}

/// Parses `osd blocklist ls` output.
///
/// The JSON form is one array of `{"addr", "until"}` entries, followed (Ceph 16.2.11+) by
/// a second array of `{"range", "until"}` CIDR entries: `[{...}][{...}]`. The plain text
/// form has one `ADDR UNTIL` line per entry, ranges prefixed with `cidr:`.
pub fn parse_blocklist(out: &[u8]) -> std::result::Result<Vec<BlocklistEntry>, String> {
    let text = String::from_utf8_lossy(out);
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Ok(Vec::new());
    }
    if trimmed.starts_with('[') || trimmed.starts_with('{') {
        let mut list = Vec::new();
        for v in serde_json::Deserializer::from_str(trimmed).into_iter::<serde_json::Value>() {
            let v = v.map_err(|e| format!("blocklist is not JSON: {e}"))?;
            // Accept bare arrays or objects wrapping them ({"blocklist": [...]}).
            let items: Vec<&serde_json::Value> = match &v {
                serde_json::Value::Array(a) => a.iter().collect(),
                serde_json::Value::Object(o) => {
                    o.values().filter_map(|x| x.as_array()).flatten().collect()
                }
                _ => return Err("blocklist JSON is neither an array nor an object".into()),
            };
            for it in items {
                let until = it.get("until").and_then(|u| u.as_str()).unwrap_or_default();
                let e = match (
                    it.get("addr").and_then(|a| a.as_str()),
                    it.get("range").and_then(|a| a.as_str()),
                ) {
                    (Some(a), _) => entry(a, false, until)?,
                    (None, Some(r)) => entry(r.strip_prefix("cidr:").unwrap_or(r), true, until)?,
                    (None, None) => {
                        return Err(format!("blocklist entry without an address: {it}"));
                    }
                };
                list.push(e);
            }
        }
        return Ok(list);
    }
    trimmed
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("listed "))
        .map(|line| {
            let (addr, until) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            match addr.strip_prefix("cidr:") {
                Some(r) => entry(r, true, until),
                None => entry(addr, false, until),
            }
        })
        .collect()
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses a Ceph `utime_t` as the monitors print it: `2024-05-01T10:00:00.123456+0000`,
/// also with a space instead of `T`, `Z` or no zone (UTC), and without fractions.
pub fn parse_ceph_time(s: &str) -> Option<SystemTime> {
    let s = s.trim();
    let num = |t: &str| -> Option<u32> {
        if !t.is_empty() && t.len() <= 9 && t.bytes().all(|b| b.is_ascii_digit()) {
            t.parse().ok()
        } else {
            None
        }
    };
    let date = s.get(..10)?;
    let sep = s.get(10..11)?;
    if sep != "T" && sep != " " {
        return None;
    }
    let (y, rest) = date.split_once('-')?;
    let (mo, d) = rest.split_once('-')?;
    let (y, mo, d) = (num(y)?, num(mo)?, num(d)?);
    if y.to_string().len() != 4 || !(1..=12).contains(&mo) || !(1..=31).contains(&d) {
        return None;
    }
    let time = s.get(11..)?;
    // Split the zone off: "Z", "+HHMM", "-HHMM", "+HH:MM", or nothing.
    let (clock, offset_secs) = if let Some(c) = time.strip_suffix('Z') {
        (c, 0i64)
    } else if let Some(pos) = time.rfind(['+', '-']) {
        let (c, z) = time.split_at(pos);
        let sign = if z.starts_with('-') { -1 } else { 1 };
        let digits: String = z[1..].chars().filter(|c| *c != ':').collect();
        if digits.len() != 4 {
            return None;
        }
        let hh = i64::from(num(digits.get(..2)?)?);
        let mm = i64::from(num(digits.get(2..)?)?);
        if hh > 23 || mm > 59 {
            return None;
        }
        (c, sign * (hh * 3600 + mm * 60))
    } else {
        (time, 0)
    };
    let (hms, frac) = clock.split_once('.').unwrap_or((clock, ""));
    let mut parts = hms.split(':');
    let (h, mi, sec) = (
        num(parts.next()?)?,
        num(parts.next()?)?,
        num(parts.next()?)?,
    );
    if parts.next().is_some() || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let nanos = if frac.is_empty() {
        0
    } else {
        let f = num(frac)?;
        f * 10u32.pow(9 - frac.len() as u32)
    };
    let days = days_from_civil(i64::from(y), mo, d);
    let secs =
        days * 86_400 + i64::from(h) * 3600 + i64::from(mi) * 60 + i64::from(sec) - offset_secs;
    let t = if secs >= 0 {
        UNIX_EPOCH.checked_add(Duration::new(secs as u64, nanos))?
    } else {
        UNIX_EPOCH
            .checked_sub(Duration::from_secs(secs.unsigned_abs()))?
            .checked_add(Duration::new(0, nanos))?
    };
    Some(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_json_blocklist() {
        let out = br#"[{"addr":"127.0.0.1:0/999","until":"2026-11-22T02:23:59.314991+0000"},
                      {"addr":"10.0.0.1:0/0","until":"2026-11-22T02:23:59+0100"}]"#;
        let l = parse_blocklist(out).unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].addr.to_legacy_string(), "127.0.0.1:0/999");
        let until = l[0].until.unwrap().duration_since(UNIX_EPOCH).unwrap();
        assert_eq!(until.as_secs(), 1_795_314_239);
        assert_eq!(until.subsec_micros(), 314_991);
        assert!(l[1].addr.is_whole_host());
        assert_eq!(
            l[1].until
                .unwrap()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs(),
            1_795_314_239 - 3600
        );
        assert!(parse_blocklist(b"[]").unwrap().is_empty());
        assert!(parse_blocklist(b"").unwrap().is_empty());
        assert!(
            parse_blocklist(br#"{"blocklist":[{"addr":"1.2.3.4:0/1"}]}"#).unwrap()[0]
                .until
                .is_none()
        );
        assert!(parse_blocklist(br#"[{"until":"x"}]"#).is_err());
        assert!(l.iter().all(|e| !e.range));
    }

    #[test]
    fn parses_pacific_two_array_output() {
        // What Ceph 16.2.15 prints: exact entries, then CIDR ranges.
        let out = br#"[{"addr":"127.0.0.1:0/999","until":"2026-11-22T02:33:41.586648+0000"}][{"range":"10.9.0.0:0/24","until":"2026-11-22T02:33:42.676995+0000"}]"#;
        let l = parse_blocklist(out).unwrap();
        assert_eq!(l.len(), 2);
        assert!(!l[0].range && l[0].addr.nonce == 999);
        assert!(l[1].range);
        assert_eq!(l[1].addr.to_legacy_string(), "10.9.0.0:0/24");
        assert!(l[1].until.is_some());
        assert!(parse_blocklist(b"[][]").unwrap().is_empty());
        assert!(parse_blocklist(b"[][").is_err());
        let text = b"127.0.0.1:0/999 2026-11-22T02:33:41.586648+0000\ncidr:10.9.0.0:0/24 2026-11-22T02:33:42.676995+0000\n";
        let l = parse_blocklist(text).unwrap();
        assert_eq!((l[0].range, l[1].range), (false, true));
    }

    #[test]
    fn parses_text_blocklist() {
        let out = b"127.0.0.1:0/999 2026-11-22T02:23:59.314991+0000\nlisted 1 entries\n";
        let l = parse_blocklist(out).unwrap();
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].addr.nonce, 999);
        assert_eq!(l[0].until_raw, "2026-11-22T02:23:59.314991+0000");
        assert!(l[0].until.is_some());
    }

    #[test]
    fn ceph_times() {
        let t = |s| parse_ceph_time(s).map(|t| t.duration_since(UNIX_EPOCH).unwrap().as_secs());
        assert_eq!(t("1970-01-01T00:00:00.000000+0000"), Some(0));
        assert_eq!(t("1970-01-01 00:01:00"), Some(60));
        assert_eq!(t("2000-03-01T00:00:00Z"), Some(951_868_800));
        assert_eq!(t("2024-02-29T12:00:00-02:00"), Some(1_709_215_200));
        for bad in [
            "",
            "2024",
            "2024-13-01T00:00:00",
            "2024-01-01X00:00:00",
            "24-01-01T0:0:0",
        ] {
            assert_eq!(t(bad), None, "{bad}");
        }
    }

    #[test]
    fn mon_command_needs_prefix() {
        assert!(command_prefix(&serde_json::json!({"prefix": "status"})).is_ok());
        for bad in [
            serde_json::json!({}),
            serde_json::json!({"prefix": ""}),
            serde_json::json!({"prefix": 3}),
            serde_json::json!(["prefix"]),
        ] {
            assert_eq!(
                command_prefix(&bad).unwrap_err().kind(),
                crate::ErrorKind::InvalidInput
            );
        }
    }

    proptest! {
        #[test]
        fn blocklist_parser_never_panics(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_blocklist(&b);
        }

        #[test]
        fn time_parser_never_panics(s in ".{0,40}") {
            let _ = parse_ceph_time(&s);
        }

        #[test]
        fn time_roundtrip(secs in 0i64..4_000_000_000, micros in 0u32..1_000_000) {
            let days = secs.div_euclid(86_400);
            let rem = secs.rem_euclid(86_400);
            // civil_from_days, to format the string we parse back.
            let z = days + 719_468;
            let era = z.div_euclid(146_097);
            let doe = z - era * 146_097;
            let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
            let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
            let mp = (5 * doy + 2) / 153;
            let d = doy - (153 * mp + 2) / 5 + 1;
            let m = if mp < 10 { mp + 3 } else { mp - 9 };
            let y = yoe + era * 400 + i64::from(m <= 2);
            let s = format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}+0000",
                            rem / 3600, rem % 3600 / 60, rem % 60);
            let t = parse_ceph_time(&s).unwrap();
            prop_assert_eq!(t, UNIX_EPOCH + Duration::new(secs as u64, micros * 1000));
        }
    }
}
