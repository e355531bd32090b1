//! `rbdctl export` and `rbdctl import`: raw image data to and from a file or a pipe.
//!
//! Both are sparse-aware and keep several asynchronous requests in flight:
//!
//! * export reads only the extents that hold data (`rbd_diff_iterate2` against nothing,
//!   parent data included). Into a regular file, holes stay holes (the file is sized
//!   first and only data is written); into a pipe (`-`), holes are written as zeros.
//! * import skips blocks of zeros (the new image reads zeros there already), so the image
//!   only allocates what the input holds.
//!
//! On failure, export removes the file it created and import removes the image it
//! created: nothing half-done is left behind.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions as FileOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use clap::Args;
use rbd_core::rbd::aio::AioFuture;
use rbd_core::rbd::{self, DiffOptions, Shrink};
use rbd_core::{Image, OpenOptions};
use serde_json::json;

use crate::Cli;
use crate::cmd::image::LayoutArgs;
use crate::error::{CliError, CliResult, WithContext};
use crate::output::{done, human_size};
use crate::progress::{Progress, Unit};
use crate::spec::Spec;

/// Largest single read or write (and the unit of pipelining).
const CHUNK: u64 = 4 << 20;
/// Runs of zeros at least this long (and aligned to it) are skipped.
const SPARSE_BLOCK: usize = 4096;

/// `rbdctl export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// [pool/[namespace/]]image[@snapshot]
    pub image: String,
    /// Output file, or `-` for stdout.
    pub path: String,
    /// Overwrite the output file if it exists.
    #[arg(long)]
    pub force: bool,
    /// Requests kept in flight.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub concurrency: u16,
}

/// `rbdctl import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Input file, or `-` for stdin.
    pub path: String,
    /// The new image: [pool/[namespace/]]image (must not exist).
    pub image: String,
    /// Image size (default: the input file's size; from stdin, the bytes read). Must be
    /// at least the input's size.
    #[arg(short = 's', long, allow_hyphen_values = true)]
    pub size: Option<String>,
    /// Layout and features of the new image.
    #[command(flatten)]
    pub layout: LayoutArgs,
    /// Requests kept in flight.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub concurrency: u16,
}

/// Non-zero runs of `buf`, as `(start, len)`, at [`SPARSE_BLOCK`] granularity.
fn data_runs(buf: &[u8]) -> Vec<(usize, usize)> {
    let mut runs = Vec::new();
    let mut start: Option<usize> = None;
    for (i, block) in buf.chunks(SPARSE_BLOCK).enumerate() {
        let at = i * SPARSE_BLOCK;
        let zero = block.iter().all(|&b| b == 0);
        match (zero, start) {
            (false, None) => start = Some(at),
            (true, Some(s)) => {
                runs.push((s, at - s));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        runs.push((s, buf.len() - s));
    }
    runs
}

/// Where export writes.
enum Sink {
    /// A regular file we may write at any offset (holes stay holes).
    File {
        file: File,
        path: PathBuf,
        created: bool,
    },
    /// A pipe, terminal, or device: written in order, holes as zeros.
    Stream(File),
}

impl Sink {
    fn open(path: &str, force: bool) -> CliResult<Sink> {
        if path == "-" {
            let fd = std::io::stdout()
                .as_fd()
                .try_clone_to_owned()
                .map_err(|e| CliError::io("duplicating stdout", e))?;
            return Ok(Sink::Stream(File::from(fd)));
        }
        let p = PathBuf::from(path);
        match std::fs::metadata(&p) {
            Ok(m) if !m.is_file() => {
                // A device or fifo: written in order, never truncated or removed.
                let f = FileOptions::new()
                    .write(true)
                    .open(&p)
                    .map_err(|e| CliError::io(format!("opening {path}"), e))?;
                return Ok(Sink::Stream(f));
            }
            Ok(_) if !force => {
                return Err(CliError::Exists(format!(
                    "{path} exists; pass --force to overwrite it"
                )));
            }
            _ => {}
        }
        let existed = p.exists();
        let file = FileOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&p)
            .map_err(|e| CliError::io(format!("creating {path}"), e))?;
        Ok(Sink::File {
            file,
            path: p,
            created: !existed,
        })
    }

    /// Removes a file we created (after a failure).
    fn discard(self) {
        if let Sink::File {
            path,
            created: true,
            file,
        } = self
        {
            drop(file);
            let _ = std::fs::remove_file(path);
        }
    }
}

struct Exporter<'a> {
    sink: &'a mut Sink,
    /// Stream mode: how far the output has been written.
    pos: u64,
    zeros: Vec<u8>,
    data_bytes: u64,
    progress: &'a Progress,
}

