//! The plots `apflab report` draws beside its tables, each written as SVG
//! and PNG with plotters:
//!
//! - makespan relative to the synchronous baseline against the fetch
//!   latency, one series per policy ([`makespan_points`]); a run's baseline
//!   is the run of the same config, seed and backend apart from its policy
//!   (and `[apf]`), with no async PF;
//! - cumulative distributions from the log2 histograms runs record: token
//!   latency (fault to "page ready" consumed) and, for `kv`, request latency
//!   ([`token_latency_cdfs`], [`request_latency_cdfs`]);
//! - where each run's vCPU time went: running, stalled, halted waiting for a
//!   page, idle ([`vcpu_time_bars`]).
//!
//! Text is laid out (and in PNG drawn) with a TrueType font read at run
//! time ([`FONT_PATHS`], or the file `APFLAB_FONT` names), as plotters'
//! bitmap backend has no font of its own.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::grouping::{baseline_key, baselines, repetition_key};
use crate::result::RunResult;
use apflab_abi::report::GuestReport;

/// One run on the makespan plot.
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

/// One curve of a CDF plot.
#[derive(Clone, Debug, PartialEq)]
pub struct CdfSeries {
    /// The curve's legend.
    pub label: String,
    /// `(latency, fraction of samples at or below it)`, latency ascending.
    pub points: Vec<(f64, f64)>,
    /// The result file it came from.
    pub source: PathBuf,
}

/// One config's bar of the vCPU time plot: where its vCPU time went, as
/// percentages of all of it (summed over vCPUs), the mean over its
/// repetitions, so runs of any length share one axis.
#[derive(Clone, Debug, PartialEq)]
pub struct VcpuTimeBar {
    /// The bar's label: the first run's id, the policy, the config values
    /// that tell it from the other bars, its makespan and runs.
    pub label: String,
    /// Executing guest code (or exits other than the ones below), %.
    pub running: f64,
    /// Stalled by the VMM on a not-resident page (sync faults), %.
    pub stalled: f64,
    /// Halted by the guest until a page is ready (async-halt), %.
    pub page_halted: f64,
    /// Otherwise halted in WFI: nothing to run, %.
    pub idle: f64,
    /// Half-width of the 95 % interval of the running share over the
    /// repetitions (0 for one run): the bar's error bar.
    pub running_ci: f64,
    /// The result files it is the mean of.
    pub sources: Vec<PathBuf>,
}

/// A figure of the report.
#[derive(Clone, Debug, PartialEq)]
pub enum Figure {
    /// Makespan over the sync baseline's against fetch latency.
    Makespan(Vec<MakespanPoint>),
    /// Cumulative distributions of a latency, in µs.
    Cdf {
        /// The figure's caption.
        caption: String,
        /// The x axis' description.
        x_desc: String,
        /// One curve per run.
        series: Vec<CdfSeries>,
    },
    /// Stacked vCPU time per run.
    VcpuTime(Vec<VcpuTimeBar>),
}

/// Most curves drawn on one CDF plot: more are unreadable (the report's
/// text says how many were left out).
pub const MAX_CDF_SERIES: usize = 12;

