//! Fault injection against the mirror: I/O errors, torn writes (a crash
//! between the devices), bit flips on one copy, lost writes, bad sectors and
//! a device that disappears. The invariant every test checks: nothing
//! acknowledged is ever lost or returned corrupt, and every unrecoverable
//! case is a clear error.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use noderep::mirror::{
    BlockDevice, FaultControl, FaultyDevice, FileDevice, Health, MemberState, Mirror,
    MirrorBuilder, MirrorError, MirrorEvent, ReadOutcome, Redundancy, ScrubAction, ScrubMode,
    WarningSink,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const BS: usize = 4096;

#[path = "support/scratch.rs"]
mod scratch;
use scratch::Scratch;

/// A mirror of N fault-injecting file devices with `blocks` data blocks.
struct Rig {
    paths: Vec<PathBuf>,
    ctls: Vec<FaultControl>,
    /// Physical block of logical block 0 (after the metadata).
    data_start: u64,
}

impl Rig {
    fn new(s: &Scratch, n: usize, blocks: u64) -> (Self, Mirror) {
        let mut paths = Vec::new();
        let mut ctls = Vec::new();
        let mut devs: Vec<Box<dyn BlockDevice>> = Vec::new();
        let size = quiet().device_blocks(blocks, BS).expect("size");
        for i in 0..n {
            let p = s.path(&format!("dev{i}"));
            let f = FileDevice::builder().blocks(size).open(&p).expect("open");
            let (d, c) = FaultyDevice::new(f);
            devs.push(Box::new(d));
            paths.push(p);
            ctls.push(c);
        }
        let m = quiet().create(devs).expect("create");
        assert_eq!(m.capacity(), blocks);
        let data_start = m.data_start();
        (
            Self {
                paths,
                ctls,
                data_start,
            },
            m,
        )
    }

    /// The physical block of logical block `lba` (what the fault switches address).
    fn phys(&self, lba: u64) -> u64 {
        self.data_start + lba
    }

    /// Flips one bit of logical block `lba` on device `dev`'s backing file.
    fn flip(&self, dev: usize, lba: u64, byte: usize, bit: u8) {
        flip_on_disk(&self.paths[dev], self.phys(lba), byte, bit);
    }

    fn fired(&self) -> u64 {
        self.ctls.iter().map(FaultControl::fired).sum()
    }
}

fn quiet() -> MirrorBuilder {
    Mirror::builder().warnings(WarningSink::Silent)
}

fn data(lba: u64, version: u64) -> Vec<u8> {
    let len = 64 + ((lba * 131 + version * 17) % 3000) as usize;
    (0..len)
        .map(|i| (lba as usize * 7 + version as usize * 13 + i) as u8)
        .collect()
}

/// Flips one bit of physical block `lba` directly in the device's backing file
/// (silent corruption: the device itself reports nothing).
fn flip_on_disk(path: &Path, lba: u64, byte: usize, bit: u8) {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open");
    let at = lba * BS as u64 + byte as u64;
    let mut b = [0u8];
    f.read_exact_at(&mut b, at).expect("read");
    b[0] ^= 1 << bit;
    f.write_all_at(&b, at).expect("write");
}

/// Reads every block `n` times (so reads start on every device in turn) and
/// checks it against the model.
fn check_all(m: &mut Mirror, model: &HashMap<u64, Vec<u8>>, capacity: u64, n: usize) {
    let mut out = Vec::new();
    for lba in 0..capacity {
        for _ in 0..n {
            m.read(lba, &mut out)
                .unwrap_or_else(|e| panic!("acknowledged block {lba} lost: {e}"));
            let want = model.get(&lba).map(Vec::as_slice).unwrap_or(&[]);
            assert_eq!(out, want, "block {lba} returned wrong data");
        }
    }
}

