//! Grids of runs: an experiment file names a base config and axes (dotted
//! config keys with lists of values); `apflab matrix` runs every point of
//! the grid, each repetition with its own seed, and writes one CSV table
//! plus every run's `result.json`.
//!
//! ```toml
//! base = "../configs/quick.toml"   # relative to the experiment file
//! repetitions = 2                  # repetition r runs with seed = base seed + r
//!                                  # (and pager.seed = base pager.seed + r)
//! [set]                            # the same in every point, over the base
//! "backend.max_virtual_ms" = 60000
//! [axes]
//! "workload.kind" = ["cpu", "mixed"]
//! "guest.vcpus" = [1, 2]
//! # Several keys varied together (one column each in the table), in an
//! # experiment whose other axes do not name them:
//! # "guest.vcpus,workload.tasks" = [[1, 1], [2, 2], [4, 4]]
//! # A whole table as a value (here a sync baseline and a fixed decision):
//! policy = [{ module = "sync" }, { decision = { not_present = "sdei", ready = "interrupt", initiation = "host", sleep = "reschedule" } }]
//! ```
//!
//! A matrix folder holds, for a point `r003`:
//!
//! - `points/r003.toml`: the point's config, the exact text whose hash its
//!   result records;
//! - `r003/result.json` and `r003/console.log`: written by
//!   `apflab run points/r003.toml --name <experiment>/r003 --base-dir <base
//!   config's folder>` (a process of its own per point: the emu CPU engine
//!   is not shared between runs) into `.partial-r003/` and renamed into
//!   place once complete, so an interrupted matrix leaves no half-written
//!   result;
//! - `table.csv`: one row per point with results, one column per axis.
//!
//! A point whose `result.json` records the same config hash and backend
//! (and this schema version) is done: it is not run again (`--force`
//! reruns it). Local runs ([`Runner`]) and Slurm array tasks
//! ([`crate::slurm`]) write the same folder.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use apflab_pager::FaultPath;
use serde::Deserialize;

use crate::config::{Backend, Config, ConfigError, LoadedConfig, sha256_hex};
use crate::report::{ReportError, find_results, load_result};
use crate::result::{RunResult, SCHEMA_VERSION};

/// An error in an experiment file, its selection or its results folder:
/// all bad input (exit status 2).
#[derive(Debug, thiserror::Error)]
pub enum MatrixError {
    /// The experiment file itself.
    #[error(transparent)]
    File(Box<ConfigError>),
    /// A key of the experiment file (or a command-line option) has a bad
    /// value.
    #[error("{file}: key `{key}`: {message}")]
    Key {
        /// The experiment file.
        file: String,
        /// Dotted key (`axes."guest.vcpus"`), or the option (`--filter`).
        key: String,
        /// What was expected.
        message: String,
    },
    /// One point of the grid is not a valid config, because of how its
    /// axis values combine with the base config.
    #[error("{file}: run {point}: {detail}")]
    Point {
        /// The experiment file.
        file: String,
        /// The axis values of the point.
        point: String,
        /// What is wrong with the resulting config (key and message).
        detail: String,
    },
    /// The results folder cannot be used.
    #[error("{path}: {message}")]
    Folder {
        /// The folder, or the file in it.
        path: String,
        /// Why.
        message: String,
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
    /// Dotted keys set the same in every point, over the base config.
    #[serde(default)]
    set: toml::Table,
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
    /// The config's text (what `config.sha256` hashes).
    pub text: String,
    /// Where the config's relative paths are taken from: the base
    /// config's directory.
    pub base_dir: PathBuf,
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

    /// The engine this point runs on, `--backend` (`backend`) first.
    pub fn backend(&self, backend: Option<Backend>) -> Backend {
        backend.unwrap_or(self.config.config.backend.kind)
    }
}

/// A value as a CSV cell / label: strings without quotes, a table as its
/// leaf values joined by `/` (`{ module = "sync" }` is `sync`), short
/// enough for a column.
pub fn value_text(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Table(t) => t.values().map(value_text).collect::<Vec<_>>().join("/"),
        other => other.to_string(),
    }
}

/// What one value of the axis `key` sets: `(key, value)`, or for keys varied
/// together (`"a,b"`, checked at load to have an array of as many values)
/// each key with its own value.
fn assignments(key: &str, value: &toml::Value) -> Vec<(String, toml::Value)> {
    if !key.contains(',') {
        return vec![(key.to_owned(), value.clone())];
    }
    let parts = value.as_array().map_or(&[][..], Vec::as_slice);
    key.split(',')
        .map(|k| k.trim().to_owned())
        .zip(parts.iter().cloned())
        .collect()
}

