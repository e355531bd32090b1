//! Asking a running rbd-nbd, through its Ceph admin socket, which image it serves.
//!
//! Protocol: write the command as JSON followed by a NUL byte; the reply is a 4-byte
//! big-endian length and that many bytes of JSON.
//!
//! Two answers name the image **id** the process actually opened:
//! - `objecter_requests`: the header watch, a linger op on `rbd_header.<id>`;
//! - `perf dump`: the perf counter section of every open image, `librbd-<id>-<pool>-<name>`
//!   (present even for read-only opens, which do not watch the header).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

/// Sends one admin socket command and returns the parsed reply.
pub(crate) fn command(path: &Path, prefix: &str, timeout: Duration) -> std::io::Result<Value> {
    let mut s = UnixStream::connect(path)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let mut req = serde_json::json!({ "prefix": prefix })
        .to_string()
        .into_bytes();
    req.push(0);
    s.write_all(&req)?;
    let mut len = [0u8; 4];
    s.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len) as usize;
    if len > 64 << 20 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("admin socket reply of {len} bytes"),
        ));
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body)?;
    serde_json::from_slice(&body)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Image ids whose header object is watched (`rbd_header.<id>` linger ops).
pub(crate) fn watched_image_ids(objecter_requests: &Value) -> Vec<String> {
    let mut ids: Vec<String> = objecter_requests
        .get("linger_ops")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|op| op.get("object_id").and_then(Value::as_str))
        .filter_map(|o| o.strip_prefix("rbd_header."))
        .map(str::to_owned)
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

/// Image ids of the open images' perf counter sections (`librbd-<id>-...`). Ids are
/// alphanumeric, so the id ends at the first `-`.
pub(crate) fn open_image_ids(perf_dump: &Value) -> Vec<String> {
    let mut ids: Vec<String> = perf_dump
        .as_object()
        .into_iter()
        .flat_map(|o| o.keys())
        .filter_map(|k| k.strip_prefix("librbd-"))
        .filter_map(|rest| rest.split('-').next())
        .filter(|id| !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric()))
        .map(str::to_owned)
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

/// What the process behind `asok` serves: the watched header ids if it watches any
/// (that is the image it serves; a clone's parent is not watched), else the ids of its
/// open images.
pub(crate) fn served_image_ids(asok: &Path, timeout: Duration) -> std::io::Result<Vec<String>> {
    let watched = watched_image_ids(&command(asok, "objecter_requests", timeout)?);
    if !watched.is_empty() {
        return Ok(watched);
    }
    Ok(open_image_ids(&command(asok, "perf dump", timeout)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn parses_ids() {
        let req = serde_json::json!({
            "ops": [],
            "linger_ops": [
                {"linger_id": 1, "object_id": "rbd_header.107db271c1e2", "registered": "1"},
                {"linger_id": 2, "object_id": "rbd_mirroring"}
            ]
        });
        assert_eq!(watched_image_ids(&req), vec!["107db271c1e2"]);
        let perf = serde_json::json!({
            "AsyncMessenger::Worker-0": {},
            "librbd-107db271c1e2-rbd-vol-1": {},
            "librbd-5e2a-rbd-parent": {},
            "objecter": {}
        });
        assert_eq!(open_image_ids(&perf), vec!["107db271c1e2", "5e2a"]);
        assert!(watched_image_ids(&serde_json::json!({})).is_empty());
    }

    #[test]
    fn talks_the_protocol() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.asok");
        let l = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            for _ in 0..2 {
                let (mut c, _) = l.accept().unwrap();
                let mut req = Vec::new();
                let mut b = [0u8; 1];
                while c.read(&mut b).unwrap() == 1 && b[0] != 0 {
                    req.push(b[0]);
                }
                let v: Value = serde_json::from_slice(&req).unwrap();
                let body = match v["prefix"].as_str().unwrap() {
                    "objecter_requests" => r#"{"ops":[],"linger_ops":[]}"#.to_string(),
                    "perf dump" => r#"{"librbd-abc123-rbd-img":{}}"#.to_string(),
                    p => panic!("unexpected {p}"),
                };
                c.write_all(&(body.len() as u32).to_be_bytes()).unwrap();
                c.write_all(body.as_bytes()).unwrap();
            }
        });
        let ids = served_image_ids(&path, Duration::from_secs(5)).unwrap();
        server.join().unwrap();
        assert_eq!(ids, vec!["abc123"]);
    }
}
