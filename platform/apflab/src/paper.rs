//! `apflab paper`: fills a markdown template with figures computed from
//! experiment results, so that no number in the paper is typed by hand.
//!
//! A placeholder is `{{OP EXPERIMENT ARGS}}`, where EXPERIMENT names a
//! folder of the results directory (`results/paper/<experiment>`, as
//! `scripts/paper` writes them) and a *selection* is space-separated
//! `dotted.key=value` filters on the runs' configs (`policy.module=sync
//! workload.kind=mixed`) that must match the runs of exactly one config:
//! its repetitions, which differ only by their seeds. Every figure is the
//! mean over those runs with the half-width of its 95 % confidence interval
//! ([`crate::stats::Estimate`]), and a change whose interval holds 0 is
//! written "no difference (...)", so the prose around it cannot call it one:
//!
//! - `{{vs-sync EXP SELECTION}}`: the selected runs' makespan relative to
//!   their synchronous baselines (the run of the same config, seeds and
//!   backend with no async PF), as a signed percentage (`−3.6 ± 0.4 %`);
//! - `{{value EXP POINTER UNIT SELECTION}}`: a number of the selected runs'
//!   `result.json` at the JSON pointer POINTER, in UNIT (`ns`, `us`, `ms`,
//!   `s` for a value in ns; `count`; `percent` for a fraction; `per_s` for
//!   a count per second of the run's virtual time; `plain` as it is, to at most four decimals);
//! - `{{change EXP POINTER SELECTION -> SELECTION}}`: how the value at
//!   POINTER of the second config's runs differs from the first's, each
//!   pair of runs with the same seeds, as a signed percentage of the first;
//! - `{{speedup EXP POINTER SELECTION -> SELECTION}}`: the first run's value
//!   over the second's, minus one, per pair, as a signed percentage (a
//!   throughput gain when the value is a time);
//! - `{{rate-change EXP POINTER OVER SELECTION -> SELECTION}}`: as
//!   `change`, of the value at POINTER divided by the value at the pointer
//!   OVER of the same run (a throughput change: work done over the time it
//!   was done in, such as a CPU thread's operations over the workload's
//!   elapsed time);
//! - `{{runs EXP}}`: a table of the experiment's configs: its axes' values,
//!   the policy, the runs, the makespan and the change against sync;
//! - `{{ranking EXP KEY=A,B,C SELECTION}}`: the configs SELECTION with KEY
//!   set to each of A, B, C, ordered by mean makespan (shortest first) as
//!   `B < A ≈ C`: `<` where the next one's makespan is longer in a paired
//!   comparison (runs of the same seeds) whose 95 % interval excludes 0,
//!   `≈` where it holds 0 (no difference);
//! - `{{kendall EXP_A EXP_B POINTER SELECTION}}`: whether two experiments
//!   run from the same file (the same configs, e.g. on two backends) rank
//!   their configs alike by the value at POINTER (`/virtual_time_ns`: the
//!   makespan), as Kendall's τ_b ([`crate::kendall`]) over every pair of the
//!   configs SELECTION admits. Each experiment orders a pair as `ranking`
//!   does: by a paired comparison, a tie where its 95 % interval holds 0,
//!   so two configs the runs cannot tell apart neither agree nor disagree.
//!   A config is the same on both sides when its config is, up to its seeds
//!   and `backend.kind`.
//!
//! A placeholder that cannot be filled (no such experiment, a selection of
//! no run or of several configs, a missing value) is an error naming the
//! template's line; nothing is written.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::grouping::{baseline_key, baselines, repetition_key, seeds_of};
use crate::report::{ReportError, find_results, load_result};
use crate::result::RunResult;
use crate::stats::Estimate;

/// Largest template read.
pub const MAX_TEMPLATE_BYTES: u64 = 4 << 20;

/// An error filling a template.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}: {problem}")]
pub struct PaperError {
    /// The template.
    pub file: String,
    /// Its line (1-based).
    pub line: usize,
    /// What is wrong.
    #[source]
    pub problem: Unfillable,
}