impl Exporter<'_> {
    fn io_err(e: std::io::Error) -> CliError {
        CliError::io("writing the export", e)
    }

    /// Writes zeros up to `to` (stream mode only; a file keeps the hole).
    fn fill_to(&mut self, to: u64) -> CliResult {
        if let Sink::Stream(f) = &mut *self.sink {
            while self.pos < to {
                let n = (to - self.pos).min(self.zeros.len() as u64) as usize;
                f.write_all(&self.zeros[..n]).map_err(Self::io_err)?;
                self.pos += n as u64;
                self.progress.inc(n as u64);
            }
        } else if to > self.pos {
            self.progress.inc(to - self.pos);
            self.pos = to;
        }
        Ok(())
    }

    fn put(&mut self, off: u64, data: &[u8]) -> CliResult {
        self.fill_to(off)?;
        match &mut *self.sink {
            Sink::Stream(f) => f.write_all(data).map_err(Self::io_err)?,
            Sink::File { file, .. } => {
                for (s, n) in data_runs(data) {
                    file.write_all_at(&data[s..s + n], off + s as u64)
                        .map_err(Self::io_err)?;
                }
            }
        }
        self.pos = off + data.len() as u64;
        self.data_bytes += data.len() as u64;
        self.progress.inc(data.len() as u64);
        Ok(())
    }
}

/// Exports an image (or snapshot) to a file or stdout.
pub fn export(cli: &Cli, a: &ExportArgs) -> CliResult {
    let spec = Spec::parse(&a.image)?;
    let rados = cli.connect()?;
    let io = cli.spec_ioctx(&rados, &spec)?;
    let mut o = OpenOptions::new().read_only(true);
    if let Some(s) = &spec.snap {
        o = o.snapshot(s.clone());
    }
    let img = Image::open(&io, &spec.image, &o)?;
    let size = img.size()?;
    // The extents holding data; the rest reads as zeros.
    let mut extents: Vec<(u64, u64)> = Vec::new();
    img.diff_iterate(&DiffOptions::new(), |off, len, exists| {
        if exists {
            match extents.last_mut() {
                Some((o, l)) if *o + *l == off => *l += len,
                _ => extents.push((off, len)),
            }
        }
        std::ops::ControlFlow::Continue(())
    })
    .context(|| format!("listing the allocated extents of {}", spec.display(cli)))?;

    let mut sink = Sink::open(&a.path, a.force)?;
    let progress = Progress::new(cli, "Exporting image", Unit::Bytes);
    progress.set_length(size);
    let result = (|| -> CliResult<u64> {
        if let Sink::File { file, .. } = &sink {
            file.set_len(size)
                .map_err(|e| CliError::io(format!("sizing {}", a.path), e))?;
        }
        let mut ex = Exporter {
            sink: &mut sink,
            pos: 0,
            zeros: vec![0u8; CHUNK as usize],
            data_bytes: 0,
            progress: &progress,
        };
        let mut inflight: VecDeque<(u64, AioFuture<Vec<u8>>)> = VecDeque::new();
        let pieces = extents.iter().flat_map(|&(off, len)| {
            // Chunks aligned to CHUNK boundaries, so requests stay object-aligned.
            let end = off + len;
            let mut pos = off;
            std::iter::from_fn(move || {
                if pos >= end {
                    return None;
                }
                let next = ((pos / CHUNK + 1) * CHUNK).min(end);
                let p = (pos, next - pos);
                pos = next;
                Some(p)
            })
        });
        for (off, len) in pieces {
            if inflight.len() >= usize::from(a.concurrency)
                && let Some((o, f)) = inflight.pop_front()
            {
                let data = f.wait()?;
                ex.put(o, &data)?;
            }
            inflight.push_back((off, img.aio_read(off, vec![0u8; len as usize])));
        }
        while let Some((o, f)) = inflight.pop_front() {
            let data = f.wait()?;
            ex.put(o, &data)?;
        }
        ex.fill_to(size)?;
        let data = ex.data_bytes;
        match &mut sink {
            Sink::File { file, .. } => file.sync_data(),
            Sink::Stream(f) => f.flush(),
        }
        .map_err(Exporter::io_err)?;
        Ok(data)
    })();
    progress.finish();
    let data = match result {
        Ok(d) => d,
        Err(e) => {
            sink.discard();
            return Err(e);
        }
    };
    if a.path != "-" {
        done(
            cli.format,
            json!({"image": spec.display(cli), "path": a.path, "size": size, "data_bytes": data}),
            || {
                format!(
                    "exported {} to {} ({}, {} of data)",
                    spec.display(cli),
                    a.path,
                    human_size(size),
                    human_size(data)
                )
            },
        );
    }
    Ok(())
}

/// Where import reads from, and its size when known up front.
fn open_source(path: &str) -> CliResult<(File, Option<u64>)> {
    if path == "-" {
        let fd = std::io::stdin()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| CliError::io("duplicating stdin", e))?;
        return Ok((File::from(fd), None));
    }
    let mut f =
        File::open(Path::new(path)).map_err(|e| CliError::io(format!("opening {path}"), e))?;
    let m = f
        .metadata()
        .map_err(|e| CliError::io(format!("reading {path}"), e))?;
    if m.is_dir() {
        return Err(CliError::Usage(format!("{path} is a directory")));
    }
    if m.is_file() {
        return Ok((f, Some(m.len())));
    }
    // A block device knows its size through seeking; a pipe does not.
    match f.seek(SeekFrom::End(0)) {
        Ok(n) if n > 0 => {
            f.seek(SeekFrom::Start(0))
                .map_err(|e| CliError::io(format!("seeking {path}"), e))?;
            Ok((f, Some(n)))
        }
        _ => Ok((f, None)),
    }
}

