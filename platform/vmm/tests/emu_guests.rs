//! Tiny hand-assembled guests on the emu backend, one behaviour each.
//! Images are raw (loaded at RAM base 0x4000_0000, entry there, MMU off,
//! EL1h); the words were assembled with llvm-mc and carry their source.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use apflab_abi::addr::Gpa;
use apflab_abi::memory_map::{RAM_BASE, VTIMER_PPI};
use apflab_hypervisor::{HookFailure, NotResidentFault, Residency};
use apflab_vmm::{
    Action, CrashReason, FaultHook, GuestCrash, GuestExit, HookInitError, NoFarMemory, Vm,
};
use common::{SYSTEM_OFF, TIMER_SETUP, config, image, temp_file};
use vm_memory::{Bytes, GuestAddress};

fn run(pieces: &[(usize, &[u32])], vcpus: u32) -> apflab_vmm::RunOutcome {
    let path = temp_file(&image(pieces));
    Vm::new(config(path, vcpus))
        .unwrap()
        .run(&mut NoFarMemory)
        .unwrap()
}

const HELLO: [u32; 9] = [
    0xd2a12001, // 0x000: movz x1, #0x900, lsl #16   (PL011)
    0x52800d02, // 0x004: mov w2, #'h'
    0xb9000022, // 0x008: str w2, [x1]
    0x52800d22, // 0x00c: mov w2, #'i'
    0xb9000022, // 0x010: str w2, [x1]
    0xd2800100, // 0x014: movz x0, #0x8
    0xf2b08000, // 0x018: movk x0, #0x8400, lsl #16  (SYSTEM_OFF)
    0xd4000002, // 0x01c: hvc #0
    0x14000000, // 0x020: 1: b 1b
];

#[test]
fn pl011_output_reaches_the_console_and_system_off_ends_the_run() {
    let out = run(&[(0, &HELLO)], 1);
    assert_eq!(out.exit, GuestExit::PowerOff);
    assert_eq!(out.console, "hi");
    assert_eq!(out.metrics.exits.get("mmio"), Some(&2));
    assert_eq!(out.metrics.exits.get("psci"), Some(&1));
    // The 8 instructions up to the HVC, which completes.
    assert_eq!(out.metrics.instructions, 8);
}

#[test]
fn svc_from_el0_enters_the_lower_el_vector_with_its_syndrome_and_eret_returns() {
    let main = [
        0xd2a12001, // 0x000: movz x1, #0x900, lsl #16
        0xd2a80009, // 0x004: movz x9, #0x4000, lsl #16
        0x9120012a, // 0x008: add x10, x9, #0x800
        0xd518c00a, // 0x00c: msr vbar_el1, x10
        0x9104012b, // 0x010: add x11, x9, #0x100
        0xd518402b, // 0x014: msr elr_el1, x11         (EL0 code)
        0xd518401f, // 0x018: msr spsr_el1, xzr        (EL0t)
        0x9140412c, // 0x01c: add x12, x9, #0x10, lsl #12
        0xd518410c, // 0x020: msr sp_el0, x12
        0xd5033fdf, // 0x024: isb
        0xd69f03e0, // 0x028: eret
    ];
    let el0 = [
        0xd4000841, // 0x100: svc #0x42
        0x52800a42, // 0x104: mov w2, #'R'
        0xb9000022, // 0x108: str w2, [x1]
        0xd4000861, // 0x10c: svc #0x43
        0x14000000, // 0x110: 1: b 1b
    ];
    // VBAR + 0x400: synchronous exception from a lower EL.
    let vector = [
        0xd5385205, // 0x000: mrs x5, esr_el1
        0xd2800846, // 0x004: movz x6, #0x42
        0xf2aac006, // 0x008: movk x6, #0x5600, lsl #16   (EC 0x15 SVC64, IL)
        0xeb0600bf, // 0x00c: cmp x5, x6
        0x54000081, // 0x010: b.ne 1f
        0x52800a62, // 0x014: mov w2, #'S'
        0xb9000022, // 0x018: str w2, [x1]
        0xd69f03e0, // 0x01c: eret
        0xd2800866, // 0x020: 1: movz x6, #0x43
        0xf2aac006, // 0x024: movk x6, #0x5600, lsl #16
        0xeb0600bf, // 0x028: cmp x5, x6
        0x54000081, // 0x02c: b.ne 2f
        0xd2800100, // 0x030: movz x0, #0x8
        0xf2b08000, // 0x034: movk x0, #0x8400, lsl #16
        0xd4000002, // 0x038: hvc #0
        0x528008c2, // 0x03c: 2: mov w2, #'F'
        0xb9000022, // 0x040: str w2, [x1]
        0x14000000, // 0x044: 3: b 3b
    ];
    let out = run(&[(0, &main), (0x100, &el0), (0x800 + 0x400, &vector)], 1);
    assert_eq!(
        out.console, "SR",
        "S = right ESR on the first SVC, R = ERET came back to EL0"
    );
    assert_eq!(out.exit, GuestExit::PowerOff);
    assert_eq!(out.metrics.exits.get("svc"), Some(&2));
}

