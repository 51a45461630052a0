//! Criterion benchmarks of the mirror: checksum throughput (bytes/s) and the
//! write path, single copy vs mirrored, at several batch sizes.
//!
//! `cargo bench --bench mirror`

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use noderep::mirror::{BlockDevice, FileDevice, Mirror, WarningSink};

fn checksum(c: &mut Criterion) {
    let mut g = c.benchmark_group("checksum_crc32c");
    for size in [512usize, 4096, 65536] {
        let buf: Vec<u8> = (0..size).map(|i| i as u8).collect();
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::from_parameter(size), &buf, |b, buf| {
            // The mirror's block checksum (CRC-32C through crc-fast).
            b.iter(|| crc_fast::crc32_iscsi(black_box(buf)))
        });
    }
    g.finish();
}

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn mirror(dir: &Dir, copies: usize) -> Mirror {
    let builder = Mirror::builder().warnings(WarningSink::Silent);
    let cfg = FileDevice::builder().blocks(builder.device_blocks(4096, 4096).expect("size"));
    let devs: Vec<Box<dyn BlockDevice>> = (0..2)
        .map(|i| {
            // Each mirror gets its own files (create refuses a member of another).
            let p = dir.0.join(format!("c{copies}-d{i}"));
            Box::new(cfg.open(p).expect("open")) as Box<dyn BlockDevice>
        })
        .collect();
    let mut m = builder.create(devs).expect("create");
    if copies == 1 {
        m.fail_device(1, "single-copy baseline").expect("device 1");
    }
    m
}

fn write_path(c: &mut Criterion) {
    let dir =
        Dir(std::env::temp_dir().join(format!("noderep-bench-mirror-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).expect("temp dir");
    let payload = vec![0xa5u8; 4064];
    let mut g = c.benchmark_group("write_batch_4k");
    for (name, copies) in [("single", 1usize), ("mirrored", 2)] {
        let mut m = mirror(&dir, copies);
        let mut cursor = 0u64;
        for batch in [1usize, 16, 64] {
            g.throughput(Throughput::Elements(batch as u64));
            let mut list: Vec<(u64, &[u8])> = Vec::with_capacity(batch);
            g.bench_function(BenchmarkId::new(name, batch), |b| {
                b.iter(|| {
                    if cursor + batch as u64 > m.capacity() {
                        cursor = 0;
                    }
                    list.clear();
                    list.extend((0..batch as u64).map(|i| (cursor + i, payload.as_slice())));
                    cursor += batch as u64;
                    m.write_batch(black_box(&list)).expect("write")
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, checksum, write_path);
criterion_main!(benches);
