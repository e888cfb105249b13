//! Which runs of a set of results belong together: the synchronous
//! baseline of each run, and the repetitions of one config with other
//! seeds. The report's tables, its plots and the paper group runs by the
//! same keys.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::result::RunResult;

/// The config of `r` without what tells variants apart, as a key.
pub fn baseline_key(r: &RunResult) -> String {
    let mut parsed = r.config.parsed.clone();
    if let Some(table) = parsed.as_object_mut() {
        table.remove("policy");
        table.remove("apf");
    }
    format!("{} {parsed}", r.backend)
}

/// The makespan of the sync baseline of each successful baseline run of
/// `results`, by [`baseline_key`].
pub fn baselines(results: &[(PathBuf, RunResult)]) -> BTreeMap<String, u64> {
    results
        .iter()
        .filter(|(_, r)| r.outcome.success && r.is_sync_baseline())
        .map(|(_, r)| (baseline_key(r), r.virtual_time_ns))
        .collect()
}

/// The config of `r` without the seeds a matrix varies per repetition (the
/// guest's and the pager's): runs that share it are repetitions.
pub fn repetition_key(r: &RunResult) -> String {
    let mut parsed = r.config.parsed.clone();
    if let Some(table) = parsed.as_object_mut() {
        table.remove("seed");
        if let Some(pager) = table.get_mut("pager").and_then(|p| p.as_object_mut()) {
            pager.remove("seed");
        }
    }
    format!("{} {parsed}", r.backend)
}

/// The seeds of `r` a matrix varies per repetition, as text: runs of two
/// configs with the same seeds are a pair of one repetition.
pub fn seeds_of(r: &RunResult) -> String {
    let p = &r.config.parsed;
    format!(
        "{} {}",
        p.get("seed").unwrap_or(&serde_json::Value::Null),
        p.pointer("/pager/seed").unwrap_or(&serde_json::Value::Null)
    )
}