/// Why a placeholder cannot be filled ([`PaperError`]).
#[derive(Debug, thiserror::Error)]
pub enum Unfillable {
    /// `{{` with no `}}` after it on its line.
    #[error("`{{{{` without its `}}}}` on the same line")]
    Unclosed,
    /// A placeholder of fewer than two words.
    #[error("`{{{{{0}}}}}`: expected {{{{OP EXPERIMENT ...}}}}")]
    NoOperation(String),
    /// An operation this template language does not have.
    #[error(
        "`{0}`: expected vs-sync, value, change, speedup, rate-change, runs, ranking or kendall"
    )]
    Operation(String),
    /// An operation's arguments are not of its form.
    #[error("expected `{op} {form}`")]
    Usage {
        /// The operation.
        op: &'static str,
        /// What follows it.
        form: &'static str,
    },
    /// A name that could leave the results folder.
    #[error("`{0}` is not an experiment name")]
    NotAnExperiment(String),
    /// No results folder for the experiment.
    #[error(
        "no results under {} (run `apflab matrix experiments/{name}.toml --out {}` first)",
        .dir.display(),
        .dir.display()
    )]
    NoResultsFolder {
        /// The experiment.
        name: String,
        /// Where its results would be.
        dir: PathBuf,
    },
    /// The experiment's folder holds no result file.
    #[error("no results under {}", .0.display())]
    NoResults(PathBuf),
    /// A result file could not be read.
    #[error(transparent)]
    Results(#[from] ReportError),
    /// A result could not be turned into JSON to look a number up in.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// A selection filter that is not `dotted.key=value`.
    #[error("`{0}`: expected dotted.key=value")]
    NotAFilter(String),
    /// No run matches the selection.
    #[error("no run has {0}")]
    NoRun(String),
    /// Runs of several configs match the selection.
    #[error(
        "runs of {configs} configs have `{selection}` (e.g. {} and {}); add filters until one \
         config is left",
        .first.display(),
        .other.display()
    )]
    SeveralConfigs {
        /// How many configs.
        configs: usize,
        /// The selection.
        selection: String,
        /// A run of one of them.
        first: PathBuf,
        /// A run of another.
        other: PathBuf,
    },
    /// A run has no synchronous baseline to compare with.
    #[error("{}: no synchronous baseline among the runs", .0.display())]
    NoBaseline(PathBuf),
    /// A pointer that names no number in a result.
    #[error("no number at `{0}` of the result")]
    NoNumber(String),
    /// A unit this template language does not have.
    #[error("unit `{0}`: expected ns, us, ms, s, count, percent, per_s or plain")]
    Unit(String),
    /// No `->` between the two selections of a comparison.
    #[error("expected two selections separated by `->`")]
    NoArrow,
    /// A run of the first selection has no run of the second with its
    /// seeds.
    #[error("{}: no run of the second selection has its seeds", .0.display())]
    Unpaired(PathBuf),
    /// A value to divide by is 0.
    #[error("`{0}` is 0 in one of the runs")]
    Zero(String),
    /// A ranking's values are not `KEY=A,B,...`.
    #[error("`{0}`: expected KEY=A,B,...")]
    NotChoices(String),
    /// A ranking of fewer than two values.
    #[error("`{0}`: expected at least two values to rank")]
    TooFewChoices(String),
    /// A run to rank failed.
    #[error("{}: the run failed; nothing to rank", .0.display())]
    FailedRun(PathBuf),
    /// A run to rank has no run of the next config with its seeds.
    #[error("{}: no run to pair it with has its seeds", .0.display())]
    NoPair(PathBuf),
    /// A `kendall` pointer that is not a JSON pointer.
    #[error("`{0}`: expected a JSON pointer into result.json, e.g. /virtual_time_ns")]
    NotAPointer(String),
    /// A config one experiment of a `kendall` ran and the other did not.
    #[error(
        "{}: {other} has no run of its config (both experiments must run the same configs)",
        .run.display()
    )]
    NotInBoth {
        /// A run of the config.
        run: PathBuf,
        /// The experiment without it.
        other: String,
    },
    /// A `kendall` selection that admits fewer than two configs.
    #[error("{configs} config(s) of `{selection}` in {experiment}: expected at least two to rank")]
    TooFewConfigs {
        /// How many configs it admits.
        configs: usize,
        /// The selection.
        selection: String,
        /// The experiment.
        experiment: String,
    },
}

