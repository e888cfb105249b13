//! The apflab guest kernel: a small arm64 kernel for QEMU's `virt` board and
//! the apflab VMM (which presents the same machine).
//!
//! Boot flow: aarch64-rt's entry turns the MMU on with a static 1 GiB-block
//! identity map ([`INITIAL_PAGETABLE`]), zeroes .bss and calls [`main`] on
//! the boot CPU. `main` reads the device tree, parses the bootargs that
//! shape the boot, builds the real 4 KiB-page tables (kernel + EL0
//! mappings), sets up the GICv3 and the virtual timer, announces the end of
//! its boot (`BOOT_DONE`, where the VMM may save or resume a snapshot),
//! reads the workload's bootargs, creates the workload's EL0 tasks, starts
//! the other CPUs with PSCI `CPU_ON` and enters the scheduler. When the last task
//! exits the kernel fills the [`apflab_abi::report::GuestReport`], prints it,
//! hands it to the host and powers off with PSCI `SYSTEM_OFF`.
#![no_std]
#![no_main]

mod apf;
mod apf_abuse;
mod arch;
mod bootinfo;
mod checksum;
mod config;
mod console;
mod exceptions;
mod gic;
mod hypercall;
mod kv;
mod metrics;
mod mmu;
mod percpu;
mod run_end;
mod sched;
mod sdei;
mod sdei_calls;
mod sdei_selftest;
mod smp;
mod syscall;
mod timeline;
mod timer;
mod uapi;
mod workloads;

use aarch64_paging::descriptor::El1Attributes;
use aarch64_rt::{InitialPagetable, entry, initial_pagetable};
use apflab_abi::memory_map::RAM_BASE;

/// Normal memory, write-back cacheable (MAIR index 1 in aarch64-rt's
/// default MAIR), for the initial 1 GiB RAM block.
const INITIAL_MEMORY: El1Attributes = El1Attributes::VALID
    .union(El1Attributes::ATTRIBUTE_INDEX_1)
    .union(El1Attributes::INNER_SHAREABLE)
    .union(El1Attributes::ACCESSED)
    .union(El1Attributes::UXN);

/// Device-nGnRE (MAIR index 0) for the initial block holding the devices.
const INITIAL_DEVICE: El1Attributes = El1Attributes::VALID
    .union(El1Attributes::ATTRIBUTE_INDEX_0)
    .union(El1Attributes::ACCESSED)
    .union(El1Attributes::UXN)
    .union(El1Attributes::PXN);

// The page table aarch64-rt installs before any Rust code runs (so .bss is
// zeroed with caches on, which matters under KVM): the first GiB (all the
// `virt` devices) as device memory and the GiB at RAM_BASE as normal memory,
// both with level 1 block descriptors. `mmu::init` replaces it with the real
// tables.
initial_pagetable!({
    let mut table = [0; 512];
    table[0] = INITIAL_DEVICE.bits();
    table[(RAM_BASE >> 30) as usize] = INITIAL_MEMORY.bits() | RAM_BASE as usize;
    InitialPagetable(table)
});

entry!(boot_main, 16);

/// Entry of the boot CPU (x0..x3 as left by the loader).
fn boot_main(x0: u64, _x1: u64, _x2: u64, _x3: u64) -> ! {
    percpu::set_cpu_index(0);
    metrics::mark_boot();
    console::init();
    let boot = bootinfo::BootInfo::from_device_tree(x0);
    // Only what does not depend on the workload is set up before the boot
    // point, so that one boot (or its snapshot) serves every workload.
    let booting = config::Config::boot_part(boot.bootargs);
    mmu::init(&boot, sched::user_stacks());
    timer::init(&booting);
    gic::init(boot.cpus().len());
    gic::init_cpu(0);
    hypercall::init(boot.doorbell);
    if booting.selftest_sdei {
        sdei_selftest::run();
    }
    let features = hypercall::features();
    metrics::set_apf_features(features);
    apf::init(booting.apf_allowed, features);
    if booting.apf_abuse {
        apf_abuse::register();
    }
    apf::init_cpu();
    if booting.trace {
        timeline::enable();
    }
    sched::init(boot.cpus().len(), booting.fair_scheduler);
    hypercall::boot_done();
    // The workload's keys, from the device tree as it is now: a run
    // resumed from a snapshot taken at the call above rewrote it.
    let boot = bootinfo::BootInfo::from_device_tree(x0);
    let config = config::set(&config::Config::from_bootargs(boot.bootargs));
    console::println!(
        "apflab-guest: {} cpus, {} MiB RAM, workload {}",
        boot.cpus().len(),
        boot.ram_size >> 20,
        config.workload_name()
    );
    workloads::spawn(config);
    smp::start_secondaries(&boot);
    sched::run_cpu(apf::wait_marked)
}

/// Prints the panic, hands the message to the host (`FN_PANIC`) and powers
/// off. Used for kernel bugs and for bad boot arguments.
#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    arch::mask_irqs();
    let mut msg = console::FixedBuf::<{ apflab_abi::hypercall::PANIC_MSG_MAX as usize }>::new();
    // Truncation is fine: the buffer keeps what fits.
    let _ = core::fmt::write(&mut msg, format_args!("{}", info.message()));
    if let Some(loc) = info.location() {
        let _ = core::fmt::write(&mut msg, format_args!(" ({}:{})", loc.file(), loc.line()));
    }
    console::emergency_print(format_args!("apflab-guest panic: {}\n", msg.as_str()));
    hypercall::panic(msg.as_bytes());
    hypercall::system_off()
}
