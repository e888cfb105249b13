//! The emu backend's speed: guest instructions per second on the real
//! guest's `cpu` workload, and the round trip of one exit to the VMM
//! (guest MMIO read → device model → guest; guest access to a not-resident
//! page → handler → guest), each against the same guest loop without the
//! exit, so the difference is the exit alone.
//!
//! Per-exit figures: criterion's time per element of the `exit` runs minus
//! that of the `no_exit` runs (both loops run `LOOP` iterations).

use std::path::PathBuf;
use std::time::Duration;

use apflab_abi::addr::Gpa;
use apflab_abi::memory_map::{PAGE_SIZE, RAM_BASE};
use apflab_hypervisor::{HookFailure, NotResidentFault, Residency};
use apflab_vmm::{
    Action, BackendKind, CostModel, FaultHook, GuestExit, HookInitError, NoFarMemory, Vm, VmConfig,
};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// Iterations of the hand-assembled loops.
const LOOP: u64 = 2_000;

fn config(kernel: PathBuf, bootargs: &str) -> VmConfig {
    VmConfig {
        backend: BackendKind::Emu,
        vcpus: 1,
        memory_mib: 64,
        kernel,
        initrd: None,
        bootargs: bootargs.to_owned(),
        cost: CostModel::default(),
        faults_in_kernel: false,
        slice_instructions: 20_000,
        max_virtual_ns: 60_000_000_000,
        watchdog_ns: 60_000_000_000,
        wall_timeout: None,
        echo_console: false,
    }
}

fn run(config: VmConfig, hook: &mut dyn FaultHook) -> u64 {
    let vm = Vm::new(config).expect("VM");
    let out = vm.run(hook).expect("run");
    assert_eq!(out.exit, GuestExit::PowerOff, "{}", out.console);
    out.metrics.instructions
}

fn raw_image(words: &[u32]) -> PathBuf {
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    let path = std::env::temp_dir().join(format!(
        "apflab-bench-{}-{:08x}.bin",
        std::process::id(),
        words[0] ^ words[2]
    ));
    std::fs::write(&path, bytes).expect("write image");
    path
}

/// `x1 = base`; LOOP times: `ldr w2, [x1]`, `x1 += stride`; then PSCI
/// SYSTEM_OFF. `base_hi` is `base >> 16`.
fn load_loop(base_hi: u32, stride_page: bool) -> PathBuf {
    const { assert!(LOOP < 1 << 16) };
    raw_image(&[
        0xd2a0_0001 | (base_hi << 5),       // movz x1, #base_hi, lsl #16
        0xd280_0003 | ((LOOP as u32) << 5), // movz x3, #LOOP
        0xb940_0022,                        // 1: ldr w2, [x1]
        if stride_page {
            0x9140_0421 // add x1, x1, #1, lsl #12
        } else {
            0xd503_201f // nop
        },
        0xf100_0463, // subs x3, x3, #1
        0x54ff_ffa1, // b.ne 1b
        0xd280_0100, // movz x0, #0x8
        0xf2b0_8000, // movk x0, #0x8400, lsl #16  (SYSTEM_OFF)
        0xd400_0002, // hvc #0
        0x1400_0000, // b .
    ])
}

fn cpu_workload(c: &mut Criterion) {
    let kernel = apflab_artifacts::guest_elf().to_path_buf();
    let cfg = config(
        kernel,
        "apflab.workload=cpu apflab.tasks=1 apflab.ops=3000000 apflab.timeslice_us=1000",
    );
    let instructions = run(cfg.clone(), &mut NoFarMemory);
    let mut g = c.benchmark_group("emu_cpu_workload");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    // Elements = guest instructions: criterion prints instructions/s.
    g.throughput(Throughput::Elements(instructions));
    g.bench_function("guest_instructions", |b| {
        b.iter(|| run(cfg.clone(), &mut NoFarMemory))
    });
    g.finish();
}

fn mmio_exit(c: &mut Criterion) {
    // GICD_CTLR (0x0800_0000): an MMIO read the device model answers.
    let mmio = config(load_loop(0x0800, false), "");
    let ram = config(load_loop((RAM_BASE >> 16) as u32, false), "");
    let mut g = c.benchmark_group("emu_mmio_round_trip");
    g.throughput(Throughput::Elements(LOOP));
    g.bench_function("exit", |b| b.iter(|| run(mmio.clone(), &mut NoFarMemory)));
    g.bench_function("no_exit", |b| b.iter(|| run(ram.clone(), &mut NoFarMemory)));
    g.finish();
}

/// Makes `LOOP` pages from 0x4010_0000 absent; each fault makes its page
/// resident at once (no modeled latency) and retries.
struct Immediate;

const FAULT_BASE: u64 = RAM_BASE + 0x10_0000;

impl FaultHook for Immediate {
    fn init(&mut self, res: &mut dyn Residency) -> Result<(), HookInitError> {
        for i in 0..LOOP {
            res.set_resident(Gpa(FAULT_BASE + i * PAGE_SIZE), false)?;
        }
        Ok(())
    }

    fn on_not_resident(
        &mut self,
        _vcpu: u32,
        fault: &NotResidentFault,
        _now_ns: u64,
        res: &mut dyn Residency,
    ) -> Action {
        match res.set_resident(fault.gpa, true) {
            Ok(()) => Action::Retry,
            Err(e) => Action::Fail(HookFailure::not_made_resident(fault.gpa, e)),
        }
    }

    fn on_wait_end(&mut self, _vcpu: u32, _now_ns: u64, _res: &mut dyn Residency) -> Action {
        Action::Retry
    }
}

fn fault_exit(c: &mut Criterion) {
    let sweep = config(load_loop((FAULT_BASE >> 16) as u32, true), "");
    let mut g = c.benchmark_group("emu_fault_round_trip");
    g.throughput(Throughput::Elements(LOOP));
    g.bench_function("exit", |b| b.iter(|| run(sweep.clone(), &mut Immediate)));
    g.bench_function("no_exit", |b| {
        b.iter(|| run(sweep.clone(), &mut NoFarMemory))
    });
    g.finish();
}

criterion_group!(benches, cpu_workload, mmio_exit, fault_exit);
criterion_main!(benches);