#[test]
fn write_error_degrades_with_warning_and_readd_resyncs_only_missed_blocks() {
    let s = Scratch::new("mirror-faults", "werr");
    let (rig, mut m) = Rig::new(&s, 2, 64);
    let mut model = HashMap::new();
    for lba in 0..64 {
        m.write(lba, &data(lba, 1)).expect("write");
        model.insert(lba, data(lba, 1));
    }
    // Device 1 fails after 3 blocks of an 8-block batch.
    rig.ctls[1].fail_write_after(3);
    let batch: Vec<(u64, Vec<u8>)> = (10..18).map(|l| (l, data(l, 2))).collect();
    let refs: Vec<(u64, &[u8])> = batch.iter().map(|(l, d)| (*l, d.as_slice())).collect();
    let ack = m.write_batch(&refs).expect("acknowledged by the survivor");
    assert_eq!(ack.copies, 1);
    assert_eq!(ack.redundancy, Redundancy::Degraded { missing: 1 });
    model.extend(batch.iter().cloned());
    let events = m.take_events();
    let warning = events
        .iter()
        .find_map(|e| match e {
            MirrorEvent::DeviceFailed { device: 1, .. } => Some(e.to_string()),
            _ => None,
        })
        .expect("a warning names the failed device");
    assert!(
        warning.contains("DEGRADED") && warning.contains("1 of 2"),
        "{warning}"
    );
    assert!(warning.contains("Mirror::readd(1)"), "{warning}");
    assert_eq!(
        m.health(),
        Health::Degraded {
            in_sync: vec![0],
            failed: vec![1]
        }
    );
    // The mirror keeps serving writes and reads from the survivor.
    for lba in [20u64, 21, 40] {
        m.write(lba, &data(lba, 3)).expect("degraded write");
        model.insert(lba, data(lba, 3));
    }
    check_all(&mut m, &model, 64, 1);
    // Re-add: only the blocks it missed are copied (8 of the batch, of which
    // it got 3, plus 3 later writes).
    rig.ctls[1].revive();
    let r = m.readd(1).expect("resync");
    assert_eq!(r.blocks_copied, 5 + 3);
    assert!(
        r.nodes_compared < 64,
        "{} nodes for 64 blocks",
        r.nodes_compared
    );
    assert_eq!(m.health(), Health::Optimal { devices: 2 });
    // Now device 0 disappears: device 1 alone must hold everything.
    rig.ctls[0].vanish();
    check_all(&mut m, &model, 64, 2);
    assert!(matches!(m.member_state(0), Ok(MemberState::Failed { .. })));
    assert!(rig.fired() >= 2);
}

#[test]
fn torn_write_between_devices_converges_after_crash() {
    let s = Scratch::new("mirror-faults", "torn");
    let (rig, mut m) = Rig::new(&s, 2, 32);
    let mut model = HashMap::new();
    for lba in 0..32 {
        m.write(lba, &data(lba, 1)).expect("write");
        model.insert(lba, data(lba, 1));
    }
    // Crash between the devices: device 0 has the new batch, device 1 is
    // torn in the middle of its second block and then loses power.
    rig.ctls[1].tear_write_after(1, 300);
    let batch: Vec<(u64, Vec<u8>)> = (4..8).map(|l| (l, data(l, 2))).collect();
    let refs: Vec<(u64, &[u8])> = batch.iter().map(|(l, d)| (*l, d.as_slice())).collect();
    // The process "crashes" here: whatever write_batch returns is never seen.
    let _ = m.write_batch(&refs);
    let devs = m.into_devices();
    rig.ctls[1].revive();
    let (mut m, report) = quiet().assemble(devs).expect("reassemble");
    // Block 4 reached both; 5 is torn on device 1; 6 and 7 are old there.
    assert!(report.lost.is_empty());
    let fixed: Vec<(usize, u64)> = report.repaired.iter().map(|f| (f.device, f.lba)).collect();
    assert_eq!(fixed, vec![(1, 5), (1, 6), (1, 7)]);
    assert_eq!(report.older_copies_replaced, 2);
    assert!(report
        .repaired
        .iter()
        .all(|f| matches!(f.action, ScrubAction::Repaired { from: 0 })));
    // Either version would be correct for an unacknowledged write; both
    // devices must now agree on one (the newest).
    model.extend(batch.iter().cloned());
    check_all(&mut m, &model, 32, 2);
    let scrub = m.scrub(ScrubMode::Repair).expect("scrub");
    assert!(scrub.findings.is_empty(), "{:?}", scrub.findings);

    // The mirror writes the devices in order, so a crash while the *first*
    // device is torn leaves the second with the complete old version.
    // (Block 9 is written once first so that its region is dirty and the
    // torn write is the data block itself, not the write-intent bit.)
    m.write(9, &data(9, 4)).expect("write");
    model.insert(9, data(9, 4));
    rig.ctls[0].tear_write_after(0, 100);
    rig.ctls[1].vanish(); // the crash stops everything
    let err = m.write(9, &data(9, 5)).expect_err("crashed");
    assert!(matches!(err, MirrorError::NoHealthyDevice { .. }));
    let devs = m.into_devices();
    rig.ctls[0].revive();
    rig.ctls[1].revive();
    let (mut m, report) = quiet().assemble(devs).expect("reassemble");
    assert_eq!(report.repaired.len(), 1);
    assert_eq!((report.repaired[0].device, report.repaired[0].lba), (0, 9));
    assert!(matches!(
        report.repaired[0].problem,
        noderep::mirror::Problem::Corrupt(noderep::mirror::Corruption::Checksum { .. })
    ));
    check_all(&mut m, &model, 32, 2);
    assert_eq!(rig.fired(), 3, "two tears and one refused write");
}