/// Every successful async run of `results` that has a baseline among them.
pub fn makespan_points(results: &[(PathBuf, RunResult)]) -> Vec<MakespanPoint> {
    let baselines = baselines(results);
    let mut points: Vec<MakespanPoint> = results
        .iter()
        .filter(|(_, r)| r.outcome.success && !r.is_sync_baseline())
        .filter_map(|(path, r)| {
            let base = *baselines.get(&baseline_key(r))?;
            let p50 = r
                .pager
                .as_ref()?
                .pointer("/fetch_latency/p50_ns")?
                .as_u64()?;
            Some(MakespanPoint {
                policy: r.policy_label(),
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

/// The CDF of a log2 histogram whose bucket `i` holds `[2^i, 2^(i+1))`
/// units: one point at each non-empty bucket's upper bound, scaled by
/// `scale` (to µs).
fn log2_cdf(buckets: impl IntoIterator<Item = (u32, u64)>, scale: f64) -> Vec<(f64, f64)> {
    let buckets = buckets.into_iter().filter(|&(i, _)| i < 63);
    bucket_cdf(buckets, |i| 1u64 << (i + 1), scale)
}

/// The CDF of a histogram whose bucket `i` holds values below `upper(i)`,
/// as (upper bound x `scale`, fraction at or below) points.
fn bucket_cdf(
    buckets: impl IntoIterator<Item = (u32, u64)>,
    upper: impl Fn(u32) -> u64,
    scale: f64,
) -> Vec<(f64, f64)> {
    let buckets: Vec<(u32, u64)> = buckets.into_iter().filter(|&(_, n)| n > 0).collect();
    let total: u64 = buckets.iter().map(|&(_, n)| n).sum();
    let mut seen = 0;
    buckets
        .into_iter()
        .map(|(i, n)| {
            seen += n;
            (upper(i) as f64 * scale, seen as f64 / total as f64)
        })
        .collect()
}

/// A short name for a run: the last folder of its result file (the matrix
/// point id, `r003`) with its policy.
pub fn run_label(path: &Path, r: &RunResult) -> String {
    let id = path
        .parent()
        .and_then(Path::file_name)
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    format!("{id} {}", r.policy_label())
}

/// One CDF per successful run for which `cdf` finds a non-empty one.
fn cdfs(
    results: &[(PathBuf, RunResult)],
    cdf: impl Fn(&RunResult) -> Option<Vec<(f64, f64)>>,
) -> Vec<CdfSeries> {
    results
        .iter()
        .filter(|(_, r)| r.outcome.success)
        .filter_map(|(path, r)| {
            let points = cdf(r).filter(|p| !p.is_empty())?;
            Some(CdfSeries {
                label: run_label(path, r),
                points,
                source: path.clone(),
            })
        })
        .collect()
}

/// Token latency CDFs of the successful runs with async page faults.
pub fn token_latency_cdfs(results: &[(PathBuf, RunResult)]) -> Vec<CdfSeries> {
    cdfs(results, |r| {
        let hist = r.apf.as_ref()?.get("token_latency_log2_us")?.as_array()?;
        let buckets = hist
            .iter()
            .enumerate()
            .map(|(i, n)| (i as u32, n.as_u64().unwrap_or(0)));
        Some(log2_cdf(buckets, 1.0))
    })
}

/// Request latency CDFs (µs) of the successful `kv` runs.
pub fn request_latency_cdfs(results: &[(PathBuf, RunResult)]) -> Vec<CdfSeries> {
    cdfs(results, |r| {
        let kv = r.guest.as_ref()?.metrics.kv.as_ref()?;
        if kv.latency_fine.is_empty() {
            return Some(log2_cdf(
                kv.latency_hist.iter().map(|(&i, &n)| (i, n)),
                1e-3,
            ));
        }
        let upper = |i: u32| GuestReport::latency_fine_bounds(i as usize).1;
        Some(bucket_cdf(
            kv.latency_fine.iter().map(|(&i, &n)| (i, n)),
            upper,
            1e-3,
        ))
    })
}

/// Where the vCPU time of each successful config went, over its
/// repetitions.
pub fn vcpu_time_bars(results: &[(PathBuf, RunResult)]) -> Vec<VcpuTimeBar> {
    let ok: Vec<&(PathBuf, RunResult)> =
        results.iter().filter(|(_, r)| r.outcome.success).collect();
    let varying = varying_keys(ok.iter().map(|(_, r)| r));
    // Configs in the order of their first run.
    let mut groups: Vec<(String, Vec<&(PathBuf, RunResult)>)> = Vec::new();
    for run in ok {
        let key = repetition_key(&run.1);
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, g)) => g.push(run),
            None => groups.push((key, vec![run])),
        }
    }
    groups
        .into_iter()
        .map(|(_, runs)| {
            let shares: Vec<[f64; 4]> = runs.iter().map(|(_, r)| vcpu_shares(r)).collect();
            let mean = |k: usize| shares.iter().map(|s| s[k]).sum::<f64>() / shares.len() as f64;
            let running: Vec<f64> = shares.iter().map(|s| s[0]).collect();
            let makespans: Vec<f64> = runs
                .iter()
                .map(|(_, r)| r.virtual_time_ns as f64 / 1e6)
                .collect();
            let (path, r) = runs[0];
            let values: Vec<String> = varying
                .iter()
                .filter_map(|k| Some(format!("{k}={}", config_value(r, k)?)))
                .collect();
            let mut label = run_label(path, r);
            if !values.is_empty() {
                label = format!("{label} {}", values.join(" "));
            }
            label = format!(
                "{label}: {} ms",
                crate::stats::Estimate::of(&makespans).value(1)
            );
            if runs.len() > 1 {
                label = format!("{label} ({} runs)", runs.len());
            }
            VcpuTimeBar {
                label,
                running: mean(0),
                stalled: mean(1),
                page_halted: mean(2),
                idle: mean(3),
                running_ci: crate::stats::Estimate::of(&running).half_width,
                sources: runs.iter().map(|(p, _)| p.clone()).collect(),
            }
        })
        .collect()
}

/// Running, stalled, halted for a page and idle shares of `r`'s vCPU time,
/// in percent.
fn vcpu_shares(r: &RunResult) -> [f64; 4] {
    let total = r.virtual_time_ns.saturating_mul(u64::from(r.vcpus)).max(1) as f64;
    let stalled: u64 = r.vmm.stalled_ns.iter().sum();
    let halted: u64 = r.vmm.halted_ns.iter().sum();
    let page_halted = r.guest.as_ref().map_or(0, |g| g.apf.halted_ns).min(halted);
    let running = r
        .virtual_time_ns
        .saturating_mul(u64::from(r.vcpus))
        .saturating_sub(stalled)
        .saturating_sub(halted);
    [running, stalled, page_halted, halted - page_halted].map(|ns| 100.0 * ns as f64 / total)
}

/// The dotted config keys (leaves of the parsed config, the seeds and the
/// policy left out) whose values differ between `runs`: what tells their
/// bars apart besides the policy.
fn varying_keys<'a>(runs: impl Iterator<Item = &'a RunResult>) -> Vec<String> {
    let mut seen: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();
    let mut count = 0;
    for r in runs {
        count += 1;
        let mut leaves = Vec::new();
        flatten("", &r.config.parsed, &mut leaves);
        for (k, v) in leaves {
            seen.entry(k).or_default().insert(v);
        }
    }
    seen.into_iter()
        .filter(|(k, values)| {
            values.len() > 1 && k != "seed" && k != "pager.seed" && !k.starts_with("policy")
        })
        .map(|(k, _)| k)
        .filter(|_| count > 1)
        .collect()
}

/// The leaves of a JSON value as `(dotted.key, value)`.
fn flatten(prefix: &str, v: &serde_json::Value, out: &mut Vec<(String, String)>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        serde_json::Value::String(s) => out.push((prefix.to_owned(), s.clone())),
        other => out.push((prefix.to_owned(), other.to_string())),
    }
}

