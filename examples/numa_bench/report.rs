//! Output: the aligned table, CSV, JSON and the SVG plot.

use crate::runner::Measurement;
use crate::systems::Impl;
use plotters::prelude::*;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

/// One measured cell.
#[derive(Debug, Clone)]
pub struct Row {
    /// Workload label (e.g. `hashmap/uniform/0%w`).
    pub workload: String,
    /// Percentage of writes.
    pub write_pct: u32,
    /// Benchmark threads.
    pub threads: usize,
    /// Implementation.
    pub imp: Impl,
    /// What was measured.
    pub m: Measurement,
}

impl Row {
    /// Median throughput in Mop/s.
    pub fn mops(&self) -> f64 {
        self.m.median() / 1e6
    }

    /// Median CPU-time throughput in Mop/s (see `Measurement::cpu_reps`).
    pub fn cpu_mops(&self) -> f64 {
        self.m.cpu_median() / 1e6
    }

    /// Latency percentile in nanoseconds (0 without a latency pass).
    pub fn lat(&self, q: f64) -> u64 {
        self.m
            .latency
            .as_ref()
            .map_or(0, |h| h.value_at_quantile(q))
    }

    /// Maximum latency in nanoseconds.
    pub fn lat_max(&self) -> u64 {
        self.m.latency.as_ref().map_or(0, |h| h.max())
    }
}

/// A duration in nanoseconds, human-sized.
pub fn fmt_ns(ns: u64) -> String {
    match ns {
        0 => "-".into(),
        n if n < 10_000 => format!("{n} ns"),
        n if n < 10_000_000 => format!("{:.1} µs", n as f64 / 1e3),
        n => format!("{:.1} ms", n as f64 / 1e6),
    }
}

/// Best median throughput of each (workload, threads) group.
fn best_by_group(rows: &[Row]) -> BTreeMap<(String, usize), f64> {
    let mut best: BTreeMap<(String, usize), f64> = BTreeMap::new();
    for r in rows {
        let e = best.entry((r.workload.clone(), r.threads)).or_insert(0.0);
        *e = e.max(r.mops());
    }
    best
}

/// The aligned table: one block per (workload, threads), best first, with
/// each row's ratio to the best row of its block.
pub fn table(rows: &[Row]) -> String {
    let best = best_by_group(rows);
    let name_w = rows
        .iter()
        .map(|r| r.imp.name().chars().count())
        .max()
        .unwrap_or(10)
        .max(14);
    let mut out = String::new();
    let mut groups: Vec<(String, usize)> = Vec::new();
    for r in rows {
        let k = (r.workload.clone(), r.threads);
        if !groups.contains(&k) {
            groups.push(k);
        }
    }
    let header = format!(
        "{:<name_w$}  {:>9}  {:>7}  {:>7}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}  {:>7}",
        "implementation",
        "Mop/s",
        "spread",
        "vs best",
        "CPU Mop/s",
        "p50",
        "p99",
        "p99.9",
        "max",
        "max*",
        "preempt"
    );
    for (w, t) in groups {
        let _ = writeln!(out, "\n{w}, {t} thread(s)");
        let _ = writeln!(out, "{header}");
        let _ = writeln!(out, "{}", "-".repeat(header.chars().count()));
        let mut block: Vec<&Row> = rows
            .iter()
            .filter(|r| r.workload == w && r.threads == t)
            .collect();
        block.sort_by(|a, b| b.mops().total_cmp(&a.mops()));
        let top = best[&(w.clone(), t)];
        for r in block {
            let _ = writeln!(
                out,
                "{:<name_w$}  {:>9.2}  {:>6.1}%  {:>6.2}x  {:>9.2}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}  {:>7}",
                r.imp.name(),
                r.mops(),
                r.m.spread() * 100.0,
                if top > 0.0 { r.mops() / top } else { 0.0 },
                r.cpu_mops(),
                fmt_ns(r.lat(0.5)),
                fmt_ns(r.lat(0.99)),
                fmt_ns(r.lat(0.999)),
                fmt_ns(r.lat_max()),
                fmt_ns(r.m.max_unpreempted_ns),
                r.m.preemptions,
            );
        }
    }
    out
}

