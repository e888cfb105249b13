//! `apflab paper`: fills a markdown template with figures computed from
//! experiment results, so that no number in the paper is typed by hand.
//!
//! A placeholder is `{{OP EXPERIMENT ARGS}}`, where EXPERIMENT names a
//! folder of the results directory (`results/paper/<experiment>`, as
//! `scripts/paper` writes them) and a *selection* is space-separated
//! `dotted.key=value` filters on the runs' configs (`policy.module=sync
//! workload.kind=mixed`) that must match exactly one run:
//!
//! - `{{vs-sync EXP SELECTION}}`: the selected run's makespan relative to
//!   its synchronous baseline (the run of the same config, seed and backend
//!   with no async PF), as a signed percentage (`-3.6 %`);
//! - `{{value EXP POINTER UNIT SELECTION}}`: a number of the selected run's
//!   `result.json` at the JSON pointer POINTER, in UNIT (`ns`, `us`, `ms`,
//!   `s` for a value in ns; `count`; `percent` for a fraction; `plain` as
//!   it is);
//! - `{{change EXP POINTER SELECTION -> SELECTION}}`: how the value at
//!   POINTER of the second run differs from the first's, as a signed
//!   percentage of the first;
//! - `{{speedup EXP POINTER SELECTION -> SELECTION}}`: the first run's value
//!   over the second's, minus one, as a signed percentage (a throughput gain
//!   when the value is a time);
//! - `{{runs EXP}}`: a table of the experiment's runs: its axes' values, the
//!   policy, the makespan and the change against sync.
//!
//! A placeholder that cannot be filled (no such experiment, a selection of
//! no run or of several, a missing value) is an error naming the template's
//! line; nothing is written.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::plot::{baseline_key, baselines};
use crate::report::{find_results, load_result};
use crate::result::RunResult;

/// Largest template read.
pub const MAX_TEMPLATE_BYTES: u64 = 4 << 20;

