//! Cluster access for the kernel client: who we are, the monitors, and the secret key.
//!
//! The kernel takes the key itself (`secret=` in the sysfs write), so unlike the
//! userspace mappers we must read it. It is read from the keyring file (or the conf's
//! `key`/`keyfile`) into a [`Secret`], which never prints itself, and every message that
//! could contain it goes through [`Secret::redact`].

use std::fmt;
use std::path::{Path, PathBuf};

use rbd_core::{ConnectOptions, Rados};

use crate::error::{DriverError, Result};
use crate::mapper::CephAuth;

/// A cephx secret (base64). `Debug` and `Display` never show it.
pub(crate) struct Secret(String);

impl Secret {
    /// Wraps a base64 key. Rejects anything that is not plain base64, so the key can never
    /// inject options into the kernel's option string (no `,`, `=` only as padding, no
    /// spaces).
    pub(crate) fn new(key: &str) -> std::result::Result<Self, &'static str> {
        let key = key.trim();
        if key.is_empty() {
            return Err("the key is empty");
        }
        let body = key.trim_end_matches('=');
        if key.len() - body.len() > 2 {
            return Err("the key is not base64 (too much padding)");
        }
        if !body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
        {
            return Err("the key is not base64");
        }
        Ok(Secret(key.to_owned()))
    }

    /// The key, for the one place that hands it to the kernel.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }

    /// `text` with every occurrence of the key replaced by `<redacted>`.
    pub(crate) fn redact(&self, text: &str) -> String {
        if self.0.is_empty() {
            return text.to_owned();
        }
        text.replace(&self.0, "<redacted>")
    }
}

/// Overwrites a string that held a secret before freeing it (best effort).
pub(crate) fn wipe(s: String) {
    let mut bytes = s.into_bytes();
    bytes.iter_mut().for_each(|b| *b = 0);
    std::hint::black_box(&bytes);
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        // Best effort: overwrite our copy before freeing it.
        wipe(std::mem::take(&mut self.0));
    }
}

/// What the kernel needs to reach the cluster as one client.
#[derive(Debug)]
pub(crate) struct ClusterAccess {
    /// The client id (`admin` for `client.admin`), for `name=`.
    pub(crate) id: String,
    /// The configured `mon_host` string, as Ceph resolved it from the conf and environment.
    pub(crate) mon_host: String,
    /// The client's key.
    pub(crate) secret: Secret,
}

/// The client id from [`CephAuth::id`]: `admin` or `client.admin` both give `admin`.
pub(crate) fn client_id(id: &str) -> Result<String> {
    let id = id.strip_prefix("client.").unwrap_or(id);
    if id.is_empty() {
        return Err(DriverError::invalid("client id", id, "must not be empty"));
    }
    if let Some(c) = id
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || matches!(c, ',' | '=' | '/'))
    {
        return Err(DriverError::invalid(
            "client id",
            id,
            format!("contains the character {c:?}"),
        ));
    }
    Ok(id.to_owned())
}

/// Connects as the client to read, with Ceph's own config semantics (sections, `$name`
/// expansion, `CEPH_ARGS`), the monitor list and where the key lives, then reads the key.
///
/// Connecting also proves the credentials work before the kernel is asked to use them
/// (its errors are opaque, and it retries until its mount timeout).
pub(crate) fn resolve(auth: &CephAuth) -> Result<ClusterAccess> {
    let id = client_id(&auth.id)?;
    let mut opts = ConnectOptions::new().conf_file(&auth.conf).id(&id);
    if let Some(k) = &auth.keyring {
        opts = opts.keyring(k);
    }
    let rados = Rados::connect(&opts).map_err(|e| {
        DriverError::ceph(
            format!(
                "connecting to the cluster as client.{id} with {}",
                auth.conf.display()
            ),
            e,
        )
    })?;
    let get = |key: &str| {
        rados
            .conf_get(key)
            .map_err(|e| DriverError::ceph(format!("reading the {key} option of client.{id}"), e))
    };
    let mon_host = get("mon_host")?;
    if mon_host.trim().is_empty() {
        return Err(DriverError::invalid(
            "mon_host",
            "",
            format!(
                "{} sets no mon_host; the kernel client needs monitor addresses",
                auth.conf.display()
            ),
        ));
    }
    let entity = format!("client.{id}");
    let secret = match &auth.keyring {
        Some(path) => key_from_keyring_file(path, &entity)?,
        None => {
            let key = get("key")?;
            let keyfile = get("keyfile")?;
            if !key.trim().is_empty() {
                Secret::new(&key)
                    .map_err(|why| DriverError::invalid("key option", "<redacted>", why))?
            } else if !keyfile.trim().is_empty() {
                key_from_keyfile(Path::new(keyfile.trim()))?
            } else {
                let list = get("keyring")?;
                let candidates = split_list(&list);
                let found = candidates.iter().find(|p| p.is_file()).ok_or_else(|| {
                    DriverError::invalid(
                        "keyring",
                        list.clone(),
                        format!("none of these files exists; cannot find the key of {entity}"),
                    )
                })?;
                key_from_keyring_file(found, &entity)?
            }
        }
    };
    Ok(ClusterAccess {
        id,
        mon_host,
        secret,
    })
}