/// A Markdown table (for a README): one row per cell, blocks in run order,
/// best first within a block.
pub fn markdown(rows: &[Row]) -> String {
    let best = best_by_group(rows);
    let mut out = String::from(
        "| workload | threads | implementation | Mop/s | vs best | CPU Mop/s | p50 | p99 | max |\n\
         |---|---:|---|---:|---:|---:|---:|---:|---:|\n",
    );
    let mut groups: Vec<(String, usize)> = Vec::new();
    for r in rows {
        let k = (r.workload.clone(), r.threads);
        if !groups.contains(&k) {
            groups.push(k);
        }
    }
    for (w, t) in groups {
        let mut block: Vec<&Row> = rows
            .iter()
            .filter(|r| r.workload == w && r.threads == t)
            .collect();
        block.sort_by(|a, b| b.mops().total_cmp(&a.mops()));
        let top = best[&(w.clone(), t)];
        for r in block {
            let _ = writeln!(
                out,
                "| {w} | {t} | {} | {:.2} | {:.2}x | {:.2} | {} | {} | {} |",
                r.imp.name(),
                r.mops(),
                if top > 0.0 { r.mops() / top } else { 0.0 },
                r.cpu_mops(),
                fmt_ns(r.lat(0.5)),
                fmt_ns(r.lat(0.99)),
                fmt_ns(r.lat_max()),
            );
        }
    }
    out
}

/// CSV, one line per cell.
pub fn csv(rows: &[Row]) -> String {
    let best = best_by_group(rows);
    let mut out = String::from(
        "workload,write_pct,threads,implementation,mops_median,mops_min,mops_max,spread,vs_best,cpu_mops_median,reps,p50_ns,p99_ns,p999_ns,max_ns,max_unpreempted_ns,slow_ops,slow_ops_preemption_delayed,preemptions,latency_rep_mops\n",
    );
    for r in rows {
        let min = r.m.reps.iter().copied().fold(f64::INFINITY, f64::min) / 1e6;
        let max = r.m.reps.iter().copied().fold(0.0, f64::max) / 1e6;
        let top = best[&(r.workload.clone(), r.threads)];
        let _ = writeln!(
            out,
            "{},{},{},{},{:.4},{:.4},{:.4},{:.4},{:.4},{:.4},{},{},{},{},{},{},{},{},{},{:.4}",
            r.workload,
            r.write_pct,
            r.threads,
            r.imp.name(),
            r.mops(),
            min,
            max,
            r.m.spread(),
            if top > 0.0 { r.mops() / top } else { 0.0 },
            r.cpu_mops(),
            r.m.reps.len(),
            r.lat(0.5),
            r.lat(0.99),
            r.lat(0.999),
            r.lat_max(),
            r.m.max_unpreempted_ns,
            r.m.slow_ops.0,
            r.m.slow_ops.1,
            r.m.preemptions,
            r.m.latency_rep_ops / 1e6
        );
    }
    out
}

