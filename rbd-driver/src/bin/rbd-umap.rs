//! `rbd-umap`: the userspace mapper process, one per mapped image.
//!
//! ```text
//! rbd-umap serve      # request (JSON) on stdin, one readiness line (JSON) on stdout
//! rbd-umap --version
//! ```
//!
//! `serve` reads a [`ServeRequest`] from stdin (the parent,
//! [`UserspaceMapper::map`](rbd_driver::mapper::userspace::UserspaceMapper), writes it and
//! closes the pipe), starts a session of its own (so the terminal's signals do not reach
//! it), maps the image, writes one [`Readiness`](rbd_driver::mapper::userspace::daemon::Readiness)
//! line to stdout and closes it, then serves until `SIGTERM` (unmap), `SIGUSR1` (forced
//! unmap), or its client is blocklisted. Logs go to stderr. Exit statuses are in
//! [`exit`].
//!
//! No secret is ever on the command line: the request names the keyring file.

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use rbd_driver::mapper::userspace::daemon::{self, ServeRequest, exit};

fn usage() -> ! {
    eprintln!(
        "usage: rbd-umap serve   (a ServeRequest as JSON on stdin)\n       rbd-umap --version"
    );
    std::process::exit(exit::USAGE)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("serve") if args.len() == 1 => {}
        Some("--version" | "-V") => {
            println!("rbd-umap {}", env!("CARGO_PKG_VERSION"));
            return;
        }
        _ => usage(),
    }
    // Our own session: no controlling terminal, no SIGHUP/SIGINT from the caller's.
    let _ = nix::unistd::setsid();
    let mut body = Vec::new();
    if let Err(e) = std::io::stdin().take(1 << 20).read_to_end(&mut body) {
        eprintln!("rbd-umap: reading the request from stdin: {e}");
        std::process::exit(exit::USAGE);
    }
    let req: ServeRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("rbd-umap: the request on stdin is not a valid ServeRequest: {e}");
            std::process::exit(exit::USAGE);
        }
    };
    // The readiness pipe is our stdout: keep a private copy and point fd 1 (and fd 0) at
    // /dev/null, so nothing else ever writes to the pipe and the parent sees it close.
    let ready = match nix::unistd::dup(std::io::stdout().as_raw_fd()) {
        // SAFETY: dup returned a new descriptor that nothing else owns.
        Ok(fd) => unsafe { OwnedFd::from_raw_fd(fd) },
        Err(e) => {
            eprintln!("rbd-umap: duplicating stdout: {e}");
            std::process::exit(exit::USAGE);
        }
    };
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        let _ = nix::unistd::dup2(null.as_raw_fd(), 1);
        let _ = nix::unistd::dup2(null.as_raw_fd(), 0);
    }
    let code = daemon::serve(req, Box::new(std::fs::File::from(ready)));
    std::process::exit(code);
}
