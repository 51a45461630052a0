//! Enqueue/pick throughput of one run queue: synchronous replication to one
//! and to two backups (`k = 1`, `k = 2`) and asynchronous replication
//! against the same queue unreplicated, and a bare `VecDeque` for reference,
//! all in one group. Each element is one task: spawned (delivered to the
//! inbox), accepted (enqueue), picked and completed — three replicated
//! operations. A backup thread drains the replication rings the whole time,
//! as the backup cores would.

use std::collections::VecDeque;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use noderep::runq::{Exit, OwnerHandle, Pick, Replication, RunQueues, RunqError, Spawner};

const BATCH: usize = 256;

struct Setup {
    rq: RunQueues,
    owner: OwnerHandle,
    spawner: Spawner,
    stop: Arc<AtomicBool>,
    backup: Option<JoinHandle<()>>,
}

fn setup(replication: Replication, k: usize) -> Setup {
    let rq = RunQueues::builder()
        .cores(3)
        .replication(replication)
        .backups(k)
        // Long lease: no failover during the measurement.
        .lease(Duration::from_secs(30))
        .build()
        .expect("config");
    let owner = rq.owner(0).expect("owner");
    let stop = Arc::new(AtomicBool::new(false));
    let backup = {
        let (rq, stop) = (rq.clone(), stop.clone());
        Some(std::thread::spawn(move || {
            let mut handles = [Vec::new(), Vec::new()];
            // Acquire: pairs with the Release store after the measurement.
            while !stop.load(Ordering::Acquire) {
                // Cores 1 and 2 back queue 0 up (one thread stands for both).
                for (i, v) in handles.iter_mut().enumerate() {
                    rq.attach_backups(1 + i, v).expect("attach");
                }
                for h in handles.iter_mut().flatten() {
                    let _ = h.poll(rq.now());
                }
                std::thread::yield_now();
            }
        }))
    };
    Setup {
        spawner: rq.spawner(0).expect("spawner"),
        rq,
        owner,
        stop,
        backup,
    }
}

fn run_batch(s: &mut Setup) {
    for _ in 0..BATCH {
        s.spawner.spawn(0).expect("spawn");
    }
    // A full ring (the backup thread lags) is `BackupStalled`: retry, as a
    // scheduler would after draining its own backups.
    fn retry<T>(mut f: impl FnMut() -> Result<T, RunqError>) -> T {
        loop {
            match f() {
                Ok(x) => return x,
                Err(RunqError::BackupStalled { .. }) => std::thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        }
    }
    let mut n = 0;
    while let Pick::Task(t) = retry(|| s.owner.pick()) {
        retry(|| s.owner.complete(t, Exit::Done));
        n += 1;
    }
    assert_eq!(n, BATCH);
    s.owner.tick(s.rq.now()).expect("tick");
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("runq_enqueue_pick");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(3));
    g.warm_up_time(Duration::from_millis(500));
    let modes = [
        ("unreplicated", Replication::None, 1),
        ("sync_k1", Replication::Sync, 1),
        ("sync_k2", Replication::Sync, 2),
        (
            "async_b32",
            Replication::Async {
                batch: 32,
                max_lag: Duration::from_millis(1),
            },
            1,
        ),
    ];
    for (name, mode, k) in modes {
        let mut s = setup(mode, k);
        g.bench_function(BenchmarkId::new("runq", name), |b| {
            b.iter(|| run_batch(&mut s))
        });
        // Release: pairs with the backup thread's Acquire load.
        s.stop.store(true, Ordering::Release);
        if let Some(h) = s.backup.take() {
            h.join().expect("backup thread");
        }
    }
    g.bench_function(BenchmarkId::new("vecdeque", "reference"), |b| {
        let mut q: VecDeque<u64> = VecDeque::with_capacity(BATCH);
        b.iter(|| {
            for i in 0..BATCH as u64 {
                q.push_back(black_box(i));
            }
            while let Some(x) = q.pop_front() {
                black_box(x);
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
