//! Sizes for messages.

/// A size for people: `0 B`, `4 KiB`, `64 MiB`, `1 GiB`, `1.5 GiB` (binary units, one
/// decimal when not whole).
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 || (v.fract()).abs() < 1e-9 {
        format!("{} {}", v as u64, UNITS[u])
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(100), "100 B");
        assert_eq!(human_size(104 << 10), "104 KiB");
        assert_eq!(human_size(1 << 30), "1 GiB");
        assert_eq!(human_size(1536 << 20), "1.5 GiB");
        assert_eq!(human_size(300 << 20), "300 MiB");
    }
}