const SPIN: [u32; 1] = [
    0x14000000, // 1: b 1b
];
const WFI_LOOP: [u32; 2] = [
    0xd503207f, // 1: wfi
    0x17ffffff, // b 1b
];
/// VBAR + 0x280 (IRQ, current EL with SP_EL1): acknowledge, report the
/// INTID as "task" INTID - 16 (a PPI's number) with TASK_DONE (which
/// records the virtual time), EOI, power off.
const TIMER_IRQ: [u32; 9] = [
    0xd538cc07, // 0x000: mrs x7, icc_iar1_el1
    0xd10040e1, // 0x004: sub x1, x7, #16
    0xd28000e0, // 0x008: movz x0, #0x7
    0xf2b8c000, // 0x00c: movk x0, #0xc600, lsl #16  (FN_TASK_DONE)
    0xd4000002, // 0x010: hvc #0
    0xd518cc27, // 0x014: msr icc_eoir1_el1, x7
    0xd2800100, // 0x018: movz x0, #0x8
    0xf2b08000, // 0x01c: movk x0, #0x8400, lsl #16
    0xd4000002, // 0x020: hvc #0
];

/// 100 blocks that each hold an FP instruction, run with FP trapped (the
/// CPACR_EL1 reset value): more than the FP watch hooks block by block
/// before it watches every instruction, so both ways are exercised.
#[test]
fn an_fp_trap_is_taken_in_every_block_that_holds_an_fp_instruction() {
    const BLOCKS: usize = 100;
    let mut main = vec![
        0xd2a80009, // 0x000: movz x9, #0x4000, lsl #16
        0x9120012a, // 0x004: add x10, x9, #0x800
        0xd518c00a, // 0x008: msr vbar_el1, x10
    ];
    for _ in 0..BLOCKS {
        main.push(0x9e670000); // fmov d0, x0   (traps: EC 0x07)
        main.push(0x14000001); // b .+4         (ends the block)
    }
    main.extend_from_slice(&SYSTEM_OFF);
    // Current EL with SPx, synchronous: print '.', skip the instruction.
    let handler = [
        0xd2a12001, // movz x1, #0x900, lsl #16   (PL011)
        0x528005c2, // mov w2, #'.'
        0xb9000022, // str w2, [x1]
        0xd5384023, // mrs x3, elr_el1
        0x91001063, // add x3, x3, #4
        0xd5184023, // msr elr_el1, x3
        0xd69f03e0, // eret
    ];
    let out = run(&[(0, &main), (0xa00, &handler)], 1);
    assert_eq!(out.exit, GuestExit::PowerOff);
    assert_eq!(out.console, ".".repeat(BLOCKS));
    // A trapped FMOV does not complete: each block counts its branch and
    // the handler's 7 instructions, and the setup and SYSTEM_OFF 3 each.
    assert_eq!(out.metrics.instructions, 3 + BLOCKS as u64 * 8 + 3);
}

