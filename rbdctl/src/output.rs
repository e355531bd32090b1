//! Output in the two formats every command supports: a table for people, JSON for tools.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// `--format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns (or `key: value` lines for one object).
    Table,
    /// JSON, one document per command.
    Json,
}

/// A table: headers and rows of cells.
#[derive(Debug, Default)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new(headers: &[&str]) -> Self {
        Self {
            headers: headers.iter().map(|s| s.to_string()).collect(),
            rows: Vec::new(),
        }
    }
    /// Adds a row.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }
    /// Renders with two spaces between columns; the last column is not padded.
    pub fn render(&self) -> String {
        let n = self.headers.len();
        let mut w: Vec<usize> = self.headers.iter().map(|h| h.len()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate().take(n) {
                w[i] = w[i].max(c.chars().count());
            }
        }
        let mut out = String::new();
        let line = |cells: &[String], out: &mut String| {
            for (i, c) in cells.iter().enumerate().take(n) {
                if i + 1 == n {
                    out.push_str(c);
                } else {
                    out.push_str(c);
                    out.push_str(&" ".repeat(w[i] - c.chars().count() + 2));
                }
            }
            out.push('\n');
        };
        line(&self.headers, &mut out);
        for r in &self.rows {
            line(r, &mut out);
        }
        out
    }
}

/// Prints `value` as JSON, or the table built by `table`.
pub fn emit<T: Serialize>(format: Format, value: &T, table: impl FnOnce() -> String) {
    match format {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_else(|_| "null".into())
        ),
        Format::Table => print!("{}", table()),
    }
}

/// Prints the result of a command that changed something: `text` for people, `value` as
/// JSON for tools.
pub fn done(format: Format, value: serde_json::Value, text: impl FnOnce() -> String) {
    emit(format, &value, || {
        let mut t = text();
        if !t.ends_with('\n') {
            t.push('\n');
        }
        t
    });
}

/// A timestamp as `rbd` prints it: C's `ctime` form in local time,
/// `Tue Dec  1 20:38:18 2026` (`localtime_r`).
pub fn ctime(t: SystemTime) -> String {
    let secs = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs(),
        Err(_) => 0,
    };
    let Ok(tt) = libc::time_t::try_from(secs) else {
        return secs.to_string();
    };
    // SAFETY: `tm` is plain old data; all-zero is a valid value that localtime_r overwrites.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the call; localtime_r is the thread-safe variant
    // and keeps no reference to them.
    if unsafe { libc::localtime_r(&tt, &mut tm) }.is_null() {
        return secs.to_string();
    }
    const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let day = usize::try_from(tm.tm_wday).ok().and_then(|i| DAYS.get(i));
    let mon = usize::try_from(tm.tm_mon).ok().and_then(|i| MONTHS.get(i));
    match (day, mon) {
        (Some(d), Some(m)) => format!(
            "{d} {m} {:>2} {:02}:{:02}:{:02} {}",
            tm.tm_mday,
            tm.tm_hour,
            tm.tm_min,
            tm.tm_sec,
            i64::from(tm.tm_year) + 1900
        ),
        _ => secs.to_string(),
    }
}

/// Seconds since the epoch (0 for earlier times).
pub fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Human-readable size: `1 GiB`, `512 MiB`, `4 KiB`, `100 B` (fs-format's).
pub use fs_format::human_size;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns() {
        let mut t = Table::new(&["NAME", "SIZE"]);
        t.row(vec!["a".into(), "1 GiB".into()]);
        t.row(vec!["longer".into(), "2 MiB".into()]);
        assert_eq!(t.render(), "NAME    SIZE\na       1 GiB\nlonger  2 MiB\n");
    }

    #[test]
    fn ctime_form() {
        // Midnight UTC on 1 Jan 2024 was a Monday; the form is C's ctime (TZ may shift it).
        let t = UNIX_EPOCH + std::time::Duration::from_secs(1_704_067_200);
        let s = ctime(t);
        assert_eq!(s.len(), 24, "{s}");
        assert_eq!(&s[3..4], " ");
        if std::env::var("TZ").as_deref() == Ok("UTC") {
            assert_eq!(s, "Mon Jan  1 00:00:00 2024");
        }
    }
}
