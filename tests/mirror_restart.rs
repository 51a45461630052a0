//! The mirror across restarts: what assembly refuses (foreign, repeated,
//! replaced, truncated, missing devices, split brain), what it repairs
//! (stale members, dirty regions) and what it reports instead of returning
//! silently (blocks zeroed or rolled back on every copy); and a superblock
//! update torn at every point.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;

use noderep::mirror::{
    BlockDevice, FaultControl, FaultyDevice, FileDevice, Health, Mirror, MirrorBuilder,
    MirrorError, WarningSink,
};

const BS: usize = 4096;
const BLOCKS: u64 = 64;

#[path = "support/scratch.rs"]
mod scratch;
use scratch::Scratch;

/// This file's own uses of its scratch directory.
impl Scratch {
    /// Opens `name`, sized for `blocks` data blocks (None: its current size).
    fn open(&self, name: &str, blocks: Option<u64>) -> Box<dyn BlockDevice> {
        let mut cfg = FileDevice::builder();
        if let Some(b) = blocks {
            cfg = cfg.blocks(quiet().device_blocks(b, BS).expect("size"));
        }
        Box::new(cfg.open(self.path(name)).expect("open"))
    }

    /// Reopens existing devices at their current size.
    fn reopen(&self, names: &[&str]) -> Vec<Box<dyn BlockDevice>> {
        names.iter().map(|n| self.open(n, None)).collect()
    }

    /// A new mirror on `names` with BLOCKS data blocks, blocks 0..16 written.
    fn mirror(&self, names: &[&str]) -> (Mirror, HashMap<u64, Vec<u8>>) {
        let devs = names.iter().map(|n| self.open(n, Some(BLOCKS))).collect();
        let mut m = quiet().create(devs).expect("create");
        let mut model = HashMap::new();
        for lba in 0..16 {
            m.write(lba, &data(lba, 1)).expect("write");
            model.insert(lba, data(lba, 1));
        }
        (m, model)
    }
}

fn quiet() -> MirrorBuilder {
    Mirror::builder().warnings(WarningSink::Silent)
}

fn data(lba: u64, version: u64) -> Vec<u8> {
    let len = 100 + ((lba * 37 + version * 11) % 2000) as usize;
    (0..len)
        .map(|i| (lba as usize * 3 + version as usize * 17 + i) as u8)
        .collect()
}

fn read_block(path: &Path, phys: u64) -> Vec<u8> {
    let f = OpenOptions::new().read(true).open(path).expect("open");
    let mut b = vec![0u8; BS];
    f.read_exact_at(&mut b, phys * BS as u64).expect("read");
    b
}

fn write_block(path: &Path, phys: u64, bytes: &[u8]) {
    let f = OpenOptions::new().write(true).open(path).expect("open");
    f.write_all_at(bytes, phys * BS as u64).expect("write");
}

/// Wraps every device in a [`FaultyDevice`].
fn faulty(devs: Vec<Box<dyn BlockDevice>>) -> (Vec<Box<dyn BlockDevice>>, Vec<FaultControl>) {
    devs.into_iter()
        .map(|d| {
            let (f, c) = FaultyDevice::new(d);
            (Box::new(f) as Box<dyn BlockDevice>, c)
        })
        .unzip()
}

/// Every block in `model` reads back exactly; every other block is empty.
fn check(m: &mut Mirror, model: &HashMap<u64, Vec<u8>>) {
    let mut out = Vec::new();
    for lba in 0..m.capacity() {
        for _ in 0..2 {
            m.read(lba, &mut out)
                .unwrap_or_else(|e| panic!("block {lba}: {e}"));
            let want = model.get(&lba).map(Vec::as_slice).unwrap_or(&[]);
            assert_eq!(out, want, "block {lba}");
        }
    }
}

