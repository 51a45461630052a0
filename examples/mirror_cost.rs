//! The CPU cost of mirrored writes, and how batching amortises it.
//!
//! For batch sizes 1, 4, 16 and 64, writes the same sequential stream of
//! 4 KiB blocks through a single-copy path (a mirror with one device taken
//! out: identical code, one copy) and through a two-device mirror, measures
//! the process CPU time per write (`noderep::cost`), splits it into phases
//! (bookkeeping, checksum, submission, completion), fits
//! `cpu_per_write = b + a / batch`, and converts it into the share of a core
//! a given write rate costs.
//!
//! ```text
//! cargo run --release --example mirror_cost [-- --writes 32768 --rate 100000 \
//!     --reps 3 --durability none|sync|direct --backend pwritev|uring \
//!     --bitmap on|off --resync-mib 1024 --out DIR]
//! ```
//!
//! Then it measures what the write-intent bitmap saves after a crash: a
//! mirror of `--resync-mib` MiB per device is written and abandoned without
//! a clean shutdown, and assembly (which compares the copies of the dirty
//! regions) is timed against a full-scan assembly (which compares every
//! block), with devices opened `O_DIRECT` so that reads come from the disk,
//! not the page cache (falling back to buffered reads where refused).
//!
//! Every mirror is created fresh with its superblocks, write-intent bitmap
//! (on by default; `--bitmap off` keeps every region dirty from creation to
//! close, as a mirror without one) and sequence table; the report counts the
//! metadata writes that come with the data writes.
//!
//! Devices are preallocated files in the system temp directory (removed at
//! the end). Results: a table on stdout, `target/mirror-cost/mirror_cost.csv`
//! and `target/mirror-cost/mirror_cost.svg`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use noderep::cost::{AmortisedFit, CostMeter, PhaseTimes, WritePhase};
use noderep::mirror::{BlockDevice, Durability, FileDevice, Mirror, WarningSink};

const BATCHES: [usize; 4] = [1, 4, 16, 64];
const DEVICE_BLOCKS: u64 = 4096;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Single,
    Mirrored,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Single => "single",
            Mode::Mirrored => "mirrored",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Backend {
    Pwritev,
    #[cfg(feature = "io-uring")]
    Uring,
}

struct Args {
    writes: u64,
    rate: f64,
    reps: usize,
    durability: Durability,
    backend: Backend,
    bitmap: bool,
    resync_mib: u64,
    out: PathBuf,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        writes: 32_768,
        rate: 100_000.0,
        reps: 3,
        durability: Durability::None,
        backend: Backend::Pwritev,
        bitmap: true,
        resync_mib: 1024,
        out: Path::new(env!("CARGO_MANIFEST_DIR")).join("target/mirror-cost"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--writes" => a.writes = value()?.parse().map_err(|e| format!("--writes: {e}"))?,
            "--rate" => a.rate = value()?.parse().map_err(|e| format!("--rate: {e}"))?,
            "--reps" => a.reps = value()?.parse().map_err(|e| format!("--reps: {e}"))?,
            "--out" => a.out = PathBuf::from(value()?),
            "--resync-mib" => {
                a.resync_mib = value()?.parse().map_err(|e| format!("--resync-mib: {e}"))?
            }
            "--bitmap" => {
                a.bitmap = match value()?.as_str() {
                    "on" => true,
                    "off" => false,
                    other => return Err(format!("--bitmap {other}: use on or off")),
                }
            }
            "--durability" => {
                a.durability = match value()?.as_str() {
                    "none" => Durability::None,
                    "sync" => Durability::SyncPerBatch,
                    "direct" => Durability::Direct,
                    other => return Err(format!("--durability {other}: use none, sync or direct")),
                }
            }
            "--backend" => {
                a.backend = match value()?.as_str() {
                    "pwritev" => Backend::Pwritev,
                    #[cfg(feature = "io-uring")]
                    "uring" => Backend::Uring,
                    other => {
                        return Err(format!(
                            "--backend {other}: use pwritev{}",
                            if cfg!(feature = "io-uring") {
                                " or uring"
                            } else {
                                " (build with --features io-uring for uring)"
                            }
                        ))
                    }
                }
            }
            "-h" | "--help" => {
                println!("usage: mirror_cost [--writes N] [--rate WRITES_PER_SEC] [--reps N] [--durability none|sync|direct] [--backend pwritev|uring] [--bitmap on|off] [--resync-mib N (0 skips)] [--out DIR]");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}; try --help")),
        }
    }
    if a.writes < 64 || a.reps == 0 || a.rate.is_nan() || a.rate <= 0.0 {
        return Err("--writes must be at least 64, --reps at least 1, --rate positive".into());
    }
    Ok(a)
}

