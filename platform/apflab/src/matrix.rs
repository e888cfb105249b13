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
//! - `r003/result.json`, `r003/console.log` and `r003/policy.log`: written by
//!   `apflab run points/r003.toml --name <experiment>/r003 --base-dir <base
//!   config's folder>` (a process of its own per point: the emu CPU engine
//!   is not shared between runs) into `.partial-r003/` and renamed into
//!   place once complete, so an interrupted matrix leaves no half-written
//!   result;
//! - `table.csv`: one row per point with results, one column per axis.
//!
//! A point whose `result.json` records the same config hash (which covers
//! the policy module's bytes) and backend (and this schema version) is done: it is not run again (`--force`
//! reruns it). Local runs ([`Runner`]) and Slurm array tasks
//! ([`crate::slurm`]) write the same folder.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::boot_sharing::{BootSharing, BootUse};
use crate::config::{Backend, Config, ConfigError, LoadedConfig, file_sha256};
use crate::report::{ReportError, find_results, load_result};
use crate::result::{RunResult, SCHEMA_VERSION};
use apflab_files::write_atomic;

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

/// One run of the grid, as far as a table, a label or a run of it needs:
/// a few hundred bytes, made on demand ([`Experiment::point`]), so that no
/// grid is ever held whole.
#[derive(Clone, Debug)]
pub struct Point {
    /// Its index in the grid.
    pub index: usize,
    /// `r000`, `r001`, ...: also the run's directory name.
    pub id: String,
    /// Axis key → value, in axis order.
    pub values: Vec<(String, toml::Value)>,
    /// Repetition index.
    pub repetition: u32,
    /// The run's seed.
    pub seed: u64,
}

impl Point {
    /// `workload.kind=cpu guest.vcpus=2 rep=0`.
    pub fn label(&self) -> String {
        label(&self.values, self.repetition)
    }
}

/// A point's label from its axis values and repetition.
fn label(values: &[(String, toml::Value)], repetition: u32) -> String {
    let mut parts: Vec<String> = values
        .iter()
        .map(|(k, v)| format!("{k}={}", value_text(v)))
        .collect();
    parts.push(format!("rep={repetition}"));
    parts.join(" ")
}

/// What [`Experiment::load`] keeps of each point once it has checked its
/// config: what choosing, preflighting and resuming need without building
/// the config again (56 bytes a point).
#[derive(Clone, Copy, Debug)]
struct PointFacts {
    backend: Backend,
    vcpus: u32,
    memory_mib: u64,
    /// Index into [`Experiment::guest_files`].
    kernel: u32,
    /// A Linux guest's initramfs, index into [`Experiment::guest_files`].
    initrd: Option<u32>,
    seed: u64,
    wall_timeout_ms: Option<u64>,
}

/// Most points in a grid: the product of the axes' lengths and the
/// repetitions. A million runs of even a tenth of a second are more than a
/// day of one CPU; a grid of more is a mistake in the experiment file, and
/// [`Experiment::load`] refuses it before building any point.
pub const MAX_POINTS: u64 = 1_000_000;

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

/// A parsed experiment: its grid, every point of it already validated,
/// with each point's config made again on demand ([`Experiment::point`],
/// [`Experiment::config`]), so that memory grows with the points running,
/// not with the grid.
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
    /// The base config with the experiment's `[set]` applied.
    base_table: toml::Table,
    /// The base config's file.
    pub base_path: PathBuf,
    /// Where the configs' relative paths are taken from: the base config's
    /// directory.
    pub base_dir: PathBuf,
    /// The base config's seed and its pager's.
    base_seed: u64,
    base_pager_seed: u64,
    /// Per point, in grid order.
    facts: Vec<PointFacts>,
    /// The distinct guest files the points boot: kernels and initramfs.
    guest_files: Vec<PathBuf>,
    /// Their SHA-256 (`None`: unreadable), computed once when asked.
    guest_file_hashes: Vec<std::sync::OnceLock<Option<String>>>,
    /// Every file the points read (configs, kernels, stores, samples,
    /// policies), each once.
    pub inputs: Vec<PathBuf>,
}

