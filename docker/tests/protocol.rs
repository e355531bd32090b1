//! The plugin's protocol over its real unix socket, with a real HTTP client (hyper), against
//! the real dev cluster: JSON shapes and content type, Create/Get/List/Path/Remove hitting
//! Ceph (checked with the `rbd` CLI), option errors passed through from the driver, request
//! errors, socket permissions, stale and live sockets, clean shutdown, and bad
//! configuration at start-up.
//!
//! Needs `CEPH_CONF` (the dev cluster) and root; skipped outside CI when missing, a failure
//! under `CI=true` (see testkit).

mod common;

use std::os::unix::net::UnixListener;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

#[test]
fn activate_capabilities_content_type_and_socket_mode() {
    let Some((conf, dir)) = setup("proto-act") else {
        return;
    };
    let plugin = Plugin::start(&PluginSpec::new(&conf, dir.path()));

    // Docker's Activate carries no body at all.
    let r = http(
        &plugin.socket,
        "POST",
        "/Plugin.Activate",
        "",
        Duration::from_secs(5),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.content_type, "application/vnd.docker.plugins.v1+json");
    assert_eq!(r.json(), json!({"Implements": ["VolumeDriver"]}));

    let r = call(&plugin.socket, "VolumeDriver.Capabilities", json!({}));
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({"Capabilities": {"Scope": "global"}}));

    assert_eq!(
        mode(&plugin.socket),
        0o600,
        "the socket must be root-only (mode 0600)"
    );
}

#[test]
fn create_get_list_path_remove_against_the_cluster() {
    let Some((conf, dir)) = setup("proto-crud") else {
        return;
    };
    let ceph = Ceph::new(&conf);
    let plugin = Plugin::start(&PluginSpec::new(&conf, dir.path()));
    let name = testkit::unique("pv");
    let _guard = VolumeGuard {
        socket: plugin.socket.clone(),
        ceph: conf.clone(),
        pool: "rbd".into(),
        name: name.clone(),
    };

    let r = call(
        &plugin.socket,
        "VolumeDriver.Create",
        json!({"Name": name, "Opts": {"size": "64M"}}),
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        r.err(),
        "",
        "create failed: {}\n{}",
        r.err(),
        plugin.log_text()
    );
    assert!(
        ceph.image_exists("rbd", &name),
        "rbd ls does not show {name}"
    );
    let info = ceph.info(&format!("rbd/{name}"));
    assert_eq!(info["size"].as_u64(), Some(64 << 20), "{info}");

    // Get: the volume with its creation time and details.
    let r = call(&plugin.socket, "VolumeDriver.Get", json!({"Name": name}));
    assert_eq!(r.err(), "");
    let v = &r.json()["Volume"];
    assert_eq!(v["Name"], json!(name));
    let created = v["CreatedAt"].as_str().expect("CreatedAt");
    assert!(
        created.len() == 20 && created.ends_with('Z') && created.as_bytes()[10] == b'T',
        "CreatedAt is not RFC 3339: {created}"
    );
    assert_eq!(v["Status"]["pool"], json!("rbd"), "{v}");
    assert_eq!(v["Status"]["size"], json!(64 << 20), "{v}");
    assert!(
        v.get("Mountpoint").is_none(),
        "not mounted, yet a Mountpoint: {v}"
    );

    // List includes it.
    let r = call(&plugin.socket, "VolumeDriver.List", json!({}));
    assert_eq!(r.err(), "");
    let names: Vec<String> = r.json()["Volumes"]
        .as_array()
        .expect("Volumes")
        .iter()
        .filter_map(|v| v["Name"].as_str().map(String::from))
        .collect();
    assert!(names.contains(&name), "{name} not in {names:?}");

    // Path: not mounted here.
    let r = call(&plugin.socket, "VolumeDriver.Path", json!({"Name": name}));
    assert_eq!(r.json(), json!({"Mountpoint": "", "Err": ""}));

    // Creating it again with other options is refused, and the image is untouched.
    let r = call(
        &plugin.socket,
        "VolumeDriver.Create",
        json!({"Name": name, "Opts": {"size": "128M"}}),
    );
    assert!(r.err().contains(&name), "{}", r.err());
    assert_eq!(
        ceph.info(&format!("rbd/{name}"))["size"].as_u64(),
        Some(64 << 20)
    );

    // Remove: the image is gone and Get says so.
    let r = call(&plugin.socket, "VolumeDriver.Remove", json!({"Name": name}));
    assert_eq!(r.err(), "", "remove: {}", r.err());
    assert!(
        !ceph.image_exists("rbd", &name),
        "rbd ls still shows {name}"
    );
    let r = call(&plugin.socket, "VolumeDriver.Get", json!({"Name": name}));
    assert!(r.err().contains("does not exist"), "{}", r.err());
    assert!(r.json().get("Volume").is_none());
}