/// Fills `buf` from `r` until full or end of input; returns the bytes read.
fn read_full(r: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Imports a file or stdin into a new image.
pub fn import(cli: &Cli, a: &ImportArgs) -> CliResult {
    let spec = Spec::image_only(&a.image)?;
    let want = a.size.as_deref().map(rbd::parse_size).transpose()?;
    let opts = a.layout.to_options()?;
    let (mut src, known) = open_source(&a.path)?;
    if let (Some(w), Some(k)) = (want, known)
        && k > w
    {
        return Err(CliError::Usage(format!(
            "--size {} ({w} bytes) is smaller than {} ({k} bytes)",
            a.size.as_deref().unwrap_or_default(),
            a.path
        )));
    }
    // The image's size: --size, else the input's, else grown as stdin is read.
    let initial = want.or(known).unwrap_or(0);
    let growable = want.is_none() && known.is_none();
    let rados = cli.connect()?;
    let io = cli.spec_ioctx(&rados, &spec)?;
    rbd::create(&io, &spec.image, initial, &opts)
        .context(|| format!("creating {}", spec.display(cli)))?;

    let progress = Progress::new(cli, "Importing image", Unit::Bytes);
    progress.set_length(known.unwrap_or(0));
    let result = (|| -> CliResult<(u64, u64)> {
        let img = Image::open(&io, &spec.image, &OpenOptions::new())?;
        let mut size = initial;
        let mut total = 0u64;
        let mut data = 0u64;
        let mut inflight: VecDeque<AioFuture<usize>> = VecDeque::new();
        loop {
            let mut buf = vec![0u8; CHUNK as usize];
            let n = read_full(&mut src, &mut buf)
                .map_err(|e| CliError::io(format!("reading {}", a.path), e))?;
            if n == 0 {
                break;
            }
            buf.truncate(n);
            let end = total + n as u64;
            if end > size {
                if !growable {
                    return Err(CliError::Usage(format!(
                        "{} holds more than the image size {} ({size} bytes)",
                        a.path,
                        human_size(size)
                    )));
                }
                // Grow ahead (doubling, at least 1 GiB), trimmed to the exact size at the end.
                let target = end.max(size.saturating_mul(2)).max(1 << 30);
                img.resize(target, Shrink::Forbid)?;
                size = target;
            }
            let runs = data_runs(&buf);
            let whole = runs.as_slice() == [(0, buf.len())];
            let mut buf = Some(buf);
            for (s, len) in runs {
                if inflight.len() >= usize::from(a.concurrency)
                    && let Some(f) = inflight.pop_front()
                {
                    f.wait()?;
                }
                // A chunk that is all data goes as it is; otherwise copy out its runs.
                let piece = match (&mut buf, whole) {
                    (b @ Some(_), true) => b.take().unwrap_or_default(),
                    (Some(b), false) => b[s..s + len].to_vec(),
                    (None, _) => Vec::new(),
                };
                inflight.push_back(img.aio_write(total + s as u64, piece));
                data += len as u64;
            }
            total = end;
            if known.is_none() {
                progress.set_length(total);
            }
            progress.inc(n as u64);
        }
        while let Some(f) = inflight.pop_front() {
            f.wait()?;
        }
        img.flush()?;
        let final_size = want.unwrap_or(total);
        if img.size()? != final_size {
            img.resize(final_size, Shrink::Allow)?;
        }
        img.close()?;
        Ok((final_size, data))
    })();
    progress.finish();
    let (size, data) = match result {
        Ok(r) => r,
        Err(e) => {
            // Nothing half-imported stays behind.
            if let Err(rm) = rbd::remove(&io, &spec.image) {
                eprintln!(
                    "rbdctl: could not remove the partial image {}: {rm}",
                    spec.display(cli)
                );
            }
            return Err(e);
        }
    };
    done(
        cli.format,
        json!({"image": spec.display(cli), "path": a.path, "size": size, "data_bytes": data}),
        || {
            format!(
                "imported {} into {} ({}, {} of data)",
                a.path,
                spec.display(cli),
                human_size(size),
                human_size(data)
            )
        },
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_skip_zero_blocks() {
        let mut b = vec![0u8; SPARSE_BLOCK * 5 + 10];
        assert!(data_runs(&b).is_empty());
        b[SPARSE_BLOCK + 3] = 1;
        b[SPARSE_BLOCK * 2 + 7] = 1;
        b[SPARSE_BLOCK * 5 + 9] = 1;
        assert_eq!(
            data_runs(&b),
            vec![(SPARSE_BLOCK, 2 * SPARSE_BLOCK), (5 * SPARSE_BLOCK, 10)]
        );
        let full = vec![1u8; 100];
        assert_eq!(data_runs(&full), vec![(0, 100)]);
    }
}