#[test]
fn a_block_zeroed_on_both_copies_is_an_error_not_an_empty_read() {
    let s = Scratch::new("mirror-restart", "zero");
    // After a clean shutdown.
    let (m, model) = s.mirror(&["a", "b"]);
    let ds = m.data_start();
    let devs = m.close().expect("close");
    drop(devs);
    for n in ["a", "b"] {
        write_block(&s.path(n), ds + 5, &[0u8; BS]);
    }
    let (mut m, report) = quiet().assemble(s.reopen(&["a", "b"])).expect("assemble");
    assert!(report.was_clean);
    assert_eq!(report.regions_scanned, 0, "a clean mirror reads no data");
    let mut out = vec![7u8];
    let err = m.read(5, &mut out).expect_err("zeroed block");
    let msg = err.to_string();
    assert!(
        matches!(err, MirrorError::Unrecoverable { lba: 5, .. }),
        "{msg}"
    );
    assert!(msg.contains("zeroed"), "{msg}");
    assert_eq!(out, vec![7u8], "nothing returned");
    let mut rest = model.clone();
    rest.remove(&5);
    for lba in (0..16).filter(|&l| l != 5) {
        m.read(lba, &mut out).expect("read");
        assert_eq!(out, rest[&lba]);
    }
    // The scrub reports it too (both copies), and a rewrite cures it.
    let r = m.scrub(Default::default()).expect("scrub");
    assert_eq!(r.unrecoverable(), 2);
    m.write(5, &data(5, 2)).expect("rewrite");
    m.read(5, &mut out).expect("read");
    assert_eq!(out, data(5, 2));

    // After a crash: a checkpoint recorded block 6; assembly compares the
    // dirty region and finds both copies older than the record.
    m.write(6, &data(6, 2)).expect("write");
    m.checkpoint();
    m.write(7, &data(7, 2)).expect("write");
    drop(m.into_devices()); // crash: no clean shutdown
    for n in ["a", "b"] {
        write_block(&s.path(n), ds + 6, &[0u8; BS]);
    }
    let (mut m, report) = quiet().assemble(s.reopen(&["a", "b"])).expect("assemble");
    assert!(!report.was_clean);
    assert!(report.regions_scanned >= 1);
    assert_eq!(report.lost, vec![6]);
    assert_eq!(report.rolled_back, vec![6]);
    let err = m.read(6, &mut out).expect_err("zeroed block");
    assert!(err.to_string().contains("no good copy survived"), "{err}");
    m.read(7, &mut out).expect("read");
    assert_eq!(
        out,
        data(7, 2),
        "the write after the checkpoint survived the crash"
    );
}

#[test]
fn an_old_image_replayed_on_both_copies_is_an_error_after_reassembly() {
    let s = Scratch::new("mirror-restart", "replay");
    let (mut m, mut model) = s.mirror(&["a", "b"]);
    let ds = m.data_start();
    m.checkpoint();
    let old: Vec<Vec<u8>> = ["a", "b"]
        .iter()
        .map(|n| read_block(&s.path(n), ds + 3))
        .collect();
    m.write(3, &data(3, 2)).expect("overwrite");
    model.insert(3, data(3, 2));
    let devs = m.close().expect("close");
    drop(devs);
    for (n, img) in ["a", "b"].iter().zip(&old) {
        write_block(&s.path(n), ds + 3, img);
    }
    let (mut m, _) = quiet().assemble(s.reopen(&["a", "b"])).expect("assemble");
    let mut out = Vec::new();
    let err = m.read(3, &mut out).expect_err("rolled back");
    let msg = err.to_string();
    assert!(msg.contains("older version"), "{msg}");
    // Everything else is intact; full-scan assembly reports the block too.
    model.remove(&3);
    for (lba, want) in &model {
        m.read(*lba, &mut out).expect("read");
        assert_eq!(&out, want);
    }
    let devs = m.close().expect("close");
    let (_, report) = quiet().full_scan(true).assemble(devs).expect("assemble");
    assert_eq!(report.rolled_back, vec![3]);
    assert_eq!(report.regions_scanned, report.regions_total);
}

