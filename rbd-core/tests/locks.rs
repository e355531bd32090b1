//! Exclusive (managed) and advisory image locks against the real dev cluster, with two
//! client instances.

mod common;
mod mgmt;

use mgmt::{TestImage, plain_opts, second_client};
use rbd_core::rbd::{Features, ImageOptions, LockMode};
use rbd_core::{EntityAddr, ErrorKind, Image, OpenOptions};

fn xlock_opts() -> ImageOptions {
    ImageOptions::new().features(Features::LAYERING | Features::EXCLUSIVE_LOCK)
}

#[test]
fn exclusive_lock_acquire_release_owners() {
    let Some((rados, conf)) = common::connect() else {
        return;
    };
    let t = TestImage::create(&rados, "mgmt-xlock", 4 << 20, &xlock_opts());
    let a = t.open();
    assert!(!a.is_exclusive_lock_owner().unwrap());
    assert!(a.lock_get_owners().unwrap().owners.is_empty());

    a.lock_acquire(LockMode::Exclusive).unwrap();
    assert!(a.is_exclusive_lock_owner().unwrap());
    let owners = a.lock_get_owners().unwrap();
    assert_eq!(owners.mode, LockMode::Exclusive);
    assert_eq!(owners.owners.len(), 1, "{owners:?}");
    let me = rados.getaddrs().unwrap();
    let me = me.primary().unwrap();
    assert!(
        owners.addrs().unwrap()[0].same_instance(me),
        "{owners:?} vs {me}"
    );

    // Another client sees the same owner and cannot take the lock while we keep it.
    let rados_b = second_client(&conf);
    let io_b = rados_b.ioctx(common::POOL).unwrap();
    let b = Image::open(&io_b, &t.name, &OpenOptions::new()).unwrap();
    assert_eq!(b.lock_get_owners().unwrap(), owners);
    assert!(!b.is_exclusive_lock_owner().unwrap());
    let e = b.lock_acquire(LockMode::Exclusive).unwrap_err();
    // librbd answers a refused lock request with EROFS.
    assert_eq!(e.kind(), ErrorKind::ReadOnly, "{e}");
    assert!(a.is_exclusive_lock_owner().unwrap());

    a.lock_release().unwrap();
    assert!(!a.is_exclusive_lock_owner().unwrap());
    assert!(b.lock_get_owners().unwrap().owners.is_empty());

    b.lock_acquire(LockMode::Exclusive).unwrap();
    assert!(b.is_exclusive_lock_owner().unwrap());
    let ob = a.lock_get_owners().unwrap();
    let b_addr = rados_b.getaddrs().unwrap();
    assert!(ob.addrs().unwrap()[0].same_instance(b_addr.primary().unwrap()));
    b.lock_release().unwrap();

    // Shared mode is not supported by librbd's managed lock.
    let e = a.lock_acquire(LockMode::Shared).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotSupported, "{e}");
}

#[test]
fn exclusive_lock_needs_the_feature() {
    let Some((rados, _conf)) = common::connect() else {
        return;
    };
    let t = TestImage::create(&rados, "mgmt-nolock", 1 << 20, &plain_opts());
    let img = t.open();
    let e = img.lock_acquire(LockMode::Exclusive).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert!(!img.is_exclusive_lock_owner().unwrap());
    let e = img.lock_get_owners().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    // Read-only handles cannot take it either.
    let t2 = TestImage::create(&rados, "mgmt-rolock", 1 << 20, &xlock_opts());
    let ro = Image::open(&t2.io, &t2.name, &OpenOptions::new().read_only(true)).unwrap();
    let e = ro.lock_acquire(LockMode::Exclusive).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert!(!ro.is_exclusive_lock_owner().unwrap());
}

#[test]
fn breaking_the_exclusive_lock_blocklists_the_owner() {
    let Some((rados, conf)) = common::connect() else {
        return;
    };
    // Removes the owner's blocklist entry once the owner is gone, pass or fail.
    let unfence = common::Unfence::new(&rados);
    let t = TestImage::create(&rados, "mgmt-xbreak", 4 << 20, &xlock_opts());
    // The owner is a separate client instance, since it gets blocklisted.
    let rados_a = second_client(&conf);
    unfence.client(&rados_a);
    let io_a = rados_a.ioctx(common::POOL).unwrap();
    let a = Image::open(&io_a, &t.name, &OpenOptions::new()).unwrap();
    a.lock_acquire(LockMode::Exclusive).unwrap();

    let b = t.open();
    let owners = b.lock_get_owners().unwrap();
    assert_eq!(owners.owners.len(), 1);
    let owner = owners.owners[0].clone();
    let addr: EntityAddr = owner.parse().unwrap();
    assert!(addr.same_instance(rados_a.getaddrs().unwrap().primary().unwrap()));

    let e = b
        .lock_break(LockMode::Exclusive, "127.0.0.1:0/1")
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy, "{e}");

    b.lock_break(LockMode::Exclusive, &owner).unwrap();
    assert!(b.lock_get_owners().unwrap().owners.is_empty());
    let bl = common::cli(&conf, "ceph", &["osd", "blocklist", "ls"]);
    let listed = bl.lines().any(|l| {
        l.split_whitespace()
            .next()
            .and_then(|a| a.parse::<EntityAddr>().ok())
            .is_some_and(|a| a.same_instance(&addr))
    });
    assert!(listed, "{addr} not in blocklist:\n{bl}");
    drop(a);

    // Now we can take it.
    b.lock_acquire(LockMode::Exclusive).unwrap();
    assert!(b.is_exclusive_lock_owner().unwrap());
}

