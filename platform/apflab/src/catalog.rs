//! What `apflab list` shows: the configs in a directory, the workloads the
//! guest offers, the policies built with apflab and the cost-model presets
//! with the source of every value.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::config::{Config, WorkloadKind};

/// Sorted files with extension `ext` directly in `dir` (empty if `dir`
/// cannot be read).
pub fn files_with_ext(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == ext))
        .collect();
    files.sort();
    files
}

/// One line per config in `dir`: its name and what it runs, or why it does
/// not load.
pub fn describe_configs(dir: &Path) -> String {
    let mut out = String::new();
    let files = files_with_ext(dir, "toml");
    if files.is_empty() {
        let _ = writeln!(out, "  (no *.toml in {})", dir.display());
    }
    for path in files {
        match Config::load(&path) {
            Ok(l) => {
                let c = &l.config;
                let _ = writeln!(
                    out,
                    "  {:<12} {:<9} {} vCPU, {} MiB, {}, seed {}",
                    l.name,
                    c.workload.kind.name(),
                    c.guest.vcpus,
                    c.guest.memory_mib,
                    c.backend.kind.name(),
                    c.seed
                );
            }
            Err(e) => {
                let _ = writeln!(out, "  {:<12} INVALID: {e}", stem(&path));
            }
        }
    }
    out
}

/// One line per workload with the parameters it takes.
pub fn describe_workloads() -> String {
    let mut out = String::new();
    for kind in WorkloadKind::ALL {
        let _ = writeln!(out, "  {:<12} {}", kind.name(), kind.params().join(", "));
    }
    out
}

/// The example policies built with apflab (`.wasm` and `.wat`).
pub fn policies() -> Vec<PathBuf> {
    let mut all = Vec::new();
    // The artifacts crate names files inside its policy directories; their
    // parents are the directories.
    for probe in [
        apflab_artifacts::policy_wasm("probe"),
        apflab_artifacts::policy_wat("probe"),
    ] {
        if let (Some(dir), Some(ext)) = (probe.parent(), probe.extension()) {
            all.extend(files_with_ext(dir, &ext.to_string_lossy()));
        }
    }
    all
}

/// The built example policy called `name` (dashes or underscores), if any.
pub fn policy_by_name(name: &str) -> Option<PathBuf> {
    let wanted = name.replace('-', "_");
    policies()
        .into_iter()
        .find(|p| stem(p).replace('-', "_") == wanted)
}

/// One line per policy.
pub fn describe_policies() -> String {
    let mut out = String::new();
    let policies = policies();
    if policies.is_empty() {
        out.push_str("  (none built)\n");
    }
    for p in policies {
        let _ = writeln!(out, "  {:<20} {}", stem(&p), p.display());
    }
    out
}

/// Every cost-model preset (`[backend.cost] preset`): its values and where
/// each comes from.
pub fn describe_cost_presets() -> String {
    let mut out = String::new();
    for p in apflab_vmm::CostPreset::ALL {
        let default = if p == apflab_vmm::CostPreset::Uncalibrated {
            " (the default)"
        } else {
            ""
        };
        let _ = writeln!(out, "  {}{default}: {}", p.name(), p.summary());
        let model = p.model();
        for source in p.sources() {
            let value = model
                .fields()
                .iter()
                .find(|(k, _)| *k == source.key)
                .map_or(f64::NAN, |(_, v)| *v);
            let _ = writeln!(
                out,
                "    {:<19} {:>10}  {:<9} {}",
                source.key,
                apflab_pager::config::float_text((value * 1000.0).round() / 1000.0),
                source.kind,
                source.note
            );
        }
    }
    out
}

fn stem(p: &Path) -> String {
    p.file_stem()
        .map_or_else(String::new, |s| s.to_string_lossy().into_owned())
}
