//! `/proc/self/mountinfo`: what is mounted where.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::Error;

const MOUNTINFO: &str = "/proc/self/mountinfo";

/// One line of `/proc/self/mountinfo` (see `proc(5)`), with octal escapes (`\040` for a
/// space, `\011`, `\012`, `\134`) decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    /// Unique id of the mount.
    pub mount_id: u32,
    /// Id of the parent mount.
    pub parent_id: u32,
    /// `st_dev` major of files on this filesystem (for btrfs an anonymous device, not the
    /// block device's).
    pub major: u32,
    /// `st_dev` minor.
    pub minor: u32,
    /// The directory within the filesystem that forms the root of this mount.
    pub root: PathBuf,
    /// The mountpoint, relative to the process's root.
    pub mount_point: PathBuf,
    /// Per-mount options (`rw,nosuid,relatime`).
    pub mount_options: String,
    /// Optional fields such as `shared:1` or `master:2`.
    pub optional_fields: Vec<String>,
    /// Filesystem type (`ext4`, `fuse.sshfs`, ...).
    pub fs_type: String,
    /// Mount source: the device path for block filesystems, otherwise whatever the
    /// filesystem reports (`tmpfs`, `none`, ...).
    pub source: OsString,
    /// Per-superblock options (`rw,errors=remount-ro`).
    pub super_options: String,
}

impl MountInfo {
    /// True when the mount is read-only (per-mount `ro`, or a read-only superblock).
    pub fn is_read_only(&self) -> bool {
        has_opt(&self.mount_options, "ro") || has_opt(&self.super_options, "ro")
    }

    /// Parse one line (without its trailing newline).
    pub fn parse_line(line: &[u8]) -> Result<Self, String> {
        // Fields are separated by exactly one space; an empty field (e.g. an empty mount
        // source) shows up as two spaces in a row.
        let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
        if fields.len() < 6 {
            return Err(format!("{} fields, expected at least 10", fields.len()));
        }
        let sep = 6 + fields[6..]
            .iter()
            .position(|f| *f == b"-")
            .ok_or("no ` - ` separator before the filesystem type")?;
        if fields.len() < sep + 3 {
            return Err("fewer than 3 fields after the separator".into());
        }
        let num = |i: usize, what: &str| -> Result<u32, String> {
            std::str::from_utf8(fields[i])
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("bad {what} {:?}", String::from_utf8_lossy(fields[i])))
        };
        let text = |f: &[u8]| String::from_utf8_lossy(&unescape(f)).into_owned();
        let (major, minor) = {
            let dev = String::from_utf8_lossy(fields[2]);
            let (a, b) = dev
                .split_once(':')
                .ok_or_else(|| format!("bad major:minor {dev:?}"))?;
            (
                a.parse().map_err(|_| format!("bad major:minor {dev:?}"))?,
                b.parse().map_err(|_| format!("bad major:minor {dev:?}"))?,
            )
        };
        Ok(MountInfo {
            mount_id: num(0, "mount id")?,
            parent_id: num(1, "parent id")?,
            major,
            minor,
            root: PathBuf::from(OsString::from_vec(unescape(fields[3]))),
            mount_point: PathBuf::from(OsString::from_vec(unescape(fields[4]))),
            mount_options: text(fields[5]),
            optional_fields: fields[6..sep].iter().map(|f| text(f)).collect(),
            fs_type: text(fields[sep + 1]),
            source: OsString::from_vec(unescape(fields[sep + 2])),
            super_options: fields.get(sep + 3).map(|f| text(f)).unwrap_or_default(),
        })
    }
}

fn has_opt(opts: &str, name: &str) -> bool {
    opts.split(',').any(|o| o == name)
}

/// Decode the kernel's octal escapes (`\ooo`) in a mountinfo field. Anything that is not a
/// valid three-digit octal escape is kept as is.
pub fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\'
            && i + 3 < field.len()
            && field[i + 1..i + 4]
                .iter()
                .all(|c| (b'0'..=b'7').contains(c))
            && field[i + 1] <= b'3'
        {
            let v = (field[i + 1] - b'0') * 64 + (field[i + 2] - b'0') * 8 + (field[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(field[i]);
            i += 1;
        }
    }
    out
}

