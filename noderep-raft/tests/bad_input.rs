//! Bad input gets a clear error, never a panic or a hang.

mod support;

use noderep_raft::{Client, Host, HostError, ReadMode};
use std::collections::BTreeMap;
use std::time::Duration;
use support::{config, free_addr, machine, scratch_dir, Cluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_not_in_the_member_list_is_refused() {
    let (a, b) = (free_addr(), free_addr());
    let members = BTreeMap::from([(1, a), (2, b)]);
    let dir = scratch_dir("unknown");
    let err = Host::start(
        config("c", 7, free_addr(), dir.clone()).members(members),
        machine(),
    )
    .await
    .err()
    .expect("host 7 is not a member");
    assert!(matches!(err, HostError::UnknownHost { id: 7, .. }), "{err}");
    assert!(err.to_string().contains("add it with add_host"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_loopback_address_is_refused() {
    let dir = scratch_dir("addr");
    let cfg = config("c", 1, "10.1.2.3:4000".parse().unwrap(), dir.clone());
    let err = Host::start(cfg, machine())
        .await
        .err()
        .expect("not loopback");
    assert!(matches!(err, HostError::Config(_)), "{err}");
    assert!(err.to_string().contains("loopback"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_addresses_need_the_opt_in_and_public_ones_stay_refused() {
    let dir = scratch_dir("private");
    let private: std::net::SocketAddr = "10.213.0.1:7000".parse().unwrap();
    // Without the opt-in, the message says how to allow it.
    let err = Host::start(config("c", 1, private, dir.clone()), machine())
        .await
        .err()
        .expect("private address without the opt-in");
    assert!(err.to_string().contains("private_network(true)"), "{err}");
    // With it, a public address (here as a member) is still refused.
    let members = [(1, private), (2, "8.8.8.8:7000".parse().unwrap())].into();
    let err = Host::start(
        config("c", 1, private, dir.clone())
            .members(members)
            .private_network(true),
        machine(),
    )
    .await
    .err()
    .expect("public member address");
    assert!(matches!(err, HostError::Config(_)), "{err}");
    assert!(
        err.to_string().contains("host 2 has address 8.8.8.8:7000"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_clusters_data_is_refused() {
    let dir = scratch_dir("foreign");
    let a = free_addr();
    let h = Host::start(
        config("alpha", 1, a, dir.clone()).members(BTreeMap::from([(1, a)])),
        machine(),
    )
    .await
    .unwrap();
    h.shutdown().await;
    let b = free_addr();
    let err = Host::start(
        config("beta", 1, b, dir.clone()).members(BTreeMap::from([(1, b)])),
        machine(),
    )
    .await
    .err()
    .expect("the directory belongs to cluster alpha");
    match &err {
        HostError::ForeignData { found_cluster, .. } => assert_eq!(found_cluster, "alpha"),
        other => panic!("unexpected error {other}"),
    }
    // The same cluster but another host id is refused too.
    let err = Host::start(
        config("alpha", 2, b, dir.clone()).members(BTreeMap::from([(2, b)])),
        machine(),
    )
    .await
    .err()
    .expect("the directory belongs to host 1");
    assert!(
        matches!(err, HostError::ForeignData { found_host: 1, .. }),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_log_directory_is_a_clear_error() {
    // A directory whose parent is a regular file cannot be created (this
    // holds even for root, unlike permission bits).
    let file = scratch_dir("notadir");
    std::fs::write(&file, b"x").unwrap();
    let a = free_addr();
    let err = Host::start(
        config("c", 1, a, file.join("log")).members(BTreeMap::from([(1, a)])),
        machine(),
    )
    .await
    .err()
    .expect("the log directory cannot be created");
    assert!(matches!(err, HostError::Unwritable { .. }), "{err}");
    assert!(err.to_string().contains("writable directory"), "{err}");
    let _ = std::fs::remove_file(file);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_a_clear_error() {
    let Some(mnt) = mount_tmpfs("full", "16k") else {
        return;
    };
    // Fill it.
    let _ = std::fs::write(mnt.join("filler"), vec![0u8; 64 << 10]);
    let a = free_addr();
    let err = Host::start(
        config("c", 1, a, mnt.join("log")).members(BTreeMap::from([(1, a)])),
        machine(),
    )
    .await
    .err()
    .expect("a full disk is reported");
    unmount(&mnt);
    assert!(matches!(err, HostError::Unwritable { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_answered_with_errors() {
    let c = Cluster::start(3).await;
    let leader = c.wait_leader(Duration::from_secs(5)).await.unwrap();
    let h = c.host(leader).unwrap();
    // Removing a host that is not a member.
    let err = h.remove_host(42).await.expect_err("42 is not a member");
    assert!(
        matches!(err, HostError::UnknownHost { id: 42, .. }),
        "{err}"
    );
    // An undecodable write never reaches the log.
    let applied = h.applied();
    let err = h
        .write_json("{\"Nope\":1}".into())
        .await
        .expect_err("garbage");
    assert!(matches!(err, HostError::Codec(_)), "{err}");
    assert_eq!(h.applied(), applied);
    // A client of another cluster, or naming the wrong host, is refused.
    let wrong = Client::new("other", c.addrs.clone(), Duration::from_secs(1));
    let err = wrong.status(1).await.expect_err("wrong cluster");
    assert!(err.to_string().contains("cluster"), "{err}");
    let swapped = BTreeMap::from([(1, c.addrs[&2])]);
    let err = Client::new(&c.name, swapped, Duration::from_secs(1))
        .status(1)
        .await
        .expect_err("host 2 is not host 1");
    assert!(err.to_string().contains("not host 1"), "{err}");
    let client = Client::new(&c.name, c.addrs.clone(), Duration::from_secs(1));
    let err = client.status(9).await.expect_err("no host 9");
    assert!(matches!(err, HostError::UnknownHost { id: 9, .. }), "{err}");
    let err = client
        .query_json(1, "\"not a key\"", ReadMode::Linearizable)
        .await
        .expect_err("undecodable query");
    assert!(err.to_string().contains("invalid type"), "{err}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_that_fills_up_loses_no_acknowledged_write() {
    let Some(mnt) = mount_tmpfs("fills", "192k") else {
        return;
    };
    let a = free_addr();
    let cfg = config("c", 1, a, mnt.join("log")).members(BTreeMap::from([(1, a)]));
    let h = Host::start(cfg.clone(), machine()).await.unwrap();
    let mut acked = 0u64;
    let mut failure = None;
    for i in 1..20_000u64 {
        // Distinct keys, so that the snapshots grow and fill the disk.
        match h
            .write(noderep_raft::KvWrite::Put { key: i, value: i })
            .await
        {
            Ok(_) => acked = i,
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let failure = failure.expect("the disk filled up");
    eprintln!("after {acked} writes: {failure}");
    assert!(
        matches!(failure, HostError::Stopped(_)) && failure.to_string().contains("space"),
        "a full disk stops the host with a clear error: {failure}"
    );
    h.shutdown().await;
    // Give the file system room again and restart on the same directory.
    let grown = std::process::Command::new("mount")
        .args(["-o", "remount,size=16m"])
        .arg(&mnt)
        .status()
        .is_ok_and(|s| s.success());
    assert!(grown, "remount the tmpfs larger");
    let h = Host::start(cfg, machine()).await.unwrap();
    let mut found = None;
    for _ in 0..100 {
        if let Ok(v) = h.read(acked).await {
            found = v;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    h.shutdown().await;
    unmount(&mnt);
    assert!(acked > 0, "some writes succeeded before the disk filled");
    assert!(
        found == Some(acked),
        "the last acknowledged write ({acked}) survived: found {found:?}"
    );
}

/// Unmounts a test tmpfs (retrying while the host's threads let go of it).
fn unmount(mnt: &std::path::Path) {
    for _ in 0..50 {
        let ok = std::process::Command::new("umount")
            .arg(mnt)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = std::fs::remove_dir_all(mnt);
}

/// A tiny tmpfs of `size`, where the machine lets us mount one (root, as in
/// CI); otherwise says why and returns `None` (the test then skips).
fn mount_tmpfs(tag: &str, size: &str) -> Option<std::path::PathBuf> {
    let mnt = scratch_dir(tag);
    std::fs::create_dir_all(&mnt).ok()?;
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(&mnt)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("skipped: cannot mount a small tmpfs here (needs root)");
        let _ = std::fs::remove_dir_all(&mnt);
        return None;
    }
    Some(mnt)
}
