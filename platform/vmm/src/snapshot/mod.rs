//! Snapshots of the whole machine at the end of the guest's boot ("boot
//! once, run many"), on the emu backend.
//!
//! The guest announces the end of its boot with
//! [`apflab_abi::boot_point::FN_BOOT_DONE`] and reads its workload only
//! after it. A run asked to [`SnapshotPlan::Save`] writes everything there
//! is at that point to a file and runs on; a run asked to
//! [`SnapshotPlan::Resume`] starts from such a file instead of booting, with
//! its own workload, policy and pager latencies. Virtual time is exact, so
//! the resumed run's results are those of the same config run from power-on.
//!
//! What a snapshot holds (`emu::snapshot`, `emu::run`): every vCPU's CPU
//! state, clock and instruction count, the devices, the GIC, the timers,
//! PSCI and SDEI state, the counters so far (exits, console, timeline), the
//! scheduler's state, the pages the pager withholds, the fault engine's
//! calls during the boot, and guest RAM. RAM goes in as its non-zero pages
//! only, in one gzip stream with the rest (a fresh 1 GiB guest holds a few
//! MiB).
//!
//! A snapshot is only valid for a run whose boot would be the same: its
//! [`Identity`] (the apflab build, the kernel and initrd, vCPUs, memory,
//! cost model, slice, the bootargs that shape the boot, and what the caller
//! adds, such as the pager's layout) must match this run's, or it is
//! refused with the keys that differ. The fault engine of the resuming run
//! is then set up exactly as the boot left it: its set-up must withhold the
//! same pages, and it must answer the boot's engine calls as the snapshot's
//! did (they are replayed to it); otherwise the resume is refused too.

// Only the emu backend saves and resumes machines; without it (the fuzz
// targets' build) the file format and the identity are unused.
#![cfg_attr(not(feature = "emu"), allow(dead_code, unused_imports))]

pub(crate) mod abi_serde;
mod file;

pub use file::{RamUnreachable, WriteFailure};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use apflab_abi::boot_point;

use crate::config::VmConfig;

pub(crate) use file::{read, write};

/// What a run does with a snapshot at the boot point.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SnapshotPlan {
    /// Write the machine to this file at the boot point, then run on.
    Save(PathBuf),
    /// Start from the machine in this file instead of booting.
    Resume(PathBuf),
}

impl SnapshotPlan {
    /// The snapshot file.
    pub fn path(&self) -> &Path {
        match self {
            SnapshotPlan::Save(p) | SnapshotPlan::Resume(p) => p,
        }
    }
}

/// A run's use of snapshots (see [`crate::Vm::set_snapshot`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotRequest {
    /// Save or resume, and where.
    pub plan: SnapshotPlan,
    /// What shapes the boot beyond the VM's config, as the caller knows it
    /// (for example the pager's store and initial residency): name →
    /// value. It joins the [`Identity`] under these names.
    pub boot_identity: BTreeMap<String, String>,
}

/// Everything that shapes a boot, by name (see the module's comment).
pub type Identity = BTreeMap<String, String>;

/// Why a snapshot could not be written or used.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The file could not be opened or read.
    #[error("snapshot {path}: {what}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What was attempted (`cannot open it`).
        what: &'static str,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// The written file could not be moved to its place.
    #[error("snapshot {path}: cannot move {} there: {source}", .partial.display())]
    Rename {
        /// The file.
        path: String,
        /// The whole file written next to it.
        partial: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file could not be written (the partial file is removed).
    #[error("snapshot {path}: cannot write it: {source}")]
    Write {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: file::WriteFailure,
    },
    /// The file is no snapshot of this format, or a damaged one.
    #[error("snapshot {path}: {what}")]
    Unreadable {
        /// The file.
        path: String,
        /// What is wrong with it.
        #[source]
        what: Damage,
    },
    /// The snapshot was taken of another boot (another build, kernel or
    /// config).
    #[error(
        "snapshot {path} was taken of another boot, so it cannot start this run: {}; \
         take a new snapshot with this config",
        .differences.join("; ")
    )]
    Mismatch {
        /// The file.
        path: String,
        /// One line per key that differs: the snapshot's value and this
        /// run's.
        differences: Vec<String>,
    },
    /// The machine at the boot point cannot be captured (or re-created)
    /// exactly.
    #[error("snapshot {path}: {why}")]
    Refused {
        /// The file.
        path: String,
        /// Why.
        #[source]
        why: Refusal,
    },
    /// The run ended before the guest announced the end of its boot.
    #[error(
        "snapshot {path} was not written: the guest never announced the end of its boot \
         (apflab's guest does, with the BOOT_DONE call, before its workload)"
    )]
    NoBootPoint {
        /// The file.
        path: String,
    },
}