/// Parse the whole of a mountinfo file. Empty lines are skipped.
pub fn parse_mountinfo(data: &[u8]) -> Result<Vec<MountInfo>, Error> {
    data.split(|&b| b == b'\n')
        .enumerate()
        .filter(|(_, l)| !l.iter().all(u8::is_ascii_whitespace))
        .map(|(i, l)| {
            MountInfo::parse_line(l).map_err(|reason| Error::MountInfo {
                line: i + 1,
                reason,
            })
        })
        .collect()
}

/// Read and parse `/proc/self/mountinfo`.
pub fn read_mountinfo() -> Result<Vec<MountInfo>, Error> {
    let data = std::fs::read(MOUNTINFO).map_err(|source| Error::Io {
        action: "read",
        path: MOUNTINFO.into(),
        source,
    })?;
    parse_mountinfo(&data)
}

/// The mount whose mountpoint is `path` (after resolving symlinks), or `None` when `path`
/// is not a mountpoint or does not exist. With several mounts stacked on one path, the
/// topmost (the visible one) is returned.
pub fn find_mount(path: impl AsRef<Path>) -> Result<Option<MountInfo>, Error> {
    let path = path.as_ref();
    let Some(canon) = canonical(path)? else {
        return Ok(None);
    };
    Ok(mount_at(&read_mountinfo()?, &canon).cloned())
}

/// True when `path` is a mountpoint.
pub fn is_mountpoint(path: impl AsRef<Path>) -> Result<bool, Error> {
    Ok(find_mount(path)?.is_some())
}

/// Every mount of the block device `device` in this mount namespace (matched by device
/// number, and by path for btrfs, whose mounts report an anonymous device number).
pub fn mounts_of_device(device: impl AsRef<Path>) -> Result<Vec<MountInfo>, Error> {
    let device = device.as_ref();
    let Some(canon) = canonical(device)? else {
        return Ok(Vec::new());
    };
    let rdev = block_dev_number(&canon);
    Ok(read_mountinfo()?
        .into_iter()
        .filter(|m| same_device(m, &canon, rdev))
        .collect())
}

pub(crate) fn mount_at<'a>(mounts: &'a [MountInfo], canon: &Path) -> Option<&'a MountInfo> {
    mounts.iter().rev().find(|m| m.mount_point == canon)
}

/// `Some(canonical path)`, `None` when it does not exist.
pub(crate) fn canonical(path: &Path) -> Result<Option<PathBuf>, Error> {
    match std::fs::canonicalize(path) {
        Ok(p) => Ok(Some(p)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Io {
            action: "resolve",
            path: path.to_owned(),
            source,
        }),
    }
}

/// `(major, minor)` of a block device node.
pub(crate) fn block_dev_number(path: &Path) -> Option<(u32, u32)> {
    let md = std::fs::metadata(path).ok()?;
    if !md.file_type().is_block_device() {
        return None;
    }
    let dev = md.rdev();
    // glibc's gnu_dev_major/gnu_dev_minor encoding.
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    Some((u32::try_from(major).ok()?, u32::try_from(minor).ok()?))
}

