//! Unit tests of the mirror's normal paths (fault tests live in
//! tests/mirror_faults.rs).

use super::*;
use crate::cost::WritePhase;
use std::path::PathBuf;
use std::vec::Vec;

/// A directory under the system temp dir, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        static N: crate::sync::AtomicUsize = crate::sync::AtomicUsize::new(0);
        // Relaxed: only uniqueness of the value matters.
        let n = N.fetch_add(1, crate::sync::Ordering::Relaxed);
        let p = std::env::temp_dir().join(std::format!(
            "noderep-mirror-unit-{tag}-{}-{n}",
            std::process::id()
        ));
        std::fs::create_dir_all(&p).expect("temp dir");
        Self(p)
    }

    /// A device with room for `blocks` data blocks (and the metadata).
    fn device(&self, name: &str, blocks: u64) -> FileDevice {
        let cfg =
            FileDevice::builder().blocks(builder().device_blocks(blocks, 4096).expect("size"));
        cfg.open(self.0.join(name)).expect("open device")
    }

    fn mirror(&self, n: usize, blocks: u64) -> Mirror {
        let devs: Vec<Box<dyn BlockDevice>> = (0..n)
            .map(|i| Box::new(self.device(&std::format!("d{i}"), blocks)) as Box<dyn BlockDevice>)
            .collect();
        let m = builder().account_phases(true).create(devs).expect("create");
        assert_eq!(m.capacity(), blocks);
        m
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn builder() -> MirrorBuilder {
    Mirror::builder().warnings(WarningSink::Silent)
}

fn payload(lba: u64, version: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (lba as usize * 31 + version as usize * 7 + i) as u8)
        .collect()
}

#[test]
fn writes_read_back_exactly_from_every_device() {
    let s = Scratch::new("rw");
    let mut m = s.mirror(3, 64);
    assert_eq!(m.payload_size(), 4096 - 32);
    assert_eq!(m.health(), Health::Optimal { devices: 3 });
    let mut out = Vec::new();
    assert_eq!(
        m.read(5, &mut out).expect("unwritten"),
        ReadOutcome::Clean { device: 0 }
    );
    assert!(out.is_empty(), "a never-written block reads as empty");
    let a = payload(5, 1, 100);
    let ack = m.write(5, &a).expect("write");
    assert_eq!(ack.copies, 3);
    assert_eq!(ack.redundancy, Redundancy::Full);
    // Reads rotate over the devices: each copy verifies and matches.
    for _ in 0..3 {
        m.read(5, &mut out).expect("read");
        assert_eq!(out, a);
    }
    let full = payload(6, 1, m.payload_size());
    m.write(6, &full).expect("full block");
    m.read(6, &mut out).expect("read");
    assert_eq!(out, full);
    assert!(m.take_events().is_empty());
}

#[test]
fn a_batch_is_one_device_call_and_coalesces_runs() {
    let s = Scratch::new("batch");
    let mut m = s.mirror(2, 256);
    let data: Vec<Vec<u8>> = (0..16).map(|i| payload(i, 2, 1000)).collect();
    // Blocks 10..18 consecutive, then 40..48 consecutive: two runs.
    let batch: Vec<(u64, &[u8])> = (0..16u64)
        .map(|i| {
            (
                if i < 8 { 10 + i } else { 32 + i },
                data[i as usize].as_slice(),
            )
        })
        .collect();
    // The first write of a fresh mirror also reserves sequence numbers and
    // sets its region's write-intent bit (two metadata writes); after that
    // a batch is one device call.
    m.write(200, b"warm-up").expect("write");
    let before = m.device_stats(1).expect("stats");
    let ack = m.write_batch(&batch).expect("batch");
    assert_eq!(ack.blocks, 16);
    let after = m.device_stats(1).expect("stats");
    assert_eq!(after.write_batches - before.write_batches, 1);
    assert_eq!(
        after.write_syscalls - before.write_syscalls,
        2,
        "one pwritev per run"
    );
    assert_eq!(after.blocks_written - before.blocks_written, 16);
    let mut out = Vec::new();
    for (lba, d) in &batch {
        m.read(*lba, &mut out).expect("read");
        assert_eq!(&out[..], *d);
    }
    // Sequence numbers are consecutive within a batch and grow across batches.
    let next = m.write(0, b"x").expect("write");
    assert_eq!(next.first_seq, ack.first_seq + 16);
    let t = m.phase_times();
    for p in WritePhase::ALL {
        assert!(t.get(p) > 0, "{p:?} was not accounted");
    }
}

