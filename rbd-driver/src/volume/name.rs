//! Volume names: one image per name, and a name can never escape the mount root.

use crate::error::{DriverError, Result};

/// Longest volume name accepted.
pub const MAX_VOLUME_NAME: usize = 96;

/// Validates a volume name.
///
/// Accepted: 1 to [`MAX_VOLUME_NAME`] bytes of ASCII letters, digits, `_`, `.` and `-`,
/// starting with a letter or digit. That rules out `..`, `/`, NUL, whitespace, control
/// characters and anything that could escape the mount root or confuse `pool/image@snap`
/// specs. The error names the bad value and the rule it broke.
pub fn validate_volume_name(name: &str) -> Result<()> {
    let bad = |reason: &str| Err(DriverError::invalid("volume name", name, reason));
    if name.is_empty() {
        return bad("must not be empty");
    }
    if name.len() > MAX_VOLUME_NAME {
        return bad(&format!("longer than {MAX_VOLUME_NAME} characters"));
    }
    let first = name.as_bytes()[0];
    if !first.is_ascii_alphanumeric() {
        return bad("must start with a letter or a digit");
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return bad(&format!(
            "contains {c:?}; only letters, digits, '_', '.' and '-' are allowed"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_normal_names() {
        for n in ["v1", "db-data", "pg_15.main", "A", "0abc"] {
            validate_volume_name(n).unwrap();
        }
    }

    #[test]
    fn rejects_escapes_and_junk() {
        let long = "a".repeat(MAX_VOLUME_NAME + 1);
        for n in [
            "", "..", ".", "../x", "/", "a/b", "a\0b", " a", "a b", "-x", "_x", ".hidden", "a@s",
            "é", &long,
        ] {
            let e = validate_volume_name(n).unwrap_err().to_string();
            assert!(e.contains("volume name"), "{n:?}: {e}");
        }
    }

    proptest! {
        #[test]
        fn valid_names_stay_inside_the_root(s in "\\PC{0,120}") {
            if validate_volume_name(&s).is_ok() {
                let root = std::path::Path::new("/mnt/root");
                let p = root.join(&s);
                prop_assert_eq!(p.parent(), Some(root));
                prop_assert!(!s.contains('/') && s != "." && s != "..");
            }
        }
    }
}