/// The runs of one experiment.
struct Experiment {
    runs: Vec<(PathBuf, RunResult)>,
    /// The matrix table's axis columns and each run's values, by run id.
    axes: Vec<String>,
    values: BTreeMap<String, Vec<String>>,
}

/// Results of the experiments the template names, read once each.
struct Results {
    dir: PathBuf,
    loaded: BTreeMap<String, Experiment>,
}

impl Results {
    fn experiment(&mut self, name: &str) -> Result<&Experiment, Unfillable> {
        if !self.loaded.contains_key(name) {
            if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
                return Err(Unfillable::NotAnExperiment((*name).to_owned()));
            }
            let dir = self.dir.join(name);
            if !dir.is_dir() {
                return Err(Unfillable::NoResultsFolder {
                    name: name.to_owned(),
                    dir,
                });
            }
            let mut runs = Vec::new();
            for path in find_results(&dir)? {
                let r = load_result(&path)?;
                runs.push((path, r));
            }
            if runs.is_empty() {
                return Err(Unfillable::NoResults(dir));
            }
            let (axes, values) = read_axes(&dir.join("table.csv"));
            self.loaded
                .insert(name.to_owned(), Experiment { runs, axes, values });
        }
        Ok(&self.loaded[name])
    }
}

/// The axis columns of a matrix table (between `run` and `rep`) and each
/// run's values; empty when the folder has no table.
fn read_axes(table: &Path) -> (Vec<String>, BTreeMap<String, Vec<String>>) {
    let Ok(text) = apflab_files::read_regular_to_string(table, 64 << 20, "a matrix table") else {
        return (Vec::new(), BTreeMap::new());
    };
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let Ok(header) = reader.headers().cloned() else {
        return (Vec::new(), BTreeMap::new());
    };
    let rep = header.iter().position(|h| h == "rep").unwrap_or(1);
    let axes = header.iter().take(rep).skip(1).map(str::to_owned).collect();
    let values = reader
        .records()
        .flatten()
        .filter_map(|row| {
            let id = row.get(0)?.to_owned();
            Some((
                id,
                row.iter().take(rep).skip(1).map(str::to_owned).collect(),
            ))
        })
        .collect();
    (axes, values)
}

/// Whether the config of `r` has `value` at dotted `key` (the text of a
/// string, or the same number).
fn config_matches(r: &RunResult, key: &str, value: &str) -> bool {
    let pointer = format!("/{}", key.replace('.', "/"));
    match r.config.parsed.pointer(&pointer) {
        Some(serde_json::Value::String(s)) => s == value,
        Some(serde_json::Value::Number(n)) => {
            n.to_string() == value
                || value
                    .parse::<f64>()
                    .is_ok_and(|v| n.as_f64().is_some_and(|n| n == v))
        }
        Some(serde_json::Value::Bool(b)) => b.to_string() == value,
        _ => false,
    }
}

/// A selection's `dotted.key=value` filters as (key, value).
fn filters<'s>(selection: &[&'s str]) -> Result<Vec<(&'s str, &'s str)>, Unfillable> {
    selection
        .iter()
        .map(|f| {
            f.split_once('=')
                .ok_or_else(|| Unfillable::NotAFilter((*f).to_owned()))
        })
        .collect()
}

