//! Detecting what a device holds, from its on-disk structures (no blkid).

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::crc::{crc32, crc32c};
use crate::{Error, FsType};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// The first this many bytes are read whole: every primary superblock and partition table
/// this module knows lies inside, and any other non-zero byte there counts as data.
pub const HEAD_BYTES: u64 = MIB;
/// The last this many bytes of the device are checked for non-zero data too (backup GPT,
/// md RAID 0.90/1.0 superblocks, and other trailers).
pub const TAIL_BYTES: u64 = MIB;
/// Further 4 KiB windows checked for non-zero data: ext2/3/4 backup superblocks (group 1
/// for 1, 2 and 4 KiB blocks) and btrfs mirror superblocks.
const EXTRA_WINDOWS: [u64; 5] = [8193 * KIB, 32 * MIB, 64 * MIB, 128 * MIB, 256 * GIB];
const WINDOW: usize = 4096;

/// What a device holds, as found by [`probe`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Probe {
    /// Every probed byte is zero: safe to create a filesystem on.
    Blank,
    /// A recognised filesystem.
    Filesystem(FsInfo),
    /// An MBR or GPT partition table.
    PartitionTable(PartitionTable),
    /// Something that is not zero and not a recognised filesystem or partition table.
    UnknownData(UnknownData),
}

impl Probe {
    /// True when all probed regions are zero.
    pub fn is_blank(&self) -> bool {
        matches!(self, Probe::Blank)
    }

    /// The filesystem found, if any.
    pub fn filesystem(&self) -> Option<&FsInfo> {
        match self {
            Probe::Filesystem(info) => Some(info),
            _ => None,
        }
    }
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Probe::Blank => f.write_str("nothing (all zero in the probed regions)"),
            Probe::Filesystem(info) => {
                let article = if info.kind == DetectedFs::Btrfs {
                    "a"
                } else {
                    "an"
                };
                write!(f, "{article} {} filesystem (UUID {}", info.kind, info.uuid)?;
                if let Some(label) = &info.label {
                    write!(f, ", label {label:?}")?;
                }
                f.write_str(")")
            }
            Probe::PartitionTable(pt) => write!(
                f,
                "{} {} partition table with {} partition(s)",
                if pt.scheme == PartitionScheme::Mbr {
                    "an"
                } else {
                    "a"
                },
                pt.scheme,
                pt.partitions.len()
            ),
            Probe::UnknownData(d) => {
                write!(f, "unrecognised non-zero data at byte {}", d.offset)?;
                if let Some(sig) = &d.signature {
                    write!(f, " ({sig})")?;
                }
                Ok(())
            }
        }
    }
}

/// A filesystem found on a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsInfo {
    /// Which filesystem.
    pub kind: DetectedFs,
    /// The filesystem UUID, lower-case `8-4-4-4-12` (as `blkid` prints it).
    pub uuid: String,
    /// The label, if set.
    pub label: Option<String>,
    /// The filesystem block size (btrfs: sector size), in bytes.
    pub block_size: u32,
    /// The filesystem size recorded in the superblock, in bytes.
    pub size_bytes: u64,
}

/// A filesystem kind recognised by [`probe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DetectedFs {
    /// ext2: no journal, no ext4-only features.
    Ext2,
    /// ext3: journal, no ext4-only features.
    Ext3,
    /// ext4: any feature ext3 lacks (extents, 64bit, flex_bg, metadata_csum, ...).
    Ext4,
    /// XFS.
    Xfs,
    /// Btrfs.
    Btrfs,
}

impl DetectedFs {
    /// The [`FsType`] whose tools and kernel driver manage this filesystem (ext2 and ext3
    /// are handled by e2fsprogs and the ext4 driver).
    pub fn fs_type(self) -> FsType {
        match self {
            DetectedFs::Ext2 | DetectedFs::Ext3 | DetectedFs::Ext4 => FsType::Ext4,
            DetectedFs::Xfs => FsType::Xfs,
            DetectedFs::Btrfs => FsType::Btrfs,
        }
    }

    /// The name `blkid` uses.
    pub fn as_str(self) -> &'static str {
        match self {
            DetectedFs::Ext2 => "ext2",
            DetectedFs::Ext3 => "ext3",
            DetectedFs::Ext4 => "ext4",
            DetectedFs::Xfs => "xfs",
            DetectedFs::Btrfs => "btrfs",
        }
    }
}

impl fmt::Display for DetectedFs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A partition table found on a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionTable {
    /// MBR or GPT.
    pub scheme: PartitionScheme,
    /// Disk identifier: GPT disk GUID, or the MBR disk signature as `0x%08x`.
    pub id: String,
    /// The partitions (for MBR: the four primary slots only; extended partitions are
    /// listed, their logical partitions are not).
    pub partitions: Vec<Partition>,
}

/// Partition table scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PartitionScheme {
    /// DOS/MBR.
    Mbr,
    /// GUID partition table.
    Gpt,
}

impl fmt::Display for PartitionScheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PartitionScheme::Mbr => "MBR",
            PartitionScheme::Gpt => "GPT",
        })
    }
}