#[test]
fn bit_flips_on_one_copy_are_repaired_by_reads_and_scrub() {
    let s = Scratch::new("mirror-faults", "flip");
    let (rig, mut m) = Rig::new(&s, 2, 128);
    let mut model = HashMap::new();
    for lba in 0..100 {
        m.write(lba, &data(lba, 1)).expect("write");
        model.insert(lba, data(lba, 1));
    }
    // Header, payload and padding flips on device 1; a few on device 0.
    let flips1 = [
        (3u64, 2usize),
        (4, 9),
        (5, 17),
        (50, 40),
        (51, 3000),
        (99, 4095),
        (120, 7),
    ];
    let flips0 = [(60u64, 100usize), (61, 20)];
    for &(lba, byte) in &flips1 {
        rig.flip(1, lba, byte, 3);
    }
    for &(lba, byte) in &flips0 {
        rig.flip(0, lba, byte, 6);
    }
    // Scrub in report-only mode finds all nine, quickly, without writing.
    let r = m.scrub(ScrubMode::ReportOnly).expect("scrub");
    let found: Vec<(usize, u64)> = r.findings.iter().map(|f| (f.device, f.lba)).collect();
    let mut want: Vec<(usize, u64)> = flips0.iter().map(|f| (0, f.0)).collect();
    want.extend(flips1.iter().map(|f| (1, f.0)));
    assert_eq!(found, want);
    assert!(r.findings.iter().all(|f| f.action == ScrubAction::Reported));
    assert!(r.nodes_compared < 2 * 128, "{}", r.nodes_compared);
    // Reads return good data and repair the copies they touch.
    let mut out = Vec::new();
    let mut repaired = 0;
    for _ in 0..2 {
        if let ReadOutcome::Repaired { from: 0, bad } = m.read(3, &mut out).expect("read") {
            assert_eq!(bad.len(), 1);
            repaired += 1;
        }
        assert_eq!(out, model[&3]);
    }
    assert_eq!(repaired, 1, "the bad copy is repaired exactly once");
    // Scrub repairs the rest.
    let r = m.scrub(ScrubMode::Repair).expect("scrub");
    assert_eq!(r.repaired(), 8);
    assert_eq!(r.unrecoverable(), 0);
    assert!(m
        .scrub(ScrubMode::Repair)
        .expect("scrub")
        .findings
        .is_empty());
    check_all(&mut m, &model, 128, 2);
}

#[test]
fn both_copies_bad_is_a_clear_error_never_bad_data() {
    let s = Scratch::new("mirror-faults", "both");
    let (rig, mut m) = Rig::new(&s, 2, 16);
    m.write(7, &data(7, 1)).expect("write");
    m.write(8, &data(8, 1)).expect("write");
    rig.flip(0, 7, 200, 1);
    rig.flip(1, 7, 300, 2);
    let mut out = vec![0xAA];
    let err = m.read(7, &mut out).expect_err("no good copy");
    let msg = err.to_string();
    assert!(matches!(err, MirrorError::Unrecoverable { lba: 7, .. }));
    assert!(
        msg.contains("device 0: checksum mismatch") && msg.contains("device 1: checksum mismatch"),
        "{msg}"
    );
    assert!(
        msg.contains("restore it from a backup or rewrite it"),
        "{msg}"
    );
    assert_eq!(out, vec![0xAA], "nothing is returned on error");
    let r = m.scrub(ScrubMode::Repair).expect("scrub");
    assert_eq!(r.unrecoverable(), 2);
    assert_eq!(
        m.health(),
        Health::Optimal { devices: 2 },
        "bad data is not a bad device"
    );
    // Block 8 is untouched; rewriting block 7 cures it.
    m.read(8, &mut out).expect("read");
    assert_eq!(out, data(8, 1));
    m.write(7, &data(7, 2)).expect("rewrite");
    m.read(7, &mut out).expect("read");
    assert_eq!(out, data(7, 2));
    // After a restart the lost block is reported by assembly.
    rig.flip(0, 8, 10, 1);
    rig.flip(1, 8, 11, 1);
    let (mut m, report) = quiet().assemble(m.into_devices()).expect("reassemble");
    assert_eq!(report.lost, vec![8]);
    let err = m.read(8, &mut out).expect_err("lost");
    assert!(err.to_string().contains("no good copy survived"), "{err}");
}