/// JSON rows (the whole report adds run settings and targets around them).
pub fn json_rows(rows: &[Row]) -> serde_json::Value {
    let best = best_by_group(rows);
    serde_json::Value::Array(
        rows.iter()
            .map(|r| {
                let top = best[&(r.workload.clone(), r.threads)];
                serde_json::json!({
                    "workload": r.workload,
                    "write_pct": r.write_pct,
                    "threads": r.threads,
                    "implementation": r.imp.name(),
                    "ops_per_sec_reps": r.m.reps,
                    "ops_per_cpu_sec_reps": r.m.cpu_reps,
                    "cpu_mops_median": r.cpu_mops(),
                    "mops_median": r.mops(),
                    "spread": r.m.spread(),
                    "vs_best": if top > 0.0 { r.mops() / top } else { 0.0 },
                    "latency_ns": {
                        "p50": r.lat(0.5), "p99": r.lat(0.99), "p999": r.lat(0.999), "max": r.lat_max(),
                        "ops_timed": r.m.latency.as_ref().map_or(0, |h| h.len()),
                        "involuntary_context_switches": r.m.preemptions,
                        "max_not_preemption_delayed": r.m.max_unpreempted_ns,
                        "ops_over_20us": r.m.slow_ops.0,
                        "ops_over_20us_preemption_delayed": r.m.slow_ops.1,
                    },
                    "latency_rep_mops": r.m.latency_rep_ops / 1e6,
                    "max_stop_wait_ms": r.m.max_stop_wait.as_secs_f64() * 1e3,
                })
            })
            .collect(),
    )
}

/// Draws throughput against threads, one panel per workload, one line per
/// implementation, into `path` (SVG).
pub fn plot(rows: &[Row], path: &Path, machine: &str) -> Result<(), Box<dyn std::error::Error>> {
    let mut workloads: Vec<String> = Vec::new();
    for r in rows {
        if !workloads.contains(&r.workload) {
            workloads.push(r.workload.clone());
        }
    }
    if workloads.is_empty() {
        return Ok(());
    }
    let mut impls: Vec<Impl> = rows.iter().map(|r| r.imp).collect();
    impls.sort();
    impls.dedup();
    let cols = if workloads.len() > 1 { 2 } else { 1 };
    let panel_rows = workloads.len().div_ceil(cols);
    let (w, h) = (560 * cols as u32 + 220, 380 * panel_rows as u32 + 40);
    let root = SVGBackend::new(path, (w, h)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(
        &format!("Throughput vs threads - {machine}"),
        ("sans-serif", 18),
    )?;
    let (plots, legend) = root.split_horizontally(w - 220);
    let panels = plots.split_evenly((panel_rows, cols));
    let max_threads = rows.iter().map(|r| r.threads).max().unwrap_or(1);
    for (panel, wl) in panels.iter().zip(&workloads) {
        let ymax = rows
            .iter()
            .filter(|r| &r.workload == wl)
            .map(Row::mops)
            .fold(0.0, f64::max)
            .max(0.001)
            * 1.1;
        let mut chart = ChartBuilder::on(panel)
            .caption(wl, ("sans-serif", 15))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(55)
            .build_cartesian_2d(0.5f64..(max_threads as f64 + 0.5), 0.0..ymax)?;
        chart
            .configure_mesh()
            .x_desc("threads")
            .y_desc("Mop/s (median)")
            .x_labels(max_threads.min(16) + 1)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .draw()?;
        for (i, imp) in impls.iter().enumerate() {
            let mut pts: Vec<(f64, f64)> = rows
                .iter()
                .filter(|r| &r.workload == wl && r.imp == *imp)
                .map(|r| (r.threads as f64, r.mops()))
                .collect();
            if pts.is_empty() {
                continue;
            }
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            let color = Palette99::pick(i).to_rgba();
            let stroke = color.stroke_width(if imp.is_noderep() { 3 } else { 1 });
            chart.draw_series(LineSeries::new(pts.clone(), stroke))?;
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
        }
    }
    for (i, imp) in impls.iter().enumerate() {
        let y = 30 + 22 * i as i32;
        let color = Palette99::pick(i).to_rgba();
        legend.draw(&PathElement::new(
            vec![(10, y), (40, y)],
            color.stroke_width(if imp.is_noderep() { 3 } else { 1 }),
        ))?;
        legend.draw(&Text::new(
            imp.name().to_string(),
            (48, y - 7),
            ("sans-serif", 13),
        ))?;
    }
    root.present()?;
    Ok(())
}