#[test]
fn bad_requests_are_errors_not_panics() {
    let s = Scratch::new("bad");
    let mut m = s.mirror(2, 8);
    assert!(matches!(
        m.write(8, b"x"),
        Err(MirrorError::OutOfRange {
            lba: 8,
            capacity: 8
        })
    ));
    let big = std::vec![0u8; 4096];
    assert!(matches!(
        m.write(1, &big),
        Err(MirrorError::PayloadTooLarge { .. })
    ));
    assert!(matches!(m.write_batch(&[]), Err(MirrorError::EmptyBatch)));
    assert!(matches!(
        m.write_batch(&[(3, b"a".as_slice()), (3, b"b".as_slice())]),
        Err(MirrorError::DuplicateInBatch { lba: 3 })
    ));
    let mut out = Vec::new();
    assert!(matches!(
        m.read(99, &mut out),
        Err(MirrorError::OutOfRange { .. })
    ));
    assert!(matches!(
        m.readd(0),
        Err(MirrorError::AlreadyInSync { device: 0 })
    ));
    assert!(matches!(
        m.readd(7),
        Err(MirrorError::NoSuchDevice {
            device: 7,
            count: 2
        })
    ));
    let one: Vec<Box<dyn BlockDevice>> = std::vec![Box::new(s.device("solo", 8))];
    assert!(matches!(
        builder().create(one),
        Err(MirrorError::TooFewDevices { given: 1 })
    ));
    let bad = FileDevice::builder().block_size(1000);
    assert!(matches!(
        bad.open(s.0.join("odd")),
        Err(MirrorError::BadBlockSize { block_size: 1000 })
    ));
    let small = FileDevice::builder().block_size(512).blocks(8);
    let mixed: Vec<Box<dyn BlockDevice>> = std::vec![
        Box::new(s.device("big", 8)),
        Box::new(small.open(s.0.join("small")).expect("open")),
    ];
    let err = builder().create(mixed).expect_err("mismatch");
    assert!(err.to_string().contains("same block size"), "{err}");
    // Nothing above changed the mirror.
    assert_eq!(m.health(), Health::Optimal { devices: 2 });
    m.read(3, &mut out).expect("read");
    assert!(out.is_empty());
}

#[test]
fn reassembly_keeps_every_acknowledged_write_and_sequence_numbers_grow() {
    let s = Scratch::new("reasm");
    let mut m = s.mirror(2, 32);
    for lba in 0..32 {
        m.write(lba, &payload(lba, 1, 200)).expect("write");
    }
    let last = m.write(7, &payload(7, 2, 300)).expect("overwrite");
    let devs = m.into_devices();
    let (mut m, report) = builder().assemble(devs).expect("reassemble");
    assert!(report.repaired.is_empty() && report.lost.is_empty());
    assert_eq!(report.max_seq, last.first_seq);
    let mut out = Vec::new();
    for lba in 0..32 {
        m.read(lba, &mut out).expect("read");
        let v = if lba == 7 {
            payload(7, 2, 300)
        } else {
            payload(lba, 1, 200)
        };
        assert_eq!(out, v, "block {lba}");
    }
    assert!(m.write(1, b"y").expect("write").first_seq > last.first_seq);
    let r = m.scrub(ScrubMode::Repair).expect("scrub");
    assert!(r.findings.is_empty());
    assert_eq!(r.blocks_scanned, 64);
}

#[test]
fn durability_modes_write_the_same_bytes() {
    let s = Scratch::new("dur");
    for durability in [Durability::SyncPerBatch, Durability::Direct] {
        let cfg = FileDevice::builder().blocks(16).durability(durability);
        let mk = |n: &str| -> Result<Box<dyn BlockDevice>, MirrorError> {
            Ok(Box::new(
                cfg.open(s.0.join(std::format!("{durability:?}{n}")))?,
            ))
        };
        let devs = match (mk("a"), mk("b")) {
            (Ok(a), Ok(b)) => std::vec![a, b],
            (Err(MirrorError::DirectUnsupported { path }), _) => {
                std::eprintln!("skipping O_DIRECT: {path:?}'s file system refuses it");
                continue;
            }
            (Err(e), _) | (_, Err(e)) => panic!("{e}"),
        };
        let mut m = builder().create(devs).expect("create");
        let d = payload(3, 9, 777);
        m.write(0, b"sets the region's write-intent bit")
            .expect("write");
        let before = m.device_stats(0).expect("stats").syncs;
        m.write_batch(&[(3, d.as_slice()), (4, d.as_slice())])
            .expect("write");
        let mut out = Vec::new();
        m.read(4, &mut out).expect("read");
        assert_eq!(out, d);
        if durability == Durability::SyncPerBatch {
            let after = m.device_stats(0).expect("stats").syncs;
            assert_eq!(
                after - before,
                1,
                "one sync per batch once the region is dirty"
            );
        }
    }
}

