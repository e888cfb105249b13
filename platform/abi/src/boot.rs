//! Boot information: what the VMM tells the guest at boot.
//!
//! It travels in the device tree's `/chosen/bootargs` as space-separated
//! `key=value` words, so that the same values can be given to plain QEMU
//! with `-append`. Unknown words are ignored by the guest (QEMU adds none,
//! but a user may); a known key with a bad value makes the guest panic with
//! the key's name.

/// Workload to run: one of [`WORKLOAD_NAMES`].
pub const KEY_WORKLOAD: &str = "apflab.workload";
/// Number of tasks the workload starts (per kind, see each workload).
pub const KEY_TASKS: &str = "apflab.tasks";
/// `cpu`: loop iterations per task.
pub const KEY_OPS: &str = "apflab.ops";
/// `memtouch` / `kv`: size of the working set in MiB.
pub const KEY_MIB: &str = "apflab.mib";
/// `memtouch`: `seq` or `random`.
pub const KEY_PATTERN: &str = "apflab.pattern";
/// `memtouch`: passes over the working set.
pub const KEY_PASSES: &str = "apflab.passes";
/// `memtouch`: `self` (verify what it wrote) or `store` (verify reads
/// against [`crate::pattern`] without writing first).
pub const KEY_VERIFY: &str = "apflab.verify";
/// `memtouch`: who reads the pages it verifies: `task` (the task, at EL0)
/// or `kernel` (a system call checksums each page at EL1 with interrupts
/// unmasked, so not-resident faults are taken by the kernel).
pub const KEY_READER: &str = "apflab.reader";
/// `kv`: number of requests.
pub const KEY_REQUESTS: &str = "apflab.requests";
/// `kv`: mean request inter-arrival time in microseconds.
pub const KEY_INTERVAL_US: &str = "apflab.interval_us";
/// Seed for the guest's own pseudo-random choices.
pub const KEY_SEED: &str = "apflab.seed";
/// Seed of the synthetic store (for [`crate::pattern`]).
pub const KEY_STORE_SEED: &str = "apflab.store_seed";
/// Scheduler time slice in microseconds.
pub const KEY_TIMESLICE_US: &str = "apflab.timeslice_us";
/// How the guest picks the next task: [`SCHEDULER_ROUND_ROBIN`] or
/// [`SCHEDULER_FAIR`].
pub const KEY_SCHEDULER: &str = "apflab.scheduler";
/// [`KEY_SCHEDULER`]: every runnable task in turn, each for one time slice
/// of virtual time, whatever it used of earlier ones.
pub const SCHEDULER_ROUND_ROBIN: &str = "round-robin";
/// [`KEY_SCHEDULER`]: runtime-fair, in the spirit of Linux's CFS: the next
/// task is the runnable one that has been charged the least time running
/// (a synchronous stall inside its slice included, as Linux charges it;
/// time asleep on a token or a deadline is not charged).
pub const SCHEDULER_FAIR: &str = "fair";
/// `off` disables async PF in the guest (the boot option of the protocol).
pub const KEY_APF: &str = "apflab.apf";
/// `on`: the guest's boot CPU first misuses the async PF protocol in every
/// way the host must refuse (before and after enabling it, an ACK flood of
/// [`APF_ABUSE_ACK_FLOOD`], [`APF_ABUSE_TOGGLES`] disable/enable pairs),
/// and only then uses it properly; and [`APF_ABUSE_TASKS`] task of its own
/// makes [`APF_ABUSE_RANDOM_CALLS`] random calls beside the workload's
/// tasks.
pub const KEY_APF_ABUSE: &str = "apflab.apf_abuse";
/// ACKs with nothing consumed that an abusive guest sends in a row.
pub const APF_ABUSE_ACK_FLOOD: u64 = 1000;
/// APF_DISABLE / APF_ENABLE pairs an abusive guest sends in a row (each
/// a wake-all with nothing outstanding).
pub const APF_ABUSE_TOGGLES: u64 = 50;
/// Calls with random function ids or arguments an abusive guest sends,
/// one sixth each of: unknown apflab ids, unknown PSCI ids, PSCI CPU_ON and
/// AFFINITY_INFO for CPUs that do not exist, page requests for random
/// tokens, and TASK_DONE for tasks that cannot exist.
pub const APF_ABUSE_RANDOM_CALLS: u64 = 240;
/// Tasks the abusive guest runs beside the workload's (which leaves room
/// for [`crate::limits::TASKS`]`.max - APF_ABUSE_TASKS` of those).
pub const APF_ABUSE_TASKS: u32 = 1;
/// `on`: the guest logs its scheduling and exception handlers for the
/// timeline (see [`crate::trace`]).
pub const KEY_TRACE: &str = "apflab.trace";
/// `sdei` runs the SDEI firmware conformance test at boot (it prints one
/// `sdei-selftest: PASS|FAIL` line per check), before the workload.
pub const KEY_SELFTEST: &str = "apflab.selftest";

/// Workload: compute loop counting operations.
pub const WORKLOAD_CPU: u32 = 1;
/// Workload: touch a working set and verify every page read.
pub const WORKLOAD_MEMTOUCH: u32 = 2;
/// Workload: one `cpu` task beside one `memtouch` task.
pub const WORKLOAD_MIXED: u32 = 3;
/// Workload: timer-driven requests served from a large table.
pub const WORKLOAD_KV: u32 = 4;

/// Names of the workloads as written in bootargs and configs, with their ids.
pub const WORKLOAD_NAMES: [(&str, u32); 4] = [
    ("cpu", WORKLOAD_CPU),
    ("memtouch", WORKLOAD_MEMTOUCH),
    ("mixed", WORKLOAD_MIXED),
    ("kv", WORKLOAD_KV),
];

/// Looks up a workload id by name.
pub fn workload_id(name: &str) -> Option<u32> {
    WORKLOAD_NAMES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, id)| *id)
}

/// Looks up a workload name by id.
pub fn workload_name(id: u32) -> Option<&'static str> {
    WORKLOAD_NAMES
        .iter()
        .find(|(_, i)| *i == id)
        .map(|(n, _)| *n)
}

/// Offset from RAM base of the region that holds workload memory. Below it
/// are the kernel image, its stacks, heap and page tables, which are always
/// resident; only pages at or above it can be made non-resident by the pager.
pub const WORKLOAD_REGION_OFFSET: u64 = 32 << 20;

/// Guest virtual address at which EL0 tasks see the workload region.
pub const WORKLOAD_VA: u64 = 0x10_0000_0000;

/// Splits bootargs into `(key, value)` pairs; words without `=` are skipped.
pub fn parse_bootargs(bootargs: &str) -> impl Iterator<Item = (&str, &str)> {
    bootargs
        .split_ascii_whitespace()
        .filter_map(|word| word.split_once('='))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootargs_split_into_pairs() {
        let v: [(&str, &str); 2] = {
            let mut it = parse_bootargs(" apflab.workload=cpu console apflab.ops=10 ");
            [it.next().unwrap(), it.next().unwrap()]
        };
        assert_eq!(v, [("apflab.workload", "cpu"), ("apflab.ops", "10")]);
        assert_eq!(workload_id("kv"), Some(WORKLOAD_KV));
        assert_eq!(workload_name(WORKLOAD_MIXED), Some("mixed"));
        assert_eq!(workload_id("nope"), None);
    }
}