/// The runs of `exp` every filter of `selection` admits: the repetitions
/// of one config (they may differ only by their seeds).
fn select<'e>(
    exp: &'e Experiment,
    selection: &[&str],
) -> Result<Vec<&'e (PathBuf, RunResult)>, Unfillable> {
    let filters = filters(selection)?;
    let found: Vec<&(PathBuf, RunResult)> = exp
        .runs
        .iter()
        .filter(|(_, r)| filters.iter().all(|(k, v)| config_matches(r, k, v)))
        .collect();
    let Some((_, first)) = found.first() else {
        return Err(Unfillable::NoRun(selection.join(" ")));
    };
    let key = repetition_key(first);
    let others: Vec<&(PathBuf, RunResult)> = found
        .iter()
        .copied()
        .filter(|(_, r)| repetition_key(r) != key)
        .collect();
    if !others.is_empty() {
        return Err(Unfillable::SeveralConfigs {
            configs: 1 + others
                .iter()
                .map(|(_, r)| repetition_key(r))
                .collect::<std::collections::BTreeSet<_>>()
                .len(),
            selection: selection.join(" "),
            first: found[0].0.clone(),
            other: others[0].0.clone(),
        });
    }
    Ok(found)
}

/// The change of each selected run's makespan against its synchronous
/// baseline (same config, seeds and backend, no async PF), in percent.
fn vs_sync_changes(
    exp: &Experiment,
    runs: &[&(PathBuf, RunResult)],
) -> Result<Vec<f64>, Unfillable> {
    let all = baselines(&exp.runs);
    runs.iter()
        .map(|(path, r)| {
            let base = all
                .get(&baseline_key(r))
                .ok_or_else(|| Unfillable::NoBaseline(path.clone()))?;
            Ok(100.0 * (r.virtual_time_ns as f64 - *base as f64) / (*base).max(1) as f64)
        })
        .collect()
}

/// The number at `pointer` of run `r`'s result file.
fn number(r: &RunResult, pointer: &str) -> Result<f64, Unfillable> {
    let json = serde_json::to_value(r)?;
    json.pointer(pointer)
        .and_then(serde_json::Value::as_f64)
        .ok_or_else(|| Unfillable::NoNumber(pointer.to_owned()))
}

