//! Bringing up the secondary CPUs with PSCI `CPU_ON` (aarch64-rt's
//! `start_core`, which enables the MMU with the initial table and sets the
//! vector base before calling into Rust).

use crate::bootinfo::BootInfo;
use crate::percpu::{self, MAX_CPUS};
use crate::{apf, gic, mmu, sched};
use aarch64_rt::{Stack, start_core};
use smccc::Hvc;

/// Pages of each secondary CPU's boot/idle stack.
const STACK_PAGES: usize = 8;

static mut SECONDARY_STACKS: [Stack<STACK_PAGES>; MAX_CPUS] = [const { Stack::new() }; MAX_CPUS];

/// Starts every CPU the device tree lists beyond the boot CPU and waits
/// until all of them run their scheduler, so the set of online CPUs does
/// not depend on timing.
pub fn start_secondaries(boot: &BootInfo) {
    sched::cpu_online();
    for (index, &mpidr) in boot.cpus().iter().enumerate().skip(1) {
        // SAFETY: each secondary CPU gets its own stack, used by nothing
        // else; the stacks are in the kernel image, mapped identically by
        // the initial and the final page tables.
        let stack = unsafe { &raw mut SECONDARY_STACKS[index] };
        // SAFETY: as above.
        let result = unsafe {
            start_core::<Hvc, _, STACK_PAGES>(mpidr, stack, move || secondary_main(index))
        };
        if let Err(e) = result {
            panic!("PSCI CPU_ON of cpu {index} (MPIDR {mpidr:#x}) failed: {e:?}");
        }
    }
    let want = boot.cpus().len() as u32;
    while sched::cpus_online() < want {
        core::hint::spin_loop();
    }
}

/// First Rust code of a secondary CPU.
fn secondary_main(index: usize) -> ! {
    mmu::activate();
    percpu::set_cpu_index(index);
    gic::init_cpu(index);
    apf::init_cpu();
    sched::cpu_online();
    sched::run_cpu(apf::wait_marked)
}
