//! Boot once, run many, in a matrix: the points whose boots are the same
//! share one snapshot of it ([`apflab_vmm::snapshot`]).
//!
//! The first point of each such group boots and saves the machine at the
//! boot point (`apflab run --save-snapshot`); the others wait for it and
//! start from that snapshot (`--resume`). A resumed run's results are
//! those of a run from power-on (the snapshot tests compare them byte for
//! byte), so sharing changes a matrix's wall time, not its results.
//!
//! Which points share:
//! - only Linux guests on emu: apflab's own guest boots in a few
//!   milliseconds, less than reading a snapshot back costs;
//! - only boots the pager leaves alone: no `[pager]`, or one armed at the
//!   boot point (`armed_at = "boot-point"`). A boot on far memory faults,
//!   and depends on every pager key and the policy;
//! - grouped by the boot's identity ([`apflab_vmm::snapshot::boot_identity`])
//!   and the `[policy]` and `[apf]` sections, which answer the guest's
//!   feature discovery during the boot.
//!
//! The run that resumes checks the snapshot's identity and the boot's
//! engine calls itself, so a grouping mistake is a refused run, never a
//! wrong result. Should the first point fail before its boot point, the
//! others boot on their own.
//!
//! The snapshots live in a hidden folder of the matrix folder, one per
//! `apflab matrix` process, removed when it ends.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, PoisonError};

use apflab_pager::ArmedAt;

use crate::config::{Backend, Config};
use crate::matrix::Experiment;

/// What a point does about its boot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BootUse {
    /// Boots from power-on, as a run on its own does.
    Boot,
    /// Boots and saves the machine at the boot point to this file.
    Save(PathBuf),
    /// Starts from the snapshot in this file.
    Resume(PathBuf),
}

impl BootUse {
    /// The `apflab run` options that say it.
    pub fn args(&self) -> Vec<&std::ffi::OsStr> {
        match self {
            BootUse::Boot => Vec::new(),
            BootUse::Save(p) => vec!["--save-snapshot".as_ref(), p.as_os_str()],
            BootUse::Resume(p) => vec!["--resume".as_ref(), p.as_os_str()],
        }
    }
}

/// Whether a group's snapshot is there yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Saving {
    /// Its first point has not finished.
    Pending,
    /// Its first point has finished (its snapshot file is there if it
    /// reached the boot point).
    Finished,
}

/// The groups of points of one `apflab matrix` run that share a boot.
#[derive(Debug)]
pub struct BootSharing {
    /// Point index → its group.
    group_of: HashMap<usize, usize>,
    /// Per group: the point that saves the snapshot.
    first: Vec<usize>,
    /// Where the snapshots are written (made when the first one is).
    dir: PathBuf,
    saving: Mutex<Vec<Saving>>,
    saved: Condvar,
}

/// Whether a point's boot can be saved and shared (see the module's
/// comment).
fn shareable(config: &Config) -> bool {
    config.backend.kind == Backend::Emu
        && config.guest.linux
        && config
            .pager
            .as_ref()
            .is_none_or(|p| p.armed_at == ArmedAt::BootPoint)
}

/// What tells apart the boots of shareable points.
fn boot_key(config: &Config) -> String {
    let vm = config.vm_config(false);
    let identity = apflab_vmm::snapshot::boot_identity(
        &vm,
        vm.kernel.display().to_string(),
        vm.initrd.as_ref().map(|p| p.display().to_string()),
        &config.boot_identity(),
    );
    let sections: BTreeMap<&str, String> = [
        ("identity", format!("{identity:?}")),
        (
            "policy",
            serde_json::to_string(&config.policy).unwrap_or_default(),
        ),
        (
            "apf",
            serde_json::to_string(&config.apf).unwrap_or_default(),
        ),
    ]
    .into();
    format!("{sections:?}")
}

impl BootSharing {
    /// Groups the points `pending` of `experiment` (run on `backend`, if
    /// `--backend` overrides the configs) whose boots are the same; only
    /// groups of two or more share. A point whose config does not load
    /// shares nothing (its run reports the error). Snapshots go below
    /// `root`, the matrix folder.
    pub fn plan(
        experiment: &Experiment,
        pending: &[usize],
        backend: Option<Backend>,
        root: &Path,
    ) -> Self {
        let mut by_key: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for &p in pending {
            let Ok(mut loaded) = experiment.config(p) else {
                continue;
            };
            if let Some(b) = backend {
                loaded.config.backend.kind = b;
            }
            if shareable(&loaded.config) {
                by_key.entry(boot_key(&loaded.config)).or_default().push(p);
            }
        }
        let mut group_of = HashMap::new();
        let mut first = Vec::new();
        for points in by_key.into_values().filter(|points| points.len() > 1) {
            for &p in &points {
                group_of.insert(p, first.len());
            }
            first.push(points[0]);
        }
        let groups = first.len();
        BootSharing {
            group_of,
            first,
            dir: root.join(format!(".snapshots-{}", std::process::id())),
            saving: Mutex::new(vec![Saving::Pending; groups]),
            saved: Condvar::new(),
        }
    }

    /// Groups that share a boot.
    pub fn groups(&self) -> usize {
        self.first.len()
    }

    /// Points in those groups.
    pub fn points(&self) -> usize {
        self.group_of.len()
    }

    /// `pending` in the order to run it: every group's first point before
    /// the points that wait for it, otherwise as given.
    pub fn order(&self, pending: &[usize]) -> Vec<usize> {
        let (mut firsts, rest): (Vec<usize>, Vec<usize>) =
            pending.iter().partition(|p| self.first.contains(p));
        firsts.extend(rest);
        firsts
    }

    /// What point `p` does about its boot. A point that resumes waits here
    /// until its group's first point has finished; run in
    /// [`BootSharing::order`], that point has always started.
    pub fn boot_use(&self, p: usize) -> std::io::Result<BootUse> {
        let Some(&group) = self.group_of.get(&p) else {
            return Ok(BootUse::Boot);
        };
        let file = self.dir.join(format!("boot-{group}.snap"));
        if self.first[group] == p {
            std::fs::create_dir_all(&self.dir)?;
            return Ok(BootUse::Save(file));
        }
        let saving = self.saving.lock().unwrap_or_else(PoisonError::into_inner);
        let _finished = self
            .saved
            .wait_while(saving, |s| s[group] == Saving::Pending)
            .unwrap_or_else(PoisonError::into_inner);
        Ok(if file.is_file() {
            BootUse::Resume(file)
        } else {
            BootUse::Boot
        })
    }

    /// Point `p` has finished: the points that wait for its snapshot go on.
    pub fn finished(&self, p: usize) {
        if let Some(&group) = self.group_of.get(&p)
            && self.first[group] == p
        {
            self.saving.lock().unwrap_or_else(PoisonError::into_inner)[group] = Saving::Finished;
            self.saved.notify_all();
        }
    }
}

impl Drop for BootSharing {
    fn drop(&mut self) {
        // The snapshots are this run's scratch.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
