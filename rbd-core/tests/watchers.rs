//! Image watchers (who has an image open) against the real dev cluster.

mod common;
mod mgmt;

use mgmt::{TestImage, plain_opts, second_client};
use rbd_core::{Image, OpenOptions};

#[test]
fn watchers_follow_open_handles() {
    let Some((rados, conf)) = common::connect() else {
        return;
    };
    let t = TestImage::create(&rados, "mgmt-watch", 1 << 20, &plain_opts());
    let a = t.open();
    let ws = a.watchers().unwrap();
    assert_eq!(ws.len(), 1, "{ws:?}");
    let me = rados.getaddrs().unwrap();
    assert!(
        ws[0].addr.same_instance(me.primary().unwrap()),
        "{ws:?} vs {me}"
    );
    assert_eq!(ws[0].id, rados.instance_id());
    assert_ne!(ws[0].cookie, 0);

    // A second client's handle adds a watcher with its own address and id.
    let rados_b = second_client(&conf);
    let b = Image::open(
        &rados_b.ioctx(common::POOL).unwrap(),
        &t.name,
        &OpenOptions::new(),
    )
    .unwrap();
    let ws = a.watchers().unwrap();
    assert_eq!(ws.len(), 2, "{ws:?}");
    let wb = ws
        .iter()
        .find(|w| w.id == rados_b.instance_id())
        .expect("second client watches");
    assert!(
        wb.addr
            .same_instance(rados_b.getaddrs().unwrap().primary().unwrap())
    );
    assert_eq!(b.watchers().unwrap().len(), 2);

    // Closing removes it again.
    b.close().unwrap();
    let ws = a.watchers().unwrap();
    assert_eq!(ws.len(), 1, "{ws:?}");
    assert_eq!(ws[0].id, rados.instance_id());

    // Two handles from one client: same address, two cookies.
    let a2 = t.open();
    let ws = a2.watchers().unwrap();
    assert_eq!(ws.len(), 2, "{ws:?}");
    assert_ne!(ws[0].cookie, ws[1].cookie);
    assert!(ws.iter().all(|w| w.id == rados.instance_id()));
}
