//! `apflab matrix --slurm DIR`: a matrix as a Slurm job array.
//!
//! [`write_job`] writes `DIR/job.sbatch`, one array task per point (or per
//! chunk of points), beside the point configs (`DIR/points/`). Each task
//! runs `apflab run` for its points into `DIR`, exactly as a local matrix
//! does (a partial folder renamed into place once complete), so `DIR` must
//! be on a filesystem the compute nodes share, and so must the `apflab`
//! executable and the guest it boots. Slurm distributes the work; apflab
//! only writes the script, hands it to `sbatch` ([`submit`]) and, once the
//! tasks are done, `apflab matrix EXPERIMENT --collect DIR` writes the
//! table from the results.
//!
//! A job array has at most [`MAX_ARRAY_TASKS`] tasks (Slurm's default
//! `MaxArraySize`): a larger matrix gets more points per task. With
//! `--wall-timeout` (or `backend.wall_timeout_ms` in every point) and no
//! `--time`, each task's `--time` is the sum of its points' limits, plus a
//! second per point and a minute.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::config::Backend;
use crate::matrix::{Experiment, Layout};

/// What the job asks of Slurm.
#[derive(Clone, Debug, Default)]
pub struct SlurmOptions {
    /// Points per array task (at least 1).
    pub chunk: usize,
    /// `#SBATCH --partition`.
    pub partition: Option<String>,
    /// `#SBATCH --time` (Slurm's format: `MM`, `HH:MM:SS`, `D-HH`...), per
    /// array task.
    pub time: Option<String>,
    /// `#SBATCH --account`.
    pub account: Option<String>,
    /// `apflab matrix --wall-timeout`: passed to every run, and (without
    /// `time`) the base of each task's `--time`.
    pub wall_timeout_ms: Option<u64>,
}

/// Most tasks in one job array: Slurm's default `MaxArraySize` (1001)
/// allows indices 0 to 1000. More points are chunked to fit.
pub const MAX_ARRAY_TASKS: usize = 1001;

/// The `#SBATCH --time` of a task running points whose wall-clock limits
/// are `limits_ms`, in whole minutes with one to spare for starting each
/// run; `None` if a point has no limit.
fn task_minutes(limits_ms: impl Iterator<Item = Option<u64>>) -> Option<u64> {
    let mut total: u64 = 0;
    let mut points: u64 = 0;
    for limit in limits_ms {
        total = total.saturating_add(limit?);
        points += 1;
    }
    // A second per run to start it and write its results, and a minute
    // for the task.
    Some(total.saturating_add(points * 1000).div_ceil(60_000) + 1)
}

/// What is wrong with a Slurm option, or why `sbatch` did not take a job.
#[derive(Debug, thiserror::Error)]
pub enum SlurmError {
    /// An option that becomes an `#SBATCH` line is not one word.
    #[error("{flag} {value:?}: expected one word, as sbatch takes it")]
    NotOneWord {
        /// The option.
        flag: &'static str,
        /// Its value.
        value: String,
    },
    /// The results folder, which becomes `#SBATCH --output`, has spaces.
    #[error("--slurm {0:?}: a path without spaces, as #SBATCH --output takes it")]
    FolderWithSpaces(String),
    /// `sbatch` could not be started.
    #[error("{}: cannot run: {source}", sbatch.display())]
    CannotRun {
        /// The `sbatch` program.
        sbatch: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `sbatch` refused the job.
    #[error("sbatch {} failed ({status}): {stderr}", script.display())]
    Refused {
        /// The job script.
        script: PathBuf,
        /// sbatch's exit status.
        status: std::process::ExitStatus,
        /// What it said.
        stderr: String,
    },
    /// `sbatch` succeeded without printing a job id.
    #[error("sbatch {} printed no job id", script.display())]
    NoJobId {
        /// The job script.
        script: PathBuf,
    },
}

impl SlurmOptions {
    /// Checks the values that become `#SBATCH` lines: one word each (a
    /// newline would end the line and start a shell command).
    pub fn check(&self) -> Result<(), SlurmError> {
        for (flag, value) in [
            ("--partition", &self.partition),
            ("--time", &self.time),
            ("--account", &self.account),
        ] {
            if let Some(v) = value
                && (v.is_empty() || v.chars().any(|c| c.is_whitespace() || c.is_control()))
            {
                return Err(SlurmError::NotOneWord {
                    flag,
                    value: v.clone(),
                });
            }
        }
        Ok(())
    }
}

/// Checks the results folder of a job: its path goes into `#SBATCH
/// --output`, which takes no spaces.
pub fn check_folder(dir: &Path) -> Result<(), SlurmError> {
    let text = dir.to_string_lossy();
    if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(SlurmError::FolderWithSpaces(text.into_owned()));
    }
    Ok(())
}