#[test]
fn option_errors_come_back_in_err_and_nothing_is_created() {
    let Some((conf, dir)) = setup("proto-opts") else {
        return;
    };
    let ceph = Ceph::new(&conf);
    let plugin = Plugin::start(&PluginSpec::new(&conf, dir.path()));
    let cases: &[(serde_json::Value, &str)] = &[
        (json!({"colour": "blue"}), "allowed:"),
        (json!({"size": "2Q"}), "2Q"),
        (json!({"size": "-1"}), "-1"),
        (json!({"size": "1e99"}), "1e99"),
        (json!({"fstype": "../../x"}), "../../x"),
        (json!({"mount-options": "nobarrier"}), "nobarrier"),
        (json!({"access": "rwx"}), "rwx"),
    ];
    for (opts, want) in cases {
        let name = testkit::unique("pbad");
        let _guard = VolumeGuard {
            socket: plugin.socket.clone(),
            ceph: conf.clone(),
            pool: "rbd".into(),
            name: name.clone(),
        };
        let r = call(
            &plugin.socket,
            "VolumeDriver.Create",
            json!({"Name": name, "Opts": opts}),
        );
        assert_eq!(r.status, 200, "errors are answered with 200 and Err");
        let err = r.err();
        assert!(err.contains(want), "opts {opts}: {err:?} lacks {want:?}");
        assert!(
            !ceph.image_exists("rbd", &name),
            "opts {opts}: an image was created"
        );
        let g = call(&plugin.socket, "VolumeDriver.Get", json!({"Name": name}));
        assert!(!g.err().is_empty(), "opts {opts}: Get finds the volume");
    }
    // The unknown-option error names every allowed key.
    let r = call(
        &plugin.socket,
        "VolumeDriver.Create",
        json!({"Name": testkit::unique("pbad"), "Opts": {"colour": "blue"}}),
    );
    for k in [
        "size",
        "pool",
        "namespace",
        "data-pool",
        "fstype",
        "features",
        "object-size",
        "mkfs-options",
        "mount-options",
        "access",
        "from-snapshot",
    ] {
        assert!(r.err().contains(k), "{} lacks {k}", r.err());
    }
    // Bad names: the error names the bad value (quoted) and nothing is created.
    for bad in ["../escape", "a/b", "", "-x", "x y"] {
        let r = call(
            &plugin.socket,
            "VolumeDriver.Create",
            json!({"Name": bad, "Opts": {}}),
        );
        let err = r.err();
        assert!(
            err.contains(&format!("volume name {bad:?}")),
            "{bad:?}: {err}"
        );
        if !bad.is_empty() {
            assert!(
                !ceph.image_exists("rbd", bad),
                "{bad:?}: an image was created"
            );
        }
    }
}

#[test]
fn malformed_requests_unknown_paths_and_methods() {
    let Some((conf, dir)) = setup("proto-bad") else {
        return;
    };
    let plugin = Plugin::start(&PluginSpec::new(&conf, dir.path()));
    let t = Duration::from_secs(10);
    let r = http(
        &plugin.socket,
        "POST",
        "/VolumeDriver.Create",
        "{not json",
        t,
    );
    assert_eq!(r.status, 400);
    assert!(
        r.err().contains("malformed VolumeDriver.Create request"),
        "{}",
        r.err()
    );
    let r = http(
        &plugin.socket,
        "POST",
        "/VolumeDriver.Mount",
        r#"{"ID":"x"}"#,
        t,
    );
    assert_eq!(r.status, 400, "a Mount without Name is malformed");
    let r = http(&plugin.socket, "POST", "/VolumeDriver.Frobnicate", "{}", t);
    assert_eq!(r.status, 404);
    assert!(r.err().contains("VolumeDriver.Frobnicate"), "{}", r.err());
    let r = http(&plugin.socket, "GET", "/VolumeDriver.List", "", t);
    assert_eq!(r.status, 405);
    assert!(!r.err().is_empty());
    // The plugin still serves after all that.
    let r = call(&plugin.socket, "VolumeDriver.List", json!({}));
    assert_eq!(r.err(), "");
}