#[test]
fn lost_writes_and_bad_sectors_are_caught_and_repaired() {
    let s = Scratch::new("mirror-faults", "lost");
    let (rig, mut m) = Rig::new(&s, 2, 16);
    m.write(2, &data(2, 1)).expect("write");
    // Device 1 acknowledges the next write of block 2 but drops it: its
    // copy is valid but stale.
    rig.ctls[1].lose_next_write(rig.phys(2));
    m.write(2, &data(2, 2)).expect("write");
    let r = m.scrub(ScrubMode::Repair).expect("scrub");
    assert_eq!(r.findings.len(), 1);
    assert!(
        r.findings[0].problem.to_string().contains("stale copy"),
        "{:?}",
        r.findings
    );
    assert_eq!(r.repaired(), 1);
    // A bad sector on device 0: reads come from device 1 and rewrite it.
    rig.ctls[0].bad_sector(rig.phys(2));
    let mut out = Vec::new();
    for _ in 0..2 {
        m.read(2, &mut out).expect("read");
        assert_eq!(out, data(2, 2));
    }
    // Corruption in transit (the stored copy is fine) is caught too.
    rig.ctls[0].revive();
    rig.ctls[1].flip_on_next_read(rig.phys(2));
    for _ in 0..2 {
        m.read(2, &mut out).expect("read");
        assert_eq!(out, data(2, 2));
    }
    assert_eq!(rig.fired(), 1 + 1 + 1);
    assert_eq!(m.health(), Health::Optimal { devices: 2 });
}