/// One partition table entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partition {
    /// 1-based partition number (slot index + 1).
    pub number: u32,
    /// Start, in bytes from the start of the device.
    pub start: u64,
    /// Size in bytes.
    pub size: u64,
    /// Partition type: `0x83` style for MBR, lower-case type GUID for GPT.
    pub type_id: String,
    /// GPT partition GUID.
    pub uuid: Option<String>,
    /// GPT partition name, if set.
    pub name: Option<String>,
}

/// Non-zero data that is not a recognised filesystem or partition table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnknownData {
    /// Byte offset of the first non-zero byte found.
    pub offset: u64,
    /// What it looks like, when a known signature was seen (e.g. `"LUKS"`, `"Linux swap"`,
    /// `"btrfs backup superblock"`, or a superblock with a bad checksum).
    pub signature: Option<String>,
}

/// Inspect a block device (or image file) and say what it holds.
///
/// Reads the first [`HEAD_BYTES`], the last [`TAIL_BYTES`], and the ext/btrfs backup
/// superblock locations, with `O_DIRECT` when the file allows it (so a mounted filesystem's
/// recent metadata is not hidden by a stale page cache). Recognises ext2/ext3/ext4 (told
/// apart by feature flags), XFS and btrfs with UUID and label, MBR and GPT partition
/// tables, and reports anything else non-zero as [`Probe::UnknownData`]. Superblocks whose
/// checksum does not match, and devices carrying more than one filesystem signature, are
/// reported as unknown data rather than guessed at.
pub fn probe(device: impl AsRef<Path>) -> Result<Probe, Error> {
    let path = device.as_ref();
    let mut dev = Device::open(path)?;
    probe_source(&mut dev).map_err(|source| Error::Io {
        action: "read",
        path: path.to_owned(),
        source,
    })
}

/// The size of a block device or file, in bytes.
pub fn device_size(device: impl AsRef<Path>) -> Result<u64, Error> {
    let path = device.as_ref();
    let mut f = File::open(path).map_err(|source| Error::Io {
        action: "open",
        path: path.to_owned(),
        source,
    })?;
    f.seek(SeekFrom::End(0)).map_err(|source| Error::Io {
        action: "get the size of",
        path: path.to_owned(),
        source,
    })
}

/// Random-access reads, zero-padded past the end.
trait Source {
    fn size(&self) -> u64;
    /// Read `len` bytes at `offset`; bytes past the end read as zero.
    fn read(&mut self, offset: u64, len: usize) -> io::Result<Vec<u8>>;
}

struct Device {
    file: File,
    path: std::path::PathBuf,
    direct: bool,
    size: u64,
}

