//! Cluster-level operations against the real dev cluster.

mod common;

use rbd_core::{ConnectOptions, ErrorKind, Rados};

#[test]
fn connect_fsid_pools_addrs() {
    let Some((rados, conf)) = common::connect() else {
        return;
    };
    let fsid = rados.fsid().unwrap();
    let cli_fsid = common::cli(&conf, "ceph", &["fsid"]);
    assert_eq!(fsid, cli_fsid.trim());

    let pools = rados.pool_list().unwrap();
    assert!(pools.contains(&common::POOL.to_string()), "{pools:?}");
    let id = rados.pool_lookup(common::POOL).unwrap();
    assert!(id > 0);
    assert_eq!(rados.pool_reverse_lookup(id).unwrap(), common::POOL);
    let e = rados.pool_lookup("no-such-pool-xyz").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(e.to_string().contains("no-such-pool-xyz"), "{e}");

    let addrs = rados.getaddrs().unwrap();
    let a = addrs.primary().unwrap();
    assert!(a.nonce != 0, "client address has a nonce: {addrs}");
    assert!(rados.instance_id() > 0);

    let io = rados.ioctx(common::POOL).unwrap();
    assert_eq!(io.pool_id(), id);
    let io2 = rados.ioctx_by_id(id).unwrap();
    assert_eq!(io2.pool_name(), common::POOL);
    drop(rados);
    // The ioctx keeps the connection alive after the Rados handle is dropped.
    assert_eq!(io.rados().fsid().unwrap(), fsid);
}

#[test]
fn connect_with_explicit_options() {
    let Some((_rados, conf)) = common::connect() else {
        return;
    };
    // Read mon_host and the key from the conf/keyring and connect without any conf file.
    let text = std::fs::read_to_string(&conf).unwrap();
    let mon_host = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("mon host = "))
        .unwrap()
        .to_string();
    let keyring = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("keyring = "))
        .unwrap()
        .to_string();
    let kr = std::fs::read_to_string(&keyring).unwrap();
    let admin = kr.split("[client.admin]").nth(1).unwrap();
    let key = admin
        .lines()
        .find_map(|l| l.trim().strip_prefix("key = "))
        .unwrap()
        .to_string();
    let rados = Rados::connect(
        &ConnectOptions::new()
            .no_conf_file()
            .skip_env()
            .mon_host(mon_host.clone())
            .id("admin")
            .key(key),
    )
    .unwrap();
    assert!(!rados.fsid().unwrap().is_empty());
    assert_eq!(rados.conf_get("rados_osd_op_timeout").unwrap(), "30");
    // librbd's write-around cache is off by default (it can lose write errors), and
    // explicit options win over our defaults.
    assert_eq!(rados.conf_get("rbd_cache").unwrap(), "false");
    // Zero-copy aio writes stay off: librbd never completes those that fail early.
    assert_eq!(
        rados.conf_get("rbd_disable_zero_copy_writes").unwrap(),
        "true"
    );

    // Keyring path instead of key, and a wrong key is refused (not hung).
    let rados = Rados::connect(
        &ConnectOptions::new()
            .no_conf_file()
            .skip_env()
            .mon_host(mon_host.clone())
            .name("client.admin")
            .keyring(&keyring)
            .option("rbd_cache", "true"),
    )
    .unwrap();
    assert!(rados.pool_lookup(common::POOL).is_ok());
    assert_eq!(rados.conf_get("rbd_cache").unwrap(), "true");

    let e = Rados::connect(
        &ConnectOptions::new()
            .no_conf_file()
            .skip_env()
            .mon_host(mon_host)
            .id("admin")
            .key("AQBj5ThlAAAAABAAOYi2Qn3yJFB+ks0I5fQ5vw=="),
    )
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
}

#[test]
fn bad_conf_file_is_a_clear_error() {
    let e = Rados::connect(&ConnectOptions::new().conf_file("/nonexistent/ceph.conf")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(e.to_string().contains("/nonexistent/ceph.conf"), "{e}");
}

#[test]
fn pools_are_created_seen_by_the_cli_and_deleted() {
    let Some((rados, conf)) = common::connect() else {
        return;
    };
    let pool = testkit::unique("rbdcore-pool");
    struct PoolGuard(Rados, String);
    impl Drop for PoolGuard {
        fn drop(&mut self) {
            let _ = self.0.pool_delete(&self.1);
        }
    }
    rados.pool_create(&pool).unwrap();
    let _guard = PoolGuard(rados.clone(), pool.clone());
    let e = rados.pool_create(&pool).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Exists, "{e}");
    assert!(e.to_string().contains(&pool), "{e}");
    let id = rados.pool_lookup(&pool).unwrap();
    assert_eq!(rados.pool_reverse_lookup(id).unwrap(), pool);
    assert!(rados.pool_list().unwrap().contains(&pool));
    let cli = common::cli(&conf, "ceph", &["osd", "pool", "ls"]);
    assert!(cli.lines().any(|l| l == pool), "{cli}");
    // An object in it, through an I/O context opened by id.
    let io = rados.ioctx_by_id(id).unwrap();
    assert_eq!(io.pool_name(), pool);
    io.write_full("o", b"in the new pool").unwrap();
    let out = common::cli(&conf, "rados", &["-p", &pool, "ls"]);
    assert_eq!(out.trim(), "o");
    drop(io);

    rados.pool_delete(&pool).unwrap();
    assert_eq!(
        rados.pool_lookup(&pool).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    let cli = common::cli(&conf, "ceph", &["osd", "pool", "ls"]);
    assert!(!cli.lines().any(|l| l == pool), "{cli}");
    let e = rados.pool_delete(&pool).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
}

#[test]
fn connect_default_conf_set_and_osdmap() {
    let Some((_rados, _conf)) = common::connect() else {
        return;
    };
    // CEPH_CONF (set for the tests) is honoured by the defaults.
    let rados = Rados::connect_default().unwrap();
    assert!(
        rados
            .pool_list()
            .unwrap()
            .contains(&common::POOL.to_string())
    );
    assert_eq!(rados.timeouts(), rbd_core::Timeouts::default());
    rados.conf_set("rbd_default_features", "1").unwrap();
    assert_eq!(rados.conf_get("rbd_default_features").unwrap(), "1");
    // Options that would make aio hang are refused at connect, naming the option.
    let e = Rados::connect(&ConnectOptions::new().option("rbd_disable_zero_copy_writes", "false"))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert!(
        e.to_string().contains("rbd_disable_zero_copy_writes"),
        "{e}"
    );
    let e = rados.conf_set("no_such_option_xyz", "1").unwrap_err();
    assert!(e.to_string().contains("no_such_option_xyz"), "{e}");
    rados.wait_for_latest_osdmap().unwrap();
    // ConnectOptions reports the timeouts it will apply.
    let t = rbd_core::Timeouts::uniform(std::time::Duration::from_secs(7));
    assert_eq!(ConnectOptions::new().timeouts(t).get_timeouts(), t);
}