/// Ceph's list options are separated by commas, semicolons or whitespace.
fn split_list(s: &str) -> Vec<PathBuf> {
    s.split(|c: char| c == ',' || c == ';' || c.is_whitespace())
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .collect()
}

fn key_from_keyfile(path: &Path) -> Result<Secret> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| DriverError::io(format!("reading keyfile {}", path.display()), e))?;
    Secret::new(&text)
        .map_err(|why| DriverError::invalid("keyfile", path.display().to_string(), why))
}

fn key_from_keyring_file(path: &Path, entity: &str) -> Result<Secret> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| DriverError::io(format!("reading keyring {}", path.display()), e))?;
    let key = key_from_keyring(&text, entity).ok_or_else(|| {
        DriverError::invalid(
            "keyring",
            path.display().to_string(),
            format!("has no key for {entity}"),
        )
    })?;
    Secret::new(&key).map_err(|why| {
        DriverError::invalid(
            "keyring",
            path.display().to_string(),
            format!("the key of {entity}: {why}"),
        )
    })
}

/// The `key` of `entity` (e.g. `client.admin`) in a keyring file's text:
///
/// ```text
/// [client.admin]
///     key = AQBx...==
///     caps mon = "allow *"
/// ```
pub(crate) fn key_from_keyring(text: &str, entity: &str) -> Option<String> {
    let mut section: Option<&str> = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(rest) = line.strip_prefix('[') {
            section = rest.split_once(']').map(|(name, _)| name.trim());
            continue;
        }
        if section != Some(entity) {
            continue;
        }
        if let Some((k, v)) = line.split_once('=')
            && k.trim() == "key"
        {
            // Values may be quoted; "key = AQ...==" splits at the first '=' only.
            let v = v.trim().trim_matches('"').trim();
            return Some(v.to_owned());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "AQBxYXBlAAAAABAAbm90LWEtcmVhbC1rZXktLS0tLQ==";

    #[test]
    fn finds_the_entity_key() {
        let text = format!(
            "# comment\n[mon.]\n\tkey = AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==\n\tcaps mon = \"allow *\"\n\
             [client.admin]\n\tkey = {KEY}\n\tcaps mon = \"allow *\"\n[client.other]\nkey=AQBB\n"
        );
        assert_eq!(
            key_from_keyring(&text, "client.admin").as_deref(),
            Some(KEY)
        );
        assert_eq!(
            key_from_keyring(&text, "client.other").as_deref(),
            Some("AQBB")
        );
        assert_eq!(key_from_keyring(&text, "client.nobody"), None);
        // Quoted value, spaces around the section name.
        let q = format!("[ client.q ]\nkey = \"{KEY}\"\n");
        assert_eq!(key_from_keyring(&q, "client.q").as_deref(), Some(KEY));
    }

    #[test]
    fn secret_is_base64_only_and_never_printed() {
        let s = Secret::new(KEY).unwrap();
        assert_eq!(s.expose(), KEY);
        assert!(!format!("{s:?}").contains(KEY));
        assert_eq!(
            s.redact(&format!("a secret={KEY},b")),
            "a secret=<redacted>,b"
        );
        for bad in ["", "AQB x", "AQB,noshare", "AQB=,x", "AQB===", "AQ\nB"] {
            assert!(Secret::new(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn client_ids() {
        assert_eq!(client_id("admin").unwrap(), "admin");
        assert_eq!(client_id("client.docker").unwrap(), "docker");
        assert_eq!(client_id("rgw.host1").unwrap(), "rgw.host1");
        for bad in ["", "client.", "a b", "a,secret=x", "a=b"] {
            assert!(client_id(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn list_options_split() {
        assert_eq!(
            split_list("/etc/ceph/ceph.client.admin.keyring,/etc/ceph/ceph.keyring; /k"),
            vec![
                PathBuf::from("/etc/ceph/ceph.client.admin.keyring"),
                PathBuf::from("/etc/ceph/ceph.keyring"),
                PathBuf::from("/k")
            ]
        );
    }
}