#[test]
fn a_truncated_device_reopened_without_a_size_is_refused_and_can_be_replaced() {
    let s = Scratch::new("mirror-restart", "trunc");
    let (m, model) = s.mirror(&["a", "b"]);
    let need = quiet().device_blocks(BLOCKS, BS).expect("size");
    drop(m.close().expect("close"));
    let f = OpenOptions::new()
        .write(true)
        .open(s.path("b"))
        .expect("open");
    f.set_len((need / 2) * BS as u64).expect("truncate");
    drop(f);
    let err = quiet()
        .assemble(s.reopen(&["a", "b"]))
        .expect_err("too small");
    let msg = err.to_string();
    assert!(matches!(err, MirrorError::TooSmallForArray { .. }), "{msg}");
    assert!(
        msg.contains("truncated") && msg.contains("allow_missing"),
        "{msg}"
    );
    // Without it: refused unless degraded assembly is allowed.
    let err = quiet().assemble(s.reopen(&["a"])).expect_err("missing");
    assert!(matches!(err, MirrorError::TooFewDevices { .. }), "{err}");
    let (mut m, report) = quiet()
        .allow_missing(true)
        .assemble(s.reopen(&["a"]))
        .expect("degraded");
    assert_eq!(report.missing, vec![1]);
    assert_eq!(
        m.capacity(),
        BLOCKS,
        "the capacity comes from the superblock"
    );
    check(&mut m, &model);
    let r = m.replace(1, s.open("c", Some(BLOCKS))).expect("replace");
    assert_eq!(r.device, 1);
    assert_eq!(m.health(), Health::Optimal { devices: 2 });
    drop(m.close().expect("close"));
    // The replacement is a member; the old device is not.
    let (mut m, report) = quiet().assemble(s.reopen(&["c", "a"])).expect("assemble");
    assert!(report.stale.is_empty());
    check(&mut m, &model);
    drop(m.close().expect("close"));
    let err = quiet()
        .assemble(s.reopen(&["a", "b"]))
        .expect_err("old member");
    assert!(
        matches!(
            err,
            MirrorError::TooSmallForArray { .. } | MirrorError::Replaced { .. }
        ),
        "{err}"
    );
}

#[test]
fn the_same_device_twice_is_refused_by_inode_and_by_uuid() {
    let s = Scratch::new("mirror-restart", "twice");
    let devs = vec![s.open("a", Some(BLOCKS)), s.open("a", Some(BLOCKS))];
    let err = quiet().create(devs).expect_err("same file");
    let msg = err.to_string();
    assert!(matches!(err, MirrorError::SameDeviceTwice { .. }), "{msg}");
    assert!(msg.contains("st_ino"), "{msg}");
    let (m, model) = s.mirror(&["a", "b"]);
    drop(m.close().expect("close"));
    let err = quiet()
        .assemble(s.reopen(&["a", "a"]))
        .expect_err("same file");
    assert!(err.to_string().contains("st_ino"), "{err}");
    // A block-for-block copy has another inode but the same device UUID.
    std::fs::copy(s.path("a"), s.path("copy")).expect("copy");
    let err = quiet()
        .assemble(s.reopen(&["a", "copy"]))
        .expect_err("copy");
    let msg = err.to_string();
    assert!(msg.contains("device UUID"), "{msg}");
    let (mut m, _) = quiet().assemble(s.reopen(&["b", "a"])).expect("assemble");
    assert_eq!(
        m.device_name(0).expect("name"),
        s.path("a").display().to_string()
    );
    check(&mut m, &model);
}

#[test]
fn devices_of_different_sizes_need_an_explicit_capacity() {
    let s = Scratch::new("mirror-restart", "sizes");
    let devs = vec![s.open("a", Some(BLOCKS)), s.open("b", Some(2 * BLOCKS))];
    let err = quiet().create(devs).expect_err("sizes differ");
    let msg = err.to_string();
    assert!(matches!(err, MirrorError::SizeMismatch { .. }), "{msg}");
    assert!(msg.contains("capacity(blocks)"), "{msg}");
    let devs = s.reopen(&["a", "b"]);
    let mut m = quiet().capacity(BLOCKS).create(devs).expect("create");
    assert_eq!(m.capacity(), BLOCKS);
    let err = m.write(BLOCKS, b"x").expect_err("beyond");
    assert!(matches!(err, MirrorError::OutOfRange { .. }));
    let devs = s.reopen(&["a", "b"]);
    let err = quiet()
        .capacity(BLOCKS * 4)
        .create(devs)
        .expect_err("too big");
    assert!(matches!(err, MirrorError::AlreadyMember { .. }), "{err}");
    drop(m);
    let devs = vec![s.open("c", Some(BLOCKS)), s.open("d", Some(BLOCKS))];
    let err = quiet()
        .capacity(BLOCKS * 4)
        .create(devs)
        .expect_err("too big");
    assert!(matches!(err, MirrorError::TooSmall { .. }), "{err}");
}