/// A parsed experiment: every point of its grid, already validated.
#[derive(Debug)]
pub struct Experiment {
    /// The experiment file as named by the user.
    pub file: String,
    /// The experiment file's stem.
    pub name: String,
    /// Axis keys, in order, each with its values.
    pub axes: Vec<(String, Vec<toml::Value>)>,
    /// Repetitions of each combination of axis values.
    pub repetitions: u32,
    /// The grid, axes varying slowest-first, repetitions innermost.
    pub points: Vec<Point>,
}

/// Sets dotted `key` in `table` to `value`, creating tables on the way.
/// Sets the seeds of repetition `repetition` in a point's config `table`:
/// the top-level `seed` and, where the point has far memory, `pager.seed`,
/// each its value in the point (or the base config's) plus `repetition`.
/// Repetition 0 keeps the configured seeds.
fn vary_seeds(table: &mut toml::Table, base: &Config, repetition: u32) {
    let offset = |seed: Option<&toml::Value>, default: u64| {
        let seed = match seed {
            Some(toml::Value::Integer(s)) => *s,
            _ => default as i64,
        };
        toml::Value::Integer(seed.wrapping_add(i64::from(repetition)))
    };
    let seed = offset(table.get("seed"), base.seed);
    table.insert("seed".to_owned(), seed);
    if let Some(toml::Value::Table(pager)) = table.get_mut("pager") {
        let default = base.pager.as_ref().map_or(0, |p| p.seed);
        let seed = offset(pager.get("seed"), default);
        pager.insert("seed".to_owned(), seed);
    }
}

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

/// The error of a point whose config is invalid: named after the axis when
/// the bad key is one (an unknown axis, or a value the key does not
/// take), else after the point.
fn point_error(
    file: &str,
    label: &str,
    values: &[(String, toml::Value)],
    error: ConfigError,
) -> MatrixError {
    let (key, message) = match error {
        ConfigError::Key { key, message, .. } => (Some(key), message),
        ConfigError::Syntax { message, .. } => (None, message),
        ConfigError::Read { file, error } => (None, format!("{file}: {error}")),
    };
    if let Some(key) = &key
        && let Some((axis, value)) = values
            .iter()
            .find(|(axis, _)| axis == key || key.starts_with(&format!("{axis}.")))
    {
        let message = if let Some(expected) = message.strip_prefix("unknown key; ") {
            format!("`{key}` is not a config key; {expected}")
        } else {
            format!("value {value}: {message}")
        };
        return MatrixError::Key {
            file: file.to_owned(),
            key: format!("axes.\"{axis}\""),
            message,
        };
    }
    MatrixError::Point {
        file: file.to_owned(),
        point: label.to_owned(),
        detail: match key {
            Some(key) => format!("key `{key}`: {message}"),
            None => message,
        },
    }
}