#[test]
fn unmount_after_failed_mount_and_unknown_ids_are_harmless() {
    let Some((conf, dir)) = setup("proto-umount") else {
        return;
    };
    let plugin = Plugin::start(&PluginSpec::new(&conf, dir.path()));
    let name = testkit::unique("pum");
    let _guard = VolumeGuard {
        socket: plugin.socket.clone(),
        ceph: conf.clone(),
        pool: "rbd".into(),
        name: name.clone(),
    };
    // A Mount of a volume that does not exist fails; Docker then sends Unmount.
    let id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let r = call(
        &plugin.socket,
        "VolumeDriver.Mount",
        json!({"Name": name, "ID": id}),
    );
    assert!(r.err().contains("does not exist"), "{}", r.err());
    assert_eq!(r.json()["Mountpoint"], json!(""));
    let r = call(
        &plugin.socket,
        "VolumeDriver.Unmount",
        json!({"Name": name, "ID": id}),
    );
    assert_eq!(r.err(), "", "Unmount after a failed Mount must be harmless");

    // An existing, unmounted volume: Unmount of an id that never mounted it is harmless.
    let r = call(
        &plugin.socket,
        "VolumeDriver.Create",
        json!({"Name": name, "Opts": {"size": "32M"}}),
    );
    assert_eq!(r.err(), "");
    let r = call(
        &plugin.socket,
        "VolumeDriver.Unmount",
        json!({"Name": name, "ID": id}),
    );
    assert_eq!(r.err(), "");
    let r = call(&plugin.socket, "VolumeDriver.Path", json!({"Name": name}));
    assert_eq!(r.json()["Mountpoint"], json!(""));
}

#[test]
fn stale_socket_is_replaced_live_one_refused_and_sigterm_removes_it() {
    let Some((conf, dir)) = setup("proto-sock") else {
        return;
    };
    let spec = PluginSpec::new(&conf, dir.path());

    // A socket file nobody listens on (a crashed plugin's) is replaced.
    drop(UnixListener::bind(&spec.socket).expect("bind stale socket"));
    assert!(spec.socket.exists());
    let mut plugin = Plugin::start(&spec);
    assert_eq!(mode(&spec.socket), 0o600);

    // A second instance on the same socket refuses to start and leaves the first alone.
    let out = run(&mut spec.command(), Duration::from_secs(30));
    assert!(
        !out.status.success(),
        "a second plugin started on a live socket"
    );
    let err = text(&out.stderr);
    assert!(err.contains("already serves"), "{err}");
    let r = call(&plugin.socket, "VolumeDriver.Capabilities", json!({}));
    assert_eq!(r.status, 200, "the first plugin stopped answering");

    // SIGTERM: a clean exit that removes the socket.
    let t0 = Instant::now();
    let status = plugin.stop(Duration::from_secs(20)).expect("exit status");
    assert!(
        status.success(),
        "exit status {status}:\n{}",
        plugin.log_text()
    );
    assert!(
        t0.elapsed() < Duration::from_secs(15),
        "shutdown took {:?}",
        t0.elapsed()
    );
    assert!(!spec.socket.exists(), "the socket was left behind");

    // Something that is not a socket is never deleted.
    std::fs::write(&spec.socket, "keep me").unwrap();
    let out = run(&mut spec.command(), Duration::from_secs(30));
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("not a unix socket"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(std::fs::read_to_string(&spec.socket).unwrap(), "keep me");
}

#[test]
fn bad_configuration_is_a_clear_error_at_startup() {
    let Some((conf, dir)) = setup("proto-cfg") else {
        return;
    };
    // (config file text, extra environment, text the error must contain)
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        ("sokcet = \"/run/x.sock\"\n", &[], "unknown field `sokcet`"),
        ("[timeouts]\nread = 90\n", &[], "timeouts.read"),
        ("", &[("RBD_BACKEND", "floppy")], "floppy"),
        ("", &[("RBD_DEFAULT_SIZE", "2Q")], "2Q"),
        ("[defaults]\ncolour = \"blue\"\n", &[], "colour"),
        (
            "",
            &[("RBD_PLUGIN_CONFIG", "/nonexistent/plugin.toml")],
            "/nonexistent/plugin.toml",
        ),
    ];
    for (text_cfg, env, want) in cases {
        let mut spec = PluginSpec::new(&conf, dir.path());
        spec.config = text_cfg.to_string();
        let mut cmd: Command = spec.command();
        for (k, v) in *env {
            cmd.env(k, v);
        }
        let t0 = Instant::now();
        let out = run(&mut cmd, Duration::from_secs(30));
        assert!(
            !out.status.success(),
            "started with bad config {text_cfg:?} {env:?}"
        );
        let err = text(&out.stderr);
        assert!(err.contains(want), "{text_cfg:?} {env:?}: {err}");
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "took {:?}",
            t0.elapsed()
        );
        assert!(!spec.socket.exists(), "a socket was left behind");
    }
}

