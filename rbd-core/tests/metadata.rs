//! Image metadata against the real dev cluster, cross-checked with `rbd image-meta`.

mod common;
mod mgmt;

use std::collections::BTreeMap;

use mgmt::{TestImage, plain_opts};
use rbd_core::ErrorKind;

#[test]
fn get_set_remove_list() {
    let Some((rados, conf)) = common::connect() else {
        return;
    };
    let t = TestImage::create(&rados, "mgmt-meta", 1 << 20, &plain_opts());
    let img = t.open();
    assert_eq!(img.metadata_get("owner").unwrap(), None);
    assert!(img.metadata_list().unwrap().is_empty());

    img.metadata_set("owner", "docker").unwrap();
    img.metadata_set("empty", "").unwrap();
    let long = "v".repeat(10_000);
    img.metadata_set("long", &long).unwrap();
    assert_eq!(
        img.metadata_get("owner").unwrap().as_deref(),
        Some("docker")
    );
    assert_eq!(img.metadata_get("empty").unwrap().as_deref(), Some(""));
    assert_eq!(
        img.metadata_get("long").unwrap().as_deref(),
        Some(long.as_str())
    );

    img.metadata_set("owner", "podman").unwrap();
    assert_eq!(
        img.metadata_get("owner").unwrap().as_deref(),
        Some("podman")
    );

    let ours: BTreeMap<String, String> = img.metadata_list().unwrap().into_iter().collect();
    let expect: BTreeMap<String, String> = [
        ("empty".to_owned(), String::new()),
        ("long".to_owned(), long.clone()),
        ("owner".to_owned(), "podman".to_owned()),
    ]
    .into_iter()
    .collect();
    assert_eq!(ours, expect);

    // Ceph's CLI sees the same map, and what it sets we read.
    let cli = common::cli_json(&conf, "rbd", &["image-meta", "list", &t.spec()]);
    let cli: BTreeMap<String, String> = cli
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(cli, expect);
    common::cli(
        &conf,
        "rbd",
        &["image-meta", "set", &t.spec(), "from-cli", "yes"],
    );
    assert_eq!(
        img.metadata_get("from-cli").unwrap().as_deref(),
        Some("yes")
    );

    img.metadata_remove("owner").unwrap();
    assert_eq!(img.metadata_get("owner").unwrap(), None);
    let e = img.metadata_remove("owner").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert!(e.to_string().contains("owner"), "{e}");
    let (ok, _, _) = common::cli_status(&conf, "rbd", &["image-meta", "get", &t.spec(), "owner"]);
    assert!(!ok);

    // Paging.
    let page = img.metadata_list_page("", 2).unwrap();
    assert_eq!(
        page.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
        vec!["empty", "from-cli"]
    );
    let page = img.metadata_list_page("from-cli", 0).unwrap();
    assert_eq!(page, vec![("long".to_owned(), long)]);

    for bad in ["", "a\0b"] {
        let e = img.metadata_set(bad, "x").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
    }
    assert_eq!(
        img.metadata_set("k", "nul\0inside").unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
}

#[test]
fn list_spans_many_pages() {
    let Some((rados, conf)) = common::connect() else {
        return;
    };
    let t = TestImage::create(&rados, "mgmt-metapages", 1 << 20, &plain_opts());
    let img = t.open();
    let n = 300; // more than one internal page (256)
    for i in 0..n {
        img.metadata_set(&format!("key{i:04}"), &format!("value {i}"))
            .unwrap();
    }
    let all = img.metadata_list().unwrap();
    assert_eq!(all.len(), n);
    for (i, (k, v)) in all.iter().enumerate() {
        assert_eq!(k, &format!("key{i:04}"));
        assert_eq!(v, &format!("value {i}"));
    }
    let cli = common::cli_json(&conf, "rbd", &["image-meta", "list", &t.spec()]);
    assert_eq!(cli.as_object().unwrap().len(), n);
}