impl Experiment {
    /// Reads an experiment file and builds (and validates) its whole grid.
    pub fn load(path: &Path) -> Result<Self, MatrixError> {
        let file = path.display().to_string();
        let text = read_config(path).map_err(|error| ConfigError::Read {
            file: file.clone(),
            error,
        })?;
        let raw: RawExperiment = crate::config::parse_toml(&file, &text)?;
        let dir = path.parent().unwrap_or(Path::new(""));
        let base_path = dir.join(&raw.base);
        let base_text = read_config(&base_path).map_err(|source| MatrixError::Key {
            file: file.clone(),
            key: "base".to_owned(),
            message: format!("cannot read {}: {source}", base_path.display()),
        })?;
        let base_file = base_path.display().to_string();
        let base_dir = base_path.parent().unwrap_or(Path::new("")).to_path_buf();
        // Parse (and validate) the base alone first so its own errors point
        // into its own file.
        let base_config = Config::from_text(&base_file, &base_text, &base_dir)?;
        let mut base_table: toml::Table = crate::config::parse_toml(&base_file, &base_text)?;
        for (key, value) in raw.set {
            set_dotted(&mut base_table, &key, value).map_err(|message| MatrixError::Key {
                file: file.clone(),
                key: format!("set.\"{key}\""),
                message,
            })?;
        }

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
                toml::Value::Array(_) => {
                    return Err(MatrixError::Key {
                        file,
                        key: format!("axes.\"{key}\""),
                        message: "an empty list makes the grid empty; expected at least one value"
                            .to_owned(),
                    });
                }
                _ => {
                    return Err(MatrixError::Key {
                        file,
                        key: format!("axes.\"{key}\""),
                        message: "expected a non-empty array of values".to_owned(),
                    });
                }
            };
            if key.split(',').any(|k| k.trim() == "rep") {
                return Err(MatrixError::Key {
                    file,
                    key: format!("axes.\"{key}\""),
                    message: "`rep` is not a config key (set `repetitions` instead)".to_owned(),
                });
            }
            let keys: Vec<&str> = key.split(',').map(str::trim).collect();
            if keys.len() > 1 {
                if keys.iter().any(|k| k.is_empty()) {
                    return Err(MatrixError::Key {
                        file,
                        key: format!("axes.\"{key}\""),
                        message: "an empty key in a list of keys varied together; expected \
                                  `\"a.b,c.d\"`"
                            .to_owned(),
                    });
                }
                if let Some(bad) = values
                    .iter()
                    .find(|v| v.as_array().is_none_or(|a| a.len() != keys.len()))
                {
                    return Err(MatrixError::Key {
                        file,
                        key: format!("axes.\"{key}\""),
                        message: format!(
                            "value {bad}: {} keys vary together, so each value is an array of {} \
                             values, one per key",
                            keys.len(),
                            keys.len()
                        ),
                    });
                }
            }
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
                .flat_map(|((k, vs), &i)| assignments(k, &vs[i]))
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
                // deterministic, so equal seeds would give equal runs), and
                // by every seed that draws: the guest's (`seed`: random page
                // order, kv keys) and the pager's (`pager.seed`: fetch
                // latencies, the pages resident at boot).
                vary_seeds(&mut table, &base_config, repetition);
                let run_text = toml::to_string(&table).expect("a TOML table serializes");
                let id = format!("r{:03}", points.len());
                let config = Config::from_text(
                    &format!("{base_file} [{point_label}]"),
                    &run_text,
                    &base_dir,
                )
                .map_err(|error| point_error(&file, &point_label, &values, error))?;
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
                    text: run_text,
                    base_dir: base_dir.clone(),
                });
            }
            // Advance the odometer.
            let mut axis = axes.len();
            loop {
                if axis == 0 {
                    return Ok(Experiment {
                        file,
                        name,
                        axes,
                        repetitions,
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

    /// Axis keys, in order, a key varied together with others as a column
    /// of its own.
    pub fn axis_names(&self) -> Vec<String> {
        self.columns().into_iter().map(|(k, _)| k).collect()
    }

    /// Every key the axes set, with the values it takes: an axis of
    /// several keys gives one entry per key.
    fn columns(&self) -> Vec<(String, Vec<toml::Value>)> {
        let mut columns: Vec<(String, Vec<toml::Value>)> = Vec::new();
        for (key, values) in &self.axes {
            let start = columns.len();
            for value in values {
                for (n, (k, v)) in assignments(key, value).into_iter().enumerate() {
                    match columns.get_mut(start + n) {
                        Some((_, vs)) => {
                            if !vs.contains(&v) {
                                vs.push(v);
                            }
                        }
                        None => columns.push((k, vec![v])),
                    }
                }
            }
        }
        columns
    }

    /// Indices (into [`Experiment::points`]) of the points every filter
    /// admits. A filter is `AXIS=VALUE` (`rep=N` for a repetition);
    /// several on one axis admit any of their values.
    pub fn select(&self, filters: &[String]) -> Result<Vec<usize>, MatrixError> {
        let mut wanted: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for filter in filters {
            let bad = |message: String| MatrixError::Key {
                file: self.file.clone(),
                key: format!("--filter {filter}"),
                message,
            };
            let (axis, value) = filter
                .split_once('=')
                .ok_or_else(|| bad("expected AXIS=VALUE".to_owned()))?;
            let (axis, value) = (axis.trim(), value.trim());
            if axis == "rep" {
                match value.parse::<u32>() {
                    Ok(r) if r < self.repetitions => {}
                    _ => {
                        return Err(bad(format!(
                            "no repetition `{value}`; expected 0..{}",
                            self.repetitions
                        )));
                    }
                }
            } else {
                let columns = self.columns();
                let Some((_, values)) = columns.iter().find(|(k, _)| k == axis) else {
                    return Err(bad(format!(
                        "`{axis}` is not an axis of this experiment; its axes: {}",
                        columns
                            .iter()
                            .map(|(k, _)| k.as_str())
                            .chain(["rep"])
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                };
                if !values.iter().any(|v| value_matches(v, value)) {
                    return Err(bad(format!(
                        "`{value}` is not a value of axis `{axis}`; its values: {}",
                        values.iter().map(value_text).collect::<Vec<_>>().join(", ")
                    )));
                }
            }
            wanted
                .entry(axis.to_owned())
                .or_default()
                .push(value.to_owned());
        }
        let selected: Vec<usize> = self
            .points
            .iter()
            .enumerate()
            .filter(|(_, p)| {
                wanted.iter().all(|(axis, values)| {
                    if axis == "rep" {
                        values.iter().any(|v| v.parse() == Ok(p.repetition))
                    } else {
                        p.values
                            .iter()
                            .find(|(k, _)| k == axis)
                            .is_some_and(|(_, pv)| values.iter().any(|v| value_matches(pv, v)))
                    }
                })
            })
            .map(|(i, _)| i)
            .collect();
        if selected.is_empty() {
            return Err(MatrixError::Key {
                file: self.file.clone(),
                key: "--filter".to_owned(),
                message: format!("no point has all of {}", filters.join(", ")),
            });
        }
        Ok(selected)
    }

    /// Checks that every point in `selected` can run here before the first
    /// one starts: its engine exists in this build (and, with `host`, on
    /// this host: the kvm backend needs `/dev/kvm`), and its fault path
    /// suits its engine.
    pub fn preflight(
        &self,
        selected: &[usize],
        backend: Option<Backend>,
        host: bool,
    ) -> Result<(), MatrixError> {
        let kvm_missing = std::sync::OnceLock::new();
        for point in selected.iter().map(|&i| &self.points[i]) {
            let engine = point.backend(backend);
            let whence = || -> (String, String) {
                if backend.is_some() {
                    return (self.file.clone(), "--backend".to_owned());
                }
                if point.values.iter().any(|(k, _)| k == "backend.kind") {
                    return (self.file.clone(), "axes.\"backend.kind\"".to_owned());
                }
                (
                    point.config.path.display().to_string(),
                    "backend.kind".to_owned(),
                )
            };
            let why = match engine {
                Backend::Emu if !cfg!(feature = "emu") => Some(
                    "this apflab was built without the `emu` feature; use --backend kvm".to_owned(),
                ),
                Backend::Kvm if host => kvm_missing
                    .get_or_init(apflab_vmm::kvm::unavailable_reason)
                    .clone(),
                _ => None,
            };
            if let Some(why) = why {
                let (file, key) = whence();
                return Err(MatrixError::Point {
                    file,
                    point: format!("{} ({})", point.id, point.label()),
                    detail: format!("key `{key}` = \"{}\": {why}", engine.name()),
                });
            }
            if engine == Backend::Emu
                && point
                    .config
                    .config
                    .pager
                    .as_ref()
                    .is_some_and(|p| p.fault_path == FaultPath::Kernel)
            {
                let (file, key) = whence();
                return Err(MatrixError::Point {
                    file,
                    point: format!("{} ({})", point.id, point.label()),
                    detail: format!(
                        "key `{key}` = \"emu\" with pager.fault_path = \"kernel\": pages served \
                         in the host kernel's fault path need the kvm backend"
                    ),
                });
            }
        }
        Ok(())
    }
}

/// Whether axis value `v` is what `text` (from `--filter`) names: the same
/// text, or the same number (`5` names `5.0`).
fn value_matches(v: &toml::Value, text: &str) -> bool {
    if value_text(v) == text {
        return true;
    }
    let number = match v {
        toml::Value::Integer(i) => Some(*i as f64),
        toml::Value::Float(f) => Some(*f),
        _ => None,
    };
    number.is_some_and(|n| text.parse::<f64>() == Ok(n))
}

/// `apflab run`'s loading of a config, with the two things a matrix point
/// sets: the name its result records (`name`, default the file's stem) and
/// where its relative paths are taken from (`base_dir`, default the file's
/// directory).
pub fn load_config_as(
    path: &Path,
    name: Option<&str>,
    base_dir: Option<&Path>,
) -> Result<LoadedConfig, ConfigError> {
    let mut loaded = match base_dir {
        None => Config::load(path)?,
        Some(dir) => {
            let file = path.display().to_string();
            let text = read_config(path).map_err(|error| ConfigError::Read {
                file: file.clone(),
                error,
            })?;
            LoadedConfig {
                path: path.to_owned(),
                name: path
                    .file_stem()
                    .map_or_else(|| "config".to_owned(), |s| s.to_string_lossy().into_owned()),
                sha256: sha256_hex(text.as_bytes()),
                config: Config::from_text(&file, &text, dir)?,
            }
        }
    };
    if let Some(name) = name {
        loaded.name = name.to_owned();
    }
    Ok(loaded)
}

/// Where a matrix's files are, below its folder.
#[derive(Clone, Debug)]
pub struct Layout {
    /// The matrix folder.
    pub root: PathBuf,
}

impl Layout {
    /// `root/table.csv`.
    pub fn table(&self) -> PathBuf {
        self.root.join("table.csv")
    }

    /// `root/points/ID.toml`: the config of point `id`.
    pub fn point_config(&self, id: &str) -> PathBuf {
        self.root.join("points").join(format!("{id}.toml"))
    }

    /// `root/ID`: the results of point `id`.
    pub fn run_dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    /// `root/ID/result.json`.
    pub fn result(&self, id: &str) -> PathBuf {
        self.run_dir(id).join("result.json")
    }

    /// `root/.partial-ID`: where a run of point `id` writes until it is
    /// complete (hidden, so `apflab report` never reads it).
    pub fn partial(&self, id: &str) -> PathBuf {
        self.root.join(format!(".partial-{id}"))
    }

    /// Makes the folder ready for runs: it is created if missing; it must
    /// not be something other than a folder, and (unless `force`) must not
    /// hold results of another schema version. Leftovers of interrupted
    /// runs are removed.
    pub fn prepare(&self, force: bool) -> Result<(), MatrixError> {
        let folder_error = |message: String| MatrixError::Folder {
            path: self.root.display().to_string(),
            message,
        };
        if self.root.exists() && !self.root.is_dir() {
            return Err(folder_error(
                "exists and is not a directory; expected a results folder".to_owned(),
            ));
        }
        std::fs::create_dir_all(self.root.join("points"))
            .map_err(|e| folder_error(format!("cannot create: {e}")))?;
        if !force {
            self.check_schema()?;
        }
        if let Ok(entries) = std::fs::read_dir(&self.root) {
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().starts_with(".partial-") {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        Ok(())
    }

    /// Every `result.json` in the folder has this apflab's schema version.
    pub fn check_schema(&self) -> Result<(), MatrixError> {
        let found = find_results(&self.root).map_err(|e| MatrixError::Folder {
            path: self.root.display().to_string(),
            message: e.to_string(),
        })?;
        for path in found {
            if let Err(ReportError::Schema { path, found, .. }) = load_result(&path) {
                return Err(MatrixError::Folder {
                    path,
                    message: format!(
                        "key `schema_version`: {found}; this apflab writes {SCHEMA_VERSION}. \
                         The folder holds results of another apflab version: use another \
                         folder, or --force to rerun every point"
                    ),
                });
            }
        }
        Ok(())
    }

    /// Writes the config of every point in `points` (unchanged files are
    /// left alone).
    pub fn write_points<'p>(
        &self,
        points: impl IntoIterator<Item = &'p Point>,
    ) -> std::io::Result<()> {
        for point in points {
            let path = self.point_config(&point.id);
            if std::fs::read_to_string(&path).is_ok_and(|t| t == point.text) {
                continue;
            }
            write_atomic(&path, point.text.as_bytes())?;
        }
        Ok(())
    }

    /// The results already in the folder for `point` run on `backend`:
    /// `None` if missing, of another config, another guest kernel or
    /// another engine. (A run is deterministic given those and the VMM
    /// build; after changing the VMM, `--force` reruns.)
    pub fn existing(&self, point: &Point, backend: Backend) -> Option<RunResult> {
        let path = self.result(&point.id);
        if !path.is_file() {
            return None;
        }
        let r = load_result(&path).ok()?;
        if r.config.sha256 != point.config.sha256 || r.backend != backend.name() {
            return None;
        }
        let ram = point.config.config.guest.memory_mib.saturating_mul(1 << 20);
        let kernel =
            apflab_files::read_regular(&point.config.config.kernel_path, ram, "guest RAM").ok()?;
        (r.config.kernel_sha256 == sha256_hex(&kernel)).then_some(r)
    }
}

/// A config or experiment file's text: a regular file of at most
/// [`crate::config::MAX_CONFIG_BYTES`].
fn read_config(path: &Path) -> std::io::Result<String> {
    apflab_files::read_regular_to_string(path, crate::config::MAX_CONFIG_BYTES, "a config file")
}

/// Writes `bytes` to a temporary name beside `path` and renames it onto
/// `path`, so a reader never sees a half-written file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let name = path
        .file_name()
        .map_or_else(|| "file".to_owned(), |n| n.to_string_lossy().into_owned());
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// What a matrix keeps of a finished point for its table and comparison:
/// a few hundred bytes, not the whole result (which stays in the point's
/// `result.json`), so a matrix of many points runs in flat memory.
#[derive(Clone, Debug, PartialEq)]
pub struct PointRow {
    /// The cells of [`COLUMNS`] from `success` to `wall_time_ms`.
    pub cells: Vec<String>,
    /// [`RunResult::is_sync_baseline`].
    pub sync_baseline: bool,
    /// [`RunResult::policy_label`].
    pub policy: String,
    /// The makespan, virtual ns.
    pub virtual_time_ns: u64,
    /// Faults the engine saw.
    pub faults: u64,
    /// Faults served async.
    pub async_faults: u64,
    /// Stalled vCPU time (sync faults), summed over vCPUs, ns.
    pub stalled_ns: u64,
    /// Halted vCPU time (WFI), summed over vCPUs, ns.
    pub halted_ns: u64,
}

impl PointRow {
    /// The row of `r`.
    pub fn of(r: &RunResult) -> Self {
        let n = |key: &str| {
            r.apf
                .as_ref()
                .and_then(|a| a.get(key))
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0)
        };
        PointRow {
            cells: result_cells(r),
            sync_baseline: r.is_sync_baseline(),
            policy: r.policy_label(),
            virtual_time_ns: r.virtual_time_ns,
            faults: n("faults"),
            async_faults: n("async_faults"),
            stalled_ns: r.vmm.stalled_ns.iter().sum(),
            halted_ns: r.vmm.halted_ns.iter().sum(),
        }
    }
}

/// How a point ended.
#[derive(Clone, Debug)]
pub enum Status {
    /// The run succeeded.
    Ok(Box<PointRow>),
    /// The run wrote results, and they say it failed (why).
    Failed(Box<PointRow>, String),
    /// The run wrote no results (why).
    Error(String),
}

impl Status {
    /// The status its results give a run.
    pub fn of(result: RunResult) -> Status {
        let row = Box::new(PointRow::of(&result));
        if result.outcome.success {
            Status::Ok(row)
        } else {
            let why = result
                .outcome
                .message
                .clone()
                .or(result.outcome.failure.clone())
                .unwrap_or_else(|| result.outcome.exit.clone());
            Status::Failed(row, why)
        }
    }

    /// Why the point failed, if it did.
    pub fn failure(&self) -> Option<&str> {
        match self {
            Status::Ok(_) => None,
            Status::Failed(_, why) | Status::Error(why) => Some(why),
        }
    }
}

/// What [`Runner::run`] tells its observer.
pub enum Event<'a> {
    /// A run started.
    Started(&'a Point),
    /// A run ended.
    Finished(&'a Point, &'a Status),
}

/// Runs the points of an experiment, each in a process of its own, into a
/// matrix folder.
pub struct Runner<'a> {
    /// The experiment.
    pub experiment: &'a Experiment,
    /// Its folder.
    pub layout: Layout,
    /// `--backend`, overriding the configs.
    pub backend: Option<Backend>,
    /// The `apflab` executable each run is a process of.
    pub exe: PathBuf,
}

/// How often at most the table is rewritten while a matrix runs.
const TABLE_INTERVAL: Duration = Duration::from_secs(1);

impl Runner<'_> {
    /// Runs one point: `apflab run` into its partial folder, whose files
    /// are renamed into the point's folder once the run has written them.
    pub fn run_point(&self, point: &Point) -> Status {
        let partial = self.layout.partial(&point.id);
        let _ = std::fs::remove_dir_all(&partial);
        let base_dir = if point.base_dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            &point.base_dir
        };
        let mut command = Command::new(&self.exe);
        command
            .arg("run")
            .arg(self.layout.point_config(&point.id))
            .arg("--out")
            .arg(&partial)
            .arg("--name")
            .arg(&point.config.name)
            .arg("--base-dir")
            .arg(base_dir)
            .stdin(Stdio::null());
        if let Some(b) = self.backend {
            command.arg("--backend").arg(b.name());
        }
        let output = match command.output() {
            Ok(o) => o,
            Err(e) => return Status::Error(format!("cannot start {}: {e}", self.exe.display())),
        };
        if partial.join("result.json").is_file() {
            if let Err(e) = self.commit(&point.id) {
                return Status::Error(format!(
                    "{}: cannot move the results into place: {e}",
                    self.layout.run_dir(&point.id).display()
                ));
            }
            return match load_result(&self.layout.result(&point.id)) {
                Ok(r) => Status::of(r),
                Err(e) => Status::Error(e.to_string()),
            };
        }
        let _ = std::fs::remove_dir_all(&partial);
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim();
        let last = last
            .strip_prefix("apflab: error: ")
            .or(last.strip_prefix("apflab: failed: "))
            .unwrap_or(last);
        Status::Error(if last.is_empty() {
            format!("apflab run ended ({}) without results", output.status)
        } else {
            last.to_owned()
        })
    }

    /// Moves a finished run's files from its partial folder into its own,
    /// `result.json` last (one rename: it is there whole or not at all).
    fn commit(&self, id: &str) -> std::io::Result<()> {
        let partial = self.layout.partial(id);
        let dir = self.layout.run_dir(id);
        std::fs::create_dir_all(&dir)?;
        if partial.join("console.log").is_file() {
            std::fs::rename(partial.join("console.log"), dir.join("console.log"))?;
        }
        std::fs::rename(partial.join("result.json"), dir.join("result.json"))?;
        std::fs::remove_dir_all(&partial)
    }

    /// Runs the points `pending` (indices into the experiment's points),
    /// `jobs` at a time, adding each one's status to `done` as it ends and
    /// keeping the table up to date. A failed run is recorded and the
    /// others go on.
    pub fn run(
        &self,
        pending: &[usize],
        jobs: usize,
        done: &mut BTreeMap<usize, Status>,
        mut observe: impl FnMut(Event<'_>),
    ) -> std::io::Result<()> {
        let points = &self.experiment.points;
        let next = AtomicUsize::new(0);
        let (tx, rx) = mpsc::channel::<(usize, Option<Status>)>();
        let mut written = Instant::now();
        let mut result = Ok(());
        std::thread::scope(|s| {
            for _ in 0..jobs.clamp(1, pending.len().max(1)) {
                let tx = tx.clone();
                let next = &next;
                s.spawn(move || {
                    while let Some(&p) = pending.get(next.fetch_add(1, Ordering::Relaxed)) {
                        if tx.send((p, None)).is_err() {
                            return;
                        }
                        let status = self.run_point(&points[p]);
                        if tx.send((p, Some(status))).is_err() {
                            return;
                        }
                    }
                });
            }
            drop(tx);
            for (p, status) in rx {
                match status {
                    None => observe(Event::Started(&points[p])),
                    Some(status) => {
                        observe(Event::Finished(&points[p], &status));
                        done.insert(p, status);
                        if result.is_ok() && written.elapsed() >= TABLE_INTERVAL {
                            result = self.write_table(done);
                            written = Instant::now();
                        }
                    }
                }
            }
        });
        result?;
        self.write_table(done)
    }

    /// Writes the table of the points in `done`.
    pub fn write_table(&self, done: &BTreeMap<usize, Status>) -> std::io::Result<()> {
        let rows = done.iter().map(|(&i, s)| (&self.experiment.points[i], s));
        let csv = table_csv(&self.experiment.axis_names(), rows)?;
        write_atomic(&self.layout.table(), &csv)
    }
}

/// Columns of the matrix table after the axis columns.
pub const COLUMNS: &[&str] = &[
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
    "error",
];

/// The columns that depend on the host or the moment of a run.
pub const WALL_COLUMNS: &[&str] = &["wall_time_ms"];

/// The matrix table as CSV: a `run` column, one column per axis, then
/// [`COLUMNS`]; one row per point, in the order given. `result` is the
/// path of the run's `result.json` relative to the matrix folder.
pub fn table_csv<'p>(
    axes: &[String],
    rows: impl IntoIterator<Item = (&'p Point, &'p Status)>,
) -> std::io::Result<Vec<u8>> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    let header: Vec<&str> = std::iter::once("run")
        .chain(axes.iter().map(String::as_str))
        .chain(COLUMNS.iter().copied())
        .collect();
    writer.write_record(&header)?;
    for (point, status) in rows {
        let mut row: Vec<String> = vec![point.id.clone()];
        row.extend(point.values.iter().map(|(_, v)| value_text(v)));
        row.push(point.repetition.to_string());
        row.push(point.config.config.seed.to_string());
        match status {
            Status::Ok(r) | Status::Failed(r, _) => {
                row.extend(r.cells.iter().cloned());
                row.push(format!("{}/result.json", point.id));
                row.push(status.failure().unwrap_or("").to_owned());
            }
            Status::Error(message) => {
                row.extend(["false".to_owned(), "error".to_owned()]);
                row.resize(1 + point.values.len() + COLUMNS.len() - 1, String::new());
                row.push(message.clone());
            }
        }
        writer.write_record(&row)?;
    }
    writer
        .into_inner()
        .map_err(|e| std::io::Error::other(e.to_string()))
}

/// The cells of [`COLUMNS`] from `success` to `wall_time_ms`.
fn result_cells(r: &RunResult) -> Vec<String> {
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
    vec![
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
    ]
}

/// Counts of a matrix, over the points selected.
#[derive(Debug, Default)]
pub struct MatrixSummary {
    /// Points whose run succeeded.
    pub ok: usize,
    /// Points that were already done (not run again).
    pub skipped: usize,
    /// Points whose run failed, by run id with the reason.
    pub failed: BTreeMap<String, String>,
    /// Points without results (`--collect`), by run id.
    pub missing: Vec<String>,
}

impl MatrixSummary {
    /// Counts the points `selected` of `experiment` by their status in
    /// `done` (a point absent from `done` is missing).
    pub fn of(experiment: &Experiment, selected: &[usize], done: &BTreeMap<usize, Status>) -> Self {
        let mut summary = MatrixSummary::default();
        for &i in selected {
            let id = &experiment.points[i].id;
            match done.get(&i) {
                Some(Status::Ok(_)) => summary.ok += 1,
                Some(status) => {
                    let why = status.failure().unwrap_or_default().to_owned();
                    summary.failed.insert(id.clone(), why);
                }
                None => summary.missing.push(id.clone()),
            }
        }
        summary
    }
}

/// The comparison printed at the end of a matrix: per run, the other axes'
/// values, its makespan against the synchronous baseline that shares them
/// (and the repetition), the share of faults served async, and the stalled
/// and halted vCPU time, grouped by those values. Empty when no run of
/// `done` but the baselines has such a baseline.
pub fn comparison(experiment: &Experiment, done: &BTreeMap<usize, Status>) -> String {
    use std::fmt::Write as _;
    let ok = |i: usize| match done.get(&i) {
        Some(Status::Ok(r)) => Some(r.as_ref()),
        _ => None,
    };
    // Every axis value but the policy's, and the repetition.
    let others = |p: &Point| -> String {
        let mut key: Vec<String> = p
            .values
            .iter()
            .filter(|(k, _)| {
                k != "policy" && !k.starts_with("policy.") && k != "apf" && !k.starts_with("apf.")
            })
            .map(|(k, v)| format!("{k}={}", value_text(v)))
            .collect();
        if experiment.repetitions > 1 {
            key.push(format!("rep={}", p.repetition));
        }
        key.join(" ")
    };
    let baselines: BTreeMap<String, u64> = done
        .keys()
        .filter_map(|&i| ok(i).filter(|r| r.sync_baseline).map(|r| (i, r)))
        .map(|(i, r)| (others(&experiment.points[i]), r.virtual_time_ns))
        .collect();
    let mut rows = Vec::new();
    for &i in done.keys() {
        let (Some(r), point) = (ok(i), &experiment.points[i]) else {
            continue;
        };
        let Some(&base) = baselines.get(&others(point)) else {
            continue;
        };
        let async_share = if r.faults == 0 {
            "-".to_owned()
        } else {
            format!("{:.0}%", 100.0 * r.async_faults as f64 / r.faults as f64)
        };
        let ms = |ns: u64| format!("{:.3}", ns as f64 / 1e6);
        let group = others(point);
        rows.push([
            point.id.clone(),
            if group.is_empty() {
                "-".to_owned()
            } else {
                group
            },
            r.policy.clone(),
            ms(r.virtual_time_ns),
            format!(
                "{:+.1}%",
                100.0 * (r.virtual_time_ns as f64 - base as f64) / base.max(1) as f64
            ),
            async_share,
            ms(r.stalled_ns),
            ms(r.halted_ns),
        ]);
    }
    rows.sort_by(|a, b| (&a[1], &a[0]).cmp(&(&b[1], &b[0])));
    if rows.len() <= baselines.len() {
        // Only baselines: nothing to compare.
        return String::new();
    }
    let header = [
        "run",
        "with",
        "policy",
        "makespan ms",
        "vs sync",
        "async",
        "stalled ms",
        "halted ms",
    ];
    let widths: Vec<usize> = (0..header.len())
        .map(|c| {
            rows.iter()
                .map(|r| r[c].len())
                .chain([header[c].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    let line = |out: &mut String, cells: &[&str]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "  {}", padded.join("  ").trim_end());
    };
    line(&mut out, &header);
    for r in &rows {
        line(&mut out, &r.iter().map(String::as_str).collect::<Vec<_>>());
    }
    out
}