#[cfg(feature = "io-uring")]
#[test]
fn io_uring_backend_writes_a_batch_with_one_enter_per_device() {
    let s = Scratch::new("uring");
    let mut devs: Vec<Box<dyn BlockDevice>> = Vec::new();
    for (i, durability) in [Durability::None, Durability::SyncPerBatch]
        .into_iter()
        .enumerate()
    {
        let cfg = FileDevice::builder()
            .blocks(builder().device_blocks(64, 4096).expect("size"))
            .durability(durability);
        match cfg.open_uring(s.0.join(std::format!("u{i}")), 64) {
            Ok(d) => devs.push(Box::new(d)),
            Err(e) => {
                std::eprintln!("skipping: {e}");
                return;
            }
        }
    }
    let mut m = builder().create(devs).expect("create");
    let data: Vec<Vec<u8>> = (0..20).map(|i| payload(i, 4, 900)).collect();
    // Three runs: 0..8, 20..28, 50..54.
    let lbas: Vec<u64> = (0..8).chain(20..28).chain(50..54).collect();
    let batch: Vec<(u64, &[u8])> = lbas
        .iter()
        .zip(&data)
        .map(|(l, d)| (*l, d.as_slice()))
        .collect();
    m.write(63, b"sets the region's write-intent bit")
        .expect("write");
    let before: Vec<DeviceStats> = (0..2).map(|d| m.device_stats(d).expect("stats")).collect();
    m.write_batch(&batch).expect("batch");
    for d in 0..2 {
        let st = m.device_stats(d).expect("stats");
        let b = before[d];
        assert_eq!(st.write_batches - b.write_batches, 1);
        assert_eq!(
            st.write_syscalls - b.write_syscalls,
            1,
            "device {d}: one io_uring_enter per batch"
        );
        assert_eq!(st.blocks_written - b.blocks_written, 20);
        assert_eq!(st.syncs - b.syncs, d as u64);
    }
    let mut out = Vec::new();
    for (l, d) in &batch {
        for _ in 0..2 {
            m.read(*l, &mut out).expect("read");
            assert_eq!(&out[..], *d);
        }
    }
    assert!(m
        .scrub(ScrubMode::Repair)
        .expect("scrub")
        .findings
        .is_empty());
}

/// Real block devices, when given: `NODEREP_MIRROR_BLOCK_DEVICES=/dev/loop0,/dev/loop1`
/// (their contents are overwritten). Skips, saying why, when unset.
#[test]
fn real_block_devices_with_direct_io() {
    let Ok(list) = std::env::var("NODEREP_MIRROR_BLOCK_DEVICES") else {
        std::eprintln!(
            "skipping: set NODEREP_MIRROR_BLOCK_DEVICES=/dev/A,/dev/B (scratch block devices) to test real devices"
        );
        return;
    };
    let cfg = FileDevice::builder().durability(Durability::Direct);
    let open = || -> Vec<Box<dyn BlockDevice>> {
        list.split(',')
            .map(|p| Box::new(cfg.open(p).expect("open block device")) as Box<dyn BlockDevice>)
            .collect()
    };
    // A mirror left by an earlier run is assembled; blank devices are created.
    let mut m = match builder().assemble(open()) {
        Ok((m, _)) => m,
        Err(MirrorError::NotAMember { .. }) => builder().create(open()).expect("create"),
        Err(e) => panic!("{e}"),
    };
    assert!(m.capacity() > 0);
    let data: Vec<Vec<u8>> = (0..16).map(|i| payload(i, 11, 3000)).collect();
    let batch: Vec<(u64, &[u8])> = data
        .iter()
        .enumerate()
        .map(|(i, d)| (i as u64, d.as_slice()))
        .collect();
    m.write_batch(&batch).expect("write");
    let last = m.capacity() - 1;
    m.write(last, b"end").expect("write last block");
    let mut out = Vec::new();
    for (l, d) in &batch {
        m.read(*l, &mut out).expect("read");
        assert_eq!(&out[..], *d);
    }
    m.read(last, &mut out).expect("read");
    assert_eq!(out, b"end");
    assert!(m
        .scrub(ScrubMode::Repair)
        .expect("scrub")
        .findings
        .is_empty());
}