#[test]
fn serves_the_socket_passed_by_systemd_socket_activation() {
    let Some((conf, dir)) = setup("proto-sd") else {
        return;
    };
    let have = Command::new("systemd-socket-activate")
        .arg("--help")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        have,
        "systemd-socket-activate is missing (scripts/install-deps.sh installs systemd)"
    );
    let spec = PluginSpec::new(&conf, dir.path());
    let activated = dir.path().join("activated.sock");
    // What systemd does with docker-volume-rbd.socket: listen, and start the service with
    // the listening socket as fd 3 on the first connection. The environment is not
    // inherited; pass the plugin's with -E.
    let plugin_cmd = spec.command();
    let mut cmd = Command::new("systemd-socket-activate");
    cmd.arg("-l").arg(&activated);
    for (k, v) in plugin_cmd.get_envs() {
        if let Some(v) = v {
            cmd.arg("-E")
                .arg(format!("{}={}", k.to_string_lossy(), v.to_string_lossy()));
        }
    }
    cmd.arg(plugin_cmd.get_program());
    let log = std::fs::File::create(dir.path().join("plugin.log")).unwrap();
    let child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("systemd-socket-activate");
    let mut plugin = Plugin {
        child: Some(child),
        socket: activated.clone(),
        log: dir.path().join("plugin.log"),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !activated.exists() {
        assert!(
            Instant::now() < deadline,
            "no socket from systemd-socket-activate"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The first connection starts the plugin, which answers it on the inherited socket.
    let r = http(
        &activated,
        "POST",
        "/Plugin.Activate",
        "",
        Duration::from_secs(30),
    );
    assert_eq!(r.json(), json!({"Implements": ["VolumeDriver"]}));
    plugin.wait_ready(Duration::from_secs(60));
    assert!(
        !spec.socket.exists(),
        "the plugin bound its own socket although one was passed"
    );
    // On SIGTERM the plugin exits cleanly and leaves the socket to its owner (systemd).
    let status = plugin.stop(Duration::from_secs(20)).expect("status");
    assert!(status.success(), "{status}:\n{}", plugin.log_text());
    assert!(activated.exists(), "the plugin removed systemd's socket");
}

#[test]
fn listens_on_the_default_socket_path_when_none_is_configured() {
    let Some((conf, dir)) = setup("proto-defsock") else {
        return;
    };
    // The default, /run/docker/plugins/rbd.sock, is machine-wide: the plugin runs in a
    // private mount namespace with an empty tmpfs over /run, so neither this machine's
    // dockerds nor its other plugins see it (and it finds no /run/docker/plugins to reuse:
    // it must create the directory). The test reaches the socket through the plugin's
    // root, /proc/PID/root.
    let spec = PluginSpec::new(&conf, dir.path());
    let mut inner = spec.command();
    inner.env_remove("RBD_PLUGIN_SOCKET");
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg("mount -t tmpfs -o mode=0755 rbd-test-run /run && exec \"$0\"")
        .arg(inner.get_program())
        .env_clear()
        .envs(
            inner
                .get_envs()
                .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v.to_owned()))),
        );
    let log = dir.path().join("plugin.log");
    let f = std::fs::File::create(&log).expect("plugin log");
    let child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(f.try_clone().expect("dup log"))
        .stderr(f)
        .spawn()
        .expect("start unshare docker-volume-rbd");
    // unshare and sh exec: the child's pid is the plugin's.
    let socket = std::path::PathBuf::from(format!(
        "/proc/{}/root/run/docker/plugins/rbd.sock",
        child.id()
    ));
    let mut plugin = Plugin {
        child: Some(child),
        socket,
        log,
    };
    plugin.wait_ready(Duration::from_secs(60));
    let r = call(&plugin.socket, "Plugin.Activate", json!({}));
    assert_eq!(r.json(), json!({"Implements": ["VolumeDriver"]}));
    assert_eq!(
        mode(&plugin.socket),
        0o600,
        "the default socket is root-only"
    );
    let dir_mode = mode(plugin.socket.parent().expect("socket dir"));
    assert_eq!(dir_mode, 0o755, "/run/docker/plugins was created 0755");
    assert!(
        plugin.log_text().contains("/run/docker/plugins/rbd.sock"),
        "{}",
        plugin.log_text()
    );
    let status = plugin.stop(Duration::from_secs(30)).expect("exit status");
    assert!(status.success(), "{status}:\n{}", plugin.log_text());
}