/// The value of `r`'s config at dotted `key`, as text.
fn config_value(r: &RunResult, key: &str) -> Option<String> {
    let v = r
        .config
        .parsed
        .pointer(&format!("/{}", key.replace('.', "/")))?;
    Some(v.as_str().map_or_else(|| v.to_string(), str::to_owned))
}

/// Where the plots look for a TrueType font (Debian's `fonts-dejavu-core`
/// first), after the file named by the `APFLAB_FONT` environment variable.
pub const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

/// Why plots cannot have their font.
#[derive(Clone, Debug, thiserror::Error)]
pub enum FontError {
    /// No candidate file could be read.
    #[error(
        "plots need a TrueType font: none of {} (install fonts-dejavu-core, or name one with \
         APFLAB_FONT)",
        .candidates.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    NotFound {
        /// The files tried, in order.
        candidates: Vec<PathBuf>,
    },
    /// The first readable candidate is no font plotters can use.
    #[error("{}: not a TrueType font", .path.display())]
    NotTrueType {
        /// The file.
        path: PathBuf,
    },
}

/// Why a figure could not be saved.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// No font to lay text out with.
    #[error(transparent)]
    Font(#[from] FontError),
    /// Drawing the figure into `path` failed.
    #[error("{}: {source}", .path.display())]
    Draw {
        /// The file.
        path: PathBuf,
        /// The drawing backend's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The drawn file could not be moved to `path`.
    #[error("{}: {source}", .path.display())]
    Rename {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Registers the font text is measured and drawn with, once.
fn text_font() -> Result<(), FontError> {
    static FONT: OnceLock<Result<(), FontError>> = OnceLock::new();
    FONT.get_or_init(|| {
        let candidates: Vec<PathBuf> = std::env::var_os("APFLAB_FONT")
            .map(PathBuf::from)
            .into_iter()
            .chain(FONT_PATHS.iter().map(PathBuf::from))
            .collect();
        let (path, bytes) = candidates
            .iter()
            .find_map(|p| {
                apflab_files::read_regular(p, 64 << 20, "a font")
                    .ok()
                    .map(|b| (p, b))
            })
            .ok_or_else(|| FontError::NotFound {
                candidates: candidates.clone(),
            })?;
        // plotters keeps registered fonts for the life of the process.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| FontError::NotTrueType { path: path.clone() })
    })
    .clone()
}

impl Figure {
    /// Pixel size of the figure.
    fn size(&self) -> (u32, u32) {
        match self {
            Figure::VcpuTime(bars) => {
                let longest = bars.iter().map(|b| b.label.len()).max().unwrap_or(0) as u32;
                (
                    (460 + 7 * longest).clamp(760, 1600),
                    140 + 22 * bars.len().max(1) as u32,
                )
            }
            _ => (720, 440),
        }
    }

    /// The files [`Figure::save`] writes for `stem`: `<stem>.svg` and
    /// `<stem>.png`.
    pub fn files(stem: &Path) -> [PathBuf; 2] {
        [stem.with_extension("svg"), stem.with_extension("png")]
    }

    /// Writes the figure as `<stem>.svg` and `<stem>.png` ([`Figure::files`]),
    /// each drawn under a temporary name in the same folder and renamed
    /// into place; returns both paths.
    pub fn save(&self, stem: &Path) -> Result<[PathBuf; 2], PlotError> {
        let [svg, png] = Self::files(stem);
        let size = self.size();
        // Both backends lay text out with the registered font's metrics.
        text_font()?;
        // (The bitmap backend picks its format by the extension: the
        // temporary name keeps it.)
        let temporary = |p: &Path, ext: &str| {
            let name = p.file_stem().unwrap_or_default().to_string_lossy();
            p.with_file_name(format!(".{name}.{}.tmp.{ext}", std::process::id()))
        };
        let (svg_tmp, png_tmp) = (temporary(&svg, "svg"), temporary(&png, "png"));
        let drawn_into = |path: &Path| {
            let path = path.to_owned();
            move |source| PlotError::Draw { path, source }
        };
        let moved_to = |path: &Path| {
            let path = path.to_owned();
            move |source| PlotError::Rename { path, source }
        };
        let drawn = self
            .draw(SVGBackend::new(&svg_tmp, size).into_drawing_area())
            .map_err(drawn_into(&svg))
            .and_then(|()| {
                self.draw(BitMapBackend::new(&png_tmp, size).into_drawing_area())
                    .map_err(drawn_into(&png))
            })
            .and_then(|()| {
                std::fs::rename(&svg_tmp, &svg).map_err(moved_to(&svg))?;
                std::fs::rename(&png_tmp, &png).map_err(moved_to(&png))
            });
        if drawn.is_err() {
            let _ = std::fs::remove_file(&svg_tmp);
            let _ = std::fs::remove_file(&png_tmp);
        }
        drawn.map(|()| [svg, png])
    }

    fn draw<DB: DrawingBackend>(
        &self,
        root: DrawingArea<DB, Shift>,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
    where
        DB::ErrorType: 'static,
    {
        root.fill(&WHITE)?;
        match self {
            Figure::Makespan(points) => draw_makespan(&root, points)?,
            Figure::Cdf {
                caption,
                x_desc,
                series,
            } => draw_cdf(&root, caption, x_desc, series)?,
            Figure::VcpuTime(bars) => draw_vcpu_time(&root, bars)?,
        }
        root.present()?;
        Ok(())
    }
}

/// Log-axis bounds around `values`, with room either side.
fn log_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        return (1.0, 10.0);
    }
    ((lo / 2.0).max(0.01), (hi * 2.0).max(0.02))
}

type DrawResult<DB> = Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

fn draw_makespan<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    points: &[MakespanPoint],
) -> DrawResult<DB> {
    // Latencies span decades: a log axis.
    let (x_lo, x_hi) = log_range(points.iter().map(|p| p.latency_us));
    let (y_lo, y_hi) = points.iter().fold((1.0f64, 1.0f64), |(lo, hi), p| {
        (lo.min(p.ratio), hi.max(p.ratio))
    });
    let pad = ((y_hi - y_lo) * 0.15).max(0.05);
    let mut chart = ChartBuilder::on(root)
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
        .draw()
}

fn draw_cdf<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    caption: &str,
    x_desc: &str,
    series: &[CdfSeries],
) -> DrawResult<DB> {
    let shown = &series[..series.len().min(MAX_CDF_SERIES)];
    let (x_lo, x_hi) = log_range(shown.iter().flat_map(|s| s.points.iter().map(|p| p.0)));
    let mut chart = ChartBuilder::on(root)
        .caption(caption, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d((x_lo..x_hi).log_scale(), 0.0..1.02)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc("fraction at or below")
        .draw()?;
    for (i, s) in shown.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        // A step from 0 at the first bucket's lower bound.
        let first = s.points.first().map_or(x_lo, |p| p.0 / 2.0);
        let curve = std::iter::once((first, 0.0)).chain(s.points.iter().copied());
        chart
            .draw_series(LineSeries::new(curve, color.stroke_width(2)))?
            .label(s.label.as_str())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], color));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
}