/// Splits `A -> B` arguments.
fn two_selections<'a>(args: &'a [&'a str]) -> Result<(&'a [&'a str], &'a [&'a str]), Unfillable> {
    let arrow = args
        .iter()
        .position(|a| *a == "->")
        .ok_or(Unfillable::NoArrow)?;
    Ok((&args[..arrow], &args[arrow + 1..]))
}

/// The text that replaces one placeholder.
fn fill(results: &mut Results, placeholder: &str) -> Result<String, Unfillable> {
    let words: Vec<&str> = placeholder.split_whitespace().collect();
    let [op, name, args @ ..] = words.as_slice() else {
        return Err(Unfillable::NoOperation(placeholder.to_owned()));
    };
    let exp = results.experiment(name)?;
    match *op {
        "vs-sync" => {
            let runs = select(exp, args)?;
            Ok(Estimate::of(&vs_sync_changes(exp, &runs)?).difference())
        }
        "value" => {
            let [pointer, unit, selection @ ..] = args else {
                return Err(Unfillable::Usage {
                    op: "value",
                    form: "EXPERIMENT POINTER UNIT SELECTION",
                });
            };
            let runs = select(exp, selection)?;
            let (scale, decimals, suffix) = match *unit {
                "ns" => (1.0, 0, " ns"),
                "us" => (1e-3, 1, " µs"),
                "ms" => (1e-6, 1, " ms"),
                "s" => (1e-9, 2, " s"),
                "count" => (1.0, 0, ""),
                "percent" => (100.0, 1, " %"),
                "plain" => (1.0, 3, ""),
                "per_s" => (1.0, 1, ""),
                other => {
                    return Err(Unfillable::Unit(other.to_owned()));
                }
            };
            let values = runs
                .iter()
                .map(|(_, r)| {
                    let v = number(r, pointer)?;
                    Ok(if *unit == "per_s" {
                        // A count over the run's virtual time.
                        v / (r.virtual_time_ns.max(1) as f64 / 1e9)
                    } else {
                        v * scale
                    })
                })
                .collect::<Result<Vec<f64>, Unfillable>>()?;
            let e = Estimate::of(&values);
            Ok(if *unit == "plain" && (e.n < 2 || e.half_width == 0.0) {
                // At most four decimals (a mean of equal values can differ
                // from them in the last bits), without trailing zeros.
                let text = format!("{:.4}", e.mean);
                let text = if text.contains('.') {
                    text.trim_end_matches('0').trim_end_matches('.')
                } else {
                    &text
                };
                text.to_owned()
            } else {
                format!("{}{suffix}", e.value(decimals))
            })
        }
        "change" | "speedup" | "rate-change" => {
            let (pointer, over, rest) = match (*op, args) {
                ("rate-change", [pointer, over, rest @ ..]) => (pointer, Some(over), rest),
                ("rate-change", _) => {
                    return Err(Unfillable::Usage {
                        op: "rate-change",
                        form: "EXPERIMENT POINTER OVER A -> B",
                    });
                }
                (_, [pointer, rest @ ..]) => (pointer, None, rest),
                _ => {
                    return Err(Unfillable::Usage {
                        op: if *op == "change" { "change" } else { "speedup" },
                        form: "EXPERIMENT POINTER A -> B",
                    });
                }
            };
            let (a, b) = two_selections(rest)?;
            let (a, b) = (select(exp, a)?, select(exp, b)?);
            // Each run of A against the run of B with the same seeds.
            let mut changes = Vec::new();
            for (path, ra) in &a {
                let (_, rb) = b
                    .iter()
                    .find(|(_, rb)| seeds_of(rb) == seeds_of(ra))
                    .ok_or_else(|| Unfillable::Unpaired(path.clone()))?;
                let (mut va, mut vb) = (number(ra, pointer)?, number(rb, pointer)?);
                if let Some(over) = over {
                    let (oa, ob) = (number(ra, over)?, number(rb, over)?);
                    if oa == 0.0 || ob == 0.0 {
                        return Err(Unfillable::Zero((*over).to_owned()));
                    }
                    (va, vb) = (va / oa, vb / ob);
                }
                if va == 0.0 || vb == 0.0 {
                    return Err(Unfillable::Zero((*pointer).to_owned()));
                }
                changes.push(if *op != "speedup" {
                    100.0 * (vb - va) / va
                } else {
                    100.0 * (va / vb - 1.0)
                });
            }
            Ok(Estimate::of(&changes).difference())
        }
        "runs" => {
            if !args.is_empty() {
                return Err(Unfillable::Usage {
                    op: "runs",
                    form: "EXPERIMENT",
                });
            }
            Ok(runs_table(exp))
        }
        "ranking" => {
            let [choices, selection @ ..] = args else {
                return Err(Unfillable::Usage {
                    op: "ranking",
                    form: "EXPERIMENT KEY=A,B,... SELECTION",
                });
            };
            ranking(exp, choices, selection)
        }
        "kendall" => {
            let [other, pointer, selection @ ..] = args else {
                return Err(Unfillable::Usage {
                    op: "kendall",
                    form: "EXPERIMENT OTHER-EXPERIMENT POINTER SELECTION",
                });
            };
            if !pointer.starts_with('/') {
                return Err(Unfillable::NotAPointer((*pointer).to_owned()));
            }
            results.experiment(other)?;
            kendall(
                (name, &results.loaded[*name]),
                (other, &results.loaded[*other]),
                pointer,
                selection,
            )
        }
        other => Err(Unfillable::Operation(other.to_owned())),
    }
}

/// The `{{ranking EXP KEY=A,B,... SELECTION}}` text (see the module doc).
fn ranking(exp: &Experiment, choices: &str, selection: &[&str]) -> Result<String, Unfillable> {
    let (key, values) = choices
        .split_once('=')
        .ok_or_else(|| Unfillable::NotChoices(choices.to_owned()))?;
    let values: Vec<&str> = values.split(',').filter(|v| !v.is_empty()).collect();
    if values.len() < 2 {
        return Err(Unfillable::TooFewChoices(choices.to_owned()));
    }
    let mut ranked = Vec::new();
    for value in values {
        let filter = format!("{key}={value}");
        let mut filters = selection.to_vec();
        filters.push(&filter);
        let runs = select(exp, &filters)?;
        if let Some((path, _)) = runs.iter().find(|(_, r)| !r.outcome.success) {
            return Err(Unfillable::FailedRun(path.clone()));
        }
        let makespans: Vec<f64> = runs.iter().map(|(_, r)| r.virtual_time_ns as f64).collect();
        ranked.push((value, Estimate::of(&makespans).mean, runs));
    }
    ranked.sort_by(|a, b| a.1.total_cmp(&b.1));
    let mut out = ranked[0].0.to_owned();
    for pair in ranked.windows(2) {
        // Each run of the shorter config against the run of the longer one
        // with the same seeds.
        let changes = paired_changes(&pair[0].2, &pair[1].2, "/virtual_time_ns")?;
        let sign = if Estimate::of(&changes).holds_zero() {
            "≈"
        } else {
            "<"
        };
        let _ = write!(out, " {sign} {}", pair[1].0);
    }
    Ok(out)
}

/// How the value at `pointer` of each run of `b` differs from that of the
/// run of `a` with the same seeds, in percent of the latter. Every run of
/// either side must have its pair.
fn paired_changes(
    a: &[&(PathBuf, RunResult)],
    b: &[&(PathBuf, RunResult)],
    pointer: &str,
) -> Result<Vec<f64>, Unfillable> {
    if let Some((path, _)) = b
        .iter()
        .find(|(_, rb)| !a.iter().any(|(_, ra)| seeds_of(ra) == seeds_of(rb)))
    {
        return Err(Unfillable::NoPair(path.clone()));
    }
    a.iter()
        .map(|(path, ra)| {
            let (_, rb) = b
                .iter()
                .find(|(_, rb)| seeds_of(rb) == seeds_of(ra))
                .ok_or_else(|| Unfillable::NoPair(path.clone()))?;
            let (va, vb) = (number(ra, pointer)?, number(rb, pointer)?);
            Ok(100.0 * (vb - va) / va.abs().max(f64::MIN_POSITIVE))
        })
        .collect()
}

/// The config a run repeats, whatever backend ran it: its config without
/// the seeds a matrix varies and without `backend.kind`.
fn config_key(r: &RunResult) -> String {
    let mut parsed = r.config.parsed.clone();
    if let Some(table) = parsed.as_object_mut() {
        table.remove("seed");
        for (section, key) in [("pager", "seed"), ("backend", "kind")] {
            if let Some(t) = table.get_mut(section).and_then(|t| t.as_object_mut()) {
                t.remove(key);
            }
        }
    }
    parsed.to_string()
}

/// The repetitions of one config: runs with their result files.
type Repetitions<'e> = Vec<&'e (PathBuf, RunResult)>;

/// The runs of `exp` that `selection` admits, by config ([`config_key`]);
/// a failed run is an error, as nothing can be ranked by it.
fn configs<'e>(
    exp: &'e Experiment,
    selection: &[&str],
) -> Result<BTreeMap<String, Repetitions<'e>>, Unfillable> {
    let filters = filters(selection)?;
    let mut by_config: BTreeMap<String, Repetitions<'e>> = BTreeMap::new();
    for run in exp
        .runs
        .iter()
        .filter(|(_, r)| filters.iter().all(|(k, v)| config_matches(r, k, v)))
    {
        if !run.1.outcome.success {
            return Err(Unfillable::FailedRun(run.0.clone()));
        }
        by_config.entry(config_key(&run.1)).or_default().push(run);
    }
    Ok(by_config)
}

