//! Grids of runs: an experiment file names a base config and axes (dotted
//! config keys with lists of values); `apflab matrix` runs every point of
//! the grid, each repetition with its own seed, and writes one CSV table
//! plus every run's `result.json`.
//!
//! ```toml
//! base = "../configs/quick.toml"   # relative to the experiment file
//! repetitions = 2                  # repetition r runs with seed = base seed + r
//! [axes]
//! "workload.kind" = ["cpu", "mixed"]
//! "guest.vcpus" = [1, 2]
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::config::{Config, ConfigError, LoadedConfig, sha256_hex};
use crate::result::RunResult;

/// An error in an experiment file.
#[derive(Debug, thiserror::Error)]
pub enum MatrixError {
    /// The experiment file itself.
    #[error(transparent)]
    File(Box<ConfigError>),
    /// A key of the experiment file has a bad value.
    #[error("{file}: key `{key}`: {message}")]
    Key {
        /// The experiment file.
        file: String,
        /// Dotted key.
        key: String,
        /// What was expected.
        message: String,
    },
    /// One point of the grid is not a valid config.
    #[error("{file}: run {point}: {error}")]
    Point {
        /// The experiment file.
        file: String,
        /// The axis values of the point.
        point: String,
        /// What is wrong with the resulting config.
        error: Box<ConfigError>,
    },
}

impl From<ConfigError> for MatrixError {
    fn from(e: ConfigError) -> Self {
        MatrixError::File(Box::new(e))
    }
}

/// An experiment file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExperiment {
    base: PathBuf,
    repetitions: Option<u32>,
    #[serde(default)]
    axes: toml::Table,
}

/// One run of the grid.
#[derive(Clone, Debug)]
pub struct Point {
    /// `r000`, `r001`, ...: also the run's directory name.
    pub id: String,
    /// Axis key → value, in axis order.
    pub values: Vec<(String, toml::Value)>,
    /// Repetition index.
    pub repetition: u32,
    /// The config of this run.
    pub config: LoadedConfig,
}

impl Point {
    /// `workload.kind=cpu guest.vcpus=2 rep=0`.
    pub fn label(&self) -> String {
        let mut parts: Vec<String> = self
            .values
            .iter()
            .map(|(k, v)| format!("{k}={}", value_text(v)))
            .collect();
        parts.push(format!("rep={}", self.repetition));
        parts.join(" ")
    }
}

/// A value as a CSV cell / label: strings without quotes.
fn value_text(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A parsed experiment: every point of its grid, already validated.
#[derive(Debug)]
pub struct Experiment {
    /// The experiment file's stem.
    pub name: String,
    /// Axis keys, in order.
    pub axes: Vec<String>,
    /// The grid, axes varying slowest-first, repetitions innermost.
    pub points: Vec<Point>,
}

/// Sets dotted `key` in `table` to `value`, creating tables on the way.
fn set_dotted(table: &mut toml::Table, key: &str, value: toml::Value) -> Result<(), String> {
    let mut parts = key.split('.').peekable();
    let mut t = table;
    while let Some(part) = parts.next() {
        if part.is_empty() {
            return Err("empty key segment".to_owned());
        }
        if parts.peek().is_none() {
            t.insert(part.to_owned(), value);
            return Ok(());
        }
        let entry = t
            .entry(part.to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        t = entry
            .as_table_mut()
            .ok_or_else(|| format!("`{part}` is not a table in the base config"))?;
    }
    Ok(())
}

impl Experiment {
    /// Reads an experiment file and builds (and validates) its whole grid.
    pub fn load(path: &Path) -> Result<Self, MatrixError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            file: file.clone(),
            error,
        })?;
        let raw: RawExperiment = crate::config::parse_toml(&file, &text)?;
        let dir = path.parent().unwrap_or(Path::new(""));
        let base_path = dir.join(&raw.base);
        let base_text = std::fs::read_to_string(&base_path).map_err(|source| MatrixError::Key {
            file: file.clone(),
            key: "base".to_owned(),
            message: format!("cannot read {}: {source}", base_path.display()),
        })?;
        let base_file = base_path.display().to_string();
        let base_dir = base_path.parent().unwrap_or(Path::new("")).to_path_buf();
        // Parse (and validate) the base alone first so its own errors point
        // into its own file.
        let base_config = Config::from_text(&base_file, &base_text, &base_dir)?;
        let base_table: toml::Table = crate::config::parse_toml(&base_file, &base_text)?;

        let repetitions = raw.repetitions.unwrap_or(1);
        if repetitions == 0 {
            return Err(MatrixError::Key {
                file,
                key: "repetitions".to_owned(),
                message: "0; expected at least 1".to_owned(),
            });
        }
        let mut axes: Vec<(String, Vec<toml::Value>)> = Vec::new();
        for (key, values) in raw.axes {
            let values = match values {
                toml::Value::Array(v) if !v.is_empty() => v,
                _ => {
                    return Err(MatrixError::Key {
                        file,
                        key: format!("axes.\"{key}\""),
                        message: "expected a non-empty array of values".to_owned(),
                    });
                }
            };
            axes.push((key, values));
        }

        let name = path.file_stem().map_or_else(
            || "experiment".to_owned(),
            |s| s.to_string_lossy().into_owned(),
        );
        let mut points = Vec::new();
        // Odometer over the axes: the last axis varies fastest.
        let mut index = vec![0usize; axes.len()];
        loop {
            let values: Vec<(String, toml::Value)> = axes
                .iter()
                .zip(&index)
                .map(|((k, vs), &i)| (k.clone(), vs[i].clone()))
                .collect();
            for repetition in 0..repetitions {
                let mut table = base_table.clone();
                let mut point_label: Vec<String> = values
                    .iter()
                    .map(|(k, v)| format!("{k}={}", value_text(v)))
                    .collect();
                point_label.push(format!("rep={repetition}"));
                let point_label = point_label.join(" ");
                for (k, v) in &values {
                    set_dotted(&mut table, k, v.clone()).map_err(|message| MatrixError::Key {
                        file: file.clone(),
                        key: format!("axes.\"{k}\""),
                        message,
                    })?;
                }
                // Repetitions differ by seed only (the emu backend is
                // deterministic, so equal seeds would give equal runs).
                let seed = match table.get("seed") {
                    Some(toml::Value::Integer(s)) => *s,
                    _ => base_config.seed as i64,
                };
                table.insert(
                    "seed".to_owned(),
                    toml::Value::Integer(seed.wrapping_add(i64::from(repetition))),
                );
                let run_text = toml::to_string(&table).expect("a TOML table serializes");
                let id = format!("r{:03}", points.len());
                let config = Config::from_text(
                    &format!("{base_file} [{point_label}]"),
                    &run_text,
                    &base_dir,
                )
                .map_err(|error| MatrixError::Point {
                    file: file.clone(),
                    point: point_label.clone(),
                    error: Box::new(error),
                })?;
                points.push(Point {
                    id: id.clone(),
                    values: values.clone(),
                    repetition,
                    config: LoadedConfig {
                        path: base_path.clone(),
                        name: format!("{name}/{id}"),
                        sha256: sha256_hex(run_text.as_bytes()),
                        config,
                    },
                });
            }
            // Advance the odometer.
            let mut axis = axes.len();
            loop {
                if axis == 0 {
                    return Ok(Experiment {
                        name,
                        axes: axes.into_iter().map(|(k, _)| k).collect(),
                        points,
                    });
                }
                axis -= 1;
                index[axis] += 1;
                if index[axis] < axes[axis].1.len() {
                    break;
                }
                index[axis] = 0;
            }
        }
    }
}

