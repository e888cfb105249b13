//! Guests and configs that used to hang the emu backend, with no limit to
//! catch them: a branch to address 0, slices shorter than the engine's
//! blocks, and slices or instruction costs that put the virtual-time limit
//! out of reach; and the hangs the watchdog ends with its diagnosis: a spin
//! with interrupts masked, WFI with interrupts masked (with a timer
//! interrupt pending, and with nothing left to wake the vCPU), and a vCPU
//! stalled on a page that never comes. Each run here is bounded by a host timeout, so a hang
//! fails the test instead of stalling it. Images are raw (loaded at RAM
//! base 0x4000_0000, entry there, MMU off, EL1h).

mod common;

use std::sync::mpsc;
use std::time::Duration;

use apflab_abi::addr::Gpa;
use apflab_abi::memory_map::{RAM_BASE, VTIMER_PPI};
use apflab_hypervisor::{NotResidentFault, Residency};
use apflab_vmm::config::{MAX_SLICE_INSTRUCTIONS, MIN_SLICE_INSTRUCTIONS};
use apflab_vmm::watchdog::GuestPosition;
use apflab_vmm::{
    Action, CrashReason, FaultHook, GuestCrash, GuestExit, HangDiagnosis, HookInitError,
    NoFarMemory, RunOutcome, Vm, VmConfig,
};
use common::{SYSTEM_OFF, TIMER_SETUP, config, image, temp_file};

/// Runs `cfg` on a thread of its own; fails the test if it has not ended
/// within 60 s of host time.
fn run_bounded(cfg: VmConfig) -> RunOutcome {
    run_bounded_with(cfg, NoFarMemory)
}

/// [`run_bounded`] with `hook` as the fault hook.
fn run_bounded_with(cfg: VmConfig, mut hook: impl FaultHook + Send + 'static) -> RunOutcome {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let out = Vm::new(cfg).unwrap().run(&mut hook).unwrap();
        let _ = tx.send(out);
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("the run ended within 60 s of host time")
}

#[test]
fn a_guest_that_branches_to_address_0_faults_there_instead_of_running_nothing_forever() {
    let jump_to_0 = [
        0xd2800000, // 0x000: movz x0, #0
        0xd61f0000, // 0x004: br x0
    ];
    let out = run_bounded(config(temp_file(&image(&[(0, &jump_to_0)])), 1));
    match &out.exit {
        // An instruction abort (external: nothing answers at 0), taken to
        // VBAR_EL1 = 0, where the same happens again.
        GuestExit::Crash(GuestCrash::Vcpu {
            addr: Some(0),
            reason: CrashReason::NoVectorTable {
                esr: 0x8600_0010, ..
            },
            ..
        }) => {}
        e => panic!("expected a crash at address 0, got {e:?}"),
    }
}

/// 600 `add x1, x1, #1` in a row (longer than the engine's longest block,
/// 512 instructions), then PSCI SYSTEM_OFF.
fn long_block() -> Vec<u32> {
    let mut words = vec![0x91000421; 600];
    words.extend_from_slice(&SYSTEM_OFF);
    words
}

#[test]
fn the_shortest_slice_accepted_still_runs_the_longest_block_and_shorter_ones_are_refused() {
    let path = temp_file(&image(&[(0, &long_block())]));
    let mut cfg = config(path.clone(), 1);
    cfg.slice_instructions = MIN_SLICE_INSTRUCTIONS;
    let out = run_bounded(cfg);
    assert_eq!(out.exit, GuestExit::PowerOff);
    assert_eq!(out.metrics.instructions, 603);
    // The count is exact whatever the slices: a block a slice ends before
    // is counted once, when it runs.
    for slice in [600, 1000, 10_000] {
        let mut cfg = config(path.clone(), 1);
        cfg.slice_instructions = slice;
        assert_eq!(run_bounded(cfg).metrics.instructions, 603, "slice {slice}");
    }

    // Shorter slices would mostly be the overrun past their budget.
    for slice in [0, 1, 80, MIN_SLICE_INSTRUCTIONS - 1] {
        let mut cfg = config(path.clone(), 1);
        cfg.slice_instructions = slice;
        let e = Vm::new(cfg).err().expect("refused").to_string();
        assert!(
            e.contains(&format!("slice_instructions = {slice}")) && e.contains("513"),
            "{e}"
        );
    }
}

#[test]
fn configs_that_put_the_virtual_time_limit_out_of_reach_are_refused() {
    let path = temp_file(&image(&[(0, &SYSTEM_OFF)]));
    let err = |f: &dyn Fn(&mut VmConfig)| {
        let mut cfg = config(path.clone(), 1);
        f(&mut cfg);
        Vm::new(cfg).err().expect("refused").to_string()
    };
    let e = err(&|c| c.slice_instructions = u64::MAX);
    assert!(
        e.contains("slice_instructions = 18446744073709551615"),
        "{e}"
    );
    let e = err(&|c| c.slice_instructions = MAX_SLICE_INSTRUCTIONS + 1);
    assert!(e.contains("1000000000"), "{e}");
    let e = err(&|c| c.cost.ns_per_instruction = 1e-300);
    assert!(
        e.contains("cost.ns_per_instruction") && e.contains("0.01"),
        "{e}"
    );
    // Costs near 2^63 would wrap the virtual clock after two exits.
    let e = err(&|c| c.cost.exit_ns = 1 << 63);
    assert!(e.contains("cost.exit_ns = 9223372036854775808"), "{e}");
    let e = err(&|c| c.cost.hypercall_ns = u64::MAX);
    assert!(e.contains("cost.hypercall_ns"), "{e}");
    let e = err(&|c| c.cost.inject_ns = u64::MAX);
    assert!(e.contains("cost.inject_ns"), "{e}");
    let e = err(&|c| c.max_virtual_ns = u64::MAX);
    assert!(e.contains("max_virtual_ns"), "{e}");
    let e = err(&|c| c.memory_mib = 1 << 40);
    assert!(e.contains("memory"), "{e}");
    // The longest slice accepted still ends, and the run with it.
    let mut cfg = config(temp_file(&image(&[(0, &long_block())])), 1);
    cfg.slice_instructions = MAX_SLICE_INSTRUCTIONS;
    assert_eq!(run_bounded(cfg).exit, GuestExit::PowerOff);
}