/// Whether mount `m` is of the device at canonical path `canon` (number `rdev`).
pub(crate) fn same_device(m: &MountInfo, canon: &Path, rdev: Option<(u32, u32)>) -> bool {
    if rdev.is_some_and(|(ma, mi)| m.major == ma && m.minor == mi) {
        return true;
    }
    let src = Path::new(OsStr::from_bytes(m.source.as_bytes()));
    src.is_absolute() && (src == canon || std::fs::canonicalize(src).is_ok_and(|s| s == canon))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
40 27 7:0 / /var/lib/my\\040volume rw,nosuid,nodev shared:5 master:2 - ext4 /dev/loop0 rw
41 27 0:45 /@sub /srv/back\\134slash\\011tab ro,relatime - btrfs /dev/rbd0 ro,space_cache=v2
42 27 0:46 / /x rw - tmpfs  rw
";

    #[test]
    fn parses_fields_and_escapes() {
        let m = parse_mountinfo(SAMPLE.as_bytes()).unwrap();
        assert_eq!(m.len(), 5);

        assert_eq!(m[1].mount_id, 36);
        assert_eq!(m[1].parent_id, 35);
        assert_eq!((m[1].major, m[1].minor), (98, 0));
        assert_eq!(m[1].root, Path::new("/mnt1"));
        assert_eq!(m[1].mount_point, Path::new("/mnt2"));
        assert_eq!(m[1].mount_options, "rw,noatime");
        assert_eq!(m[1].optional_fields, vec!["master:1"]);
        assert_eq!(m[1].fs_type, "ext3");
        assert_eq!(m[1].source, "/dev/root");
        assert_eq!(m[1].super_options, "rw,errors=continue");
        assert!(!m[1].is_read_only());

        assert_eq!(m[2].mount_point, Path::new("/var/lib/my volume"));
        assert_eq!(m[2].optional_fields, vec!["shared:5", "master:2"]);
        assert_eq!(m[2].fs_type, "ext4");

        assert_eq!(m[3].root, Path::new("/@sub"));
        assert_eq!(m[3].mount_point, Path::new("/srv/back\\slash\ttab"));
        assert!(m[3].is_read_only());

        // An empty source (two spaces) still leaves the super options in place.
        assert_eq!(m[4].fs_type, "tmpfs");
        assert_eq!(m[4].source, "");
        assert_eq!(m[4].super_options, "rw");
    }

    #[test]
    fn mount_at_picks_the_topmost() {
        let text = "\
1 0 8:1 / / rw - ext4 /dev/sda1 rw
50 1 7:0 / /mnt rw - ext4 /dev/loop0 rw
51 50 7:1 / /mnt rw - xfs /dev/loop1 rw
";
        let m = parse_mountinfo(text.as_bytes()).unwrap();
        assert_eq!(
            mount_at(&m, Path::new("/mnt")).unwrap().source,
            "/dev/loop1"
        );
        assert!(mount_at(&m, Path::new("/mnt/sub")).is_none());
        assert_eq!(mount_at(&m, Path::new("/")).unwrap().mount_id, 1);
    }

    #[test]
    fn rejects_malformed_lines_with_line_numbers() {
        let err =
            parse_mountinfo(b"22 27 0:21 / /proc rw - proc proc rw\n\n1 2 3 4\n").unwrap_err();
        match err {
            Error::MountInfo { line, reason } => {
                assert_eq!(line, 3);
                assert!(reason.contains("fields"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        assert!(MountInfo::parse_line(b"x 27 0:21 / /p rw - proc proc rw").is_err());
        assert!(MountInfo::parse_line(b"1 27 021 / /p rw - proc proc rw").is_err());
        assert!(MountInfo::parse_line(b"1 27 0:21 / /p rw - proc").is_err());
    }

    #[test]
    fn unescape_edge_cases() {
        assert_eq!(unescape(br"a\040b"), b"a b");
        assert_eq!(unescape(br"\134"), b"\\");
        assert_eq!(unescape(br"\12"), br"\12"); // too short
        assert_eq!(unescape(br"\999"), br"\999"); // not octal
        assert_eq!(unescape(br"end\"), br"end\");
        assert_eq!(unescape(br"\377"), [0xFF]);
    }

    #[test]
    fn reads_this_process_mountinfo() {
        let mounts = read_mountinfo().unwrap();
        assert!(mounts.iter().any(|m| m.mount_point == Path::new("/proc")));
        assert!(is_mountpoint("/proc").unwrap());
        assert!(!is_mountpoint("/nonexistent/fs-format").unwrap());
    }

    /// Escape like the kernel's `seq_file` `mangle_path` with `" \t\n\\"`.
    fn escape(b: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for &c in b {
            if b" \t\n\\".contains(&c) {
                out.extend_from_slice(format!("\\{c:03o}").as_bytes());
            } else {
                out.push(c);
            }
        }
        out
    }

    proptest::proptest! {
        #[test]
        fn escaped_mountpoints_round_trip(path in proptest::collection::vec(1u8..=255, 1..64)) {
            let mut line = b"10 1 7:3 / /".to_vec();
            line.extend(escape(&path));
            line.extend_from_slice(b" rw,relatime shared:1 - ext4 /dev/loop3 rw");
            let m = MountInfo::parse_line(&line).unwrap();
            let mut want = b"/".to_vec();
            want.extend_from_slice(&path);
            proptest::prop_assert_eq!(m.mount_point.as_os_str().as_bytes(), &want[..]);
            proptest::prop_assert_eq!(m.fs_type, "ext4");
        }
    }
}