#[test]
fn advisory_exclusive_lock() {
    let Some((rados, conf)) = common::connect() else {
        return;
    };
    // Breaking B's lock below blocklists B (librbd's rbd_blocklist_on_break_lock): its
    // entry is removed once B is gone, pass or fail.
    let unfence = common::Unfence::new(&rados);
    let t = TestImage::create(&rados, "mgmt-advx", 1 << 20, &plain_opts());
    let a = t.open();
    let l = a.list_lockers().unwrap();
    assert!(l.lockers.is_empty(), "{l:?}");

    a.lock_exclusive("cookie-a").unwrap();
    let l = a.list_lockers().unwrap();
    assert!(l.exclusive);
    assert_eq!(l.tag, "");
    assert_eq!(l.lockers.len(), 1);
    assert_eq!(l.lockers[0].cookie, "cookie-a");
    assert_eq!(
        l.lockers[0].client,
        format!("client.{}", rados.instance_id())
    );
    assert!(
        l.lockers[0]
            .addr
            .same_instance(rados.getaddrs().unwrap().primary().unwrap())
    );

    let e = a.lock_exclusive("cookie-a").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Exists, "{e}");

    let rados_b = second_client(&conf);
    unfence.client(&rados_b);
    let b = Image::open(
        &rados_b.ioctx(common::POOL).unwrap(),
        &t.name,
        &OpenOptions::new(),
    )
    .unwrap();
    let e = b.lock_exclusive("cookie-b").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
    let e = b.lock_shared("cookie-b", "tag").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
    // Someone else's lock is not ours to unlock, but can be broken.
    let e = b.unlock("cookie-a").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");

    a.unlock("cookie-a").unwrap();
    assert!(a.list_lockers().unwrap().lockers.is_empty());
    let e = a.unlock("cookie-a").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");

    b.lock_exclusive("cookie-b").unwrap();
    let l = a.list_lockers().unwrap();
    let client_b = format!("client.{}", rados_b.instance_id());
    assert_eq!(l.lockers[0].client, client_b);
    a.break_lock(&client_b, "cookie-b").unwrap();
    assert!(a.list_lockers().unwrap().lockers.is_empty());
    let e = a.break_lock(&client_b, "cookie-b").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");

    assert_eq!(
        a.lock_exclusive("").unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
}

#[test]
fn advisory_shared_lock() {
    let Some((rados, conf)) = common::connect() else {
        return;
    };
    let t = TestImage::create(&rados, "mgmt-advs", 1 << 20, &plain_opts());
    let a = t.open();
    let rados_b = second_client(&conf);
    let b = Image::open(
        &rados_b.ioctx(common::POOL).unwrap(),
        &t.name,
        &OpenOptions::new(),
    )
    .unwrap();
    a.lock_shared("ca", "db").unwrap();
    b.lock_shared("cb", "db").unwrap();
    let l = a.list_lockers().unwrap();
    assert!(!l.exclusive);
    assert_eq!(l.tag, "db");
    let mut cookies: Vec<&str> = l.lockers.iter().map(|x| x.cookie.as_str()).collect();
    cookies.sort();
    assert_eq!(cookies, vec!["ca", "cb"]);

    // A different tag, or an exclusive lock, is refused while shared holders exist.
    let rados_c = second_client(&conf);
    let c = Image::open(
        &rados_c.ioctx(common::POOL).unwrap(),
        &t.name,
        &OpenOptions::new(),
    )
    .unwrap();
    assert_eq!(
        c.lock_shared("cc", "other").unwrap_err().kind(),
        ErrorKind::Busy
    );
    assert_eq!(c.lock_exclusive("cc").unwrap_err().kind(), ErrorKind::Busy);

    a.unlock("ca").unwrap();
    b.unlock("cb").unwrap();
    assert!(a.list_lockers().unwrap().lockers.is_empty());
}