/// The colours and names of the vCPU time plot's parts, in stacking order.
const VCPU_PARTS: [(&str, RGBColor); 4] = [
    ("running", RGBColor(66, 133, 244)),
    ("stalled (sync)", RGBColor(219, 68, 55)),
    ("halted for a page", RGBColor(244, 180, 0)),
    ("idle", RGBColor(189, 189, 189)),
];

fn draw_vcpu_time<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    bars: &[VcpuTimeBar],
) -> DrawResult<DB> {
    // The legend on a strip of its own above the chart, so that it covers
    // no bar.
    let (legend, root) = root.split_vertically(34);
    let mut x = 12;
    for (name, color) in VCPU_PARTS {
        legend.draw(&Rectangle::new([(x, 12), (x + 14, 24)], color.filled()))?;
        legend.draw(&Text::new(name, (x + 20, 10), ("sans-serif", 14)))?;
        x += 30 + 8 * name.len() as i32;
    }
    legend.draw(&Text::new(
        "| the 95 % interval of the running share",
        (x, 10),
        ("sans-serif", 14),
    ))?;
    let parts = |b: &VcpuTimeBar| [b.running, b.stalled, b.page_halted, b.idle];
    let n = bars.len().max(1);
    let labels: Vec<String> = bars.iter().map(|b| b.label.clone()).collect();
    let longest = labels.iter().map(String::len).max().unwrap_or(0) as u32;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Share of the vCPU time (summed over vCPUs), mean over repetitions",
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size((7 * longest).clamp(260, 1100))
        .build_cartesian_2d(0.0..100.0, -0.5..n as f64 - 0.5)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .light_line_style(WHITE)
        .x_labels(6)
        .x_label_formatter(&|x: &f64| format!("{x:.0}"))
        .y_labels(n)
        .y_label_formatter(&|y: &f64| {
            // Bar i is centred on n - 1 - i (the first config at the top).
            let i = y.round();
            if (y - i).abs() < 1e-6 && i >= 0.0 {
                labels.get(n - 1 - i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .x_desc("% of the vCPU time")
        .draw()?;
    for (k, (_, color)) in VCPU_PARTS.iter().enumerate() {
        let color = *color;
        chart.draw_series(bars.iter().enumerate().map(|(i, b)| {
            let p = parts(b);
            let start: f64 = p[..k].iter().sum();
            // The first config at the top.
            let y = (n - 1 - i) as f64;
            Rectangle::new(
                [(start, y - 0.35), (start + p[k], y + 0.35)],
                color.filled(),
            )
        }))?;
    }
    // Error bars: the running share's interval, at the end of its segment.
    chart.draw_series(
        bars.iter()
            .enumerate()
            .filter(|(_, b)| b.running_ci > 0.0)
            .map(|(i, b)| {
                let y = (n - 1 - i) as f64;
                PathElement::new(
                    vec![
                        ((b.running - b.running_ci).max(0.0), y),
                        ((b.running + b.running_ci).min(100.0), y),
                    ],
                    BLACK.stroke_width(2),
                )
            }),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log2_cdf_ends_at_one_at_the_last_buckets_upper_bound() {
        let cdf = log2_cdf([(0, 0), (3, 1), (4, 3)], 1.0);
        assert_eq!(cdf, vec![(16.0, 0.25), (32.0, 1.0)]);
        let scaled = log2_cdf([(10, 2)], 1e-3);
        assert_eq!(scaled, vec![(2.048, 1.0)]);
        assert!(log2_cdf([(5, 0)], 1.0).is_empty());
    }
}
