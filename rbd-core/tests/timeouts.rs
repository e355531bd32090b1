//! No call can hang forever: the timeout options cannot be set to "no timeout", a connect
//! to monitors that do not answer fails within `client_mount_timeout`, and a mon command
//! whose mon went away fails within `rados_mon_op_timeout`.
//!
//! The bounds below are hang checks (the configured timeout plus a margin for a loaded
//! machine), not performance assertions. Each call runs on a helper thread with a hard
//! deadline, so a hang fails the test instead of stalling it.

mod common;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use rbd_core::rados::{MAX_TIMEOUT, with_deadline};
use rbd_core::{ConnectOptions, Context, Error, ErrorKind, Rados, Timeouts};

/// How much later than its timeout a call may fail.
const MARGIN: Duration = Duration::from_secs(8);

/// Runs `f` on a helper thread; `Err(Error::Timeout)` from `with_deadline` means it hung.
fn bounded<T: Send + 'static>(
    what: &'static str,
    limit: Duration,
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> (Result<T, Error>, Duration) {
    let t = Instant::now();
    let r = with_deadline(what, Context::none(), limit + MARGIN * 3, f);
    (r, t.elapsed())
}

/// The call failed by itself (not by our hard deadline), with a timeout, within bound.
fn assert_timed_out<T: std::fmt::Debug>(
    what: &str,
    r: Result<T, Error>,
    took: Duration,
    limit: Duration,
) {
    let e = r.expect_err(&format!("{what}: succeeded"));
    eprintln!("{what}: failed after {took:?}: {e}");
    // (Error::Timeout is what the test's own deadline returns: the call hung.)
    assert!(
        !matches!(e, Error::Timeout { .. }),
        "{what}: hung until the test's hard deadline: {e}"
    );
    assert_eq!(e.kind(), ErrorKind::Timeout, "{what}: {e}");
    assert!(
        took <= limit + MARGIN,
        "{what}: took {took:?}, more than {limit:?} + {MARGIN:?}"
    );
}

#[test]
fn timeout_options_of_zero_or_forever_are_refused() {
    let Some((rados, conf)) = common::connect() else {
        return;
    };
    // Through ConnectOptions::option: refused before anything connects.
    for (k, v) in [
        ("rados_osd_op_timeout", "0"),
        ("rados_mon_op_timeout", "0s"),
        ("client_mount_timeout", "2d"),
        ("rados osd op timeout", "inf"),
    ] {
        let e = Rados::connect(&ConnectOptions::new().conf_file(&conf).option(k, v))
            .err()
            .unwrap_or_else(|| panic!("{k}={v}: connected"));
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{k}={v}: {e}");
        assert!(e.to_string().contains(&format!("{k}={v}")), "{e}");
    }
    // A zero Timeouts field is rounded up to 1 s, an endless one refused.
    let e = Rados::connect(
        &ConnectOptions::new()
            .conf_file(&conf)
            .timeouts(Timeouts::uniform(MAX_TIMEOUT * 2)),
    )
    .expect_err("connected with two-day timeouts");
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    let r = Rados::connect(
        &ConnectOptions::new()
            .conf_file(&conf)
            .timeouts(Timeouts::uniform(Duration::ZERO)),
    )
    .unwrap();
    assert_eq!(r.conf_get("rados_osd_op_timeout").unwrap(), "1");
    drop(r);

    // Accepted forms, as Ceph parses them.
    let r = Rados::connect(
        &ConnectOptions::new()
            .conf_file(&conf)
            .option("rados_osd_op_timeout", "2m")
            .option("rados mon op timeout", "1h 30m"),
    )
    .unwrap();
    assert_eq!(r.conf_get("rados_osd_op_timeout").unwrap(), "120");
    assert_eq!(r.conf_get("rados_mon_op_timeout").unwrap(), "5400");
    drop(r);

    // On a live handle: refused, and the bound in force is left as it was.
    let before = rados.conf_get("rados_mon_op_timeout").unwrap();
    for v in ["0", "0s", "0 m", "25h", "-1"] {
        let e = rados.conf_set("rados_mon_op_timeout", v).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{v}: {e}");
        assert_eq!(
            rados.conf_get("rados_mon_op_timeout").unwrap(),
            before,
            "{v}"
        );
    }
    rados.conf_set("client_mount_timeout", "45").unwrap();
    assert_eq!(rados.conf_get("client_mount_timeout").unwrap(), "45");
}

#[test]
fn connect_to_monitors_that_do_not_answer_fails_within_client_mount_timeout() {
    let Some((_, conf)) = common::connect() else {
        return;
    };
    let mount = Duration::from_secs(3);
    let timeouts = Timeouts {
        mount,
        ..Timeouts::uniform(Duration::from_secs(5))
    };
    // A port nobody listens on (connections refused, retried by librados), and a listener
    // that accepts connections but never says anything (a hung mon).
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    for (what, mon_host) in [
        ("connect to a closed port", format!("127.0.0.1:{closed}")),
        (
            "connect to a silent mon",
            format!("v2:127.0.0.1:{silent_port}"),
        ),
        (
            "connect to a silent mon (msgr1)",
            format!("v1:127.0.0.1:{silent_port}"),
        ),
    ] {
        let opts = ConnectOptions::new()
            .conf_file(&conf)
            .mon_host(mon_host)
            .timeouts(timeouts);
        let (r, took) = bounded("connect", mount, move || Rados::connect(&opts));
        assert_timed_out(what, r.map(|_| ()), took, mount);
    }
    drop(silent);
}

#[test]
fn mon_commands_fail_within_the_mon_timeout_once_the_mon_is_gone() {
    let Some(_shared) = testkit::ceph_conf() else {
        return;
    };
    let cluster = testkit::cluster::PrivateCluster::start();
    let mon_op = Duration::from_secs(4);
    let rados = std::sync::Arc::new(
        Rados::connect(
            &ConnectOptions::new()
                .conf_file(cluster.conf())
                .timeouts(Timeouts {
                    mon_op,
                    ..Timeouts::default()
                }),
        )
        .unwrap(),
    );
    // Works while the mon is up.
    let fsid_before = rados.fsid().unwrap();
    rados.blocklist_ls().unwrap();
    let status = rados
        .mon_command(
            &serde_json::json!({"prefix": "status", "format": "json"}),
            &[],
        )
        .unwrap();
    let v: serde_json::Value = status.json().unwrap();
    assert_eq!(v["fsid"].as_str(), Some(fsid_before.as_str()), "{v}");

    cluster.stop("mon.a");

    let (r, took) = bounded("mon_command", mon_op, {
        let rados = rados.clone();
        move || rados.mon_command(&serde_json::json!({"prefix": "status"}), &[])
    });
    assert_timed_out("mon_command status", r, took, mon_op);
    let (r, took) = bounded("blocklist_ls", mon_op, {
        let rados = rados.clone();
        move || rados.blocklist_ls()
    });
    assert_timed_out("blocklist_ls", r, took, mon_op);
    let (r, took) = bounded("pool_create", mon_op, {
        let rados = rados.clone();
        move || rados.pool_create("never-made")
    });
    assert_timed_out("pool_create", r, took, mon_op);
    // Local state still answers.
    assert_eq!(rados.fsid().unwrap(), fsid_before);
    // Shutting the handle down is bounded too.
    let (r, took) = bounded("shutdown", mon_op, move || {
        drop(rados);
        Ok(())
    });
    r.unwrap();
    assert!(took <= mon_op + MARGIN, "shutdown took {took:?}");
}