/// A temp directory removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn open_mirror(dir: &Path, args: &Args, mode: Mode, accounting: bool) -> Mirror {
    let builder = Mirror::builder()
        .warnings(WarningSink::Silent)
        .account_phases(accounting)
        .write_intent_bitmap(args.bitmap);
    let cfg = FileDevice::builder()
        .blocks(
            builder
                .device_blocks(DEVICE_BLOCKS, 4096)
                .unwrap_or_else(|e| fail(e)),
        )
        .durability(args.durability);
    let devs: Vec<Box<dyn BlockDevice>> = (0..2)
        .map(|i| -> Box<dyn BlockDevice> {
            let p = dir.join(format!("dev{i}"));
            match args.backend {
                Backend::Pwritev => Box::new(cfg.open(&p).unwrap_or_else(|e| fail(e))),
                #[cfg(feature = "io-uring")]
                Backend::Uring => Box::new(cfg.open_uring(&p, 256).unwrap_or_else(|e| fail(e))),
            }
        })
        .collect();
    for p in (0..2).map(|i| dir.join(format!("dev{i}"))) {
        // A fresh mirror per run: wipe the superblocks an earlier run left.
        wipe_superblocks(&p);
    }
    let mut m = builder.create(devs).unwrap_or_else(|e| fail(e));
    if mode == Mode::Single {
        // The same write path with one copy: the baseline mirroring is measured against.
        m.fail_device(1, "single-copy baseline")
            .unwrap_or_else(|e| fail(e));
        m.take_events();
    }
    m
}

/// Zeroes the first two blocks (the superblock copies) of a device file.
fn wipe_superblocks(path: &Path) {
    use std::os::unix::fs::FileExt;
    if let Ok(f) = std::fs::OpenOptions::new().write(true).open(path) {
        f.write_all_at(&[0u8; 8192], 0).unwrap_or_else(|e| fail(e));
    }
}

fn fail(e: impl std::fmt::Display) -> ! {
    eprintln!("mirror_cost: {e}");
    std::process::exit(1)
}

/// Writes `writes` blocks in batches of `batch` (sequential addresses,
/// wrapping), returning the number of write_batch calls.
fn run(m: &mut Mirror, batch: usize, writes: u64, payload: &[u8], cursor: &mut u64) -> u64 {
    let mut batch_buf: Vec<(u64, &[u8])> = Vec::with_capacity(batch);
    let calls = writes / batch as u64;
    for _ in 0..calls {
        if *cursor + batch as u64 > m.capacity() {
            *cursor = 0;
        }
        batch_buf.clear();
        batch_buf.extend((0..batch as u64).map(|i| (*cursor + i, payload)));
        *cursor += batch as u64;
        m.write_batch(&batch_buf).unwrap_or_else(|e| fail(e));
    }
    calls
}

