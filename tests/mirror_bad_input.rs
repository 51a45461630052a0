//! The mirror given hostile input: devices opened with the wrong block
//! size, a replacement that holds another mirror, a replacement with no
//! device left to copy from, devices too large for memory or for the
//! arithmetic, and superblocks forged with valid checksums. The rule each
//! test checks: a clear error, nothing acknowledged lost, no device written
//! on the way to an error, no panic, no hang.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use noderep::cost::PhaseClock;
use noderep::mirror::{
    BlockDevice, BlockWrite, FileDevice, Mirror, MirrorBuilder, MirrorError, WarningSink,
};

const BS: usize = 4096;
const BLOCKS: u64 = 32;

#[path = "support/scratch.rs"]
mod scratch;
use scratch::Scratch;

fn quiet() -> MirrorBuilder {
    Mirror::builder().warnings(WarningSink::Silent)
}

/// A new file device with room for `BLOCKS` data blocks of `BS` bytes.
fn fresh(p: &Path) -> Box<dyn BlockDevice> {
    let size = quiet().device_blocks(BLOCKS, BS).expect("size");
    Box::new(FileDevice::builder().blocks(size).open(p).expect("open"))
}

/// An existing file device opened with `block_size`.
fn reopen(p: &Path, block_size: usize) -> Box<dyn BlockDevice> {
    Box::new(
        FileDevice::builder()
            .block_size(block_size)
            .open(p)
            .expect("reopen"),
    )
}

/// A two-device mirror at `a`, `b` holding `payload` at block 3, closed.
fn make_mirror(a: &Path, b: &Path, payload: &[u8]) {
    let mut m = quiet().create(vec![fresh(a), fresh(b)]).expect("create");
    m.write(3, payload).expect("write");
    m.close().expect("close");
}

/// Assembles `a`, `b` at the right block size and reads block 3.
fn read_back(a: &Path, b: &Path) -> Vec<u8> {
    let (mut m, _) = quiet()
        .assemble(vec![reopen(a, BS), reopen(b, BS)])
        .expect("the mirror must still assemble");
    let mut data = Vec::new();
    m.read(3, &mut data).expect("read");
    m.close().expect("close");
    data
}

#[test]
fn a_mirror_opened_with_another_block_size_is_named_and_never_erased() {
    let s = Scratch::new("mirror-bad-input", "block-size");
    let (a, b) = (s.path("a"), s.path("b"));
    make_mirror(&a, &b, b"ACKED");
    for other in [512, 1024, 8192] {
        // create would have zeroed both devices, taking their superblocks
        // at this size for blank ones.
        match quiet().create(vec![reopen(&a, other), reopen(&b, other)]) {
            Err(MirrorError::OtherBlockSize {
                recorded, opened, ..
            }) => assert_eq!((recorded, opened), (BS, other)),
            Err(e) => panic!("{other}-byte blocks: wrong error: {e}"),
            Ok(_) => panic!("{other}-byte blocks: create erased a mirror"),
        }
        // assemble names the size instead of advising a rebuild.
        match quiet().assemble(vec![reopen(&a, other), reopen(&b, other)]) {
            Err(e @ MirrorError::OtherBlockSize { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains("block_size(4096)"), "{msg}");
            }
            Err(e) => panic!("{other}-byte blocks: wrong error: {e}"),
            Ok(_) => panic!("{other}-byte blocks: assembled at the wrong size"),
        }
        assert_eq!(read_back(&a, &b), b"ACKED");
    }
}

#[test]
fn a_replacement_holding_another_mirror_is_refused_and_both_survive() {
    let s = Scratch::new("mirror-bad-input", "foreign");
    let (x, y) = (s.path("x"), s.path("y"));
    make_mirror(&x, &y, b"OTHER");
    let (a, b) = (s.path("a"), s.path("b"));
    let mut m = quiet().create(vec![fresh(&a), fresh(&b)]).expect("create");
    m.write(3, b"MINE").expect("write");
    m.fail_device(1, "test").expect("fail");
    match m.replace(1, reopen(&x, BS)) {
        Err(MirrorError::AlreadyMember { .. }) => {}
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("replace overwrote a member of another mirror"),
    }
    // The refused replacement changed nothing: device 1 is still `b`, and
    // a blank device replaces it as before.
    assert_eq!(m.device_name(1).expect("name"), b.display().to_string());
    m.replace(1, fresh(&s.path("c")))
        .expect("a blank replacement");
    m.close().expect("close");
    assert_eq!(read_back(&x, &y), b"OTHER");
}

#[test]
fn a_replacement_with_nothing_to_copy_from_leaves_the_mirror_as_it_was() {
    let s = Scratch::new("mirror-bad-input", "no-source");
    let (a, b) = (s.path("a"), s.path("b"));
    let mut m = quiet().create(vec![fresh(&a), fresh(&b)]).expect("create");
    m.write(3, b"keep").expect("write");
    m.fail_device(0, "test").expect("fail 0");
    m.fail_device(1, "test").expect("fail 1");
    let new = s.path("new");
    match m.replace(0, fresh(&new)) {
        Err(MirrorError::NoHealthyDevice { .. }) => {}
        other => panic!("expected NoHealthyDevice, got {:?}", other.err()),
    }
    let names: Vec<String> = m
        .into_devices()
        .iter()
        .map(|d| d.name().to_string())
        .collect();
    assert_eq!(
        names,
        [a.display().to_string(), b.display().to_string()],
        "the old devices are still the members"
    );
    assert_eq!(read_back(&a, &b), b"keep");
}

/// A device that claims `blocks` blocks, reads zeros and counts writes.
struct Huge {
    blocks: u64,
    writes: Arc<AtomicU64>,
}

impl BlockDevice for Huge {
    fn name(&self) -> &str {
        "huge"
    }