#[test]
fn foreign_missing_replaced_and_split_brain_devices_are_refused() {
    let s = Scratch::new("mirror-restart", "foreign");
    let (m1, _) = s.mirror(&["a", "b"]);
    let (m2, _) = s.mirror(&["c", "d"]);
    let array1 = m1.array_uuid();
    drop(m1.close().expect("close"));
    drop(m2.close().expect("close"));
    let err = quiet()
        .assemble(s.reopen(&["a", "c"]))
        .expect_err("foreign");
    let msg = err.to_string();
    assert!(matches!(err, MirrorError::ForeignDevice { .. }), "{msg}");
    assert!(msg.contains(&array1.to_string()), "{msg}");
    // A blank device is not a member.
    let err = quiet()
        .assemble(vec![s.open("a", None), s.open("blank", Some(BLOCKS))])
        .expect_err("blank");
    assert!(err.to_string().contains("blank device"), "{err}");
    // Split brain: each half assembled alone and written.
    let (mut ma, _) = quiet()
        .allow_missing(true)
        .assemble(s.reopen(&["a"]))
        .expect("a alone");
    ma.write(1, b"a's version").expect("write");
    drop(ma.close().expect("close"));
    let (mut mb, _) = quiet()
        .allow_missing(true)
        .assemble(s.reopen(&["b"]))
        .expect("b alone");
    mb.write(1, b"b's version").expect("write");
    drop(mb.close().expect("close"));
    let err = quiet()
        .assemble(s.reopen(&["a", "b"]))
        .expect_err("split brain");
    assert!(matches!(err, MirrorError::SplitBrain { .. }), "{err}");
    let err = quiet().assemble(s.reopen(&["a"])).expect_err("missing");
    assert!(matches!(err, MirrorError::TooFewDevices { .. }), "{err}");
}

#[test]
fn a_stale_member_is_named_and_resynced_never_trusted() {
    let s = Scratch::new("mirror-restart", "stale");
    let (mut m, mut model) = s.mirror(&["a", "b"]);
    m.fail_device(1, "maintenance").expect("fail");
    let events_failed = m.events();
    for lba in 20..30 {
        m.write(lba, &data(lba, 2)).expect("degraded write");
        model.insert(lba, data(lba, 2));
    }
    m.write(3, &data(3, 2)).expect("degraded write");
    model.insert(3, data(3, 2));
    drop(m.into_devices()); // crash while degraded
    let (mut m, report) = quiet().assemble(s.reopen(&["a", "b"])).expect("assemble");
    assert_eq!(report.stale.len(), 1);
    let st = &report.stale[0];
    assert_eq!(st.device, 1);
    assert!(st.recorded_failed && st.events < events_failed, "{st:?}");
    assert_eq!(
        report.repaired.iter().filter(|f| f.device == 1).count(),
        11,
        "exactly the 11 blocks it missed were copied"
    );
    assert_eq!(m.health(), Health::Optimal { devices: 2 });
    // Device 1 alone now holds everything.
    m.fail_device(0, "test").expect("fail");
    check(&mut m, &model);
    // And an assembly where the older generation is expected fails loudly.
    let events = m.events();
    drop(m.close().expect("close"));
    // (close adds one generation; ask for one more than that)
    let err = quiet()
        .min_events(events + 2)
        .assemble(s.reopen(&["a", "b"]))
        .expect_err("older");
    assert!(
        matches!(err, MirrorError::OlderThanExpected { .. }),
        "{err}"
    );
}