/// Sets the seeds of repetition `repetition` in a point's config `table`:
/// the top-level `seed` and, where the point has far memory, `pager.seed`,
/// each its value in the point (or the base config's: `base_seed`,
/// `base_pager_seed`) plus `repetition`. Repetition 0 keeps the configured
/// seeds. A seed that would pass the largest TOML integer is the error:
/// its key and value.
fn vary_seeds(
    table: &mut toml::Table,
    base_seed: u64,
    base_pager_seed: u64,
    repetition: u32,
) -> Result<(), (&'static str, i64)> {
    let offset = |key: &'static str, seed: Option<&toml::Value>, default: u64| {
        let seed = match seed {
            Some(toml::Value::Integer(s)) => *s,
            _ => default as i64,
        };
        seed.checked_add(i64::from(repetition))
            .map(toml::Value::Integer)
            .ok_or((key, seed))
    };
    let seed = offset("seed", table.get("seed"), base_seed)?;
    table.insert("seed".to_owned(), seed);
    if let Some(toml::Value::Table(pager)) = table.get_mut("pager") {
        let seed = offset("pager.seed", pager.get("seed"), base_pager_seed)?;
        pager.insert("seed".to_owned(), seed);
    }
    Ok(())
}

/// Why a dotted key cannot be set in a config table ([`set_dotted`]).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
enum DottedKeyError {
    /// `a..b`, or a key that starts or ends with a dot.
    #[error("empty key segment")]
    EmptySegment,
    /// A segment before the last names a value that is not a table.
    #[error("`{0}` is not a table in the base config")]
    NotATable(String),
}