/// With alignment checking on, a loop whose branch goes back into the
/// middle of the block it ends: the block it enters there holds a load,
/// so the engine stops before it to hook it; the block before it ran to
/// its end and keeps its count.
#[test]
fn a_block_stopped_before_to_be_watched_leaves_the_count_of_the_block_before() {
    let mut main = vec![
        0xd2a80009, // 0x000: movz x9, #0x4000, lsl #16
        0xd5381001, // 0x004: mrs x1, sctlr_el1
        0xb27f0021, // 0x008: orr x1, x1, #2           (SCTLR_EL1.A)
        0xd5181001, // 0x00c: msr sctlr_el1, x1
        0xd5033fdf, // 0x010: isb
        0xd2800065, // 0x014: movz x5, #3
        0xf9400122, // 0x018: ldr x2, [x9]             (aligned)
        0xf10004a5, // 0x01c: subs x5, x5, #1
        0x54ffffc1, // 0x020: b.ne 0x018
    ];
    main.extend_from_slice(&SYSTEM_OFF);
    let out = run(&[(0, &main)], 1);
    assert_eq!(out.exit, GuestExit::PowerOff);
    // 5 to turn checking on, the loop's 4 + 3 + 3, SYSTEM_OFF's 3.
    assert_eq!(out.metrics.instructions, 5 + 4 + 3 + 3 + 3);
}

#[test]
fn timer_irq_is_delivered_at_its_virtual_deadline() {
    let out = run(
        &[
            (0, &TIMER_SETUP),
            (0x4c, &SPIN),
            (0x800 + 0x280, &TIMER_IRQ),
        ],
        1,
    );
    assert_eq!(out.exit, GuestExit::PowerOff, "console: {}", out.console);
    let t = out.task_done_ns[&u64::from(VTIMER_PPI - 16)];
    // Deadline is 1 ms after the counter read (a few ns after boot); the
    // handler's TASK_DONE comes after the injection, the exits of the GIC
    // accesses and its own hypercall (a few microseconds of modeled cost).
    assert!((1_000_000..1_005_000).contains(&t), "IRQ handled at {t} ns");
    assert_eq!(out.metrics.interrupts, BTreeMap::from([(VTIMER_PPI, 1)]));
    assert_eq!(out.metrics.exits.get("irq"), Some(&1));
    // Spinning for 1 ms at 0.33 ns per instruction.
    assert!(
        out.metrics.instructions > 2_900_000,
        "{}",
        out.metrics.instructions
    );
}

#[test]
fn wfi_idles_the_vcpu_until_the_timer() {
    let out = run(
        &[
            (0, &TIMER_SETUP),
            (0x4c, &WFI_LOOP),
            (0x800 + 0x280, &TIMER_IRQ),
        ],
        1,
    );
    assert_eq!(out.exit, GuestExit::PowerOff);
    let t = out.task_done_ns[&u64::from(VTIMER_PPI - 16)];
    assert!((1_000_000..1_005_000).contains(&t), "IRQ handled at {t} ns");
    assert!(
        out.metrics.instructions < 100,
        "halted, not spinning: {}",
        out.metrics.instructions
    );
    assert!(
        out.metrics.halted_ns[0] > 990_000,
        "{:?}",
        out.metrics.halted_ns
    );
    assert_eq!(out.metrics.exits.get("wfi"), Some(&1));
}