const MASK_IRQS: u32 = 0xd50342df; // msr daifset, #2
const WFI_LOOP: [u32; 2] = [
    0xd503207f, // 1: wfi
    0x17ffffff, // b 1b
];

/// Runs `pieces` on one vCPU with a watchdog of `watchdog_ms` (virtual);
/// the run must end in the watchdog's diagnosis.
fn hang(
    pieces: &[(usize, &[u32])],
    watchdog_ms: u64,
    hook: impl FaultHook + Send + 'static,
) -> HangDiagnosis {
    let mut cfg = config(temp_file(&image(pieces)), 1);
    cfg.watchdog_ns = watchdog_ms * 1_000_000;
    let out = run_bounded_with(cfg, hook);
    match out.exit {
        GuestExit::Hang(d) => d,
        e => panic!("expected the watchdog to stop the run, got {e:?}"),
    }
}

#[test]
fn a_spin_with_interrupts_masked_is_stopped_naming_where_it_spins() {
    let spin = [0xd5034fdf, 0x14000000]; // msr daifset, #0xf; 1: b 1b
    let d = hang(&[(0, &spin)], 2, NoFarMemory);
    assert_eq!((d.quiet_ns, d.at_ns), (2_000_000, 2_000_000), "{d}");
    assert_eq!(d.vcpus.len(), 1);
    assert_eq!(d.vcpus[0].state, "running");
    assert_eq!(
        d.vcpus[0].at,
        Some(GuestPosition {
            pc: RAM_BASE + 4,
            el: 1,
            irqs_masked: true
        })
    );
    assert!(d.pending.is_empty());
    let text = d.to_string();
    assert!(
        text.contains("for 2 ms")
            && text.contains("vCPU 0: running at pc 0x40000004 (EL1, IRQs masked)"),
        "{text}"
    );
}

#[test]
fn wfi_with_the_timer_interrupt_pending_but_masked_is_stopped_naming_the_interrupt() {
    // The timer fires 1 ms in; WFI then returns at once, again and again,
    // and the masked interrupt is never taken.
    let mut setup = TIMER_SETUP;
    setup[18] = MASK_IRQS;
    let d = hang(&[(0, &setup), (0x4c, &WFI_LOOP)], 5, NoFarMemory);
    let v = &d.vcpus[0];
    assert_eq!(v.pending_irq, Some(VTIMER_PPI), "{d}");
    let at = v.at.expect("a running vCPU has a position");
    assert!(at.irqs_masked, "{d}");
    assert!((RAM_BASE + 0x4c..RAM_BASE + 0x54).contains(&at.pc), "{d}");
    // The set-up's GIC accesses were its last signs of life, in its first
    // microseconds.
    assert!((5_000_000..5_010_000).contains(&d.at_ns), "{d}");
}

#[test]
fn wfi_with_interrupts_masked_and_nothing_to_wake_the_vcpu_is_stopped() {
    let d = hang(&[(0, &[MASK_IRQS]), (4, &WFI_LOOP)], 1_000, NoFarMemory);
    assert_eq!(d.vcpus[0].state, "halted in WFI", "{d}");
    assert_eq!(d.vcpus[0].pending_irq, None);
    assert!(
        d.to_string()
            .contains("the fault engine owes the guest nothing"),
        "{d}"
    );
}

/// Makes the page at RAM base + 1 MiB absent and never brings it in.
struct PageThatNeverComes;

const ABSENT: u64 = RAM_BASE + 0x10_0000;

impl FaultHook for PageThatNeverComes {
    fn init(&mut self, pages: &mut dyn Residency) -> Result<(), HookInitError> {
        Ok(pages.set_resident(Gpa(ABSENT), false)?)
    }
    fn on_not_resident(
        &mut self,
        _vcpu: u32,
        _fault: &NotResidentFault,
        _now_ns: u64,
        _pages: &mut dyn Residency,
    ) -> Action {
        Action::StallUntil(u64::MAX)
    }
    fn on_wait_end(&mut self, _vcpu: u32, _now_ns: u64, _pages: &mut dyn Residency) -> Action {
        Action::StallUntil(u64::MAX)
    }
    fn pending(&self) -> Vec<String> {
        vec![format!("vCPU 0 stalled on page {ABSENT:#x}")]
    }
}

#[test]
fn a_vcpu_stalled_on_a_page_that_never_comes_is_stopped_naming_the_page() {
    let load = [
        0xd2a80201, // movz x1, #0x4010, lsl #16
        0xf9400022, // ldr x2, [x1]
    ];
    let mut words = load.to_vec();
    words.extend_from_slice(&SYSTEM_OFF);
    let d = hang(&[(0, &words)], 3, PageThatNeverComes);
    assert_eq!(
        d.vcpus[0].state,
        format!("stalled by the fault engine until {} ns", u64::MAX),
        "{d}"
    );
    assert_eq!(d.vcpus[0].at.map(|p| p.pc), Some(RAM_BASE + 4), "{d}");
    assert_eq!(d.pending, ["vCPU 0 stalled on page 0x40100000"]);
    // Stopped when the span ran out, not at the time limit.
    assert!((3_000_000..3_010_000).contains(&d.at_ns), "{d}");
}