/// What is wrong with a file read as a snapshot ([`SnapshotError::Unreadable`]).
#[derive(Debug, thiserror::Error)]
pub enum Damage {
    /// Shorter than its header.
    #[error("not an apflab snapshot (too short)")]
    TooShort,
    /// Another header than apflab's.
    #[error("not an apflab snapshot (no APFLSNAP header)")]
    NoHeader,
    /// The compressed stream ends early or fails its CRC.
    #[error("damaged ({0})")]
    Stream(#[source] std::io::Error),
    /// A section's length is past what a snapshot may hold.
    #[error("damaged (a section of {0} bytes)")]
    SectionLength(u64),
    /// The boot's identity does not decode.
    #[error("damaged identity ({0})")]
    Identity(#[source] serde_json::Error),
    /// The machine state does not decode.
    #[error("damaged machine state ({0})")]
    MachineState(#[source] serde_json::Error),
    /// A page index out of order or past RAM.
    #[error("damaged (page {0} out of order or past RAM)")]
    PageIndex(u64),
    /// Bytes after the RAM section.
    #[error("damaged (data after the RAM section)")]
    TrailingData,
    /// Guest RAM could not be had to read the pages into.
    #[error(transparent)]
    Ram(#[from] RamUnreachable),
}

/// Why the machine at the boot point cannot be saved, or a snapshot
/// cannot re-create it ([`SnapshotError::Refused`]).
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// The guest made calls after BOOT_DONE in the same code block, so the
    /// saved machine would be past the boot point.
    #[error(
        "the guest went on to make calls after announcing the end of its boot before the CPU \
         stopped for it: end the code block after BOOT_DONE (an ISB or a branch), as \
         apflab's guests do"
    )]
    BootOverrun,
    /// The fault engine worked during the boot, and its state is not saved.
    #[error(
        "the machine cannot be saved at the end of the boot: the fault engine was at work \
         during it ({0}), and a snapshot holds no fault engine state; boot with a pager that \
         withholds no page the boot touches"
    )]
    EngineBusy(&'static str),
    /// The snapshot's vCPU states are not one per vCPU of this VM.
    #[error("its state is not one of {0} vCPUs")]
    VcpuCount(usize),
    /// The snapshot's machine state is not one of this VM's vCPUs.
    #[error(transparent)]
    MachineState(#[from] crate::machine::StateMismatch),
    /// The memory the fault engine's set-up writes to while resuming could
    /// not be mapped.
    #[error("cannot map scratch memory: {0}")]
    ScratchMemory(#[source] vm_memory::mmap::FromRangesError),
    /// This run's pager withholds other pages at the start than the
    /// snapshot's did.
    #[error(
        "this run's pager withholds {ours} pages at the start and the snapshot's run \
         withheld {theirs} (or others): the pager's layout differs"
    )]
    WithheldPages {
        /// Pages this run withholds.
        ours: u32,
        /// Pages the snapshot's run withheld.
        theirs: u32,
    },
    /// The snapshot's page bitmap is not of this RAM's size.
    #[error("its page bitmap is not of this RAM's size")]
    BitmapSize,
    /// This run's fault engine answers a boot call otherwise than the
    /// snapshot's did.
    #[error(
        "the fault engine of this run answers the boot's call {function:#x} (vCPU {vcpu}) with \
         {ours}, the snapshot's run got {theirs}: the boot would differ (a [policy] or [apf] \
         section changes what the guest is offered at boot)"
    )]
    BootCallAnswer {
        /// The call's function id.
        function: u32,
        /// The vCPU that made it.
        vcpu: u32,
        /// This run's answer, as its debug text (how snapshots keep it).
        ours: String,
        /// The snapshot's.
        theirs: String,
    },
}

/// The format of the file; a change makes older snapshots unreadable.
pub(crate) const FORMAT: u32 = 2;