#[test]
fn second_vcpu_starts_with_psci_cpu_on_and_its_context_id() {
    let main = [
        0xd2a12001, // 0x000: movz x1, #0x900, lsl #16
        0xd2a80009, // 0x004: movz x9, #0x4000, lsl #16
        0x91400534, // 0x008: add x20, x9, #0x1, lsl #12  (flag)
        0xf900029f, // 0x00c: str xzr, [x20]
        0xd2800060, // 0x010: movz x0, #0x3
        0xf2b88000, // 0x014: movk x0, #0xc400, lsl #16  (CPU_ON)
        0xd2800021, // 0x018: mov x1, #1                  (target MPIDR)
        0x91080122, // 0x01c: add x2, x9, #0x200          (entry)
        0xd2800aa3, // 0x020: mov x3, #0x55               (context id)
        0xd4000002, // 0x024: hvc #0
        0xb5000160, // 0x028: cbnz x0, 9f
        0xf9400284, // 0x02c: 1: ldr x4, [x20]
        0xb4ffffe4, // 0x030: cbz x4, 1b
        0xd2a12001, // 0x034: movz x1, #0x900, lsl #16
        0xf101549f, // 0x038: cmp x4, #0x55
        0x540000c1, // 0x03c: b.ne 9f
        0x52800842, // 0x040: mov w2, #'B'
        0xb9000022, // 0x044: str w2, [x1]
        0xd2800100, // 0x048: movz x0, #0x8
        0xf2b08000, // 0x04c: movk x0, #0x8400, lsl #16
        0xd4000002, // 0x050: hvc #0
        0xd2a12001, // 0x054: 9: movz x1, #0x900, lsl #16
        0x528008c2, // 0x058: mov w2, #'F'
        0xb9000022, // 0x05c: str w2, [x1]
        0x14000000, // 0x060: 2: b 2b
    ];
    let secondary = [
        0xd2a80009, // 0x200: movz x9, #0x4000, lsl #16
        0x91400534, // 0x204: add x20, x9, #0x1, lsl #12
        0xf9000280, // 0x208: str x0, [x20]              (flag = context id)
        0xd2800040, // 0x20c: movz x0, #0x2
        0xf2b08000, // 0x210: movk x0, #0x8400, lsl #16  (CPU_OFF)
        0xd4000002, // 0x214: hvc #0
        0x14000000, // 0x218: 1: b 1b
    ];
    let out = run(&[(0, &main), (0x200, &secondary)], 2);
    assert_eq!(out.console, "B");
    assert_eq!(out.exit, GuestExit::PowerOff);
    assert_eq!(out.metrics.exits.get("psci"), Some(&3));
}

#[test]
fn exceptions_with_no_vector_table_crash_the_run_naming_the_first_one() {
    // VBAR_EL1 is 0 (nothing there): an external abort on an unassigned
    // address, then the same at the vector, forever on hardware.
    let wild = [
        0xd2a20001, // 0x000: movz x1, #0x1000, lsl #16
        0xf9400020, // 0x004: ldr x0, [x1]
    ];
    let out = run(&[(0, &wild)], 1);
    match &out.exit {
        // Data abort from EL1, synchronous external abort.
        GuestExit::Crash(GuestCrash::Vcpu {
            pc: 0x4000_0004,
            reason:
                CrashReason::NoVectorTable {
                    esr: 0x9600_0010,
                    far: 0x1000_0000,
                    ..
                },
            ..
        }) => {}
        e => panic!("expected a crash, got {e:?}"),
    }
    let udf = [0x0000_0000]; // udf #0
    let out = run(&[(0, &udf)], 1);
    match &out.exit {
        GuestExit::Crash(GuestCrash::Vcpu {
            pc: 0x4000_0000,
            reason: CrashReason::NoVectorTable {
                esr: 0x0200_0000, ..
            },
            ..
        }) => {}
        e => panic!("expected a crash, got {e:?}"),
    }
}

#[test]
fn a_guest_that_never_powers_off_times_out_in_virtual_time() {
    let path = temp_file(&image(&[(0, &SPIN)]));
    let mut cfg = config(path, 1);
    cfg.max_virtual_ns = 200_000;
    let out = Vm::new(cfg).unwrap().run(&mut NoFarMemory).unwrap();
    assert_eq!(out.exit, GuestExit::Timeout);
}

