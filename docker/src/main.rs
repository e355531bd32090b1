//! `docker-volume-rbd`: a Docker volume plugin serving Ceph RBD volumes.
//!
//! This crate owns Docker's volume plugin protocol (`/VolumeDriver.*` over a unix socket),
//! the option parsing for `docker volume create -o ...`, and the packaging as a managed
//! plugin and as a legacy socket service. The volume logic itself lives in `rbd-driver`.

fn main() {
    eprintln!("docker-volume-rbd: the volume plugin is not implemented yet (issue 6)");
    std::process::exit(2);
}