struct Row {
    mode: Mode,
    batch: usize,
    cpu_ns: f64,
    thread_ns: f64,
    wall_ns: f64,
    phases: [f64; 4],
    syscalls_per_write: f64,
    meta_writes_per_1k: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args = parse_args().unwrap_or_else(|e| fail(e));
    let dir =
        TempDir(std::env::temp_dir().join(format!("noderep-mirror-cost-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap_or_else(|e| fail(e));
    let mut meter = CostMeter::new();
    let started = Instant::now();

    // Checksum throughput on 4 KiB blocks.
    let block = vec![0x5au8; 4096];
    let mut acc = 0u32;
    let crc_rounds = 200_000u64;
    let ((), crc_cost) = meter
        .measure(|| {
            for i in 0..crc_rounds {
                acc ^=
                    crc_fast::crc32_iscsi(std::hint::black_box(&block[..])).wrapping_add(i as u32);
            }
        })
        .unwrap_or_else(|e| fail(e));
    std::hint::black_box(acc);
    let crc_gbps = (crc_rounds * 4096) as f64 / crc_cost.thread_cpu_ns as f64;

    let payload = vec![0xc3u8; 4064];
    let mut rows = Vec::new();
    for mode in [Mode::Single, Mode::Mirrored] {
        for batch in BATCHES {
            let mut cpu = Vec::new();
            let mut thread = Vec::new();
            let mut wall = Vec::new();
            let mut phase_totals = PhaseTimes::default();
            let mut sys = 0.0;
            let mut meta = 0.0;
            for _ in 0..args.reps {
                // Clean run: total CPU with phase accounting off.
                let mut m = open_mirror(&dir.0, &args, mode, false);
                let mut cursor = 0;
                run(&mut m, batch, args.writes / 4, &payload, &mut cursor); // warm-up
                let st0 = m.device_stats(0).unwrap_or_else(|e| fail(e));
                let before = st0.write_syscalls;
                let (calls, c) = meter
                    .measure(|| run(&mut m, batch, args.writes, &payload, &mut cursor))
                    .unwrap_or_else(|e| fail(e));
                let n = (calls * batch as u64) as f64;
                let st1 = m.device_stats(0).unwrap_or_else(|e| fail(e));
                let after = st1.write_syscalls;
                // Device calls beyond one per data batch are metadata writes.
                meta = (st1.write_batches - st0.write_batches).saturating_sub(calls) as f64 / n
                    * 1000.0;
                sys = (after - before) as f64 / n * if mode == Mode::Mirrored { 2.0 } else { 1.0 };
                cpu.push(c.process_cpu_ns as f64 / n);
                thread.push(c.thread_cpu_ns as f64 / n);
                wall.push(c.wall_ns as f64 / n);
                drop(m);
                // Accounting run: how that CPU splits into phases.
                let mut m = open_mirror(&dir.0, &args, mode, true);
                run(&mut m, batch, args.writes, &payload, &mut cursor);
                let t = m.phase_times();
                for p in WritePhase::ALL {
                    phase_totals.add(p, t.get(p));
                }
            }
            let cpu_ns = median(cpu);
            let phases = WritePhase::ALL.map(|p| cpu_ns * phase_totals.share(p));
            rows.push(Row {
                mode,
                batch,
                cpu_ns,
                thread_ns: median(thread),
                wall_ns: median(wall),
                phases,
                syscalls_per_write: sys,
                meta_writes_per_1k: meta,
            });
        }
    }
    let fit = |mode: Mode| -> AmortisedFit {
        let pts: Vec<(f64, f64)> = rows
            .iter()
            .filter(|r| r.mode == mode)
            .map(|r| (r.batch as f64, r.cpu_ns))
            .collect();
        AmortisedFit::fit(&pts).unwrap_or_else(|e| fail(e))
    };
    let fits = [
        (Mode::Single, fit(Mode::Single)),
        (Mode::Mirrored, fit(Mode::Mirrored)),
    ];

    // Report.
    let mut out = String::new();
    let _ = writeln!(out, "noderep mirror_cost: {} writes of 4 KiB per point (median of {}), durability {:?}, backend {:?}, write-intent bitmap {}", args.writes, args.reps, args.durability, args.backend, if args.bitmap { "on" } else { "off" });
    let _ = writeln!(out, "CPU source: {}", meter.source());
    let _ = writeln!(
        out,
        "crc32c (crc-fast) on 4 KiB blocks: {crc_gbps:.1} GB/s ({:.0} ns per block)\n",
        crc_cost.thread_cpu_ns as f64 / crc_rounds as f64
    );
    let _ = writeln!(
        out,
        "{:<9} {:>5} {:>10} {:>9} {:>9} | {:>11} {:>9} {:>10} {:>10} | {:>9} {:>9}",
        "mode",
        "batch",
        "cpu ns/wr",
        "thread",
        "wall",
        "bookkeeping",
        "checksum",
        "submission",
        "completion",
        "syscalls",
        "meta/1k"
    );
    for r in &rows {
        let _ = writeln!(
            out,
            "{:<9} {:>5} {:>10.0} {:>9.0} {:>9.0} | {:>11.0} {:>9.0} {:>10.0} {:>10.0} | {:>9.3} {:>9.2}",
            r.mode.name(),
            r.batch,
            r.cpu_ns,
            r.thread_ns,
            r.wall_ns,
            r.phases[0],
            r.phases[1],
            r.phases[2],
            r.phases[3],
            r.syscalls_per_write,
            r.meta_writes_per_1k
        );
    }
    let _ = writeln!(out, "(meta/1k: metadata writes — superblock, bitmap, sequence table — per 1000 data writes on device 0)");
    let _ = writeln!(out);
    for (mode, f) in &fits {
        let _ = writeln!(out, "fit {:<8}: cpu_per_write = {:.0} ns + {:.0} ns / batch   (R² = {:.4}, RMS residual {:.1} ns)", mode.name(), f.b, f.a, f.r_squared, f.rms_residual);
    }
    let cores = |ns: f64| ns * args.rate / 1e9;
    let at = |mode: Mode, b: usize| {
        rows.iter()
            .find(|r| r.mode == mode && r.batch == b)
            .map(|r| r.cpu_ns)
            .unwrap_or(f64::NAN)
    };
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "at {:.0} writes/s: mirrored writes cost {:.3} of a core ({:.3} with batches of 16, {:.3} with 64); single-copy {:.3} ({:.3} with 16)",
        args.rate,
        cores(at(Mode::Mirrored, 1)),
        cores(at(Mode::Mirrored, 16)),
        cores(at(Mode::Mirrored, 64)),
        cores(at(Mode::Single, 1)),
        cores(at(Mode::Single, 16)),
    );
    let _ = writeln!(
        out,
        "the mirroring tax (mirrored - single) at {:.0} writes/s: {:.3} of a core unbatched, {:.3} with batches of 16",
        args.rate,
        cores(at(Mode::Mirrored, 1) - at(Mode::Single, 1)),
        cores(at(Mode::Mirrored, 16) - at(Mode::Single, 16)),
    );
    out.push_str(&resync_report(&args, &dir.0));
    print!("{out}");

    // CSV and plot.
    std::fs::create_dir_all(&args.out)
        .unwrap_or_else(|e| fail(format!("{}: {e}", args.out.display())));
    let mut csv = String::from("mode,batch,cpu_ns_per_write,thread_ns_per_write,wall_ns_per_write,bookkeeping_ns,checksum_ns,submission_ns,completion_ns,syscalls_per_write,fit_a_ns,fit_b_ns,fit_r2\n");
    for r in &rows {
        let f = &fits
            .iter()
            .find(|(m, _)| *m == r.mode)
            .expect("fit per mode")
            .1;
        let _ = writeln!(
            csv,
            "{},{},{:.1},{:.1},{:.1},{:.1},{:.1},{:.1},{:.1},{:.4},{:.1},{:.1},{:.5}",
            r.mode.name(),
            r.batch,
            r.cpu_ns,
            r.thread_ns,
            r.wall_ns,
            r.phases[0],
            r.phases[1],
            r.phases[2],
            r.phases[3],
            r.syscalls_per_write,
            f.a,
            f.b,
            f.r_squared
        );
    }
    let csv_path = args.out.join("mirror_cost.csv");
    std::fs::write(&csv_path, csv).unwrap_or_else(|e| fail(format!("{}: {e}", csv_path.display())));
    let svg_path = args.out.join("mirror_cost.svg");
    plot(&svg_path, &rows, &fits)
        .unwrap_or_else(|e| fail(format!("plot {}: {e}", svg_path.display())));
    println!(
        "\nwrote {} and {} in {:.1} s",
        csv_path.display(),
        svg_path.display(),
        started.elapsed().as_secs_f64()
    );
}

fn plot(
    path: &Path,
    rows: &[Row],
    fits: &[(Mode, AmortisedFit)],
) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (1200, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(700);
    let ymax = rows.iter().map(|r| r.cpu_ns).fold(0.0, f64::max) * 1.15;

    // Left: CPU per write against batch size, measured and fitted.
    let mut chart = ChartBuilder::on(&left)
        .caption("CPU per 4 KiB write vs batch size", ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d((0.8f64..80f64).log_scale(), 0f64..ymax)?;
    chart
        .configure_mesh()
        .x_desc("batch size (blocks per write_batch)")
        .y_desc("process CPU ns per write")
        .draw()?;
    let colours = [(Mode::Single, BLUE), (Mode::Mirrored, RED)];
    for (mode, colour) in colours {
        let pts: Vec<(f64, f64)> = rows
            .iter()
            .filter(|r| r.mode == mode)
            .map(|r| (r.batch as f64, r.cpu_ns))
            .collect();
        chart
            .draw_series(pts.iter().map(|&p| Circle::new(p, 5, colour.filled())))?
            .label(format!("{} (measured)", mode.name()))
            .legend(move |(x, y)| Circle::new((x + 10, y), 5, colour.filled()));
        let f = fits.iter().find(|(m, _)| *m == mode).expect("fit").1;
        let curve: Vec<(f64, f64)> = (0..=100)
            .map(|i| 80f64.powf(i as f64 / 100.0))
            .map(|x| (x, f.predict(x)))
            .collect();
        chart
            .draw_series(LineSeries::new(curve, colour.stroke_width(2)))?
            .label(format!(
                "{} fit: {:.0} + {:.0}/batch ns (R²={:.3})",
                mode.name(),
                f.b,
                f.a,
                f.r_squared
            ))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;

    // Right: the same CPU split into phases, one stacked bar per point.
    let labels: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "{}{}",
                if r.mode == Mode::Single { "s" } else { "m" },
                r.batch
            )
        })
        .collect();
    let mut bars = ChartBuilder::on(&right)
        .caption(
            "phases (s = single, m = mirrored; batch)",
            ("sans-serif", 18),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.5f64..rows.len() as f64 - 0.5, 0f64..ymax)?;
    bars.configure_mesh()
        .disable_x_mesh()
        .x_labels(rows.len())
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() < 0.01 && i >= 0.0 && (i as usize) < labels.len() {
                labels[i as usize].clone()
            } else {
                String::new()
            }
        })
        .y_desc("process CPU ns per write")
        .draw()?;
    let phase_colours = [GREEN, MAGENTA, CYAN, YELLOW];
    for (k, phase) in WritePhase::ALL.iter().enumerate() {
        let colour = phase_colours[k];
        bars.draw_series(rows.iter().enumerate().map(|(i, r)| {
            let base: f64 = r.phases[..k].iter().sum();
            Rectangle::new(
                [
                    (i as f64 - 0.35, base),
                    (i as f64 + 0.35, base + r.phases[k]),
                ],
                colour.filled(),
            )
        }))?
        .label(phase.name())
        .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], colour.filled()));
    }
    bars.configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// Writes `writes` blocks in batches of 16 into a crashed-then-reassembled