#[test]
fn runs_are_deterministic() {
    let pieces: [(usize, &[u32]); 3] = [
        (0, &TIMER_SETUP),
        (0x4c, &SPIN),
        (0x800 + 0x280, &TIMER_IRQ),
    ];
    let a = run(&pieces, 1);
    let b = run(&pieces, 1);
    assert_eq!(a.metrics, b.metrics);
    assert_eq!(a.task_done_ns, b.task_done_ns);
    assert_eq!(a.console, b.console);
}

/// Makes one page absent at boot; a fault on it stalls the vCPU for
/// `delay_ns` and then installs `value` at offset 8. Times each vCPU's
/// stall from the clock the VMM hands it.
struct DelayedPage {
    page: u64,
    delay_ns: u64,
    value: u64,
    faults: Vec<NotResidentFault>,
    stalled_since: [Option<u64>; 2],
    stalled_ns: [u64; 2],
}

impl FaultHook for DelayedPage {
    fn init(&mut self, res: &mut dyn Residency) -> Result<(), HookInitError> {
        res.guest_memory()
            .write_obj(0xdead_u64, GuestAddress(self.page + 8))?;
        res.set_resident(Gpa(self.page), false)?;
        Ok(())
    }

    fn on_not_resident(
        &mut self,
        vcpu: u32,
        fault: &NotResidentFault,
        now_ns: u64,
        _res: &mut dyn Residency,
    ) -> Action {
        self.faults.push(*fault);
        if fault.gpa.page_base() != Gpa(self.page) {
            return Action::Fail(HookFailure::Hook(Arc::new(std::io::Error::other(format!(
                "unexpected fault at {:#x}",
                fault.gpa
            )))));
        }
        self.stalled_since[vcpu as usize] = Some(now_ns);
        Action::StallUntil(now_ns + self.delay_ns)
    }

    fn on_wait_end(&mut self, vcpu: u32, now_ns: u64, res: &mut dyn Residency) -> Action {
        if let Some(since) = self.stalled_since[vcpu as usize].take() {
            self.stalled_ns[vcpu as usize] += now_ns - since;
        }
        let page = Gpa(self.page);
        if let Err(e) = res
            .guest_memory()
            .write_obj(self.value, GuestAddress(self.page + 8))
        {
            return Action::Fail(HookFailure::not_made_resident(page, e));
        }
        match res.set_resident(page, true) {
            Ok(()) => Action::Retry,
            Err(e) => Action::Fail(HookFailure::not_made_resident(page, e)),
        }
    }
}

