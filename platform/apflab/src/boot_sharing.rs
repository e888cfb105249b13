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
//! `apflab matrix` process, removed when it ends (or, if it was
//! interrupted, by the next one that shares boots there).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, PoisonError};

use apflab_pager::ArmedAt;

use crate::config::{Backend, Config};

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
    /// Groups the points whose boots are the same, from each point's index
    /// and config as its run will use it (`--backend` applied); only groups
    /// of two or more share. Snapshots go below `root`, the matrix folder.
    pub fn plan(points: impl IntoIterator<Item = (usize, Config)>, root: &Path) -> Self {
        let mut by_key: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (p, config) in points {
            if shareable(&config) {
                by_key.entry(boot_key(&config)).or_default().push(p);
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
        if groups > 0 {
            remove_stale(root);
        }
        BootSharing {
            group_of,
            first,
            dir: scratch_dir(root, std::process::id()),
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

/// Where the snapshots of the `apflab matrix` process `pid` go.
fn scratch_dir(root: &Path, pid: u32) -> PathBuf {
    root.join(format!("{SCRATCH_PREFIX}{pid}"))
}

const SCRATCH_PREFIX: &str = ".snapshots-";

/// Removes the snapshot folders of `apflab matrix` processes that are gone
/// (interrupted before they could clean up); those of live ones stay.
fn remove_stale(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(SCRATCH_PREFIX))
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

impl Drop for BootSharing {
    fn drop(&mut self) {
        // The snapshots are this run's scratch.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::Arc;

    use super::*;

    /// A file that passes for an arm64 Linux Image (its header only).
    fn linux_image(dir: &Path) -> PathBuf {
        let mut image = vec![0u8; 64];
        image[0x38..0x3c].copy_from_slice(b"ARM\x64");
        let path = dir.join("Image");
        std::fs::File::create(&path)
            .unwrap()
            .write_all(&image)
            .unwrap();
        path
    }

    /// A Linux config with `extra` sections (or apflab's own guest with
    /// `linux` false).
    fn config(dir: &Path, linux: bool, extra: &str) -> Config {
        let kernel = if linux {
            format!("kernel = {:?}\n", linux_image(dir).display().to_string())
        } else {
            String::new()
        };
        let text = format!(
            "seed = 1\n[guest]\nvcpus = 1\nmemory_mib = 256\n{kernel}[workload]\nkind = \"cpu\"\n\
             ops = 1000\n[backend]\nkind = \"emu\"\n{extra}"
        );
        Config::from_text("test.toml", &text, dir).unwrap()
    }

    const ARMED_AT_BOOT: &str = "[pager]\nstore = { kind = \"zero\" }\narmed_at = \"boot-point\"\n\
         latency = { model = \"constant\", us = LATENCY }\n";

    fn armed_at_boot(latency_us: f64) -> String {
        ARMED_AT_BOOT.replace("LATENCY", &format!("{latency_us:?}"))
    }

    #[test]
    fn linux_points_that_boot_alike_share_and_the_others_boot() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let points = [
            // 0, 2 and 4 boot alike: far memory starts after the boot, so
            // the latency does not matter.
            (0, config(d, true, &armed_at_boot(10.0))),
            (2, config(d, true, &armed_at_boot(100.0))),
            (4, config(d, true, &armed_at_boot(1000.0))),
            // Far memory from power-on: the boot faults.
            (1, config(d, true, "[pager]\nstore = { kind = \"zero\" }\n")),
            (3, config(d, true, "[pager]\nstore = { kind = \"zero\" }\n")),
            // apflab's own guest boots faster than a snapshot is read.
            (5, config(d, false, "")),
            (6, config(d, false, "")),
            // Another policy answers the boot's feature discovery.
            (
                7,
                config(
                    d,
                    true,
                    &(armed_at_boot(10.0) + "[policy]\nmodule = \"paolo\"\n"),
                ),
            ),
            (
                8,
                config(
                    d,
                    true,
                    &(armed_at_boot(20.0) + "[policy]\nmodule = \"paolo\"\n"),
                ),
            ),
        ];
        let sharing = BootSharing::plan(points, d);
        assert_eq!((sharing.groups(), sharing.points()), (2, 5));
        // Each group's first point (in the order the plan was given) runs
        // before the points that wait for it.
        assert_eq!(sharing.order(&[1, 2, 3, 0, 4, 8, 7]), [0, 7, 1, 2, 3, 4, 8]);
        for p in [1, 3, 5, 6] {
            assert_eq!(sharing.boot_use(p).unwrap(), BootUse::Boot, "point {p}");
        }
        let BootUse::Save(file) = sharing.boot_use(0).unwrap() else {
            panic!("the group's first point saves its boot");
        };
        // Its run saves the snapshot and ends: the others resume from it.
        std::fs::write(&file, b"snapshot").unwrap();
        sharing.finished(0);
        assert_eq!(sharing.boot_use(2).unwrap(), BootUse::Resume(file.clone()));
        assert_eq!(sharing.boot_use(4).unwrap(), BootUse::Resume(file));
        // The other group's first point ends without a snapshot (it never
        // reached its boot point): its other point boots.
        assert!(matches!(sharing.boot_use(7).unwrap(), BootUse::Save(_)));
        sharing.finished(7);
        assert_eq!(sharing.boot_use(8).unwrap(), BootUse::Boot);
        let folder = sharing.dir.clone();
        drop(sharing);
        assert!(!folder.exists(), "the snapshots are scratch");
    }

    #[test]
    fn the_snapshots_of_an_interrupted_matrix_are_removed_by_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // No process has this id (Linux's pid_max is at most 2^22).
        let gone = scratch_dir(d, u32::MAX);
        // Process 1 always runs: its folder is another matrix's at work.
        let live = scratch_dir(d, 1);
        for folder in [&gone, &live] {
            std::fs::create_dir_all(folder).unwrap();
            std::fs::write(folder.join("boot-0.snap"), b"snapshot").unwrap();
        }
        let points = [0, 1].map(|p| (p, config(d, true, "")));
        let sharing = BootSharing::plan(points, d);
        assert!(!gone.exists());
        assert!(live.join("boot-0.snap").exists());
        assert_eq!(sharing.dir, scratch_dir(d, std::process::id()));
    }

    #[test]
    fn a_point_waits_for_its_group_to_save_its_boot() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let points = [0, 1].map(|p| (p, config(d, true, "")));
        let sharing = Arc::new(BootSharing::plan(points, d));
        let BootUse::Save(file) = sharing.boot_use(0).unwrap() else {
            panic!("the first point saves");
        };
        let waiting = {
            let sharing = Arc::clone(&sharing);
            std::thread::spawn(move || sharing.boot_use(1).unwrap())
        };
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!waiting.is_finished(), "it waits for the first point");
        std::fs::write(&file, b"snapshot").unwrap();
        sharing.finished(0);
        assert_eq!(waiting.join().unwrap(), BootUse::Resume(file));
    }
}