impl Device {
    fn open(path: &Path) -> Result<Self, Error> {
        let io_err = |action, source| Error::Io {
            action,
            path: path.to_owned(),
            source,
        };
        let (file, direct) = match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
        {
            Ok(f) => (f, true),
            // tmpfs and some other filesystems refuse O_DIRECT.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                (File::open(path).map_err(|e| io_err("open", e))?, false)
            }
            Err(e) => return Err(io_err("open", e)),
        };
        let mut dev = Device {
            file,
            path: path.to_owned(),
            direct,
            size: 0,
        };
        dev.size = dev
            .file
            .seek(SeekFrom::End(0))
            .map_err(|e| io_err("get the size of", e))?;
        Ok(dev)
    }

    fn read_buffered(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            match self.file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Aligned `O_DIRECT` read of `[start, start + len)`, both multiples of 4096.
    fn read_direct(&self, start: u64, len: usize) -> io::Result<Option<Vec<u8>>> {
        let mut raw = vec![0u8; len + WINDOW];
        let align = raw.as_ptr().align_offset(WINDOW);
        if align >= WINDOW {
            return Ok(None);
        }
        let buf = &mut raw[align..align + len];
        let mut done = 0;
        while done < len {
            match self.file.read_at(&mut buf[done..], start + done as u64) {
                Ok(0) => break,
                Ok(n) => {
                    done += n;
                    if n % WINDOW != 0 {
                        break; // short read at the end of the device
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(None),
                Err(e) => return Err(e),
            }
        }
        Ok(Some(buf.to_vec()))
    }
}

impl Source for Device {
    fn size(&self) -> u64 {
        self.size
    }

    fn read(&mut self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut out = vec![0u8; len];
        if offset >= self.size || len == 0 {
            return Ok(out);
        }
        if self.direct {
            let w = WINDOW as u64;
            let start = offset / w * w;
            let end = (offset + len as u64).div_ceil(w) * w;
            let span = usize::try_from(end - start).map_err(io::Error::other)?;
            if let Some(buf) = self.read_direct(start, span)? {
                let skip = (offset - start) as usize;
                out.copy_from_slice(&buf[skip..skip + len]);
                return Ok(out);
            }
            // The file refused O_DIRECT reads: fall back to the page cache for good.
            self.file = File::open(&self.path)?;
            self.direct = false;
        }
        self.read_buffered(offset, &mut out)?;
        Ok(out)
    }
}

impl Source for [u8] {
    fn size(&self) -> u64 {
        self.len() as u64
    }

    fn read(&mut self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut out = vec![0u8; len];
        if let Ok(start) = usize::try_from(offset)
            && start < self.len()
        {
            let n = len.min(self.len() - start);
            out[..n].copy_from_slice(&self[start..start + n]);
        }
        Ok(out)
    }
}

fn probe_source(src: &mut (impl Source + ?Sized)) -> io::Result<Probe> {
    let size = src.size();
    let head = src.read(0, HEAD_BYTES as usize)?;

    let mut found: Vec<Result<FsInfo, String>> =
        [parse_xfs(&head), parse_ext(&head), parse_btrfs(&head)]
            .into_iter()
            .flatten()
            .collect();
    let head_offset = first_nonzero(&head).unwrap_or(0) as u64;
    match found.len() {
        0 => {}
        1 => {
            return Ok(match found.remove(0) {
                Ok(info) => Probe::Filesystem(info),
                Err(signature) => Probe::UnknownData(UnknownData {
                    offset: head_offset,
                    signature: Some(signature),
                }),
            });
        }
        _ => {
            let names: Vec<String> = found
                .iter()
                .map(|f| match f {
                    Ok(info) => info.kind.to_string(),
                    Err(s) => s.clone(),
                })
                .collect();
            return Ok(Probe::UnknownData(UnknownData {
                offset: head_offset,
                signature: Some(format!("conflicting signatures: {}", names.join(", "))),
            }));
        }
    }

    if let Some(pt) = parse_partition_table(&head) {
        return Ok(Probe::PartitionTable(pt));
    }
    if let Some(offset) = first_nonzero(&head) {
        return Ok(Probe::UnknownData(UnknownData {
            offset: offset as u64,
            signature: head_signature(&head),
        }));
    }

    let mut windows: Vec<(u64, usize)> = EXTRA_WINDOWS
        .iter()
        .filter(|&&o| o >= HEAD_BYTES && o < size)
        .map(|&o| (o, WINDOW))
        .collect();
    let tail_start = size.saturating_sub(TAIL_BYTES).max(HEAD_BYTES);
    if tail_start < size {
        windows.push((tail_start, (size - tail_start) as usize));
    }
    for (offset, len) in windows {
        let buf = src.read(offset, len)?;
        if let Some(i) = first_nonzero(&buf) {
            return Ok(Probe::UnknownData(UnknownData {
                offset: offset + i as u64,
                signature: window_signature(&buf, offset + len as u64 == size),
            }));
        }
    }
    Ok(Probe::Blank)
}

fn first_nonzero(buf: &[u8]) -> Option<usize> {
    // Compare 8 bytes at a time: the head is a whole MiB.
    let mut chunks = buf.chunks_exact(8);
    let mut base = 0;
    for c in chunks.by_ref() {
        if u64::from_ne_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) != 0 {
            return c.iter().position(|&b| b != 0).map(|i| base + i);
        }
        base += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&b| b != 0)
        .map(|i| base + i)
}

fn le16(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
fn le64(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(a)
}
fn be16(b: &[u8], o: usize) -> u16 {
    u16::from_be_bytes([b[o], b[o + 1]])
}
fn be32(b: &[u8], o: usize) -> u32 {
    u32::from_be_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
fn be64(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_be_bytes(a)
}

/// `8-4-4-4-12` hex of 16 bytes in stored order (filesystem UUIDs).
fn fmt_uuid(b: &[u8]) -> String {
    let h: String = b[..16].iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// A GUID stored mixed-endian (GPT): the first three fields little-endian.
fn fmt_guid(b: &[u8]) -> String {
    let mut s = [0u8; 16];
    s.copy_from_slice(&b[..16]);
    s[0..4].reverse();
    s[4..6].reverse();
    s[6..8].reverse();
    fmt_uuid(&s)
}

/// A NUL-padded label; `None` when empty.
fn label(b: &[u8]) -> Option<String> {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    let s = String::from_utf8_lossy(&b[..end]).into_owned();
    (!s.is_empty()).then_some(s)
}

// ext2/3/4 feature flags (from e2fsprogs' ext2_fs.h).
const EXT_COMPAT_HAS_JOURNAL: u32 = 0x0004;
const EXT_INCOMPAT_FILETYPE: u32 = 0x0002;
const EXT_INCOMPAT_RECOVER: u32 = 0x0004;
const EXT_INCOMPAT_JOURNAL_DEV: u32 = 0x0008;
const EXT_INCOMPAT_META_BG: u32 = 0x0010;
const EXT_INCOMPAT_64BIT: u32 = 0x0080;
const EXT_RO_COMPAT_SPARSE_SUPER: u32 = 0x0001;
const EXT_RO_COMPAT_LARGE_FILE: u32 = 0x0002;
const EXT_RO_COMPAT_BTREE_DIR: u32 = 0x0004;
const EXT_RO_COMPAT_METADATA_CSUM: u32 = 0x0400;

/// Features ext2 and ext3 understand; anything else makes it ext4 (the rule `blkid` uses).
const EXT2_INCOMPAT_SUPP: u32 = EXT_INCOMPAT_FILETYPE | EXT_INCOMPAT_META_BG;
const EXT3_INCOMPAT_SUPP: u32 = EXT2_INCOMPAT_SUPP | EXT_INCOMPAT_RECOVER;
const EXT23_RO_COMPAT_SUPP: u32 =
    EXT_RO_COMPAT_SPARSE_SUPER | EXT_RO_COMPAT_LARGE_FILE | EXT_RO_COMPAT_BTREE_DIR;

/// `Some(Ok)` for a valid ext superblock at 1024, `Some(Err(description))` for an ext
/// signature that is not a mountable filesystem, `None` when there is none.
fn parse_ext(head: &[u8]) -> Option<Result<FsInfo, String>> {
    let sb = &head[1024..2048];
    if le16(sb, 0x38) != 0xEF53 {
        return None;
    }
    let inodes = le32(sb, 0x0);
    let blocks_lo = le32(sb, 0x4);
    let log_block = le32(sb, 0x18);
    let rev = le32(sb, 0x4C);
    if inodes == 0 || log_block > 6 || rev > 1 {
        return None;
    }
    let compat = le32(sb, 0x5C);
    let incompat = le32(sb, 0x60);
    let ro_compat = le32(sb, 0x64);
    if ro_compat & EXT_RO_COMPAT_METADATA_CSUM != 0 {
        // s_checksum is the raw crc32c (seed ~0, no final inversion) of the bytes before it.
        let stored = le32(sb, 0x3FC);
        if sb[0x175] != 1 || stored != !crc32c(&sb[..0x3FC]) {
            return Some(Err("ext4 superblock with a bad checksum".into()));
        }
    }
    if incompat & EXT_INCOMPAT_JOURNAL_DEV != 0 {
        return Some(Err("ext3/ext4 external journal device".into()));
    }
    let ro_ok = ro_compat & !EXT23_RO_COMPAT_SUPP == 0;
    let kind = if compat & EXT_COMPAT_HAS_JOURNAL == 0
        && ro_ok
        && incompat & !EXT2_INCOMPAT_SUPP == 0
    {
        DetectedFs::Ext2
    } else if compat & EXT_COMPAT_HAS_JOURNAL != 0 && ro_ok && incompat & !EXT3_INCOMPAT_SUPP == 0 {
        DetectedFs::Ext3
    } else {
        DetectedFs::Ext4
    };
    let blocks_hi = if incompat & EXT_INCOMPAT_64BIT != 0 {
        le32(sb, 0x150)
    } else {
        0
    };
    let blocks = u64::from(blocks_lo) | (u64::from(blocks_hi) << 32);
    let block_size = 1024u32 << log_block;
    Some(Ok(FsInfo {
        kind,
        uuid: fmt_uuid(&sb[0x68..0x78]),
        label: label(&sb[0x78..0x88]),
        block_size,
        size_bytes: blocks * u64::from(block_size),
    }))
}

fn parse_xfs(head: &[u8]) -> Option<Result<FsInfo, String>> {
    let sb = &head[..512];
    if &sb[0..4] != b"XFSB" {
        return None;
    }
    let block_size = be32(sb, 4);
    let dblocks = be64(sb, 8);
    let version = be16(sb, 100) & 0x000F;
    let sect_size = be16(sb, 102);
    let valid = block_size.is_power_of_two()
        && (512..=65536).contains(&block_size)
        && sect_size.is_power_of_two()
        && (512..=32768).contains(&sect_size)
        && (1..=5).contains(&version)
        && dblocks > 0;
    if !valid {
        return None;
    }
    Some(Ok(FsInfo {
        kind: DetectedFs::Xfs,
        uuid: fmt_uuid(&sb[32..48]),
        label: label(&sb[108..120]),
        block_size,
        size_bytes: dblocks.saturating_mul(u64::from(block_size)),
    }))
}

const BTRFS_MAGIC: &[u8; 8] = b"_BHRfS_M";
const BTRFS_SB_OFFSET: usize = 64 * 1024;

fn parse_btrfs(head: &[u8]) -> Option<Result<FsInfo, String>> {
    let sb = &head[BTRFS_SB_OFFSET..BTRFS_SB_OFFSET + 4096];
    if &sb[0x40..0x48] != BTRFS_MAGIC || le64(sb, 0x30) != BTRFS_SB_OFFSET as u64 {
        return None;
    }
    let sector_size = le32(sb, 0x90);
    if !sector_size.is_power_of_two() || !(4096..=65536).contains(&sector_size) {
        return None;
    }
    // csum_type 0 is crc32c; the others (xxhash64, sha256, blake2b) are not verified here.
    if le16(sb, 0xC4) == 0 && le32(sb, 0) != crc32c(&sb[0x20..]) {
        return Some(Err("btrfs superblock with a bad checksum".into()));
    }
    Some(Ok(FsInfo {
        kind: DetectedFs::Btrfs,
        uuid: fmt_uuid(&sb[0x20..0x30]),
        label: label(&sb[0x12B..0x12B + 256]),
        block_size: sector_size,
        size_bytes: le64(sb, 0x70),
    }))
}

fn parse_partition_table(head: &[u8]) -> Option<PartitionTable> {
    // GPT first (logical sector 512 or 4096); its protective MBR would also parse as MBR.
    [512usize, 4096]
        .into_iter()
        .find_map(|sector| parse_gpt(head, sector))
        .or_else(|| parse_mbr(head))
}

fn is_boot_sector_of_a_filesystem(head: &[u8]) -> bool {
    &head[3..11] == b"NTFS    "
        || &head[54..59] == b"FAT12"
        || &head[54..59] == b"FAT16"
        || &head[82..87] == b"FAT32"
        || &head[3..11] == b"EXFAT   "
}

fn parse_mbr(head: &[u8]) -> Option<PartitionTable> {
    if head[510..512] != [0x55, 0xAA] || is_boot_sector_of_a_filesystem(head) {
        return None;
    }
    let mut partitions = Vec::new();
    for i in 0..4 {
        let e = &head[446 + 16 * i..446 + 16 * (i + 1)];
        if e[0] != 0x00 && e[0] != 0x80 {
            return None;
        }
        let ptype = e[4];
        let start = le32(e, 8);
        let sectors = le32(e, 12);
        if ptype == 0 {
            continue;
        }
        if start == 0 || sectors == 0 {
            return None;
        }
        partitions.push(Partition {
            number: i as u32 + 1,
            start: u64::from(start) * 512,
            size: u64::from(sectors) * 512,
            type_id: format!("0x{ptype:02x}"),
            uuid: None,
            name: None,
        });
    }
    Some(PartitionTable {
        scheme: PartitionScheme::Mbr,
        id: format!("0x{:08x}", le32(head, 440)),
        partitions,
    })
}

fn parse_gpt(head: &[u8], sector: usize) -> Option<PartitionTable> {
    let hdr = &head[sector..sector + 512];
    if &hdr[0..8] != b"EFI PART" {
        return None;
    }
    let hsize = le32(hdr, 12) as usize;
    if !(92..=512).contains(&hsize) || le64(hdr, 24) != 1 {
        return None;
    }
    let mut copy = hdr[..hsize].to_vec();
    copy[16..20].fill(0);
    if crc32(&copy) != le32(hdr, 16) {
        return None;
    }
    let entries_lba = le64(hdr, 72);
    let count = le32(hdr, 80) as usize;
    let esize = le32(hdr, 84) as usize;
    let mut partitions = Vec::new();
    let entries_start = entries_lba.checked_mul(sector as u64).map(|s| s as usize);
    let entries_len = count.checked_mul(esize);
    if let (Some(start), Some(len)) = (entries_start, entries_len)
        && esize >= 128
        && count <= 4096
        && start.checked_add(len).is_some_and(|end| end <= head.len())
        && crc32(&head[start..start + len]) == le32(hdr, 88)
    {
        for (i, e) in head[start..start + len].chunks_exact(esize).enumerate() {
            if e[..16].iter().all(|&b| b == 0) {
                continue;
            }
            let first = le64(e, 32);
            let last = le64(e, 40);
            let units: Vec<u16> = e[56..128]
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .take_while(|&u| u != 0)
                .collect();
            let name = String::from_utf16_lossy(&units);
            partitions.push(Partition {
                number: i as u32 + 1,
                start: first.saturating_mul(sector as u64),
                size: last
                    .saturating_sub(first)
                    .saturating_add(1)
                    .saturating_mul(sector as u64),
                type_id: fmt_guid(&e[0..16]),
                uuid: Some(fmt_guid(&e[16..32])),
                name: (!name.is_empty()).then_some(name),
            });
        }
    }
    Some(PartitionTable {
        scheme: PartitionScheme::Gpt,
        id: fmt_guid(&hdr[56..72]),
        partitions,
    })
}

/// A name for well-known non-filesystem signatures in the first MiB.
fn head_signature(head: &[u8]) -> Option<String> {
    let sig = |s: &str| Some(s.to_owned());
    if head.starts_with(b"LUKS\xba\xbe") {
        return sig("LUKS");
    }
    if (0..4).any(|s| {
        let sec = &head[s * 512..];
        &sec[0..8] == b"LABELONE" && &sec[24..32] == b"LVM2 001"
    }) {
        return sig("LVM2 physical volume");
    }
    if le32(head, 0) == 0xA92B_4EFC || le32(head, 4096) == 0xA92B_4EFC {
        return sig("Linux md RAID member");
    }
    if [4096usize, 8192, 16384, 65536]
        .iter()
        .any(|&ps| matches!(&head[ps - 10..ps], b"SWAPSPACE2" | b"SWAP-SPACE"))
    {
        return sig("Linux swap");
    }
    if head[510..512] == [0x55, 0xAA] && is_boot_sector_of_a_filesystem(head) {
        return sig("FAT/NTFS/exFAT boot sector");
    }
    if &head[32769..32774] == b"CD001" {
        return sig("ISO 9660");
    }
    if &head[512..520] == b"EFI PART" || &head[4096..4104] == b"EFI PART" {
        return sig("GPT header with a bad checksum");
    }
    if head[510..512] == [0x55, 0xAA] {
        return sig("boot sector");
    }
    None
}

/// A name for signatures in the later windows (backup superblocks, backup GPT).
fn window_signature(buf: &[u8], at_end: bool) -> Option<String> {
    if buf.len() >= 0x48 && &buf[0x40..0x48] == BTRFS_MAGIC {
        return Some("btrfs backup superblock".into());
    }
    if buf.len() >= 0x3A && le16(buf, 0x38) == 0xEF53 {
        return Some("ext2/3/4 backup superblock".into());
    }
    if at_end && buf.len() >= 512 && &buf[buf.len() - 512..buf.len() - 504] == b"EFI PART" {
        return Some("backup GPT header".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(size: usize) -> Vec<u8> {
        vec![0u8; size]
    }

    fn probe_vec(v: &mut Vec<u8>) -> Probe {
        probe_source(v.as_mut_slice()).unwrap()
    }

    #[test]
    fn blank_small_and_large() {
        assert_eq!(probe_vec(&mut image(4096)), Probe::Blank);
        assert_eq!(probe_vec(&mut image(3 * MIB as usize)), Probe::Blank);
        assert_eq!(probe_vec(&mut Vec::new()), Probe::Blank);
    }

    #[test]
    fn nonzero_anywhere_in_probed_regions_is_data() {
        let size = 130 * MIB as usize;
        for off in [
            0usize,
            777,
            HEAD_BYTES as usize - 1,
            8193 * 1024 + 5,
            64 * MIB as usize + 100,
            128 * MIB as usize,
            size - 1,
            size - MIB as usize,
        ] {
            let mut v = image(size);
            v[off] = 1;
            match probe_vec(&mut v) {
                Probe::UnknownData(d) => assert_eq!(d.offset, off as u64),
                other => panic!("offset {off}: {other:?}"),
            }
        }
        // Outside the probed regions (between windows) nothing is read.
        let mut v = image(size);
        v[2 * MIB as usize] = 1;
        assert_eq!(probe_vec(&mut v), Probe::Blank);
    }

    fn ext_sb(v: &mut [u8], compat: u32, incompat: u32, ro_compat: u32) {
        let sb = &mut v[1024..2048];
        sb[0..4].copy_from_slice(&1024u32.to_le_bytes()); // inodes
        sb[4..8].copy_from_slice(&2048u32.to_le_bytes()); // blocks
        sb[0x18..0x1C].copy_from_slice(&2u32.to_le_bytes()); // 4 KiB
        sb[0x38..0x3A].copy_from_slice(&0xEF53u16.to_le_bytes());
        sb[0x4C..0x50].copy_from_slice(&1u32.to_le_bytes());
        sb[0x5C..0x60].copy_from_slice(&compat.to_le_bytes());
        sb[0x60..0x64].copy_from_slice(&incompat.to_le_bytes());
        sb[0x64..0x68].copy_from_slice(&ro_compat.to_le_bytes());
        for (i, b) in sb[0x68..0x78].iter_mut().enumerate() {
            *b = i as u8;
        }
        sb[0x78..0x7D].copy_from_slice(b"hello");
        if ro_compat & EXT_RO_COMPAT_METADATA_CSUM != 0 {
            sb[0x175] = 1;
            let c = !crc32c(&sb[..0x3FC]);
            sb[0x3FC..0x400].copy_from_slice(&c.to_le_bytes());
        }
    }

    #[test]
    fn ext_generations_by_feature_flags() {
        let cases = [
            (
                0,
                EXT_INCOMPAT_FILETYPE,
                EXT_RO_COMPAT_SPARSE_SUPER,
                DetectedFs::Ext2,
            ),
            (
                EXT_COMPAT_HAS_JOURNAL,
                EXT_INCOMPAT_FILETYPE | EXT_INCOMPAT_RECOVER,
                EXT_RO_COMPAT_SPARSE_SUPER | EXT_RO_COMPAT_LARGE_FILE,
                DetectedFs::Ext3,
            ),
            // extents
            (
                EXT_COMPAT_HAS_JOURNAL,
                EXT_INCOMPAT_FILETYPE | 0x40,
                0,
                DetectedFs::Ext4,
            ),
            // ext4 without a journal is still ext4
            (0, EXT_INCOMPAT_FILETYPE | 0x40 | 0x200, 0, DetectedFs::Ext4),
            // huge_file ro_compat feature only
            (
                EXT_COMPAT_HAS_JOURNAL,
                EXT_INCOMPAT_FILETYPE,
                0x8,
                DetectedFs::Ext4,
            ),
            (
                EXT_COMPAT_HAS_JOURNAL,
                EXT_INCOMPAT_FILETYPE | 0x40,
                EXT_RO_COMPAT_METADATA_CSUM,
                DetectedFs::Ext4,
            ),
        ];
        for (compat, incompat, ro, want) in cases {
            let mut v = image(2 * MIB as usize);
            ext_sb(&mut v, compat, incompat, ro);
            let p = probe_vec(&mut v);
            let info = p.filesystem().unwrap_or_else(|| panic!("{p:?}"));
            assert_eq!(info.kind, want);
            assert_eq!(info.uuid, "00010203-0405-0607-0809-0a0b0c0d0e0f");
            assert_eq!(info.label.as_deref(), Some("hello"));
            assert_eq!(info.block_size, 4096);
            assert_eq!(info.size_bytes, 2048 * 4096);
        }
    }

    #[test]
    fn ext_bad_checksum_and_journal_device_are_not_filesystems() {
        let mut v = image(MIB as usize);
        ext_sb(
            &mut v,
            EXT_COMPAT_HAS_JOURNAL,
            0x40,
            EXT_RO_COMPAT_METADATA_CSUM,
        );
        v[1024 + 0x78] = b'j'; // change the label after the checksum was computed
        match probe_vec(&mut v) {
            Probe::UnknownData(d) => assert!(d.signature.unwrap().contains("bad checksum")),
            other => panic!("{other:?}"),
        }
        let mut v = image(MIB as usize);
        ext_sb(&mut v, 0, EXT_INCOMPAT_JOURNAL_DEV, 0);
        match probe_vec(&mut v) {
            Probe::UnknownData(d) => assert!(d.signature.unwrap().contains("journal")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn xfs_superblock() {
        let mut v = image(MIB as usize);
        v[0..4].copy_from_slice(b"XFSB");
        v[4..8].copy_from_slice(&4096u32.to_be_bytes());
        v[8..16].copy_from_slice(&1000u64.to_be_bytes());
        v[32..48].copy_from_slice(&[0xAB; 16]);
        v[100..102].copy_from_slice(&0xB4A5u16.to_be_bytes());
        v[102..104].copy_from_slice(&512u16.to_be_bytes());
        v[108..120].copy_from_slice(b"twelve_chars");
        let info = probe_vec(&mut v).filesystem().cloned().unwrap();
        assert_eq!(info.kind, DetectedFs::Xfs);
        assert_eq!(info.uuid, "abababab-abab-abab-abab-abababababab");
        assert_eq!(info.label.as_deref(), Some("twelve_chars"));
        assert_eq!(info.size_bytes, 4096 * 1000);
        // A bogus block size is not XFS.
        v[4..8].copy_from_slice(&4095u32.to_be_bytes());
        assert!(matches!(probe_vec(&mut v), Probe::UnknownData(_)));
    }

    fn btrfs_sb(v: &mut [u8]) {
        let sb = &mut v[BTRFS_SB_OFFSET..BTRFS_SB_OFFSET + 4096];
        sb[0x20..0x30].copy_from_slice(&[0x11; 16]);
        sb[0x30..0x38].copy_from_slice(&(BTRFS_SB_OFFSET as u64).to_le_bytes());
        sb[0x40..0x48].copy_from_slice(BTRFS_MAGIC);
        sb[0x70..0x78].copy_from_slice(&(1u64 << 30).to_le_bytes());
        sb[0x90..0x94].copy_from_slice(&4096u32.to_le_bytes());
        sb[0x12B..0x12B + 4].copy_from_slice(b"data");
        let c = crc32c(&sb[0x20..]);
        sb[0..4].copy_from_slice(&c.to_le_bytes());
    }

    #[test]
    fn btrfs_superblock_and_checksum() {
        let mut v = image(MIB as usize);
        btrfs_sb(&mut v);
        let info = probe_vec(&mut v).filesystem().cloned().unwrap();
        assert_eq!(info.kind, DetectedFs::Btrfs);
        assert_eq!(info.uuid, "11111111-1111-1111-1111-111111111111");
        assert_eq!(info.label.as_deref(), Some("data"));
        assert_eq!(info.size_bytes, 1 << 30);
        v[BTRFS_SB_OFFSET + 0x12B] = b'D';
        match probe_vec(&mut v) {
            Probe::UnknownData(d) => assert!(d.signature.unwrap().contains("bad checksum")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn two_filesystem_signatures_are_ambiguous() {
        let mut v = image(MIB as usize);
        btrfs_sb(&mut v);
        ext_sb(&mut v, EXT_COMPAT_HAS_JOURNAL, 0x40, 0);
        match probe_vec(&mut v) {
            Probe::UnknownData(d) => {
                assert_eq!(d.signature.unwrap(), "conflicting signatures: ext4, btrfs")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn mbr() {
        let mut v = image(MIB as usize);
        v[440..444].copy_from_slice(&0xDEADBEEFu32.to_le_bytes());
        let e = &mut v[446..462];
        e[0] = 0x80;
        e[4] = 0x83;
        e[8..12].copy_from_slice(&2048u32.to_le_bytes());
        e[12..16].copy_from_slice(&4096u32.to_le_bytes());
        v[510] = 0x55;
        v[511] = 0xAA;
        match probe_vec(&mut v) {
            Probe::PartitionTable(pt) => {
                assert_eq!(pt.scheme, PartitionScheme::Mbr);
                assert_eq!(pt.id, "0xdeadbeef");
                assert_eq!(
                    pt.partitions,
                    vec![Partition {
                        number: 1,
                        start: MIB,
                        size: 2 * MIB,
                        type_id: "0x83".into(),
                        uuid: None,
                        name: None,
                    }]
                );
            }
            other => panic!("{other:?}"),
        }
        // A bad status byte means it is not an MBR, just data with a boot signature.
        v[446] = 0x12;
        match probe_vec(&mut v) {
            Probe::UnknownData(d) => assert_eq!(d.signature.as_deref(), Some("boot sector")),
            other => panic!("{other:?}"),
        }
    }

    /// A GPT with one partition, built the way sgdisk lays it out.
    pub(crate) fn gpt_image(sector: usize) -> Vec<u8> {
        let mut v = image(MIB as usize);
        // Protective MBR.
        v[446 + 4] = 0xEE;
        v[446 + 8..446 + 12].copy_from_slice(&1u32.to_le_bytes());
        v[446 + 12..446 + 16].copy_from_slice(&u32::MAX.to_le_bytes());
        v[510] = 0x55;
        v[511] = 0xAA;
        // One entry at LBA 2.
        let entries = 2 * sector;
        {
            let e = &mut v[entries..entries + 128];
            // Linux filesystem data 0FC63DAF-8483-4772-8E79-3D69D8477DE4, mixed-endian.
            e[0..16].copy_from_slice(&[
                0xAF, 0x3D, 0xC6, 0x0F, 0x83, 0x84, 0x72, 0x47, 0x8E, 0x79, 0x3D, 0x69, 0xD8, 0x47,
                0x7D, 0xE4,
            ]);
            e[16..32].copy_from_slice(&[0x22; 16]);
            e[32..40].copy_from_slice(&256u64.to_le_bytes());
            e[40..48].copy_from_slice(&511u64.to_le_bytes());
            for (i, c) in "root".encode_utf16().enumerate() {
                e[56 + 2 * i..58 + 2 * i].copy_from_slice(&c.to_le_bytes());
            }
        }
        let ecrc = crc32(&v[entries..entries + 128 * 128]);
        let h = &mut v[sector..sector + 92];
        h[0..8].copy_from_slice(b"EFI PART");
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[24..32].copy_from_slice(&1u64.to_le_bytes());
        h[56..72].copy_from_slice(&[0x33; 16]);
        h[72..80].copy_from_slice(&2u64.to_le_bytes());
        h[80..84].copy_from_slice(&128u32.to_le_bytes());
        h[84..88].copy_from_slice(&128u32.to_le_bytes());
        h[88..92].copy_from_slice(&ecrc.to_le_bytes());
        let hcrc = crc32(h);
        h[16..20].copy_from_slice(&hcrc.to_le_bytes());
        v
    }

    #[test]
    fn gpt_512_and_4096() {
        for sector in [512usize, 4096] {
            let mut v = gpt_image(sector);
            match probe_vec(&mut v) {
                Probe::PartitionTable(pt) => {
                    assert_eq!(pt.scheme, PartitionScheme::Gpt);
                    assert_eq!(pt.id, "33333333-3333-3333-3333-333333333333");
                    assert_eq!(pt.partitions.len(), 1);
                    let p = &pt.partitions[0];
                    assert_eq!(p.type_id, "0fc63daf-8483-4772-8e79-3d69d8477de4");
                    assert_eq!(p.start, 256 * sector as u64);
                    assert_eq!(p.size, 256 * sector as u64);
                    assert_eq!(p.name.as_deref(), Some("root"));
                }
                other => panic!("{other:?}"),
            }
        }
        // A corrupted GPT header leaves the protective MBR.
        let mut v = gpt_image(512);
        v[512 + 60] ^= 1;
        match probe_vec(&mut v) {
            Probe::PartitionTable(pt) => {
                assert_eq!(pt.scheme, PartitionScheme::Mbr);
                assert_eq!(pt.partitions[0].type_id, "0xee");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn other_signatures() {
        let mut v = image(MIB as usize);
        v[..6].copy_from_slice(b"LUKS\xba\xbe");
        let Probe::UnknownData(d) = probe_vec(&mut v) else {
            panic!()
        };
        assert_eq!(d.signature.as_deref(), Some("LUKS"));

        let mut v = image(MIB as usize);
        v[4086..4096].copy_from_slice(b"SWAPSPACE2");
        let Probe::UnknownData(d) = probe_vec(&mut v) else {
            panic!()
        };
        assert_eq!(d.signature.as_deref(), Some("Linux swap"));
        assert_eq!(d.offset, 4086);

        let mut v = image(65 * MIB as usize);
        v[64 * MIB as usize + 0x40..64 * MIB as usize + 0x48].copy_from_slice(BTRFS_MAGIC);
        let Probe::UnknownData(d) = probe_vec(&mut v) else {
            panic!()
        };
        assert_eq!(d.signature.as_deref(), Some("btrfs backup superblock"));
    }

    #[test]
    fn display() {
        let p = Probe::Filesystem(FsInfo {
            kind: DetectedFs::Xfs,
            uuid: "u".into(),
            label: Some("l".into()),
            block_size: 4096,
            size_bytes: 1,
        });
        assert_eq!(p.to_string(), "an xfs filesystem (UUID u, label \"l\")");
        let p = Probe::UnknownData(UnknownData {
            offset: 3,
            signature: Some("LUKS".into()),
        });
        assert_eq!(p.to_string(), "unrecognised non-zero data at byte 3 (LUKS)");
    }

    #[test]
    fn serde_shape() {
        assert_eq!(
            serde_json::to_string(&Probe::Blank).unwrap(),
            r#"{"kind":"blank"}"#
        );
        let p = Probe::UnknownData(UnknownData {
            offset: 1,
            signature: None,
        });
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(
            json,
            r#"{"kind":"unknown_data","offset":1,"signature":null}"#
        );
        assert_eq!(serde_json::from_str::<Probe>(&json).unwrap(), p);
    }

    proptest::proptest! {
        #[test]
        fn probe_never_panics_on_arbitrary_heads(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..4096),
            at in 0usize..(70 * 1024),
        ) {
            let mut v = image(MIB as usize);
            let end = (at + bytes.len()).min(v.len());
            v[at..end].copy_from_slice(&bytes[..end - at]);
            let p = probe_vec(&mut v);
            if bytes.iter().all(|&b| b == 0) {
                proptest::prop_assert_eq!(p, Probe::Blank);
            } else {
                proptest::prop_assert!(!p.is_blank());
            }
        }
    }
}