    fn block_size(&self) -> usize {
        BS
    }

    fn blocks(&self) -> u64 {
        self.blocks
    }

    fn read_blocks(&mut self, _lba: u64, buf: &mut [u8]) -> io::Result<()> {
        buf.fill(0);
        Ok(())
    }

    fn write_blocks(&mut self, writes: &[BlockWrite<'_>], _: &mut PhaseClock) -> io::Result<()> {
        self.writes
            .fetch_add(writes.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    fn zero_blocks(&mut self, _lba: u64, count: u64) -> io::Result<()> {
        self.writes.fetch_add(count.max(1), Ordering::Relaxed);
        Ok(())
    }
}

#[test]
fn devices_too_large_are_refused_before_anything_is_written() {
    for blocks in [1 << 36, 1 << 40, 1 << 62, u64::MAX] {
        let writes = Arc::new(AtomicU64::new(0));
        let devs: Vec<Box<dyn BlockDevice>> = (0..2)
            .map(|_| {
                Box::new(Huge {
                    blocks,
                    writes: Arc::clone(&writes),
                }) as Box<dyn BlockDevice>
            })
            .collect();
        // This used to loop for hours (blocks near 2^62) or abort on an
        // allocation of terabytes (2^36 to 2^40).
        match quiet().create(devs) {
            Err(MirrorError::OutOfMemory { capacity, bytes }) => {
                assert!(capacity <= MirrorBuilder::MAX_CAPACITY);
                assert!(bytes >= capacity);
            }
            Err(e) => panic!("{blocks} blocks: wrong error: {e}"),
            Ok(_) => panic!("{blocks} blocks: a mirror this large cannot be held in memory here"),
        }
        assert_eq!(writes.load(Ordering::Relaxed), 0, "no device was written");
    }
}

#[test]
fn capacities_out_of_range_are_errors_not_overflows() {
    let b = quiet();
    for capacity in [0, MirrorBuilder::MAX_CAPACITY + 1, u64::MAX] {
        match b.device_blocks(capacity, BS) {
            Err(MirrorError::BadCapacity { max, .. }) => {
                assert_eq!(max, MirrorBuilder::MAX_CAPACITY)
            }
            other => panic!("capacity {capacity}: {other:?}"),
        }
    }
    assert!(b.device_blocks(MirrorBuilder::MAX_CAPACITY, BS).is_ok());
    let s = Scratch::new("mirror-bad-input", "capacity");
    for capacity in [0, u64::MAX] {
        match quiet()
            .capacity(capacity)
            .create(vec![fresh(&s.path("a")), fresh(&s.path("b"))])
        {
            Err(MirrorError::BadCapacity { .. }) => {}
            other => panic!("capacity {capacity}: {:?}", other.err()),
        }
    }
}

/// Rewrites bytes `at..at + 8` of both superblock copies of `path` with
/// `value` and seals them again with a valid checksum.
fn forge_superblocks(path: &Path, at: usize, value: u64) {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open device file");
    for copy in 0..2u64 {
        let mut block = vec![0u8; BS];
        f.read_exact_at(&mut block, copy * BS as u64).expect("read");
        block[at..at + 8].copy_from_slice(&value.to_le_bytes());
        let crc = crc_fast::crc32_iscsi(&block[4..]);
        block[0..4].copy_from_slice(&crc.to_le_bytes());
        f.write_all_at(&block, copy * BS as u64).expect("write");
    }
}

#[test]
fn forged_counters_and_capacities_are_damage_not_panics() {
    // Offsets in the superblock (docs/MIRROR-FORMAT.md): capacity at 56,
    // event count at 72, sequence limit at 80.
    for (field, at, value) in [
        ("events", 72, u64::MAX),
        ("seq_limit", 80, u64::MAX),
        ("seq_limit", 80, u64::MAX - 10),
        ("capacity", 56, u64::MAX - 5),
    ] {
        let s = Scratch::new("mirror-bad-input", &format!("forged-{field}-{value}"));
        let (a, b) = (s.path("a"), s.path("b"));
        make_mirror(&a, &b, b"data");
        forge_superblocks(&a, at, value);
        forge_superblocks(&b, at, value);
        match quiet().assemble(vec![reopen(&a, BS), reopen(&b, BS)]) {
            Err(MirrorError::NotAMember { found, .. }) => {
                assert!(
                    found.contains("out of range") || found.contains("invalid"),
                    "{found}"
                )
            }
            Err(e) => panic!("{field} = {value}: wrong error: {e}"),
            Ok(_) => panic!("{field} = {value}: a forged superblock was accepted"),
        }
    }
}

#[test]
fn device_files_that_cannot_be_made_say_why_and_leave_nothing_behind() {
    let s = Scratch::new("mirror-bad-input", "device-files");
    // A size no file system holds: refused with advice, and the file this
    // call created is removed again.
    let huge = s.path("huge");
    match FileDevice::builder().blocks(1 << 50).open(&huge) {
        Err(e @ MirrorError::Open { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("fewer blocks"), "{msg}");
        }
        other => panic!("2^50 blocks: {:?}", other.err()),
    }
    assert!(!huge.exists(), "no empty file left behind");
    // Zero blocks: refused, nothing created.
    let zero = s.path("zero");
    assert!(FileDevice::builder().blocks(0).open(&zero).is_err());
    assert!(!zero.exists());
    // An existing empty file opened without a size: the error says how to
    // give one, and the file (the caller's) stays.
    let empty = s.path("empty");
    std::fs::write(&empty, b"").expect("create an empty file");
    match FileDevice::builder().open(&empty) {
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains("DeviceBuilder::blocks"), "{msg}");
        }
        Ok(_) => panic!("an empty file is not a device"),
    }
    assert!(empty.exists());
}