/// How `runs` order configs `i` and `j` by the value at `pointer`, as
/// `ranking` does: by mean, and `Equal` where the paired changes against
/// the config of the smaller mean have a 95 % interval that holds 0. (A
/// change in percent of one side is not the negated change in percent of
/// the other, so the base is chosen as `ranking` chooses it, and a pair
/// reads the same in both placeholders.)
fn paired_order(
    runs: &[Repetitions<'_>],
    i: usize,
    j: usize,
    pointer: &str,
) -> Result<std::cmp::Ordering, Unfillable> {
    let mean = |k: usize| -> Result<f64, Unfillable> {
        let values = runs[k]
            .iter()
            .map(|(_, r)| number(r, pointer))
            .collect::<Result<Vec<f64>, Unfillable>>()?;
        Ok(Estimate::of(&values).mean)
    };
    let order = mean(i)?.total_cmp(&mean(j)?);
    let (lower, higher) = if order.is_le() { (i, j) } else { (j, i) };
    let e = Estimate::of(&paired_changes(&runs[lower], &runs[higher], pointer)?);
    Ok(if e.holds_zero() {
        std::cmp::Ordering::Equal
    } else {
        order
    })
}

/// The `{{kendall EXP_A EXP_B POINTER SELECTION}}` text (see the module
/// doc): `τ_b = +0.60 over 6 configs (15 pairs: 11 ordered alike, 2
/// reversed, 2 told apart on one side only or neither)`.
fn kendall(
    (name_a, a): (&str, &Experiment),
    (name_b, b): (&str, &Experiment),
    pointer: &str,
    selection: &[&str],
) -> Result<String, Unfillable> {
    let (a, b) = (configs(a, selection)?, configs(b, selection)?);
    for (one, other, name) in [(&a, &b, name_b), (&b, &a, name_a)] {
        if let Some((_, runs)) = one.iter().find(|(k, _)| !other.contains_key(*k)) {
            return Err(Unfillable::NotInBoth {
                run: runs[0].0.clone(),
                other: name.to_owned(),
            });
        }
    }
    if a.len() < 2 {
        return Err(Unfillable::TooFewConfigs {
            configs: a.len(),
            selection: selection.join(" "),
            experiment: name_a.to_owned(),
        });
    }
    // The same configs in the same (key) order on both sides.
    let (a, b): (Vec<_>, Vec<_>) = (a.into_values().collect(), b.into_values().collect());
    let mut orders = Vec::new();
    for i in 0..a.len() {
        for j in i + 1..a.len() {
            orders.push((
                paired_order(&a, i, j, pointer)?,
                paired_order(&b, i, j, pointer)?,
            ));
        }
    }
    let agreement = crate::kendall::Agreement::of_orders(orders);
    let tau = agreement.tau_b().map_or_else(
        || "undefined (one side tells no pair apart)".to_owned(),
        |t| format!("{t:+.2}").replace('-', "−"),
    );
    Ok(format!(
        "τ_b = {tau} over {} configs ({} pairs: {} ordered alike, {} reversed, {} told apart on \
         one side only or neither)",
        a.len(),
        agreement.pairs,
        agreement.concordant,
        agreement.discordant,
        agreement.pairs - agreement.concordant - agreement.discordant
    ))
}

/// The `{{runs EXP}}` table: one row per config, its repetitions'
/// makespan and change against sync as mean and 95 % interval.
fn runs_table(exp: &Experiment) -> String {
    let all = baselines(&exp.runs);
    let mut out = String::new();
    // The policy column names the policy; an axis over it would say it twice.
    let shown: Vec<usize> = (0..exp.axes.len())
        .filter(|&i| exp.axes[i] != "policy" && !exp.axes[i].starts_with("policy."))
        .collect();
    let mut header: Vec<&str> = shown.iter().map(|&i| exp.axes[i].as_str()).collect();
    header.extend(["policy", "runs", "makespan ms", "vs sync"]);
    let _ = writeln!(out, "| {} |", header.join(" | "));
    let _ = write!(out, "|{}", "---|".repeat(header.len()));
    // Configs in the order of their first run.
    let mut groups: Vec<(String, Vec<&(PathBuf, RunResult)>)> = Vec::new();
    for run in &exp.runs {
        let key = repetition_key(&run.1);
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, g)) => g.push(run),
            None => groups.push((key, vec![run])),
        }
    }
    for (_, group) in &groups {
        let (path, r) = group[0];
        let id = path
            .parent()
            .and_then(Path::file_name)
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let mut row: Vec<String> = shown
            .iter()
            .map(|&i| {
                exp.values
                    .get(&id)
                    .and_then(|v| v.get(i))
                    .cloned()
                    .unwrap_or_else(|| "-".to_owned())
            })
            .collect();
        row.push(r.policy_label());
        let ok: Vec<&RunResult> = group
            .iter()
            .map(|(_, r)| r)
            .filter(|r| r.outcome.success)
            .collect();
        row.push(if ok.len() == group.len() {
            group.len().to_string()
        } else {
            format!("{} ({} failed)", group.len(), group.len() - ok.len())
        });
        let makespans: Vec<f64> = ok.iter().map(|r| r.virtual_time_ns as f64 / 1e6).collect();
        row.push(Estimate::of(&makespans).value(3));
        let changes: Vec<f64> = ok
            .iter()
            .filter(|r| !r.is_sync_baseline())
            .filter_map(|r| {
                let base = *all.get(&baseline_key(r))?;
                Some(100.0 * (r.virtual_time_ns as f64 - base as f64) / base.max(1) as f64)
            })
            .collect();
        row.push(if changes.is_empty() || changes.len() != ok.len() {
            "-".to_owned()
        } else {
            Estimate::of(&changes).difference()
        });
        let _ = write!(out, "\n| {} |", row.join(" | "));
    }
    out
}