/// Columns of the matrix table after the axis columns.
const COLUMNS: &[&str] = &[
    "rep",
    "seed",
    "success",
    "exit",
    "virtual_time_ns",
    "tasks_completed",
    "context_switches",
    "cpu_ops",
    "pages_verified",
    "mismatches",
    "requests",
    "latency_p50_ns",
    "latency_p99_ns",
    "instructions",
    "exits_total",
    "halted_ns_total",
    "wall_time_ms",
    "result",
];

/// Writes the matrix table, one row per run, as CSV.
pub struct Table {
    writer: csv::Writer<std::fs::File>,
}

impl Table {
    /// Creates `path` and writes the header.
    pub fn create(path: &Path, axes: &[String]) -> std::io::Result<Self> {
        let mut writer = csv::Writer::from_path(path)?;
        let header: Vec<&str> = std::iter::once("run")
            .chain(axes.iter().map(String::as_str))
            .chain(COLUMNS.iter().copied())
            .collect();
        writer.write_record(&header)?;
        writer.flush()?;
        Ok(Table { writer })
    }

    /// Appends one run (flushed, so an interrupted matrix keeps its rows).
    /// `result` is `Err(message)` for a run that produced no results.
    pub fn append(
        &mut self,
        point: &Point,
        result: Result<(&RunResult, &Path), &str>,
    ) -> std::io::Result<()> {
        let mut row: Vec<String> = vec![point.id.clone()];
        row.extend(point.values.iter().map(|(_, v)| value_text(v)));
        row.push(point.repetition.to_string());
        row.push(point.config.config.seed.to_string());
        match result {
            Ok((r, path)) => {
                let g = r.guest.as_ref();
                let m = g.map(|g| &g.metrics);
                let opt = |v: Option<u64>| v.map_or_else(String::new, |v| v.to_string());
                let pages = m.and_then(|m| {
                    m.memtouch
                        .as_ref()
                        .map(|t| t.pages_verified)
                        .or(m.kv.as_ref().map(|k| k.pages_verified))
                });
                let mismatches = m.and_then(|m| {
                    m.memtouch
                        .as_ref()
                        .map(|t| t.mismatches)
                        .or(m.kv.as_ref().map(|k| k.mismatches))
                });
                let kv = m.and_then(|m| m.kv.as_ref());
                row.extend([
                    r.outcome.success.to_string(),
                    r.outcome.exit.clone(),
                    r.virtual_time_ns.to_string(),
                    opt(g.map(|g| u64::from(g.tasks_completed))),
                    opt(g.map(|g| g.context_switches)),
                    opt(m.and_then(|m| m.cpu.as_ref().map(|c| c.ops))),
                    opt(pages),
                    opt(mismatches),
                    opt(kv.map(|k| k.requests)),
                    opt(kv.map(|k| k.latency.p50_ns)),
                    opt(kv.map(|k| k.latency.p99_ns)),
                    r.vmm.instructions.to_string(),
                    r.vmm.exits_total.to_string(),
                    r.vmm.halted_ns.iter().sum::<u64>().to_string(),
                    format!("{:.1}", r.wall.wall_time_ms),
                    path.display().to_string(),
                ]);
            }
            Err(message) => {
                row.extend(["false".to_owned(), format!("error: {message}")]);
                row.resize(1 + point.values.len() + COLUMNS.len(), String::new());
            }
        }
        self.writer.write_record(&row)?;
        self.writer.flush()
    }
}

/// Counts of a finished matrix.
#[derive(Debug, Default)]
pub struct MatrixSummary {
    /// Runs that succeeded.
    pub ok: usize,
    /// Runs that failed (guest or VMM), by run id with the reason.
    pub failed: BTreeMap<String, String>,
}