#[test]
fn not_resident_access_stalls_the_vcpu_then_completes_with_the_installed_data() {
    let main = [
        0xd2a80009, // 0x000: movz x9, #0x4000, lsl #16
        0x91400935, // 0x004: add x21, x9, #0x2, lsl #12  (counter)
        0xf90002bf, // 0x008: str xzr, [x21]
        0xd2800060, // 0x00c: movz x0, #0x3
        0xf2b88000, // 0x010: movk x0, #0xc400, lsl #16  (CPU_ON)
        0xd2800021, // 0x014: mov x1, #1
        0x910c0122, // 0x018: add x2, x9, #0x300
        0xd2800003, // 0x01c: mov x3, #0
        0xd4000002, // 0x020: hvc #0
        0xf94002a4, // 0x024: 1: ldr x4, [x21]           (wait for the counter)
        0xb4ffffe4, // 0x028: cbz x4, 1b
        0x91440136, // 0x02c: add x22, x9, #0x100, lsl #12 (absent page)
        0xf94006c5, // 0x030: ldr x5, [x22, #8]          (stalls)
        0xf94002a6, // 0x034: ldr x6, [x21]
        0xcb0400c7, // 0x038: sub x7, x6, x4             (progress meanwhile)
        0xd2a12001, // 0x03c: movz x1, #0x900, lsl #16
        0xd2824688, // 0x040: movz x8, #0x1234
        0xeb0800bf, // 0x044: cmp x5, x8
        0x54000141, // 0x048: b.ne 9f
        0x52800b22, // 0x04c: mov w2, #'Y'
        0xb9000022, // 0x050: str w2, [x1]
        0xf12000ff, // 0x054: cmp x7, #0x800
        0x540000c3, // 0x058: b.lo 9f
        0x52800862, // 0x05c: mov w2, #'C'
        0xb9000022, // 0x060: str w2, [x1]
        0xd2800100, // 0x064: movz x0, #0x8
        0xf2b08000, // 0x068: movk x0, #0x8400, lsl #16
        0xd4000002, // 0x06c: hvc #0
        0xd2a12001, // 0x070: 9: movz x1, #0x900, lsl #16
        0x528009c2, // 0x074: mov w2, #'N'
        0xb9000022, // 0x078: str w2, [x1]
        0x14000000, // 0x07c: 2: b 2b
    ];
    let counter = [
        0xd2a80009, // 0x300: movz x9, #0x4000, lsl #16
        0x91400935, // 0x304: add x21, x9, #0x2, lsl #12
        0xf94002a4, // 0x308: 1: ldr x4, [x21]
        0x91000484, // 0x30c: add x4, x4, #1
        0xf90002a4, // 0x310: str x4, [x21]
        0x17fffffd, // 0x314: b 1b
    ];
    let path = temp_file(&image(&[(0, &main), (0x300, &counter)]));
    let vm = Vm::new(config(path, 2)).unwrap();
    let page = RAM_BASE + 0x10_0000;
    let mut hook = DelayedPage {
        page,
        delay_ns: 50_000,
        value: 0x1234,
        faults: Vec::new(),
        stalled_since: [None; 2],
        stalled_ns: [0; 2],
    };
    let out = vm.run(&mut hook).unwrap();
    assert_eq!(
        out.console, "YC",
        "Y = data installed by the pager, C = the other vCPU kept running"
    );
    assert_eq!(out.exit, GuestExit::PowerOff);
    assert_eq!(out.metrics.exits.get("not_resident"), Some(&1));
    assert!(hook.stalled_ns[0] >= 50_000, "{:?}", hook.stalled_ns);
    assert_eq!(hook.stalled_ns[1], 0);
    assert_eq!(hook.faults.len(), 1);
    assert_eq!(hook.faults[0].gpa, Gpa(page));
    assert!(!hook.faults[0].write);
}

#[test]
fn bad_configs_are_clear_errors() {
    let path = temp_file(&image(&[(0, &SYSTEM_OFF)]));
    let err = |c| Vm::new(c).err().expect("must fail").to_string();
    let mut c = config(path.clone(), 0);
    assert!(err(c.clone()).contains("vcpus = 0"), "{}", err(c.clone()));
    c.vcpus = 9;
    assert!(err(c.clone()).contains("vcpus = 9"));
    let mut c = config(path.clone(), 1);
    c.memory_mib = 1 << 30;
    let e = err(c);
    assert!(
        e.contains("memory = 1073741824 MiB") && e.contains("host"),
        "{e}"
    );
    let c = config("/nonexistent/guest.elf".into(), 1);
    let e = err(c);
    assert!(e.contains("/nonexistent/guest.elf"), "{e}");
    // An x86-64 ELF header.
    let mut elf = vec![0u8; 64];
    elf[..4].copy_from_slice(b"\x7fELF");
    elf[4] = 2; // 64-bit
    elf[5] = 1; // little-endian
    elf[6] = 1;
    elf[16] = 2; // ET_EXEC
    elf[18] = 62; // EM_X86_64
    elf[20] = 1;
    elf[52] = 64; // e_ehsize
    elf[54] = 56; // e_phentsize
    let e = err(config(temp_file(&elf), 1));
    assert!(
        e.contains("expected a 64-bit little-endian aarch64 ELF"),
        "{e}"
    );
}