/// Sets dotted `key` in `table` to `value`, creating tables on the way.
fn set_dotted(
    table: &mut toml::Table,
    key: &str,
    value: toml::Value,
) -> Result<(), DottedKeyError> {
    let mut parts = key.split('.').peekable();
    let mut t = table;
    while let Some(part) = parts.next() {
        if part.is_empty() {
            return Err(DottedKeyError::EmptySegment);
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
            .ok_or_else(|| DottedKeyError::NotATable(part.to_owned()))?;
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

/// Points in a grid of `axes` with `repetitions`: their product, refused
/// (naming it) above [`MAX_POINTS`].
fn grid_size(
    file: &str,
    axes: &[(String, Vec<toml::Value>)],
    repetitions: u32,
) -> Result<usize, MatrixError> {
    let factors: Vec<(String, u64)> = axes
        .iter()
        .map(|(k, v)| (format!("axes.\"{k}\""), v.len() as u64))
        .chain([("repetitions".to_owned(), u64::from(repetitions))])
        .collect();
    let product = factors
        .iter()
        .try_fold(1u64, |acc, (_, n)| acc.checked_mul(*n));
    if let Some(n) = product.filter(|&n| n <= MAX_POINTS) {
        return Ok(n as usize);
    }
    let largest = factors
        .iter()
        .max_by_key(|(_, n)| *n)
        .map_or("repetitions", |(k, _)| k.as_str());
    Err(MatrixError::Key {
        file: file.to_owned(),
        key: largest.to_owned(),
        message: format!(
            "the grid has {} points ({}); at most {MAX_POINTS}: split the experiment, or \
             use fewer values or repetitions",
            product.map_or_else(|| format!("more than {}", u64::MAX), |n| n.to_string()),
            factors
                .iter()
                .map(|(k, n)| format!("{k}: {n}"))
                .collect::<Vec<_>>()
                .join(" × ")
        ),
    })
}

impl Experiment {
    /// Reads an experiment file and validates every point of its grid, one
    /// at a time: a grid of more than [`MAX_POINTS`] is refused before any
    /// point is made, naming the product.
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
            set_dotted(&mut base_table, &key, value).map_err(|e| MatrixError::Key {
                file: file.clone(),
                key: format!("set.\"{key}\""),
                message: e.to_string(),
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
        let count = grid_size(&file, &axes, repetitions)?;

        let name = path.file_stem().map_or_else(
            || "experiment".to_owned(),
            |s| s.to_string_lossy().into_owned(),
        );
        let mut experiment = Experiment {
            file,
            name,
            axes,
            repetitions,
            base_table,
            base_path,
            base_dir,
            base_seed: base_config.seed,
            base_pager_seed: base_config.pager.as_ref().map_or(0, |p| p.seed),
            facts: Vec::with_capacity(count),
            guest_files: Vec::new(),
            guest_file_hashes: Vec::new(),
            inputs: Vec::new(),
        };
        experiment.add_input(path.to_path_buf());
        // Each point is made, checked and dropped: only its facts stay.
        for index in 0..count {
            let loaded = experiment.config(index)?;
            let config = &loaded.config;
            let kernel = experiment.guest_file(&config.kernel_path);
            let initrd = config
                .initrd_path
                .as_deref()
                .map(|i| experiment.guest_file(i));
            for input in crate::runner::inputs(&loaded.path, config) {
                experiment.add_input(input);
            }
            experiment.facts.push(PointFacts {
                backend: config.backend.kind,
                vcpus: config.guest.vcpus,
                memory_mib: config.guest.memory_mib,
                kernel,
                initrd,
                seed: config.seed,
                wall_timeout_ms: config.backend.wall_timeout_ms,
            });
        }
        Ok(experiment)
    }

    fn add_input(&mut self, path: PathBuf) {
        if !self.inputs.contains(&path) {
            self.inputs.push(path);
        }
    }

    /// Points in the grid.
    pub fn len(&self) -> usize {
        self.facts.len()
    }

    /// Whether the grid is empty (it never is once loaded).
    pub fn is_empty(&self) -> bool {
        self.facts.is_empty()
    }

    /// The axis values and repetition of point `index`: axes vary
    /// slowest-first, repetitions innermost.
    fn coordinates(&self, index: usize) -> (Vec<(String, toml::Value)>, u32) {
        let repetition = (index % self.repetitions as usize) as u32;
        let mut rest = index / self.repetitions as usize;
        let mut chosen = vec![0usize; self.axes.len()];
        for (axis, (_, values)) in self.axes.iter().enumerate().rev() {
            chosen[axis] = rest % values.len();
            rest /= values.len();
        }
        let values = self
            .axes
            .iter()
            .zip(&chosen)
            .flat_map(|((k, vs), &i)| assignments(k, &vs[i]))
            .collect();
        (values, repetition)
    }

    /// The id of point `index`: `r003`.
    pub fn id(index: usize) -> String {
        format!("r{index:03}")
    }

    /// Point `index` (of [`Experiment::len`]).
    pub fn point(&self, index: usize) -> Point {
        let (values, repetition) = self.coordinates(index);
        Point {
            index,
            id: Self::id(index),
            values,
            repetition,
            seed: self.facts[index].seed,
        }
    }

    /// The config text of point `index` (what its result's hash records)
    /// and its label.
    fn text(&self, index: usize) -> Result<(String, String), MatrixError> {
        let (values, repetition) = self.coordinates(index);
        let point_label = label(&values, repetition);
        let mut table = self.base_table.clone();
        for (k, v) in &values {
            set_dotted(&mut table, k, v.clone()).map_err(|e| MatrixError::Key {
                file: self.file.clone(),
                key: format!("axes.\"{k}\""),
                message: e.to_string(),
            })?;
        }
        // Repetitions differ by seed only (the emu backend is
        // deterministic, so equal seeds would give equal runs), and by
        // every seed that draws: the guest's (`seed`: random page order, kv
        // keys) and the pager's (`pager.seed`: fetch latencies, the pages
        // resident at boot).
        vary_seeds(&mut table, self.base_seed, self.base_pager_seed, repetition).map_err(
            |(key, seed)| MatrixError::Key {
                file: self.file.clone(),
                key: "repetitions".to_owned(),
                message: format!(
                    "{}: repetition {repetition} runs with {key} {seed} + {repetition}, more \
                     than a seed can be ({}); use a smaller seed or fewer repetitions",
                    self.repetitions,
                    i64::MAX
                ),
            },
        )?;
        let text = toml::to_string(&table).expect("a TOML table serializes");
        Ok((text, point_label))
    }

    /// The config of point `index`, as `apflab run` loads it from the
    /// point's file, validated.
    pub fn config(&self, index: usize) -> Result<LoadedConfig, MatrixError> {
        let (text, point_label) = self.text(index)?;
        let base_file = self.base_path.display().to_string();
        let config = Config::from_text(
            &format!("{base_file} [{point_label}]"),
            &text,
            &self.base_dir,
        )
        .map_err(|error| {
            point_error(&self.file, &point_label, &self.coordinates(index).0, error)
        })?;
        Ok(LoadedConfig::new(
            self.base_path.clone(),
            format!("{}/{}", self.name, Self::id(index)),
            &text,
            config,
        ))
    }

    /// The engine point `index` runs on, `--backend` (`backend`) first.
    pub fn backend(&self, index: usize, backend: Option<Backend>) -> Backend {
        backend.unwrap_or(self.facts[index].backend)
    }

    /// The index of guest file `path` in [`Experiment::guest_files`],
    /// added if new.
    fn guest_file(&mut self, path: &Path) -> u32 {
        let k = match self.guest_files.iter().position(|f| f == path) {
            Some(k) => k,
            None => {
                self.guest_files.push(path.to_path_buf());
                self.guest_file_hashes.push(std::sync::OnceLock::new());
                self.guest_files.len() - 1
            }
        };
        k as u32
    }

    /// The SHA-256 of guest file `file` as point `index` loads it (`None`
    /// if it cannot be read), read once per file.
    fn guest_file_sha256(&self, index: usize, file: u32) -> Option<&String> {
        let k = file as usize;
        self.guest_file_hashes[k]
            .get_or_init(|| {
                let ram = self.facts[index].memory_mib.saturating_mul(1 << 20);
                file_sha256(&self.guest_files[k], ram, "guest RAM").ok()
            })
            .as_ref()
    }

    /// The SHA-256 of the kernel point `index` boots (`None` if it cannot
    /// be read).
    fn kernel_sha256(&self, index: usize) -> Option<&String> {
        self.guest_file_sha256(index, self.facts[index].kernel)
    }

    /// The SHA-256 of the initramfs point `index` boots a Linux guest with:
    /// `None` without one, `Some(None)` if it cannot be read.
    fn initrd_sha256(&self, index: usize) -> Option<Option<&String>> {
        self.facts[index]
            .initrd
            .map(|file| self.guest_file_sha256(index, file))
    }

    /// The wall-clock limit of point `index`, `--wall-timeout`
    /// (`wall_timeout_ms`) first; `None`: none.
    pub fn wall_timeout_ms(&self, index: usize, wall_timeout_ms: Option<u64>) -> Option<u64> {
        wall_timeout_ms.or(self.facts[index].wall_timeout_ms)
    }

    /// vCPUs of point `index`.
    pub fn vcpus(&self, index: usize) -> u32 {
        self.facts[index].vcpus
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

    /// Indices (into [`Experiment::point`]) of the points every filter
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
        let selected: Vec<usize> = (0..self.len())
            .filter(|&i| {
                if wanted.is_empty() {
                    return true;
                }
                let (point_values, repetition) = self.coordinates(i);
                wanted.iter().all(|(axis, values)| {
                    if axis == "rep" {
                        values.iter().any(|v| v.parse() == Ok(repetition))
                    } else {
                        point_values
                            .iter()
                            .find(|(k, _)| k == axis)
                            .is_some_and(|(_, pv)| values.iter().any(|v| value_matches(pv, v)))
                    }
                })
            })
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
        for &i in selected {
            let engine = self.backend(i, backend);
            let whence = || -> (String, String) {
                if backend.is_some() {
                    return (self.file.clone(), "--backend".to_owned());
                }
                if self
                    .axes
                    .iter()
                    .any(|(k, _)| k.split(',').any(|k| k.trim() == "backend.kind"))
                {
                    return (self.file.clone(), "axes.\"backend.kind\"".to_owned());
                }
                (
                    self.base_path.display().to_string(),
                    "backend.kind".to_owned(),
                )
            };
            let point = || self.point(i);
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
                let point = point();
                return Err(MatrixError::Point {
                    file,
                    point: format!("{} ({})", point.id, point.label()),
                    detail: format!("key `{key}` = \"{}\": {why}", engine.name()),
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
            let config = Config::from_text(&file, &text, dir)?;
            LoadedConfig::new(
                path.to_owned(),
                path.file_stem()
                    .map_or_else(|| "config".to_owned(), |s| s.to_string_lossy().into_owned()),
                &text,
                config,
            )
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

    /// Checks, before anything is written, what a matrix writes into its
    /// folder: `table.csv` (and `job.sbatch` for `slurm`) can be written
    /// and the folder and its `points/` are folders or can be made; and no
    /// file `experiment` reads lies where the matrix writes (its table, job
    /// and point configs, a point's results, the partial folders it
    /// clears).
    pub fn check_outputs(&self, experiment: &Experiment, slurm: bool) -> Result<(), MatrixError> {
        let error = |e: apflab_files::OutputError| MatrixError::Folder {
            path: e.path.display().to_string(),
            message: e.reason,
        };
        let mut outputs = apflab_files::Outputs::new();
        for input in &experiment.inputs {
            outputs.input(input);
        }
        let mut files = vec!["table.csv"];
        if slurm {
            files.push("job.sbatch");
        }
        outputs.dir(&self.root, &files).map_err(error)?;
        outputs.dir(&self.root.join("points"), &[]).map_err(error)?;
        let root = apflab_files::output::absolute(&self.root);
        for input in &experiment.inputs {
            let Ok(rel) = apflab_files::output::absolute(input)
                .strip_prefix(&root)
                .map(Path::to_path_buf)
            else {
                continue;
            };
            let parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            let first = parts.first().map_or("", String::as_str);
            let is_point = |s: &str| {
                s.len() > 1 && s.starts_with('r') && s[1..].bytes().all(|b| b.is_ascii_digit())
            };
            let clobbered = matches!(first, "points" | "slurm" | "table.csv" | "job.sbatch")
                || first.starts_with(".partial-")
                || (is_point(first)
                    && parts
                        .get(1)
                        .is_some_and(|f| f == "result.json" || f == "console.log"));
            if clobbered {
                return Err(MatrixError::Folder {
                    path: input.display().to_string(),
                    message: format!(
                        "this matrix reads it, and it lies where the matrix writes in {}                          (table.csv, job.sbatch, points/, slurm/, .partial-*/, <run>/result.json,                          <run>/console.log): move it, or write the results elsewhere",
                        self.root.display()
                    ),
                });
            }
        }
        Ok(())
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
                        "{found}; this apflab writes schema_version {SCHEMA_VERSION}. \
                         The folder holds results of another apflab version: use another \
                         folder, or --force to rerun every point"
                    ),
                });
            }
        }
        Ok(())
    }

    /// Writes the config of every point `selected` of `experiment`
    /// (unchanged files are left alone), one at a time.
    pub fn write_points(
        &self,
        experiment: &Experiment,
        selected: &[usize],
    ) -> Result<(), MatrixError> {
        for &i in selected {
            let (text, _) = experiment.text(i)?;
            let path = self.point_config(&Experiment::id(i));
            if std::fs::read_to_string(&path).is_ok_and(|t| t == text) {
                continue;
            }
            write_atomic(&path, text.as_bytes()).map_err(|e| MatrixError::Folder {
                path: path.display().to_string(),
                message: format!("cannot write the point's config: {e}"),
            })?;
        }
        Ok(())
    }

    /// The results already in the folder for point `index` of `experiment`
    /// run on `backend` (see [`Existing`]). A run is deterministic given
    /// its config, kernel and engine and the VMM build; after changing the
    /// VMM, `--force` reruns.
    pub fn existing(&self, experiment: &Experiment, index: usize, backend: Backend) -> Existing {
        let path = self.result(&Experiment::id(index));
        match std::fs::symlink_metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Existing::Missing,
            _ => {}
        }
        let r = match load_result(&path) {
            Ok(r) => r,
            Err(e) => return Existing::Corrupt(e.to_string()),
        };
        // The point's config hash, which covers its policy module's bytes.
        let Ok(loaded) = experiment.config(index) else {
            return Existing::Stale;
        };
        if r.config.sha256 != loaded.sha256 || r.backend != backend.name() {
            return Existing::Stale;
        }
        if experiment.kernel_sha256(index) != Some(&r.config.kernel_sha256) {
            return Existing::Stale;
        }
        // A Linux guest's initramfs (apflab's init, rebuilt with apflab, or
        // the config's own) is as much the guest as its kernel is.
        match (experiment.initrd_sha256(index), &r.config.initrd_sha256) {
            (None, None) => Existing::Done(Box::new(r)),
            (Some(Some(now)), Some(then)) if now == then => Existing::Done(Box::new(r)),
            _ => Existing::Stale,
        }
    }
}

/// What a matrix folder holds for one point.
#[derive(Debug)]
pub enum Existing {
    /// No `result.json`.
    Missing,
    /// The results of this very point: it is done.
    Done(Box<RunResult>),
    /// Results of another config, kernel or engine: run it again.
    Stale,
    /// A `result.json` that cannot be read as results (why): run it
    /// again, and say so.
    Corrupt(String),
}

/// A config or experiment file's text: a regular file of at most
/// [`crate::config::MAX_CONFIG_BYTES`].
fn read_config(path: &Path) -> std::io::Result<String> {
    apflab_files::read_regular_to_string(path, crate::config::MAX_CONFIG_BYTES, "a config file")
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
    /// Before any run: `points` of the points to run boot alike in
    /// `groups` groups, each of which boots once ([`crate::boot_sharing`]).
    BootsShared {
        /// Groups that share a boot.
        groups: usize,
        /// Points in them.
        points: usize,
    },
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
    /// `--wall-timeout`, passed to every run.
    pub wall_timeout_ms: Option<u64>,
    /// Points that boot alike share one boot ([`crate::boot_sharing`]);
    /// `--no-boot-sharing` turns it off.
    pub share_boots: bool,
}

/// How often at most the table is rewritten while a matrix runs.
const TABLE_INTERVAL: Duration = Duration::from_secs(1);

impl Runner<'_> {
    /// Runs one point: `apflab run` into its partial folder, whose files
    /// are renamed into the point's folder once the run has written them.
    /// `boot` says whether it boots, or saves or resumes a shared boot
    /// ([`crate::boot_sharing`]). A run asked to save that ends without
    /// results runs again from power-on, so that sharing never fails a
    /// point that runs on its own.
    pub fn run_point(&self, point: &Point, boot: &BootUse) -> Status {
        let status = self.run_point_once(point, boot);
        if matches!(boot, BootUse::Save(_)) && matches!(status, Status::Error(_)) {
            return self.run_point_once(point, &BootUse::Boot);
        }
        status
    }

    fn run_point_once(&self, point: &Point, boot: &BootUse) -> Status {
        let partial = self.layout.partial(&point.id);
        let _ = std::fs::remove_dir_all(&partial);
        let base_dir = if self.experiment.base_dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            &self.experiment.base_dir
        };
        let mut command = Command::new(&self.exe);
        command
            .arg("run")
            .arg(self.layout.point_config(&point.id))
            .arg("--out")
            .arg(&partial)
            .arg("--name")
            .arg(format!("{}/{}", self.experiment.name, point.id))
            .arg("--base-dir")
            .arg(base_dir)
            .stdin(Stdio::null());
        if let Some(b) = self.backend {
            command.arg("--backend").arg(b.name());
        }
        if let Some(ms) = self.wall_timeout_ms {
            command.arg("--wall-timeout").arg(ms.to_string());
        }
        command.args(boot.args());
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
        for file in ["console.log", crate::runner::POLICY_LOG] {
            if partial.join(file).is_file() {
                std::fs::rename(partial.join(file), dir.join(file))?;
            }
        }
        std::fs::rename(partial.join("result.json"), dir.join("result.json"))?;
        std::fs::remove_dir_all(&partial)
    }

    /// Runs the points `pending` (indices into the experiment's points),
    /// `jobs` at a time, adding each one's status to `done` as it ends and
    /// keeping the table up to date. A failed run is recorded and the
    /// others go on. Points that boot alike share one boot
    /// ([`crate::boot_sharing`]) if [`Runner::share_boots`].
    pub fn run(
        &self,
        pending: &[usize],
        jobs: usize,
        done: &mut BTreeMap<usize, Status>,
        mut observe: impl FnMut(Event<'_>),
    ) -> std::io::Result<()> {
        // A point whose config does not load shares nothing (its run
        // reports the error).
        let configs = pending
            .iter()
            .filter(|_| self.share_boots)
            .filter_map(|&p| {
                let mut config = self.experiment.config(p).ok()?.config;
                if let Some(b) = self.backend {
                    config.backend.kind = b;
                }
                Some((p, config))
            });
        let sharing = BootSharing::plan(configs, &self.layout.root);
        if sharing.groups() > 0 {
            observe(Event::BootsShared {
                groups: sharing.groups(),
                points: sharing.points(),
            });
        }
        let pending = &sharing.order(pending)[..];
        let sharing = &sharing;
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
                        let status = match sharing.boot_use(p) {
                            Ok(boot) => self.run_point(&self.experiment.point(p), &boot),
                            Err(e) => Status::Error(format!(
                                "{}: cannot make the folder for shared boots: {e}",
                                self.layout.root.display()
                            )),
                        };
                        sharing.finished(p);
                        if tx.send((p, Some(status))).is_err() {
                            return;
                        }
                    }
                });
            }
            drop(tx);
            for (p, status) in rx {
                match status {
                    None => observe(Event::Started(&self.experiment.point(p))),
                    Some(status) => {
                        observe(Event::Finished(&self.experiment.point(p), &status));
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
        let rows = done.iter().map(|(&i, s)| (self.experiment.point(i), s));
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
    "policy_sha256",
    "policy_failed_calls",
    "policy_failure_causes",
    "policy_disabled",
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
    rows: impl IntoIterator<Item = (Point, &'p Status)>,
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
        row.push(point.seed.to_string());
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
        // The policy's module (empty without one), so a row says which
        // bytes decided it and whether they failed.
        r.policy
            .as_ref()
            .map_or_else(String::new, |p| p.sha256.clone()),
        opt(r.policy.as_ref().map(|p| p.failed_calls)),
        r.policy
            .as_ref()
            .map_or_else(String::new, |p| p.failure_causes()),
        r.policy
            .as_ref()
            .map_or_else(String::new, |p| p.disabled.to_string()),
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
    /// Counts the points `selected` by their status in
    /// `done` (a point absent from `done` is missing).
    pub fn of(selected: &[usize], done: &BTreeMap<usize, Status>) -> Self {
        let mut summary = MatrixSummary::default();
        for &i in selected {
            let id = &Experiment::id(i);
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
        .map(|(i, r)| (others(&experiment.point(i)), r.virtual_time_ns))
        .collect();
    let mut rows = Vec::new();
    for &i in done.keys() {
        let (Some(r), point) = (ok(i), &experiment.point(i)) else {
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
