//! The plot `apflab report` writes beside its tables (SVG, with plotters):
//! each async run's makespan relative to its synchronous baseline, against
//! the fetch latency its pager measured, one series per policy. A run's
//! baseline is the run of the same config, seed and backend apart from its
//! policy (and `[apf]`), with no async PF.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::result::RunResult;

/// One run on the plot.
#[derive(Clone, Debug, PartialEq)]
pub struct MakespanPoint {
    /// The policy (the series).
    pub policy: String,
    /// Median fetch latency of the run, µs.
    pub latency_us: f64,
    /// Its makespan over its baseline's.
    pub ratio: f64,
    /// Its result file.
    pub source: PathBuf,
}

/// The config of `r` without what tells variants apart, as a key.
fn baseline_key(r: &RunResult) -> String {
    let mut parsed = r.config.parsed.clone();
    if let Some(table) = parsed.as_object_mut() {
        table.remove("policy");
        table.remove("apf");
    }
    format!("{} {parsed}", r.backend)
}

/// Every successful async run of `results` that has a baseline among them.
pub fn makespan_points(results: &[(PathBuf, RunResult)]) -> Vec<MakespanPoint> {
    let ok = results.iter().filter(|(_, r)| r.outcome.success);
    let baselines: BTreeMap<String, u64> = ok
        .clone()
        .filter(|(_, r)| r.is_sync_baseline())
        .map(|(_, r)| (baseline_key(r), r.virtual_time_ns))
        .collect();
    let mut points: Vec<MakespanPoint> = ok
        .filter(|(_, r)| !r.is_sync_baseline())
        .filter_map(|(path, r)| {
            let base = *baselines.get(&baseline_key(r))?;
            let p50 = r
                .pager
                .as_ref()?
                .pointer("/fetch_latency/p50_ns")?
                .as_u64()?;
            Some(MakespanPoint {
                policy: r.policy.as_ref()?.module.clone(),
                latency_us: p50 as f64 / 1e3,
                ratio: r.virtual_time_ns as f64 / base.max(1) as f64,
                source: path.clone(),
            })
        })
        .collect();
    points.sort_by(|a, b| {
        (&a.policy, a.latency_us)
            .partial_cmp(&(&b.policy, b.latency_us))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    points
}

/// Draws `points` into the SVG file `path`.
pub fn makespan_svg(points: &[MakespanPoint], path: &Path) -> Result<(), String> {
    let draw = || -> Result<(), Box<dyn std::error::Error>> {
        let root = SVGBackend::new(path, (720, 440)).into_drawing_area();
        root.fill(&WHITE)?;
        let (lo, hi) = points.iter().fold((f64::MAX, f64::MIN), |(lo, hi), p| {
            (lo.min(p.latency_us), hi.max(p.latency_us))
        });
        // Some room either side, and a log axis: latencies span decades.
        let (x_lo, x_hi) = ((lo / 2.0).max(0.01), hi * 2.0);
        let (y_lo, y_hi) = points.iter().fold((1.0f64, 1.0f64), |(lo, hi), p| {
            (lo.min(p.ratio), hi.max(p.ratio))
        });
        let pad = ((y_hi - y_lo) * 0.15).max(0.05);
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "makespan relative to the synchronous baseline",
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .build_cartesian_2d((x_lo..x_hi).log_scale(), (y_lo - pad)..(y_hi + pad))?;
        chart
            .configure_mesh()
            .x_desc("median fetch latency (µs)")
            .y_desc("makespan / sync")
            .draw()?;
        chart.draw_series(LineSeries::new([(x_lo, 1.0), (x_hi, 1.0)], BLACK.mix(0.4)))?;
        let mut by_policy: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
        for p in points {
            by_policy
                .entry(&p.policy)
                .or_default()
                .push((p.latency_us, p.ratio));
        }
        for (i, (policy, series)) in by_policy.into_iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(
                    series.iter().copied(),
                    color.stroke_width(2),
                ))?
                .label(policy)
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], color));
            chart.draw_series(series.iter().map(|&xy| Circle::new(xy, 4, color.filled())))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| format!("{}: {e}", path.display()))
}