/// An error filling a template.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct PaperError {
    /// The template.
    pub file: String,
    /// Its line (1-based).
    pub line: usize,
    /// What is wrong.
    pub message: String,
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
    fn experiment(&mut self, name: &str) -> Result<&Experiment, String> {
        if !self.loaded.contains_key(name) {
            if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
                return Err(format!("`{name}` is not an experiment name"));
            }
            let dir = self.dir.join(name);
            if !dir.is_dir() {
                return Err(format!(
                    "no results under {} (run `apflab matrix experiments/{name}.toml --out {}` first)",
                    dir.display(),
                    dir.display()
                ));
            }
            let mut runs = Vec::new();
            for path in find_results(&dir).map_err(|e| e.to_string())? {
                let r = load_result(&path).map_err(|e| e.to_string())?;
                runs.push((path, r));
            }
            if runs.is_empty() {
                return Err(format!("no results under {}", dir.display()));
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

/// The one run of `exp` every filter of `selection` admits.
fn select<'e>(exp: &'e Experiment, selection: &[&str]) -> Result<&'e (PathBuf, RunResult), String> {
    let mut filters = Vec::new();
    for f in selection {
        let (k, v) = f
            .split_once('=')
            .ok_or_else(|| format!("`{f}`: expected dotted.key=value"))?;
        filters.push((k, v));
    }
    let found: Vec<&(PathBuf, RunResult)> = exp
        .runs
        .iter()
        .filter(|(_, r)| filters.iter().all(|(k, v)| config_matches(r, k, v)))
        .collect();
    match found.as_slice() {
        [one] => Ok(one),
        [] => Err(format!("no run has {}", selection.join(" "))),
        many => Err(format!(
            "{} runs have `{}` ({}); add filters until one is left",
            many.len(),
            selection.join(" "),
            many.iter()
                .map(|(p, _)| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// The number at `pointer` of run `r`'s result file.
fn number(r: &RunResult, pointer: &str) -> Result<f64, String> {
    let json = serde_json::to_value(r).map_err(|e| e.to_string())?;
    json.pointer(pointer)
        .and_then(serde_json::Value::as_f64)
        .ok_or_else(|| format!("no number at `{pointer}` of the result"))
}

/// A signed percentage as the paper prints it.
fn percent(p: f64) -> String {
    format!("{p:+.1} %").replace('-', "−")
}

/// Splits `A -> B` arguments.
fn two_selections<'a>(args: &'a [&'a str]) -> Result<(&'a [&'a str], &'a [&'a str]), String> {
    let arrow = args
        .iter()
        .position(|a| *a == "->")
        .ok_or("expected two selections separated by `->`")?;
    Ok((&args[..arrow], &args[arrow + 1..]))
}

/// The text that replaces one placeholder.
fn fill(results: &mut Results, placeholder: &str) -> Result<String, String> {
    let words: Vec<&str> = placeholder.split_whitespace().collect();
    let [op, name, args @ ..] = words.as_slice() else {
        return Err(format!(
            "`{{{{{placeholder}}}}}`: expected {{{{OP EXPERIMENT ...}}}}"
        ));
    };
    let exp = results.experiment(name)?;
    match *op {
        "vs-sync" => {
            let (path, r) = select(exp, args)?;
            let all = baselines(&exp.runs);
            let base = all.get(&baseline_key(r)).ok_or_else(|| {
                format!("{}: no synchronous baseline among the runs", path.display())
            })?;
            Ok(percent(
                100.0 * (r.virtual_time_ns as f64 - *base as f64) / (*base).max(1) as f64,
            ))
        }
        "value" => {
            let [pointer, unit, selection @ ..] = args else {
                return Err("expected `value EXPERIMENT POINTER UNIT SELECTION`".to_owned());
            };
            let (_, r) = select(exp, selection)?;
            let v = number(r, pointer)?;
            Ok(match *unit {
                "ns" => format!("{v:.0} ns"),
                "us" => format!("{:.1} µs", v / 1e3),
                "ms" => format!("{:.1} ms", v / 1e6),
                "s" => format!("{:.2} s", v / 1e9),
                "count" => format!("{v:.0}"),
                "percent" => format!("{:.1} %", v * 100.0),
                "plain" => format!("{v}"),
                other => {
                    return Err(format!(
                        "unit `{other}`: expected ns, us, ms, s, count, percent or plain"
                    ));
                }
            })
        }
        "change" | "speedup" => {
            let [pointer, rest @ ..] = args else {
                return Err(format!("expected `{op} EXPERIMENT POINTER A -> B`"));
            };
            let (a, b) = two_selections(rest)?;
            let va = number(&select(exp, a)?.1, pointer)?;
            let vb = number(&select(exp, b)?.1, pointer)?;
            if va == 0.0 || vb == 0.0 {
                return Err(format!("`{pointer}` is 0 in one of the runs"));
            }
            Ok(percent(if *op == "change" {
                100.0 * (vb - va) / va
            } else {
                100.0 * (va / vb - 1.0)
            }))
        }
        "runs" => {
            if !args.is_empty() {
                return Err("expected `runs EXPERIMENT`".to_owned());
            }
            Ok(runs_table(exp))
        }
        other => Err(format!(
            "`{other}`: expected vs-sync, value, change, speedup or runs"
        )),
    }
}

/// The `{{runs EXP}}` table.
fn runs_table(exp: &Experiment) -> String {
    let all = baselines(&exp.runs);
    let mut out = String::new();
    // The policy column names the policy; an axis over it would say it twice.
    let shown: Vec<usize> = (0..exp.axes.len())
        .filter(|&i| exp.axes[i] != "policy" && !exp.axes[i].starts_with("policy."))
        .collect();
    let mut header: Vec<&str> = shown.iter().map(|&i| exp.axes[i].as_str()).collect();
    header.extend(["policy", "makespan ms", "vs sync"]);
    let _ = writeln!(out, "| {} |", header.join(" | "));
    let _ = write!(out, "|{}", "---|".repeat(header.len()));
    for (path, r) in &exp.runs {
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
        row.push(format!("{:.3}", r.virtual_time_ns as f64 / 1e6));
        row.push(match all.get(&baseline_key(r)) {
            Some(&base) if !r.is_sync_baseline() && r.outcome.success => {
                percent(100.0 * (r.virtual_time_ns as f64 - base as f64) / base.max(1) as f64)
            }
            _ => "-".to_owned(),
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
        let err = |message: String| PaperError {
            file: file.to_owned(),
            line: n + 1,
            message,
        };
        let mut rest = line;
        while let Some(start) = rest.find("{{") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end = after
                .find("}}")
                .ok_or_else(|| err("`{{` without its `}}` on the same line".to_owned()))?;
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
    fn percentages_are_signed_with_a_true_minus() {
        assert_eq!(percent(-3.64), "−3.6 %");
        assert_eq!(percent(2.8), "+2.8 %");
    }

    #[test]
    fn a_bad_placeholder_names_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let e = render("t.md", "fine\nthen {{nope x}}\n", dir.path()).unwrap_err();
        assert_eq!((e.file.as_str(), e.line), ("t.md", 2));
        assert!(e.message.contains("no results under"), "{e}");
        let e = render("t.md", "{{vs-sync", dir.path()).unwrap_err();
        assert!(e.message.contains("without its"), "{e}");
        let e = render("t.md", "{{runs ../etc}}", dir.path()).unwrap_err();
        assert!(e.message.contains("not an experiment name"), "{e}");
        assert_eq!(
            render("t.md", "no placeholders\n", dir.path()).unwrap(),
            "no placeholders\n"
        );
    }
}