/// The identity of the boot `config` describes, with `extra` from the
/// caller.
pub(crate) fn identity(
    config: &VmConfig,
    extra: &BTreeMap<String, String>,
) -> Result<Identity, SnapshotError> {
    let initrd = config.initrd.as_deref().map(file_hash).transpose()?;
    Ok(boot_identity(
        config,
        file_hash(&config.kernel)?,
        initrd,
        extra,
    ))
}

/// The identity of the boot `config` describes, its kernel and initrd
/// identified by the caller (any digest of their bytes), with `extra` from
/// the caller. Runs whose boots have equal identities (and whose fault
/// engines answer the boot's calls alike) can share one snapshot; `apflab
/// matrix` groups its points by it.
pub fn boot_identity(
    config: &VmConfig,
    kernel: String,
    initrd: Option<String>,
    extra: &BTreeMap<String, String>,
) -> Identity {
    let mut id = Identity::new();
    let mut put = |k: &str, v: String| {
        id.insert(k.to_owned(), v);
    };
    put("apflab", env!("CARGO_PKG_VERSION").to_owned());
    put("build", build_hash().to_owned());
    put("format", FORMAT.to_string());
    put("backend", format!("{:?}", config.backend));
    put("kernel", kernel);
    put("initrd", initrd.unwrap_or_else(|| "none".into()));
    put("vcpus", config.vcpus.to_string());
    put("memory_mib", config.memory_mib.to_string());
    put("cost", format!("{:?}", config.cost));
    put("slice_instructions", config.slice_instructions.to_string());
    put(
        "bootargs",
        boot_point::boot_words(&config.bootargs)
            .collect::<Vec<_>>()
            .join(" "),
    );
    for (k, v) in extra {
        id.insert(k.clone(), v.clone());
    }
    id
}

/// The keys on which `theirs` (the snapshot's) and `ours` differ, each as
/// a line that says both values.
pub(crate) fn differences(theirs: &Identity, ours: &Identity) -> Vec<String> {
    let shown = |v: Option<&String>| v.map_or("(none)".to_owned(), |v| format!("{v:?}"));
    let mut keys: Vec<&String> = theirs.keys().chain(ours.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| theirs.get(*k) != ours.get(*k))
        .map(|k| {
            format!(
                "{k} is {} in the snapshot and {} here",
                shown(theirs.get(k)),
                shown(ours.get(k))
            )
        })
        .collect()
}

/// A hash of `bytes` (not cryptographic: it tells builds and files apart,
/// it does not authenticate them).
fn hash_bytes(bytes: &[u8]) -> String {
    use std::hash::Hasher;
    // SipHash with fixed keys: the same bytes hash the same in every
    // process of this build.
    let mut h = std::hash::DefaultHasher::new();
    h.write(bytes);
    format!("{:016x}-{}", h.finish(), bytes.len())
}

fn file_hash(path: &Path) -> Result<String, SnapshotError> {
    let bytes = std::fs::read(path).map_err(|source| SnapshotError::Io {
        path: path.display().to_string(),
        what: "cannot read it to identify the boot",
        source,
    })?;
    Ok(hash_bytes(&bytes))
}

/// What tells apflab builds apart (the CPU state a snapshot holds is laid
/// out as this build's engine lays it out): this program's executable, by
/// its size and modification time (hashing its 140 MB would cost a resumed
/// run more than apflab's own guest takes to boot). A rebuilt or copied
/// executable is another build, which errs on the side of refusing.
fn build_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| {
        let exe = std::env::current_exe().and_then(std::fs::metadata);
        match exe.and_then(|m| Ok((m.len(), m.modified()?))) {
            Ok((len, modified)) => {
                let ns = modified
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos());
                format!("{len}-{ns}")
            }
            // Then no snapshot matches: a build that cannot be told apart
            // must not resume one.
            Err(e) => format!("unknown ({e}) {:?}", std::time::SystemTime::now()),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_name_each_key_with_both_values() {
        let a: Identity = [("vcpus", "1"), ("memory_mib", "64"), ("kernel", "k")]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .into();
        let mut b = a.clone();
        assert!(differences(&a, &b).is_empty());
        b.insert("vcpus".into(), "4".into());
        b.insert("pager".into(), "store".into());
        b.remove("kernel");
        assert_eq!(
            differences(&a, &b),
            [
                "kernel is \"k\" in the snapshot and (none) here",
                "pager is (none) in the snapshot and \"store\" here",
                "vcpus is \"1\" in the snapshot and \"4\" here",
            ]
        );
    }
}