#[test]
fn a_clean_bitmap_means_assembly_reads_no_data_and_a_crash_only_dirty_regions() {
    let s = Scratch::new("mirror-restart", "bitmap");
    let builder = quiet().region_blocks(8).clean_interval(4);
    let size = builder.device_blocks(BLOCKS, BS).expect("size");
    let cfg = FileDevice::builder().blocks(size);
    let devs: Vec<Box<dyn BlockDevice>> = ["a", "b"]
        .iter()
        .map(|n| Box::new(cfg.open(s.path(n)).expect("open")) as Box<dyn BlockDevice>)
        .collect();
    let mut m = builder.clone().create(devs).expect("create");
    let mut model = HashMap::new();
    for lba in 0..BLOCKS {
        m.write(lba, &data(lba, 1)).expect("write");
        model.insert(lba, data(lba, 1));
    }
    // Idle regions are cleaned by the passes; the last ones written stay dirty.
    assert!(m.dirty_regions() <= 2, "{} dirty", m.dirty_regions());
    let dirty = m.dirty_regions() as u64;
    drop(m.into_devices());
    let (mut m, report) = builder
        .clone()
        .assemble(s.reopen(&["a", "b"]))
        .expect("assemble");
    assert_eq!(report.regions_total, 8);
    assert_eq!(report.regions_scanned, dirty);
    assert_eq!(report.blocks_scanned, dirty * 8);
    check(&mut m, &model);
    assert_eq!(m.dirty_regions(), 0, "assembly cleans what it compared");
    drop(m.close().expect("close"));
    let (m, report) = builder
        .clone()
        .write_intent_bitmap(false)
        .assemble(s.reopen(&["a", "b"]))
        .expect("assemble");
    assert_eq!(report.regions_scanned, 0);
    assert!(report.was_clean);
    // Without a bitmap every region stays dirty until close: a crash means
    // comparing everything.
    assert_eq!(m.dirty_regions(), 8);
    drop(m.into_devices());
    let (m, report) = builder.assemble(s.reopen(&["a", "b"])).expect("assemble");
    assert_eq!(report.regions_scanned, 8);
    assert_eq!(m.dirty_regions(), 0);
}

/// A superblock update torn after every byte of the first 16 (checksum,
/// magic, version, flags), every 8 bytes to 192 (the fields and member
/// table) and every 512 bytes after, plus the last byte and the whole
/// block, on each device in turn, during a clean shutdown and during
/// assembly: the mirror always assembles again, from the newest copy that
/// survived, with every acknowledged block. `NODEREP_TORN_SB_ALL=1` tears
/// after every byte of the block (4097 points; minutes in debug builds).
#[test]
fn a_superblock_update_torn_at_every_point_never_loses_the_array() {
    let s = Scratch::new("mirror-restart", "tornsb");
    let points: Vec<usize> = if std::env::var_os("NODEREP_TORN_SB_ALL").is_some() {
        (0..=BS).collect()
    } else {
        let mut p: Vec<usize> = (0..16).collect();
        p.extend((16..192).step_by(8));
        p.extend((192..BS).step_by(512));
        p.push(BS - 1);
        p.push(BS);
        p
    };
    let mut runs = 0;
    for during_close in [true, false] {
        for dev in 0..2usize {
            for &keep in &points {
                let names = ["a", "b"];
                for n in names {
                    let _ = std::fs::remove_file(s.path(n));
                }
                let (mut m, mut model) = s.mirror(&names);
                m.write(40, &data(40, 3)).expect("write");
                model.insert(40, data(40, 3));
                let at = |events: u64| events & 1; // the copy the next update writes
                let (devs, ctls): (Vec<Box<dyn BlockDevice>>, Vec<_>) = if during_close {
                    let (out, ctls) = faulty(m.into_devices());
                    // Reassemble through the faulty devices, then close: torn.
                    let (m2, _) = quiet().assemble(out).expect("assemble");
                    let target = at(m2.events() + 1);
                    ctls[dev].tear_write_of(target, keep);
                    let _ = m2.close();
                    (s.reopen(&names), ctls)
                } else {
                    let target = at(m.events() + 1);
                    let (out, ctls) = faulty(m.into_devices());
                    ctls[dev].tear_write_of(target, keep);
                    // The assembly's superblock update tears; the other
                    // device takes it, or assembly reports no device left.
                    let _ = quiet().assemble(out);
                    (s.reopen(&names), ctls)
                };
                assert!(
                    ctls[dev].fired() >= 1,
                    "close {during_close} dev {dev} keep {keep}: the tear did not fire"
                );
                let (mut m, report) = quiet()
                    .assemble(devs)
                    .unwrap_or_else(|e| panic!("close {during_close} dev {dev} keep {keep}: {e}"));
                assert!(report.lost.is_empty(), "keep {keep}: {:?}", report.lost);
                check(&mut m, &model);
                assert_eq!(m.health(), Health::Optimal { devices: 2 });
                runs += 1;
            }
        }
    }
    assert_eq!(runs, 2 * 2 * points.len());
}