/// mirror and abandons it (no clean shutdown): `hot` blocks from address 0
/// sequentially (wrapping), or uniformly at random over the device.
fn dirty_workload(paths: &[PathBuf], hot: Option<u64>, writes: u64, seed: &mut u64) {
    let devs = open_devices(paths, Durability::None);
    let (mut m, _) = quiet().assemble(devs).unwrap_or_else(|e| fail(e));
    let payload = vec![0x3cu8; 4000];
    let cap = m.capacity();
    let mut cursor = 0u64;
    for _ in 0..writes / 16 {
        let start = match hot {
            Some(h) => {
                cursor = (cursor + 16) % h;
                cursor
            }
            None => {
                // xorshift: a reproducible spread over the device.
                *seed ^= *seed << 13;
                *seed ^= *seed >> 7;
                *seed ^= *seed << 17;
                *seed % (cap - 16)
            }
        };
        let batch: Vec<(u64, &[u8])> = (0..16).map(|i| (start + i, payload.as_slice())).collect();
        m.write_batch(&batch).unwrap_or_else(|e| fail(e));
    }
    drop(m.into_devices()); // the crash
}

fn quiet() -> noderep::mirror::MirrorBuilder {
    Mirror::builder().warnings(WarningSink::Silent)
}

fn open_devices(paths: &[PathBuf], durability: Durability) -> Vec<Box<dyn BlockDevice>> {
    paths
        .iter()
        .map(|p| {
            let cfg = FileDevice::builder().durability(durability);
            let d: Box<dyn BlockDevice> = match cfg.open(p) {
                Ok(d) => Box::new(d),
                Err(noderep::mirror::MirrorError::DirectUnsupported { .. }) => {
                    Box::new(FileDevice::builder().open(p).unwrap_or_else(|e| fail(e)))
                }
                Err(e) => fail(e),
            };
            d
        })
        .collect()
}