/// A job script written by [`write_job`].
#[derive(Clone, Debug)]
pub struct Job {
    /// The script.
    pub script: PathBuf,
    /// Array tasks.
    pub tasks: usize,
    /// Points the tasks run.
    pub points: usize,
    /// Points per task: `--chunk`, or more to stay within
    /// [`MAX_ARRAY_TASKS`].
    pub chunk: usize,
}

/// `sbatch` on the `PATH`, if there is one.
pub fn find_sbatch() -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("sbatch"))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// `s` quoted for bash.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// A path quoted for bash (paths that are not UTF-8 are named lossily).
fn quote_path(p: &Path) -> String {
    quote(&p.to_string_lossy())
}

/// Writes the job array that runs the points `pending` (indices into the
/// experiment's points) of `experiment` into `layout`'s folder (an absolute
/// path), each with `exe run`, and returns it. Creates `slurm/` for the
/// tasks' output.
pub fn write_job(
    experiment: &Experiment,
    layout: &Layout,
    pending: &[usize],
    backend: Option<Backend>,
    exe: &Path,
    options: &SlurmOptions,
) -> std::io::Result<Job> {
    let chunk = options
        .chunk
        .max(1)
        .max(pending.len().div_ceil(MAX_ARRAY_TASKS));
    let chunks: Vec<&[usize]> = pending.chunks(chunk).collect();
    let time = options.time.clone().or_else(|| {
        chunks
            .iter()
            .map(|task| {
                task_minutes(
                    task.iter()
                        .map(|&i| experiment.wall_timeout_ms(i, options.wall_timeout_ms)),
                )
            })
            .try_fold(0, |most: u64, t| t.map(|t| most.max(t)))
            .map(|minutes| minutes.to_string())
    });
    let logs = layout.root.join("slurm");
    std::fs::create_dir_all(&logs)?;
    let base_dir =
        std::path::absolute(&experiment.base_dir).unwrap_or_else(|_| experiment.base_dir.clone());
    // The emu engine runs a VM on one host thread; kvm on one per vCPU.
    let cpus = pending
        .iter()
        .map(|&i| match experiment.backend(i, backend) {
            Backend::Emu => 1,
            Backend::Kvm => experiment.vcpus(i),
        })
        .max()
        .unwrap_or(1);

    let mut s = String::new();
    let _ = writeln!(s, "#!/bin/bash");
    let _ = writeln!(
        s,
        "# apflab matrix {} ({}): {} points in {} array tasks of up to {chunk}.",
        experiment.name,
        experiment.file,
        pending.len(),
        chunks.len()
    );
    let _ = writeln!(
        s,
        "# Written by `apflab matrix --slurm`. Each task runs `apflab run` for its points \
         into\n# the results folder below, which the compute nodes must share (as the \
         apflab\n# executable and its guest). When the job is done:\n#   apflab matrix {} \
         --collect {}",
        experiment.file,
        layout.root.display()
    );
    let job_name: String = experiment
        .name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let _ = writeln!(s, "#SBATCH --job-name=apflab-{job_name}");
    let _ = writeln!(s, "#SBATCH --array=0-{}", chunks.len().saturating_sub(1));
    let _ = writeln!(s, "#SBATCH --output={}/%A_%a.out", logs.display());
    let _ = writeln!(s, "#SBATCH --ntasks=1");
    let _ = writeln!(s, "#SBATCH --cpus-per-task={cpus}");
    for (flag, value) in [
        ("partition", &options.partition),
        ("time", &time),
        ("account", &options.account),
    ] {
        if let Some(v) = value {
            let _ = writeln!(s, "#SBATCH --{flag}={v}");
        }
    }
    let _ = writeln!(s, "set -u");
    let _ = writeln!(s, "apflab={}", quote_path(exe));
    let _ = writeln!(s, "dir={}", quote_path(&layout.root));
    let _ = writeln!(s, "base={}", quote_path(&base_dir));
    let _ = writeln!(s, "name={}", quote(&experiment.name));
    let mut backend_arg = backend.map_or_else(String::new, |b| format!(" --backend {}", b.name()));
    if let Some(ms) = options.wall_timeout_ms {
        backend_arg.push_str(&format!(" --wall-timeout {ms}"));
    }
    let _ = writeln!(
        s,
        "case \"${{SLURM_ARRAY_TASK_ID:?submit this script with sbatch: it is a job array}}\" in"
    );
    for (task, points) in chunks.iter().enumerate() {
        let ids: Vec<String> = points.iter().map(|&i| Experiment::id(i)).collect();
        let _ = writeln!(s, "    {task}) points=\"{}\" ;;", ids.join(" "));
    }
    let _ = writeln!(
        s,
        "    *) echo \"no array task $SLURM_ARRAY_TASK_ID in this job\" >&2; exit 2 ;;"
    );
    let _ = writeln!(s, "esac");
    s.push_str(&format!(
        r#"status=0
for p in $points; do
    # Written aside and renamed into place, result.json last: a task that
    # is cancelled or runs out of time leaves no half-written result.
    tmp="$dir/.partial-$p"
    rm -rf "$tmp"
    echo "apflab: $p: $(date -u +%FT%TZ) on $(hostname)"
    "$apflab" run "$dir/points/$p.toml" --name "$name/$p" --base-dir "$base" --out "$tmp"{backend_arg} || status=1
    if [ -f "$tmp/result.json" ]; then
        mkdir -p "$dir/$p" &&
            {{ [ ! -f "$tmp/console.log" ] || mv -f "$tmp/console.log" "$dir/$p/console.log"; }} &&
            {{ [ ! -f "$tmp/policy.log" ] || mv -f "$tmp/policy.log" "$dir/$p/policy.log"; }} &&
            mv -f "$tmp/result.json" "$dir/$p/result.json" &&
            rm -rf "$tmp" || status=1
    else
        rm -rf "$tmp"
        status=1
    fi
done
exit "$status"
"#
    ));
    let script = layout.root.join("job.sbatch");
    apflab_files::write_atomic(&script, s.as_bytes())?;
    Ok(Job {
        script,
        tasks: chunks.len(),
        points: pending.len(),
        chunk,
    })
}

/// Submits `script` with `sbatch`; returns the job id.
pub fn submit(sbatch: &Path, script: &Path) -> Result<String, SlurmError> {
    let out = Command::new(sbatch)
        .arg("--parsable")
        .arg(script)
        .output()
        .map_err(|source| SlurmError::CannotRun {
            sbatch: sbatch.to_owned(),
            source,
        })?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(SlurmError::Refused {
            script: script.to_owned(),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    // `--parsable` prints `jobid` or `jobid;cluster`.
    let id = stdout.trim().split(';').next().unwrap_or("").to_owned();
    if id.is_empty() {
        return Err(SlurmError::NoJobId {
            script: script.to_owned(),
        });
    }
    Ok(id)
}