/// Fills every placeholder of `template` (the text of `file`) from the
/// experiments under `results_dir`.
pub fn render(file: &str, template: &str, results_dir: &Path) -> Result<String, PaperError> {
    let mut results = Results {
        dir: results_dir.to_path_buf(),
        loaded: BTreeMap::new(),
    };
    let mut out = String::with_capacity(template.len() * 2);
    for (n, line) in template.split_inclusive('\n').enumerate() {
        let err = |problem: Unfillable| PaperError {
            file: file.to_owned(),
            line: n + 1,
            problem,
        };
        let mut rest = line;
        while let Some(start) = rest.find("{{") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end = after.find("}}").ok_or_else(|| err(Unfillable::Unclosed))?;
            out.push_str(&fill(&mut results, &after[..end]).map_err(err)?);
            rest = &after[end + 2..];
        }
        out.push_str(rest);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_placeholder_names_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let e = render("t.md", "fine\nthen {{nope x}}\n", dir.path()).unwrap_err();
        assert_eq!((e.file.as_str(), e.line), ("t.md", 2));
        assert!(
            matches!(&e.problem, Unfillable::NoResultsFolder { name, .. } if name == "x"),
            "{e}"
        );
        let e = render("t.md", "{{vs-sync", dir.path()).unwrap_err();
        assert!(matches!(e.problem, Unfillable::Unclosed), "{e}");
        assert_eq!(
            e.to_string(),
            "t.md:1: `{{` without its `}}` on the same line"
        );
        let e = render("t.md", "{{runs}}", dir.path()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "t.md:1: `{{runs}}`: expected {{OP EXPERIMENT ...}}"
        );
        let e = render("t.md", "{{runs ../etc}}", dir.path()).unwrap_err();
        assert!(
            matches!(&e.problem, Unfillable::NotAnExperiment(name) if name == "../etc"),
            "{e}"
        );
        assert_eq!(
            render("t.md", "no placeholders\n", dir.path()).unwrap(),
            "no placeholders\n"
        );
    }
}