#[test]
fn a_vanished_device_is_survived_and_every_device_gone_is_an_error() {
    let s = Scratch::new("mirror-faults", "gone");
    let (rig, mut m) = Rig::new(&s, 3, 32);
    let mut model = HashMap::new();
    for lba in 0..32 {
        m.write(lba, &data(lba, 1)).expect("write");
        model.insert(lba, data(lba, 1));
    }
    rig.ctls[2].vanish();
    rig.ctls[0].vanish();
    for lba in 0..8 {
        let ack = m.write(lba, &data(lba, 2)).expect("write");
        model.insert(lba, data(lba, 2));
        assert_eq!(ack.copies, 1);
    }
    check_all(&mut m, &model, 32, 1);
    assert_eq!(
        m.health(),
        Health::Degraded {
            in_sync: vec![1],
            failed: vec![0, 2]
        }
    );
    // Re-adding a device that is still gone fails clearly and changes nothing.
    let err = m.readd(2).expect_err("still gone");
    assert!(
        matches!(err, MirrorError::ResyncFailed { device: 2, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("stays failed"));
    rig.ctls[2].revive();
    assert_eq!(m.readd(2).expect("resync").blocks_copied, 8);
    // The last devices disappear: the write is not acknowledged.
    rig.ctls[1].vanish();
    rig.ctls[2].vanish();
    let err = m.write(3, &data(3, 9)).expect_err("nothing left");
    assert!(
        matches!(err, MirrorError::NoHealthyDevice { devices: 3, .. }),
        "{err}"
    );
    assert_eq!(m.health(), Health::Failed);
    let mut out = Vec::new();
    assert!(matches!(
        m.read(3, &mut out),
        Err(MirrorError::NoHealthyDevice { .. })
    ));
    // Power back: assembly recovers everything that was acknowledged.
    for c in &rig.ctls {
        c.revive();
    }
    let (mut m, report) = quiet().assemble(m.into_devices()).expect("reassemble");
    assert!(report.lost.is_empty());
    check_all(&mut m, &model, 32, 3);
    assert!(m
        .scrub(ScrubMode::Repair)
        .expect("scrub")
        .findings
        .is_empty());
}

/// Random workload with random faults, each confined to one device at a
/// time between heals (faults on every copy of a block at once are data
/// loss by definition and are tested above as clear errors).
#[test]
fn random_faults_never_lose_an_acknowledged_write() {
    let s = Scratch::new("mirror-faults", "random");
    const BLOCKS: u64 = 64;
    let (rig, mut m) = Rig::new(&s, 2, BLOCKS);
    let mut rng = StdRng::seed_from_u64(0x6d69_7272);
    let mut model: HashMap<u64, Vec<u8>> = HashMap::new();
    let mut injected = 0u64;
    let mut version = 0u64;
    let mut acked = 0u64;
    let mut resyncs = 0u64;
    let mut disk_flips = 0u64;
    for round in 0..24 {
        let victim = rng.random_range(0..2usize);
        for _ in 0..6 {
            // Every fault targets a block the step then writes or reads.
            let lba = rng.random_range(0..BLOCKS);
            match rng.random_range(0..13u32) {
                0 | 1 => rig.ctls[victim].fail_write_after(rng.random_range(0..4)),
                2 | 3 => rig.ctls[victim].bad_sector(rig.phys(lba)),
                4 | 5 => rig.ctls[victim].flip_on_next_read(rig.phys(lba)),
                6 | 7 => rig.ctls[victim].lose_next_write(rig.phys(lba)),
                8 => rig.ctls[victim].vanish(),
                _ => {
                    rig.flip(victim, lba, rng.random_range(0..BS), rng.random_range(0..8));
                    disk_flips += 1;
                }
            }
            injected += 1;
            // A batch of distinct blocks, including `lba` half of the time.
            let n = rng.random_range(1..=8usize);
            let mut lbas: Vec<u64> = (0..n).map(|_| rng.random_range(0..BLOCKS)).collect();
            if rng.random_bool(0.5) {
                lbas.push(lba);
            }
            lbas.sort_unstable();
            lbas.dedup();
            version += 1;
            let batch: Vec<(u64, Vec<u8>)> = lbas.iter().map(|&l| (l, data(l, version))).collect();
            let refs: Vec<(u64, &[u8])> = batch.iter().map(|(l, d)| (*l, d.as_slice())).collect();
            m.write_batch(&refs).unwrap_or_else(|e| {
                panic!("round {round}: a write with a healthy device failed: {e}")
            });
            acked += batch.len() as u64;
            model.extend(batch);
            // Read `lba` from both devices, and one random block.
            let mut out = Vec::new();
            for probe in [lba, lba, rng.random_range(0..BLOCKS)] {
                m.read(probe, &mut out)
                    .unwrap_or_else(|e| panic!("round {round}: block {probe}: {e}"));
                assert_eq!(
                    out,
                    model.get(&probe).cloned().unwrap_or_default(),
                    "block {probe}"
                );
            }
            // The victim comes back (disarming what did not fire) and is
            // re-added if it fell out.
            rig.ctls[victim].revive();
            if m.member_state(victim).expect("device") != &MemberState::InSync {
                m.readd(victim).expect("resync");
                resyncs += 1;
            }
        }
        // A scrub repairs whatever silent damage remains.
        let r = m.scrub(ScrubMode::Repair).expect("scrub");
        assert_eq!(r.unrecoverable(), 0, "round {round}: {:?}", r.findings);
        // Occasionally restart (as after a crash) and reassemble.
        if round % 6 == 5 {
            let (again, report) = quiet().assemble(m.into_devices()).expect("reassemble");
            assert!(report.lost.is_empty());
            m = again;
        }
        check_all(&mut m, &model, BLOCKS, 2);
    }
    assert_eq!(m.health(), Health::Optimal { devices: 2 });
    println!(
        "injected {injected} faults ({disk_flips} bit flips on disk, {} fault events fired in the devices, {resyncs} resyncs), {acked} block writes acknowledged, 0 lost or corrupt",
        rig.fired()
    );
    assert_eq!(injected, 144);
    assert!(
        rig.fired() >= 60,
        "faults must actually fire: {}",
        rig.fired()
    );
}