/// Times one assembly from cold devices: (milliseconds, regions compared,
/// blocks compared).
fn timed_assembly(paths: &[PathBuf], full_scan: bool) -> (f64, u64, u64) {
    let devs = open_devices(paths, Durability::Direct);
    let t = Instant::now();
    let (m, report) = quiet()
        .full_scan(full_scan)
        .assemble(devs)
        .unwrap_or_else(|e| fail(e));
    let ms = t.elapsed().as_secs_f64() * 1e3;
    drop(m.into_devices());
    (ms, report.regions_scanned, report.blocks_scanned)
}

/// Assembly after a crash with the bitmap against a full scan.
fn resync_report(args: &Args, dir: &Path) -> String {
    let mut out = String::new();
    if args.resync_mib == 0 {
        return out;
    }
    let capacity = args.resync_mib * 256;
    let builder = quiet();
    let size = builder
        .device_blocks(capacity, 4096)
        .unwrap_or_else(|e| fail(e));
    let paths: Vec<PathBuf> = (0..2).map(|i| dir.join(format!("resync{i}"))).collect();
    for p in &paths {
        wipe_superblocks(p);
    }
    let cfg = FileDevice::builder().blocks(size);
    let devs: Vec<Box<dyn BlockDevice>> = paths
        .iter()
        .map(|p| Box::new(cfg.open(p).unwrap_or_else(|e| fail(e))) as Box<dyn BlockDevice>)
        .collect();
    let m = builder.create(devs).unwrap_or_else(|e| fail(e));
    let regions = capacity.div_ceil(m.region_blocks());
    let region_mib = m.region_blocks() as f64 * 4096.0 / (1 << 20) as f64;
    drop(m.close().unwrap_or_else(|e| fail(e)));
    let _ = writeln!(
        out,
        "\nresync after a crash: {} MiB mirror, 2 devices, {regions} regions of {region_mib} MiB, assembly reads O_DIRECT; median of {} paired runs",
        args.resync_mib, args.reps
    );
    let (clean_ms, clean_regions, _) = timed_assembly(&paths, false);
    let _ = writeln!(
        out,
        "  after a clean shutdown: assembly {clean_ms:.1} ms ({clean_regions} regions compared: metadata only)"
    );
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for (name, hot) in [
        (
            "4096 writes in a 64 MiB hot area",
            Some(16_384u64.min(capacity)),
        ),
        ("4096 writes spread over the device", None),
    ] {
        let (mut bm, mut full) = (Vec::new(), Vec::new());
        let (mut regs, mut blocks, mut full_blocks) = (0, 0, 0);
        for _ in 0..args.reps {
            dirty_workload(&paths, hot, 4096, &mut seed);
            let (ms, r, b) = timed_assembly(&paths, false);
            bm.push(ms);
            (regs, blocks) = (r, b);
            dirty_workload(&paths, hot, 4096, &mut seed);
            let (ms, _, b) = timed_assembly(&paths, true);
            full.push(ms);
            full_blocks = b;
        }
        let (b, f) = (median(bm), median(full));
        let _ = writeln!(
            out,
            "  crash after {name}: bitmap {b:.1} ms ({regs} regions, {blocks} blocks compared) vs full scan {f:.1} ms ({full_blocks} blocks): full/bitmap {:.1}x",
            f / b
        );
    }
    for p in &paths {
        let _ = std::fs::remove_file(p);
    }
    out
}
