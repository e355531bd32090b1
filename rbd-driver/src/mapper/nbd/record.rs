//! What `rbd-nbd list-mapped` says, and the records we keep at map time.
//!
//! `list-mapped` knows pool, namespace, image name, snapshot, device and the serving pid,
//! but not the image id. At map time we record the (verified) image id, the client
//! address and the admin socket in `<run_dir>/nbd/<nbdN>.json`; listing joins the two on
//! device **and** pid, so a record left behind by a mapping that is gone never labels a
//! new mapping of the same device.

use std::path::{Path, PathBuf};

use rbd_core::EntityAddr;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{DriverError, Result};

/// One mapping as `rbd-nbd list-mapped --format json` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Listed {
    pub(crate) pid: u32,
    pub(crate) pool: String,
    pub(crate) namespace: String,
    pub(crate) image: String,
    pub(crate) snap: Option<String>,
    pub(crate) device: PathBuf,
}

/// Parses `list-mapped --format json`: an array (or `{"devices": [...]}`) of
/// `{"id": PID, "pool", "namespace", "image", "snap" ("-" for none), "device"}`.
pub(crate) fn parse_list_mapped(text: &str) -> std::result::Result<Vec<Listed>, String> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let v: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let items = match &v {
        Value::Array(a) => a.as_slice(),
        Value::Object(o) => match o.get("devices") {
            Some(Value::Array(a)) => a.as_slice(),
            _ if o.is_empty() => &[],
            _ => return Err("expected an array of devices".into()),
        },
        _ => return Err("expected an array of devices".into()),
    };
    let mut out = Vec::with_capacity(items.len());
    for it in items {
        let s = |k: &str| it.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
        let pid = match it.get("id").or_else(|| it.get("pid")) {
            Some(Value::Number(n)) => n.as_u64(),
            Some(Value::String(s)) => s.parse().ok(),
            _ => None,
        }
        .and_then(|p| u32::try_from(p).ok())
        .ok_or_else(|| format!("entry without a pid: {it}"))?;
        let device = s("device");
        if device.is_empty() {
            return Err(format!("entry without a device: {it}"));
        }
        let snap = s("snap");
        out.push(Listed {
            pid,
            pool: s("pool"),
            namespace: s("namespace"),
            image: s("image"),
            snap: (!snap.is_empty() && snap != "-").then_some(snap),
            device: PathBuf::from(device),
        });
    }
    Ok(out)
}

/// What we record when we map.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Record {
    pub(crate) device: PathBuf,
    pub(crate) pid: u32,
    pub(crate) pool: String,
    pub(crate) namespace: String,
    pub(crate) image: String,
    pub(crate) image_id: String,
    pub(crate) snap: Option<String>,
    pub(crate) read_only: bool,
    pub(crate) exclusive: bool,
    /// The rbd-nbd process's admin socket.
    pub(crate) asok: Option<PathBuf>,
    /// Its client address, when it could be determined.
    pub(crate) client_addr: Option<EntityAddr>,
}

impl Record {
    /// True when `l` is the mapping this record was written for.
    pub(crate) fn matches(&self, l: &Listed) -> bool {
        self.device == l.device
            && self.pid == l.pid
            && self.pool == l.pool
            && self.namespace == l.namespace
            && self.image == l.image
            && self.snap == l.snap
    }
}

/// `<dir>/<nbdN>.json`.
pub(crate) fn record_path(dir: &Path, device: &Path) -> PathBuf {
    let name = device
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "unknown".into());
    dir.join(format!("{name}.json"))
}

/// Writes a record atomically (temp file, then rename).
pub(crate) fn write(dir: &Path, r: &Record) -> Result<()> {
    let path = record_path(dir, &r.device);
    let tmp = path.with_extension("json.tmp");
    let body = serde_json::to_vec_pretty(r).map_err(|e| DriverError::CorruptState {
        path: path.clone(),
        source: e,
    })?;
    std::fs::write(&tmp, body)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|e| DriverError::io(format!("writing {}", path.display()), e))
}

/// Every readable record in `dir`. Unreadable or foreign files are skipped: a record is
/// only a hint that must match a live mapping by device and pid.
pub(crate) fn read_all(dir: &Path) -> Vec<Record> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for ent in rd.flatten() {
        let p = ent.path();
        if p.extension().is_some_and(|e| e == "json")
            && let Ok(text) = std::fs::read(&p)
            && let Ok(r) = serde_json::from_slice::<Record>(&text)
        {
            out.push(r);
        }
    }
    out
}

/// Removes the record of `device`, if any.
pub(crate) fn remove(dir: &Path, device: &Path) {
    let _ = std::fs::remove_file(record_path(dir, device));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_list_mapped() {
        let pacific = r#"[{"id":"3012","pool":"rbd","namespace":"","image":"vol1","snap":"-","device":"/dev/nbd0"},
            {"id":4100,"pool":"data","namespace":"ns","image":"db","snap":"s1","device":"/dev/nbd3"}]"#;
        let l = parse_list_mapped(pacific).unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].pid, 3012);
        assert_eq!(l[0].snap, None);
        assert_eq!(l[0].device, PathBuf::from("/dev/nbd0"));
        assert_eq!(l[1].pid, 4100);
        assert_eq!(l[1].namespace, "ns");
        assert_eq!(l[1].snap.as_deref(), Some("s1"));
        let wrapped = r#"{"devices":[{"pid":1,"pool":"p","image":"i","device":"/dev/nbd1"}]}"#;
        assert_eq!(parse_list_mapped(wrapped).unwrap()[0].pid, 1);
        assert!(parse_list_mapped("").unwrap().is_empty());
        assert!(parse_list_mapped("[]").unwrap().is_empty());
        assert!(parse_list_mapped("{}").unwrap().is_empty());
        assert!(parse_list_mapped("id pool image").is_err());
        assert!(parse_list_mapped(r#"[{"pool":"p","device":"/dev/nbd0"}]"#).is_err());
    }

    #[test]
    fn records_round_trip_and_match_on_device_and_pid() {
        let dir = tempfile::tempdir().unwrap();
        let r = Record {
            device: "/dev/nbd2".into(),
            pid: 77,
            pool: "rbd".into(),
            namespace: String::new(),
            image: "vol".into(),
            image_id: "abc".into(),
            snap: None,
            read_only: false,
            exclusive: true,
            asok: Some("/run/x.asok".into()),
            client_addr: Some("127.0.0.1:0/5".parse().unwrap()),
        };
        write(dir.path(), &r).unwrap();
        std::fs::write(dir.path().join("junk.json"), "{").unwrap();
        std::fs::write(dir.path().join("other.txt"), "x").unwrap();
        let all = read_all(dir.path());
        assert_eq!(all, vec![r.clone()]);
        let mut l = Listed {
            pid: 77,
            pool: "rbd".into(),
            namespace: String::new(),
            image: "vol".into(),
            snap: None,
            device: "/dev/nbd2".into(),
        };
        assert!(r.matches(&l));
        l.pid = 78;
        assert!(
            !r.matches(&l),
            "a new process on the same device is another mapping"
        );
        remove(dir.path(), Path::new("/dev/nbd2"));
        assert!(read_all(dir.path()).is_empty());
    }
}
