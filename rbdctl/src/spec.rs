//! Image and snapshot specs as `rbd` writes them: `[pool/[namespace/]]image[@snapshot]`.

use std::fmt;

use rbd_core::rbd::validate_image_name;

use crate::Cli;
use crate::error::{CliError, CliResult};

/// A parsed `[pool/[namespace/]]image[@snapshot]`.
///
/// Pool and namespace are `None` when not written; [`Spec::pool`] and
/// [`Spec::namespace`] then fall back to the global `-p/--pool` and `--namespace`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// The pool, if given in the spec.
    pub pool: Option<String>,
    /// The namespace, if given in the spec.
    pub namespace: Option<String>,
    /// The image name.
    pub image: String,
    /// The snapshot name, if given.
    pub snap: Option<String>,
}

impl Spec {
    /// Parses a spec; every part is validated (no empty parts, no stray `/` or `@`).
    pub fn parse(input: &str) -> CliResult<Spec> {
        let bad = |reason: &str| {
            CliError::Usage(format!(
                "invalid image spec {input:?}: {reason} (expected [pool/[namespace/]]image[@snapshot])"
            ))
        };
        let (path, snap) = match input.split_once('@') {
            Some((p, s)) => {
                if s.contains('@') {
                    return Err(bad("more than one '@'"));
                }
                if s.is_empty() {
                    return Err(bad("empty snapshot name after '@'"));
                }
                (p, Some(s.to_owned()))
            }
            None => (input, None),
        };
        let parts: Vec<&str> = path.split('/').collect();
        let (pool, namespace, image) = match parts.as_slice() {
            [i] => (None, None, *i),
            [p, i] => (Some(*p), None, *i),
            [p, n, i] => (Some(*p), Some(*n), *i),
            _ => return Err(bad("too many '/'")),
        };
        if image.is_empty() {
            return Err(bad("empty image name"));
        }
        if pool == Some("") {
            return Err(bad("empty pool name"));
        }
        validate_image_name("image name", image)?;
        if let Some(s) = &snap {
            validate_image_name("snapshot name", s)?;
        }
        Ok(Spec {
            pool: pool.map(str::to_owned),
            namespace: namespace.map(str::to_owned),
            image: image.to_owned(),
            snap,
        })
    }

    /// Parses a spec that must not name a snapshot.
    pub fn image_only(input: &str) -> CliResult<Spec> {
        let s = Spec::parse(input)?;
        if s.snap.is_some() {
            return Err(CliError::Usage(format!(
                "{input:?} names a snapshot; this command takes an image"
            )));
        }
        Ok(s)
    }

    /// Parses a spec that must name a snapshot (`image@snap`).
    pub fn with_snap(input: &str) -> CliResult<Spec> {
        let s = Spec::parse(input)?;
        if s.snap.is_none() {
            return Err(CliError::Usage(format!(
                "{input:?} names no snapshot; write image@snapshot"
            )));
        }
        Ok(s)
    }

    /// The snapshot name (only call on specs from [`Spec::with_snap`]).
    pub fn snap_name(&self) -> &str {
        self.snap.as_deref().unwrap_or_default()
    }

    /// The pool: from the spec, else `-p/--pool`.
    pub fn pool<'a>(&'a self, cli: &'a Cli) -> &'a str {
        self.pool.as_deref().unwrap_or(&cli.pool)
    }

    /// The namespace: from the spec, else `--namespace` (when the spec names only a pool,
    /// the default namespace, as with `rbd`).
    pub fn namespace<'a>(&'a self, cli: &'a Cli) -> &'a str {
        match (&self.pool, &self.namespace) {
            (_, Some(n)) => n,
            (Some(_), None) => "",
            (None, None) => &cli.namespace,
        }
    }

    /// The fully qualified spec, `pool/[namespace/]image[@snap]`, for messages.
    pub fn display(&self, cli: &Cli) -> String {
        let mut s = self.pool(cli).to_owned();
        s.push('/');
        let ns = self.namespace(cli);
        if !ns.is_empty() {
            s.push_str(ns);
            s.push('/');
        }
        s.push_str(&self.image);
        if let Some(snap) = &self.snap {
            s.push('@');
            s.push_str(snap);
        }
        s
    }

    /// The same image without its snapshot.
    pub fn without_snap(&self) -> Spec {
        Spec {
            snap: None,
            ..self.clone()
        }
    }
}

impl fmt::Display for Spec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(p) = &self.pool {
            write!(f, "{p}/")?;
        }
        if let Some(n) = &self.namespace {
            write!(f, "{n}/")?;
        }
        f.write_str(&self.image)?;
        if let Some(s) = &self.snap {
            write!(f, "@{s}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        let s = Spec::parse("img").unwrap();
        assert_eq!(
            (s.pool, s.namespace, s.image, s.snap),
            (None, None, "img".into(), None)
        );
        let s = Spec::parse("p/img@s1").unwrap();
        assert_eq!(s.pool.as_deref(), Some("p"));
        assert_eq!(s.snap.as_deref(), Some("s1"));
        let s = Spec::parse("p/ns/img").unwrap();
        assert_eq!(s.namespace.as_deref(), Some("ns"));
        assert_eq!(s.to_string(), "p/ns/img");
        assert_eq!(Spec::parse("p/ns/img@x").unwrap().to_string(), "p/ns/img@x");
    }

    #[test]
    fn rejects_bad_specs_naming_them() {
        for bad in ["", "@s", "img@", "a@b@c", "a/b/c/d", "/img", "p/", "img\n"] {
            let e = Spec::parse(bad).expect_err(bad);
            assert!(e.to_string().contains(&format!("{bad:?}")), "{bad}: {e}");
        }
        assert!(Spec::image_only("a@b").is_err());
        assert!(Spec::with_snap("a").is_err());
        assert_eq!(Spec::with_snap("a@b").unwrap().snap_name(), "b");
    }
}
