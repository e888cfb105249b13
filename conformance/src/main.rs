//! virt-conformance: a bare-metal arm64 kernel for QEMU's `virt` board
//! (`-M virt,gic-version=3 -cpu max`, 2 or more CPUs) that checks what a
//! kernel sees of the machine and prints one `PASS <name>` or
//! `FAIL <name>: <detail>` line per behaviour on the PL011, then powers off
//! through PSCI.
//!
//! It knows nothing of apflab: it is written against the architecture and
//! the board, so that the same image can be compared between machines
//! (apflab's emu backend, QEMU, KVM). Covered: synchronous exceptions
//! (UNDEFINED, BRK, SVC, FP traps, alignment faults, stage-1 translation / access flag /
//! permission faults from EL1 and EL0, external aborts on unassigned
//! addresses) with their ESR/FAR/ELR; the debug exceptions (hardware
//! breakpoints, watchpoints and software step at EL1); MPIDR against the device tree; PSCI;
//! interrupts taken at each kind of unmask; exclusives and LSE atomics
//! contended by every CPU; both EL1 timers; SGIs; the
//! board's absent virtio-mmio transports, its RTC and the PMU's presence.

#![no_std]
#![no_main]

mod dt;
mod gic;

use core::arch::{asm, global_asm};
use core::cell::UnsafeCell;
use core::ptr::{read_volatile, write_volatile};
use core::sync::atomic::Ordering::{self, Relaxed};
use core::sync::atomic::{AtomicU32, AtomicU64};

global_asm!(include_str!("asm.s"));

unsafe extern "C" {
    fn do_udf();
    fn do_brk();
    fn do_svc();
    fn read_sctlr_el3() -> u64;
    fn read_hcr_el2() -> u64;
    fn read_impdef() -> u64;
    fn read_pmcr() -> u64;
    fn do_fmov();
    fn load_u8(addr: u64) -> u64;
    fn load_u64(addr: u64) -> u64;
    fn store_u8(addr: u64, v: u64);
    fn load_u8_unprivileged(addr: u64) -> u64;
    fn set_pan(on: u64);
    fn call_addr(addr: u64);
    fn unmask_daifclr() -> u64;
    fn unmask_msr_daif() -> u64;
    fn unmask_eret() -> u64;
    fn unmask_wfi() -> u64;
    fn unmask_wfi_wfi();
    fn wfi_masked();
    fn run_el0(entry: u64, sp: u64, arg: u64) -> u64;
    fn run_el0_stepped(entry: u64, sp: u64, arg: u64) -> u64;
    fn el0_return();
    fn el0_base();
    fn xn_page();
    fn secondary_entry();
    fn step_run(mdscr: u64, spsr_ss: u64);
    fn step_target();
    fn bp_target() -> u64;
}

const UART: usize = 0x0900_0000;
const MAX_CPUS: usize = 8;

/// Memory shared with the assembly or between CPUs.
#[repr(C, align(4096))]
struct Shared<T>(UnsafeCell<T>);
// SAFETY: every access goes through raw pointers with volatile or atomic
// operations; the tests run one step at a time.
unsafe impl<T> Sync for Shared<T> {}

impl<T> Shared<T> {
    const fn new(v: T) -> Self {
        Shared(UnsafeCell::new(v))
    }
    fn ptr(&self) -> *mut T {
        self.0.get()
    }
}

/// Per-CPU stacks (asm.s: 16 KiB each).
#[unsafe(no_mangle)]
static STACKS: Shared<[[u8; 0x4000]; MAX_CPUS + 1]> = Shared::new([[0; 0x4000]; MAX_CPUS + 1]);
/// Callee-saved registers of `run_el0`'s caller.
#[unsafe(no_mangle)]
static EL0_SAVED: Shared<[u64; 13]> = Shared::new([0; 13]);

static L1: Shared<[u64; 512]> = Shared::new([0; 512]);
static L2: Shared<[u64; 512]> = Shared::new([0; 512]);
static L3: Shared<[u64; 512]> = Shared::new([0; 512]);
/// Data pages behind the test mappings.
static PAGES: Shared<[[u8; 4096]; 4]> = Shared::new([[0; 4096]; 4]);

/// The saved registers of an exception (asm.s `exc_common`).
#[repr(C)]
struct Frame {
    x: [u64; 31],
    elr: u64,
    spsr: u64,
    esr: u64,
    far: u64,
}

/// The last synchronous exception taken.
struct Taken {
    count: AtomicU64,
    esr: AtomicU64,
    far: AtomicU64,
    elr: AtomicU64,
    kind: AtomicU64,
}

static SYNC: Taken = Taken {
    count: AtomicU64::new(0),
    esr: AtomicU64::new(0),
    far: AtomicU64::new(0),
    elr: AtomicU64::new(0),
    kind: AtomicU64::new(0),
};
/// IRQs taken on CPU 0, the last one's INTID and ELR.
static IRQS: AtomicU64 = AtomicU64::new(0);
static IRQ_INTID: AtomicU64 = AtomicU64::new(0);
static IRQ_ELR: AtomicU64 = AtomicU64::new(0);

/// What secondaries report: MPIDR, ready flag, SGIs taken and the last.
static CPU_MPIDR: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
static CPU_SCTLR_AT_ENTRY: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
static CPU_READY: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(0) }; MAX_CPUS];
static CPU_SGIS: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(0) }; MAX_CPUS];
static CPU_LAST_SGI: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(0) }; MAX_CPUS];

static PASSED: AtomicU32 = AtomicU32::new(0);
static FAILED: AtomicU32 = AtomicU32::new(0);

// ---- console ----

fn putc(c: u8) {
    // SAFETY: the PL011 of the virt board; TXFF is bit 5 of UARTFR.
    unsafe {
        while read_volatile((UART + 0x18) as *const u32) & (1 << 5) != 0 {}
        write_volatile(UART as *mut u32, u32::from(c));
    }
}

fn puts(s: &str) {
    s.bytes().for_each(putc);
}

fn put_hex(v: u64) {
    puts("0x");
    let mut started = false;
    for i in (0..16).rev() {
        let d = ((v >> (i * 4)) & 0xf) as u8;
        if d != 0 || started || i == 0 {
            started = true;
            putc(if d < 10 { b'0' + d } else { b'a' + d - 10 });
        }
    }
}

fn put_dec(mut v: u64) {
    let mut buf = [0u8; 20];
    let mut n = 0;
    loop {
        buf[n] = b'0' + (v % 10) as u8;
        n += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    buf[..n].iter().rev().for_each(|&c| putc(c));
}

/// Reports one check: `got == want`.
fn check(name: &str, got: u64, want: u64) {
    check_that(name, got == want, got, want);
}

/// Reports one check with the values to print on failure.
fn check_that(name: &str, ok: bool, got: u64, want: u64) {
    if ok {
        PASSED.fetch_add(1, Relaxed);
        puts("PASS ");
        puts(name);
    } else {
        FAILED.fetch_add(1, Relaxed);
        puts("FAIL ");
        puts(name);
        puts(": got ");
        put_hex(got);
        puts(", want ");
        put_hex(want);
    }
    puts("\n");
}

// ---- system registers ----

macro_rules! mrs {
    ($reg:tt) => {{
        let v: u64;
        // SAFETY: reading a system register this kernel may read at EL1.
        unsafe { asm!(concat!("mrs {}, ", $reg), out(reg) v) };
        v
    }};
}

macro_rules! msr {
    ($reg:tt, $v:expr) => {{
        let v: u64 = $v;
        // SAFETY: writing a system register as the test in hand intends.
        unsafe { asm!(concat!("msr ", $reg, ", {}"), "isb", in(reg) v) };
    }};
}

fn cpu_index(mpidr: u64) -> usize {
    (mpidr & 0xff) as usize
}

// ---- PSCI (HVC conduit, as the device tree of virt says) ----

const PSCI_VERSION: u64 = 0x8400_0000;
const PSCI_CPU_SUSPEND: u64 = 0xc400_0001;
const PSCI_CPU_OFF: u64 = 0x8400_0002;
const PSCI_CPU_ON: u64 = 0xc400_0003;
const PSCI_AFFINITY_INFO: u64 = 0xc400_0004;
const PSCI_MIGRATE_INFO_TYPE: u64 = 0x8400_0006;
const PSCI_SYSTEM_OFF: u64 = 0x8400_0008;
const PSCI_SYSTEM_RESET: u64 = 0x8400_0009;
const PSCI_FEATURES: u64 = 0x8400_000a;

fn psci(f: u64, a: u64, b: u64, c: u64) -> i64 {
    let r: u64;
    // SAFETY: an SMCCC call through HVC; x0-x3 are the arguments and the
    // result, the callee may clobber x0-x17.
    unsafe {
        asm!("hvc #0", inout("x0") f => r, inout("x1") a => _, inout("x2") b => _,
             inout("x3") c => _, out("x4") _, out("x5") _, out("x6") _, out("x7") _,
             out("x8") _, out("x9") _, out("x10") _, out("x11") _, out("x12") _,
             out("x13") _, out("x14") _, out("x15") _, out("x16") _, out("x17") _)
    };
    r as i64
}

// ---- exceptions ----

/// How the synchronous handler resumes an EL1 fault.
static RESUME_AT_LR: AtomicU32 = AtomicU32::new(0);

/// Called by asm.s for every exception; `kind` is the vector number.
#[unsafe(no_mangle)]
extern "C" fn exception(frame: &mut Frame, kind: u64) {
    let ec = frame.esr >> 26;
    match kind {
        // Synchronous, current EL with SP_ELx.
        4 => {
            record(frame, kind);
            match ec {
                // SVC: ELR is already past it.
                0x15 => {}
                // Instruction abort: the target cannot be skipped; go back
                // to the caller of `call_addr`.
                0x21 => frame.elr = frame.x[30],
                // Breakpoint: disarm it and run the instruction.
                0x31 => msr!("dbgbcr0_el1", 0),
                // Watchpoint: disarm it and run the access.
                0x35 => msr!("dbgwcr0_el1", 0),
                // Software step: ELR is the next instruction to step.
                0x33 => software_step(frame),
                _ if RESUME_AT_LR.load(Relaxed) != 0 => frame.elr = frame.x[30],
                _ => frame.elr += 4,
            }
        }
        // IRQ, current EL.
        5 => irq(frame),
        // Synchronous from EL0.
        8 => {
            if ec == 0x15 && frame.esr & 0xffff == 1 {
                // `svc #1`: back to run_el0's caller at EL1.
                frame.elr = el0_return as *const () as u64;
                frame.spsr = 0x3c5;
                return;
            }
            record(frame, kind);
            match ec {
                0x15 => {}
                0x20 => frame.elr = el0_va(20),
                // Breakpoint: disarm it and run the instruction.
                0x30 => msr!("dbgbcr0_el1", 0),
                0x32 => software_step(frame),
                _ => frame.elr += 4,
            }
        }
        9 => irq(frame),
        _ => {
            puts("FAIL unexpected_exception: vector ");
            put_dec(kind);
            puts(" esr ");
            put_hex(frame.esr);
            puts(" elr ");
            put_hex(frame.elr);
            puts("\n");
            psci(PSCI_SYSTEM_OFF, 0, 0, 0);
        }
    }
}

/// Software step exceptions taken, their ELRs, and how many to take.
static STEPS: AtomicU64 = AtomicU64::new(0);
static STEP_ELRS: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];
static STEP_LIMIT: AtomicU64 = AtomicU64::new(0);

/// SPSR_EL1.SS.
const SPSR_SS: u64 = 1 << 21;

/// A software step exception: steps the next instruction (SPSR_EL1.SS
/// set again) until STEP_LIMIT, then ends stepping.
fn software_step(frame: &mut Frame) {
    let n = STEPS.fetch_add(1, Relaxed);
    if let Some(slot) = STEP_ELRS.get(n as usize) {
        slot.store(frame.elr, Relaxed);
    }
    if n + 1 < STEP_LIMIT.load(Relaxed) {
        frame.spsr |= SPSR_SS;
    } else {
        msr!("mdscr_el1", 0);
        frame.spsr &= !SPSR_SS;
    }
}

fn record(frame: &Frame, kind: u64) {
    SYNC.esr.store(frame.esr, Relaxed);
    SYNC.far.store(frame.far, Relaxed);
    SYNC.elr.store(frame.elr, Relaxed);
    SYNC.kind.store(kind, Relaxed);
    SYNC.count.fetch_add(1, Relaxed);
}

fn irq(frame: &mut Frame) {
    let iar = mrs!("s3_0_c12_c12_0"); // ICC_IAR1_EL1
    let intid = iar & 0xff_ffff;
    let cpu = cpu_index(mrs!("mpidr_el1"));
    match intid {
        27 => msr!("cntv_ctl_el0", 0),
        30 => msr!("cntp_ctl_el0", 0),
        _ => {}
    }
    if cpu == 0 {
        IRQ_INTID.store(intid, Relaxed);
        IRQ_ELR.store(frame.elr, Relaxed);
        IRQS.fetch_add(1, Relaxed);
    } else if intid < 16 {
        CPU_LAST_SGI[cpu].store(intid as u32, Relaxed);
        let n = CPU_SGIS[cpu].load(Relaxed);
        CPU_SGIS[cpu].store(n + 1, Relaxed);
    }
    if intid < 1020 {
        msr!("s3_0_c12_c12_1", iar); // ICC_EOIR1_EL1
    }
    // Taken before the WFI it was meant to end: do not go back to wait
    // for an interrupt that has already come.
    if frame.elr == fn_addr(unmask_wfi_wfi) {
        frame.elr += 4;
    }
    if cpu != 0 && intid == 7 {
        psci(PSCI_CPU_OFF, 0, 0, 0);
    }
}

/// Runs `f`, expecting exactly one synchronous exception; returns
/// (esr, far, elr), or zeros if none was taken.
fn expect_sync<R>(f: impl FnOnce() -> R) -> (u64, u64, u64) {
    let before = SYNC.count.load(Relaxed);
    let _ = f();
    if SYNC.count.load(Relaxed) == before + 1 {
        (
            SYNC.esr.load(Relaxed),
            SYNC.far.load(Relaxed),
            SYNC.elr.load(Relaxed),
        )
    } else {
        (0, 0, 0)
    }
}

/// Calls a helper of asm.s that takes nothing and returns nothing.
fn call0(f: unsafe extern "C" fn()) {
    // SAFETY: every helper of asm.s takes at most one exception, on its
    // first instruction, which `exception` resumes past (or at the caller).
    unsafe { f() }
}

/// Calls a helper of asm.s that returns a value.
fn call_ret(f: unsafe extern "C" fn() -> u64) -> u64 {
    // SAFETY: as in call0.
    unsafe { f() }
}

/// Calls a helper of asm.s that takes an address.
fn call1(f: unsafe extern "C" fn(u64) -> u64, a: u64) -> u64 {
    // SAFETY: as in call0; the access may fault, which is the test.
    unsafe { f(a) }
}

/// Calls a helper of asm.s that takes an address and a value.
fn call2(f: unsafe extern "C" fn(u64, u64), a: u64, b: u64) {
    // SAFETY: as in call1.
    unsafe { f(a, b) }
}

/// `call_addr` with the shape of call2's helpers (the second argument is
/// unused): branches to `a`, which faults or returns.
unsafe extern "C" fn call_addr_fn(a: u64, _: u64) {
    // SAFETY: the caller's contract.
    unsafe { call_addr(a) }
}

/// Runs the EL0 snippet at `entry` (in the EL0 page) with x0 = `arg`.
fn el0(entry: u64, sp: u64, arg: u64) -> u64 {
    // SAFETY: the EL0 page holds only snippets that end in `svc #1` (or
    // fault, and the handler sends them to one).
    unsafe { run_el0(entry, sp, arg) }
}

fn fn_addr(f: unsafe extern "C" fn()) -> u64 {
    f as *const () as u64
}

// ---- memory map of the tests ----

/// Test VAs: 4 KiB pages at 0x8000_0000 + n * 4 KiB, through L2/L3.
const TV: u64 = 0x8000_0000;
const TV_OK: u64 = TV;
const TV_INVALID: u64 = TV + 0x1000;
const TV_NOAF: u64 = TV + 0x2000;
const TV_RO: u64 = TV + 0x3000;
const TV_XN: u64 = TV + 0x4000;
const TV_NOEXEC: u64 = TV + 0x5000;
const TV_EL0_CODE: u64 = TV + 0x6000;
const TV_EL0_DATA: u64 = TV + 0x7000;
const TV_EL1_ONLY: u64 = TV + 0x8000;
/// No valid level-2 descriptor.
const TV_L2_INVALID: u64 = TV + 0x20_0000;
/// No valid level-1 descriptor.
const TV_L1_INVALID: u64 = 0xc000_0000;

const VALID: u64 = 1;
const TABLE: u64 = 0b11;
const PAGE: u64 = 0b11;
const ATTR_NORMAL: u64 = 0 << 2;
const ATTR_DEVICE: u64 = 1 << 2;
const AP_EL0: u64 = 1 << 6;
const AP_RO: u64 = 1 << 7;
const SH_INNER: u64 = 3 << 8;
const AF: u64 = 1 << 10;
const PXN: u64 = 1 << 53;
const UXN: u64 = 1 << 54;

fn el0_va(offset: u64) -> u64 {
    TV_EL0_CODE + offset
}

fn page_pa(i: usize) -> u64 {
    // SAFETY: in bounds of PAGES.
    unsafe { (*PAGES.ptr())[i].as_ptr() as u64 }
}

fn mmu_on() {
    let normal = ATTR_NORMAL | SH_INNER | AF;
    // SAFETY: the tables are only written here, before the MMU uses them.
    unsafe {
        let l1 = &mut *L1.ptr();
        let l2 = &mut *L2.ptr();
        let l3 = &mut *L3.ptr();
        l1[0] = ATTR_DEVICE | AF | PXN | UXN | VALID;
        // RAM: EL1 read/write/execute, EL0 nothing.
        l1[1] = 0x4000_0000 | normal | UXN | VALID;
        l1[2] = L2.ptr() as u64 | TABLE;
        l2[0] = L3.ptr() as u64 | TABLE;
        let data = normal | PXN | UXN | PAGE;
        l3[0] = page_pa(0) | data;
        l3[2] = page_pa(1) | (data & !AF);
        l3[3] = page_pa(2) | data | AP_RO;
        l3[4] = fn_addr(xn_page) | normal | PXN | UXN | PAGE;
        l3[6] = fn_addr(el0_base) | normal | AP_EL0 | AP_RO | PXN | PAGE;
        l3[7] = page_pa(3) | data | AP_EL0;
        l3[8] = page_pa(0) | data;
    }
    mmu_enable();
}

/// Turns the MMU on with the tables `mmu_on` built (every CPU).
fn mmu_enable() {
    msr!("mair_el1", 0x00ff);
    // T0SZ 25 (39 bits), inner/outer write-back, inner shareable, 4 KiB,
    // TTBR1 walks disabled, 40-bit IPS.
    let tcr = 25 | (1 << 8) | (1 << 10) | (3 << 12) | (1 << 23) | (2 << 32);
    msr!("tcr_el1", tcr);
    msr!("ttbr0_el1", L1.ptr() as u64);
    // SAFETY: the tables map this code, its data and the devices at the
    // same addresses.
    unsafe { asm!("dsb ish", "tlbi vmalle1", "dsb ish", "isb") };
    let sctlr = mrs!("sctlr_el1") | 1 | (1 << 2) | (1 << 12);
    msr!("sctlr_el1", sctlr & !(1 << 1) & !(1 << 19));
}

// ---- the tests ----

fn test_undefined() {
    let (esr, _, elr) = expect_sync(|| call0(do_udf));
    check("udf_esr", esr, 0x0200_0000);
    check("udf_elr", elr, fn_addr(do_udf));
    // SAFETY (all below): each helper faults on its first instruction and
    // the handler resumes after it.
    let (esr, _, elr) = expect_sync(|| call_ret(read_sctlr_el3));
    check("mrs_sctlr_el3_undefined", esr, 0x0200_0000);
    check("mrs_sctlr_el3_elr", elr, read_sctlr_el3 as *const () as u64);
    let (esr, _, _) = expect_sync(|| call_ret(read_hcr_el2));
    check("mrs_hcr_el2_undefined", esr, 0x0200_0000);
    let (esr, _, _) = expect_sync(|| call_ret(read_impdef));
    check("mrs_unimplemented_undefined", esr, 0x0200_0000);
}

fn test_brk_svc() {
    let (esr, _, elr) = expect_sync(|| call0(do_brk));
    check("brk_esr", esr, 0xf200_1234);
    check("brk_elr", elr, fn_addr(do_brk));
    let (esr, _, elr) = expect_sync(|| call0(do_svc));
    check("svc_esr", esr, 0x5600_0042);
    check("svc_elr", elr, fn_addr(do_svc) + 4);
}

fn test_fp_trap() {
    let cpacr = mrs!("cpacr_el1");
    msr!("cpacr_el1", cpacr & !(3 << 20));
    let (esr, _, elr) = expect_sync(|| call0(do_fmov));
    check("fp_trap_esr", esr, 0x1fe0_0000);
    check("fp_trap_elr", elr, fn_addr(do_fmov));
    // FPEN = 0b01: EL1 may, EL0 still traps.
    msr!("cpacr_el1", (cpacr & !(3 << 20)) | (1 << 20));
    let before = SYNC.count.load(Relaxed);
    call0(do_fmov);
    check(
        "fp_el1_allowed_by_fpen_01",
        SYNC.count.load(Relaxed) - before,
        0,
    );
    msr!("cpacr_el1", cpacr | (3 << 20));
    let before = SYNC.count.load(Relaxed);
    call0(do_fmov);
    check("fp_enabled_no_trap", SYNC.count.load(Relaxed) - before, 0);
}

fn test_alignment() {
    let sctlr = mrs!("sctlr_el1");
    msr!("sctlr_el1", sctlr | (1 << 1));
    let (esr, far, elr) = expect_sync(|| call1(load_u64, TV_OK + 4));
    let aligned = expect_sync(|| call1(load_u64, TV_OK + 8)).0;
    let (besr, _, _) = expect_sync(|| call1(load_u8, TV_OK + 3));
    msr!("sctlr_el1", sctlr);
    check("dabt_alignment_esr", esr, 0x9600_0021);
    check("dabt_alignment_far", far, TV_OK + 4);
    check("dabt_alignment_elr", elr, load_u64 as *const () as u64);
    check("aligned_load_with_sctlr_a", aligned, 0);
    check("byte_load_with_sctlr_a", besr, 0);
    let before = SYNC.count.load(Relaxed);
    call1(load_u64, TV_OK + 4);
    check(
        "unaligned_load_with_sctlr_a_clear",
        SYNC.count.load(Relaxed) - before,
        0,
    );
}

// ---- debug exceptions ----

const MDSCR_SS: u64 = 1 << 0;
const MDSCR_KDE: u64 = 1 << 13;
const MDSCR_MDE: u64 = 1 << 15;

/// Runs `step_run` with `mdscr` and SPSR_EL1.SS = `ss`, taking at most
/// `limit` step exceptions; returns how many were taken.
fn stepped(mdscr: u64, ss: u64, limit: u64) -> u64 {
    STEPS.store(0, Relaxed);
    STEP_LIMIT.store(limit, Relaxed);
    // SAFETY: step_run returns to its caller through step_target; the
    // handler keeps every register.
    unsafe { step_run(mdscr, ss) };
    msr!("mdscr_el1", 0);
    STEPS.load(Relaxed)
}

/// Runs `f` with PSTATE.D clear, so that debug exceptions are enabled at
/// EL1 (with MDSCR_EL1.KDE).
fn debug_unmasked<R>(f: impl FnOnce() -> R) -> R {
    // SAFETY: only the debug mask changes; the handler of every debug
    // exception the tests arm disarms it.
    unsafe { asm!("msr daifclr, #8") };
    let r = f();
    // SAFETY: back to this kernel's normal state.
    unsafe { asm!("msr daifset, #8") };
    r
}

fn test_debug() {
    // Debug exceptions are disabled while the OS lock is set (as it is at
    // reset on hardware): unlock it, as an OS does.
    msr!("oslar_el1", 0);
    let dfr0 = mrs!("id_aa64dfr0_el1");
    check("id_aa64dfr0_brps", (dfr0 >> 12) & 0xf, 5);
    check("id_aa64dfr0_debugver_v8", u64::from((dfr0 & 0xf) >= 6), 1);
    let target = fn_addr(step_target);

    // Two instructions stepped at EL1: each step exception returns
    // to the next instruction.
    let n = stepped(MDSCR_SS | MDSCR_KDE, SPSR_SS, 2);
    check("step_el1_count", n, 2);
    check("step_el1_first_elr", STEP_ELRS[0].load(Relaxed), target + 4);
    check(
        "step_el1_second_elr",
        STEP_ELRS[1].load(Relaxed),
        target + 8,
    );
    check("step_el1_esr", SYNC.esr.load(Relaxed), 0xcf00_0022);
    // SPSR_EL1.SS clear: active-pending, taken before any instruction,
    // without ISV.
    let n = stepped(MDSCR_SS | MDSCR_KDE, 0, 1);
    check("step_pending_count", n, 1);
    check("step_pending_elr", STEP_ELRS[0].load(Relaxed), target);
    check("step_pending_esr", SYNC.esr.load(Relaxed), 0xce00_0022);
    // Without MDSCR_EL1.KDE, EL1 is not stepped.
    check("step_el1_needs_kde", stepped(MDSCR_SS, SPSR_SS, 2), 0);

    // A hardware breakpoint on bp_target: taken before its first
    // instruction, which runs once the handler disarms it.
    let bp = bp_target as *const () as u64;
    // E, PMC = EL1 and EL0, BAS = 0b1111.
    let bcr = 0x1e7;
    msr!("dbgbvr0_el1", bp);
    msr!("dbgbcr0_el1", bcr);
    check("dbgbcr0_reads_back", mrs!("dbgbcr0_el1"), bcr);
    msr!("mdscr_el1", MDSCR_MDE | MDSCR_KDE);
    let before = SYNC.count.load(Relaxed);
    let v = debug_unmasked(|| call_ret(bp_target));
    let taken = SYNC.count.load(Relaxed) - before;
    check("hw_breakpoint_count", taken, 1);
    check("hw_breakpoint_esr", SYNC.esr.load(Relaxed), 0xc600_0022);
    check("hw_breakpoint_elr", SYNC.elr.load(Relaxed), bp);
    check("hw_breakpoint_then_runs", v, 7);
    // Armed, but PSTATE.D set (as in this kernel's normal state), or
    // MDSCR_EL1.MDE clear: no exception.
    msr!("dbgbcr0_el1", bcr);
    let before = SYNC.count.load(Relaxed);
    let v = call_ret(bp_target);
    check(
        "hw_breakpoint_masked_by_d",
        SYNC.count.load(Relaxed) - before + v,
        7,
    );
    msr!("mdscr_el1", MDSCR_KDE);
    let v = debug_unmasked(|| call_ret(bp_target));
    check(
        "hw_breakpoint_needs_mde",
        SYNC.count.load(Relaxed) - before + v,
        7,
    );
    // A linked address match (BT 0b0001) on bp_target, linked (LBN) to
    // the highest breakpoint, which can match a context, as a linked
    // context ID match (BT 0b0011) on 0x42: taken only while
    // CONTEXTIDR_EL1 holds 0x42.
    let ctx_bp = (mrs!("id_aa64dfr0_el1") >> 12) & 0xf;
    set_breakpoint(ctx_bp, 0x42, 1 | (0b11 << 1) | (0b0011 << 20));
    let linked = bcr | (0b0001 << 20) | (ctx_bp << 16);
    msr!("mdscr_el1", MDSCR_MDE | MDSCR_KDE);
    msr!("contextidr_el1", 0x42);
    msr!("dbgbcr0_el1", linked);
    let before = SYNC.count.load(Relaxed);
    let v = debug_unmasked(|| call_ret(bp_target));
    check(
        "linked_breakpoint_in_context_count",
        SYNC.count.load(Relaxed) - before,
        1,
    );
    check("linked_breakpoint_esr", SYNC.esr.load(Relaxed), 0xc600_0022);
    check("linked_breakpoint_elr", SYNC.elr.load(Relaxed), bp);
    check("linked_breakpoint_then_runs", v, 7);
    msr!("contextidr_el1", 0x43);
    msr!("dbgbcr0_el1", linked);
    let before = SYNC.count.load(Relaxed);
    let v = debug_unmasked(|| call_ret(bp_target));
    check(
        "linked_breakpoint_other_context",
        SYNC.count.load(Relaxed) - before + v,
        7,
    );
    set_breakpoint(ctx_bp, 0, 0);
    msr!("contextidr_el1", 0);
    msr!("dbgbcr0_el1", 0);
    test_watchpoints();
    msr!("mdscr_el1", 0);
}

/// Writes breakpoint `n`'s value and control registers (`n` below 16,
/// as ID_AA64DFR0_EL1.BRPs is).
fn set_breakpoint(n: u64, bvr: u64, bcr: u64) {
    macro_rules! slots {
        ($($n:literal: $bvr:literal $bcr:literal),*) => {
            match n {
                $($n => {
                    msr!($bvr, bvr);
                    msr!($bcr, bcr);
                })*
                _ => {}
            }
        };
    }
    slots!(
        0: "dbgbvr0_el1" "dbgbcr0_el1", 1: "dbgbvr1_el1" "dbgbcr1_el1",
        2: "dbgbvr2_el1" "dbgbcr2_el1", 3: "dbgbvr3_el1" "dbgbcr3_el1",
        4: "dbgbvr4_el1" "dbgbcr4_el1", 5: "dbgbvr5_el1" "dbgbcr5_el1",
        6: "dbgbvr6_el1" "dbgbcr6_el1", 7: "dbgbvr7_el1" "dbgbcr7_el1",
        8: "dbgbvr8_el1" "dbgbcr8_el1", 9: "dbgbvr9_el1" "dbgbcr9_el1",
        10: "dbgbvr10_el1" "dbgbcr10_el1", 11: "dbgbvr11_el1" "dbgbcr11_el1",
        12: "dbgbvr12_el1" "dbgbcr12_el1", 13: "dbgbvr13_el1" "dbgbcr13_el1",
        14: "dbgbvr14_el1" "dbgbcr14_el1", 15: "dbgbvr15_el1" "dbgbcr15_el1"
    );
}

/// The doubleword the watchpoint tests watch.
static WATCHED: Shared<u64> = Shared::new(0);

/// Watchpoint 0 on WATCHED (all 8 bytes, EL1 and EL0) for loads (`lsc`
/// 0b01) or stores (0b10).
fn watch(lsc: u64) {
    msr!("dbgwvr0_el1", WATCHED.ptr() as u64);
    msr!("dbgwcr0_el1", 1 | (0b11 << 1) | (lsc << 3) | (0xff << 5));
}

/// Software step and a breakpoint at EL0 (run after test_el0, with the
/// EL0 page mapped): EC 0x32 / 0x30, whatever PSTATE.D and KDE.
fn test_debug_el0() {
    let sp = TV_EL0_DATA + 0x1000;
    STEPS.store(0, Relaxed);
    STEP_LIMIT.store(2, Relaxed);
    // Two nops stepped, then the handler ends stepping before `svc #1`.
    msr!("mdscr_el1", MDSCR_SS);
    // SAFETY: as in el0(); the step exceptions return to EL0.
    unsafe { run_el0_stepped(el0_va(48), sp, 0) };
    msr!("mdscr_el1", 0);
    check("step_el0_count", STEPS.load(Relaxed), 2);
    check("step_el0_first_elr", STEP_ELRS[0].load(Relaxed), el0_va(52));
    check(
        "step_el0_second_elr",
        STEP_ELRS[1].load(Relaxed),
        el0_va(56),
    );
    check("step_el0_esr", SYNC.esr.load(Relaxed), 0xcb00_0022);
    // A breakpoint for EL0 only (PMC = 0b10), on the first nop.
    msr!("dbgbvr0_el1", el0_va(48));
    msr!("dbgbcr0_el1", 1 | (0b10 << 1) | (0xf << 5));
    msr!("mdscr_el1", MDSCR_MDE);
    let (esr, _, elr) = expect_sync(|| el0(el0_va(48), sp, 0));
    msr!("dbgbcr0_el1", 0);
    msr!("mdscr_el1", 0);
    check("hw_breakpoint_el0_esr", esr, 0xc200_0022);
    check("hw_breakpoint_el0_elr", elr, el0_va(48));
}

fn test_watchpoints() {
    check("id_aa64dfr0_wrps", (mrs!("id_aa64dfr0_el1") >> 20) & 0xf, 3);
    let addr = WATCHED.ptr() as u64;
    msr!("mdscr_el1", MDSCR_MDE | MDSCR_KDE);
    // A store watchpoint: loads pass; a store to a watched byte is taken
    // before it is made, and made once the handler disarms it.
    watch(0b10);
    let before = SYNC.count.load(Relaxed);
    let v = debug_unmasked(|| call1(load_u64, addr));
    check(
        "watchpoint_store_only_lets_loads_pass",
        SYNC.count.load(Relaxed) - before + v,
        0,
    );
    let (esr, far, elr) = expect_sync(|| debug_unmasked(|| call2(store_u8, addr + 3, 0x5a)));
    check("watchpoint_store_esr", esr, 0xd600_0062);
    check("watchpoint_store_far", far, addr + 3);
    check("watchpoint_store_elr", elr, store_u8 as *const () as u64);
    check(
        "watchpoint_store_then_made",
        call1(load_u64, addr),
        0x5a00_0000,
    );
    // A load watchpoint: WnR clear.
    watch(0b01);
    let (esr, far, elr) = expect_sync(|| debug_unmasked(|| call1(load_u64, addr)));
    check("watchpoint_load_esr", esr, 0xd600_0022);
    check("watchpoint_load_far", far, addr);
    check("watchpoint_load_elr", elr, load_u64 as *const () as u64);
    // A load watchpoint linked (WT) to the highest breakpoint as a
    // linked context ID match on 0x42: taken only in that context.
    let ctx_bp = (mrs!("id_aa64dfr0_el1") >> 12) & 0xf;
    set_breakpoint(ctx_bp, 0x42, 1 | (0b11 << 1) | (0b0011 << 20));
    msr!("contextidr_el1", 0x43);
    msr!("dbgwvr0_el1", addr);
    let linked = 1 | (0b11 << 1) | (0b01 << 3) | (0xff << 5) | (1 << 20) | (ctx_bp << 16);
    msr!("dbgwcr0_el1", linked);
    let before = SYNC.count.load(Relaxed);
    debug_unmasked(|| call1(load_u64, addr));
    check(
        "linked_watchpoint_other_context",
        SYNC.count.load(Relaxed) - before,
        0,
    );
    msr!("contextidr_el1", 0x42);
    let (esr, far, _) = expect_sync(|| debug_unmasked(|| call1(load_u64, addr)));
    check("linked_watchpoint_in_context_esr", esr, 0xd600_0022);
    check("linked_watchpoint_in_context_far", far, addr);
    set_breakpoint(ctx_bp, 0, 0);
    msr!("contextidr_el1", 0);
    msr!("dbgwcr0_el1", 0);
}

fn test_aborts_el1() {
    // SAFETY (all below): loads and stores the tables make fault; the
    // handler resumes after them.
    let (esr, far, elr) = expect_sync(|| call1(load_u8, TV_INVALID + 0x123));
    check("dabt_l3_translation_esr", esr, 0x9600_0007);
    check("dabt_l3_translation_far", far, TV_INVALID + 0x123);
    check("dabt_l3_translation_elr", elr, load_u8 as *const () as u64);
    let (esr, far, _) = expect_sync(|| call2(store_u8, TV_INVALID + 0x45, 1));
    check("dabt_write_wnr_esr", esr, 0x9600_0047);
    check("dabt_write_wnr_far", far, TV_INVALID + 0x45);
    let (esr, far, _) = expect_sync(|| call1(load_u64, TV_OK + 0xffc));
    check("dabt_page_crossing_esr", esr, 0x9600_0007);
    check("dabt_page_crossing_far", far, TV_INVALID);
    let (esr, far, _) = expect_sync(|| call1(load_u8, TV_L2_INVALID + 8));
    check("dabt_l2_translation_esr", esr, 0x9600_0006);
    check("dabt_l2_translation_far", far, TV_L2_INVALID + 8);
    let (esr, _, _) = expect_sync(|| call1(load_u8, TV_L1_INVALID));
    check("dabt_l1_translation_esr", esr, 0x9600_0005);
    let (esr, far, _) = expect_sync(|| call1(load_u8, 0x0000_8000_0000_0010));
    check("dabt_outside_t0sz_l0_esr", esr, 0x9600_0004);
    check("dabt_outside_t0sz_l0_far", far, 0x0000_8000_0000_0010);
    let (esr, far, _) = expect_sync(|| call1(load_u8, TV_NOAF + 7));
    check("dabt_access_flag_esr", esr, 0x9600_000b);
    check("dabt_access_flag_far", far, TV_NOAF + 7);
    let (esr, far, _) = expect_sync(|| call2(store_u8, TV_RO + 9, 1));
    check("dabt_permission_write_esr", esr, 0x9600_004f);
    check("dabt_permission_write_far", far, TV_RO + 9);
    let before = SYNC.count.load(Relaxed);
    let v = call1(load_u8, TV_RO + 9);
    check(
        "read_only_page_reads",
        SYNC.count.load(Relaxed) - before + v,
        0,
    );
    let (esr, far, elr) = expect_sync(|| call2(call_addr_fn, TV_NOEXEC + 0x10, 0));
    check("iabt_l3_translation_esr", esr, 0x8600_0007);
    check("iabt_l3_translation_far", far, TV_NOEXEC + 0x10);
    check("iabt_l3_translation_elr", elr, TV_NOEXEC + 0x10);
    let (esr, far, _) = expect_sync(|| call2(call_addr_fn, TV_XN, 0));
    check("iabt_pxn_permission_esr", esr, 0x8600_000f);
    check("iabt_pxn_permission_far", far, TV_XN);
    // Nothing answers between the PL011 (4 KiB) and the RTC at 0x0901_0000.
    let (esr, far, _) = expect_sync(|| call1(load_u8, 0x0900_1000));
    check("dabt_unassigned_external_esr", esr, 0x9600_0010);
    check("dabt_unassigned_external_far", far, 0x0900_1000);
    test_unprivileged_and_pan();
}

/// EL1's unprivileged loads (LDTR*) have EL0's permissions, and with
/// PSTATE.PAN set EL1's own data accesses to a page EL0 can reach fault
/// (a permission fault, level 3, of the current EL) while LDTR* and
/// accesses to EL1's pages do not.
fn test_unprivileged_and_pan() {
    let faults = |f: &dyn Fn()| {
        let before = SYNC.count.load(Relaxed);
        f();
        SYNC.count.load(Relaxed) - before
    };
    let (esr, far, _) = expect_sync(|| call1(load_u8_unprivileged, TV_EL1_ONLY + 3));
    check("ldtr_of_el1_page_permission_esr", esr, 0x9600_000f);
    check("ldtr_of_el1_page_permission_far", far, TV_EL1_ONLY + 3);
    let n = faults(&|| {
        call1(load_u8_unprivileged, TV_EL0_DATA + 3);
    });
    check("ldtr_of_el0_page_reads", n, 0);
    // SAFETY: PSTATE.PAN only narrows what EL1 may access; this code, its
    // stack and the handler's data are EL1's pages.
    unsafe { set_pan(1) };
    let (esr, far, _) = expect_sync(|| call1(load_u8, TV_EL0_DATA + 5));
    check("pan_load_of_el0_page_permission_esr", esr, 0x9600_000f);
    check("pan_load_of_el0_page_permission_far", far, TV_EL0_DATA + 5);
    let (esr, _, _) = expect_sync(|| call2(store_u8, TV_EL0_DATA + 6, 1));
    check("pan_store_to_el0_page_permission_esr", esr, 0x9600_004f);
    let n = faults(&|| {
        call1(load_u8_unprivileged, TV_EL0_DATA + 5);
        call1(load_u8, TV_OK + 5);
    });
    check("pan_spares_ldtr_and_el1_pages", n, 0);
    // SAFETY: as above.
    unsafe { set_pan(0) };
    let n = faults(&|| {
        call1(load_u8, TV_EL0_DATA + 5);
    });
    check("pan_clear_load_of_el0_page_reads", n, 0);
}

fn test_el0() {
    let sp = TV_EL0_DATA + 0x1000;
    // SAFETY (all below): EL0 code on its own page; every exception it
    // takes comes back through `svc #1`.
    let (esr, far, elr) = expect_sync(|| el0(el0_va(0), sp, TV_EL1_ONLY + 0x30));
    check("el0_dabt_permission_esr", esr, 0x9200_000f);
    check("el0_dabt_permission_far", far, TV_EL1_ONLY + 0x30);
    check("el0_dabt_permission_elr", elr, el0_va(0));
    let (esr, far, _) = expect_sync(|| el0(el0_va(0), sp, TV_INVALID + 0x8));
    check("el0_dabt_translation_esr", esr, 0x9200_0007);
    check("el0_dabt_translation_far", far, TV_INVALID + 0x8);
    let before = SYNC.count.load(Relaxed);
    let v = el0(el0_va(0), sp, TV_EL0_DATA + 0x10);
    check(
        "el0_reads_el0_page",
        SYNC.count.load(Relaxed) - before + v,
        0,
    );
    let (esr, _, elr) = expect_sync(|| el0(el0_va(8), sp, 0));
    check("el0_mrs_el1_register_undefined", esr, 0x0200_0000);
    check("el0_mrs_el1_register_elr", elr, el0_va(8));
    let target = fn_addr(do_udf);
    let (esr, far, _) = expect_sync(|| el0(el0_va(16), sp, target));
    // Kernel RAM is a level-1 block with UXN.
    check("el0_iabt_uxn_block_esr", esr, 0x8200_000d);
    check("el0_iabt_uxn_block_far", far, target);
    let (esr, _, elr) = expect_sync(|| el0(el0_va(24), sp, 0));
    // With SCTLR_EL1.nTWI and UCT clear, EL0's WFI and CTR_EL0 read trap
    // to EL1 (EC 0x01 and 0x18) instead of running.
    let sctlr = mrs!("sctlr_el1");
    msr!("sctlr_el1", sctlr & !(1 << 16) & !(1 << 15));
    let (wfi_esr, _, wfi_elr) = expect_sync(|| el0(el0_va(32), sp, 0));
    let (ctr_esr, _, ctr_elr) = expect_sync(|| el0(el0_va(40), sp, 0));
    msr!("sctlr_el1", sctlr | (1 << 15));
    let before = SYNC.count.load(Relaxed);
    let ctr = el0(el0_va(40), sp, 0);
    let ctr_traps = SYNC.count.load(Relaxed) - before;
    msr!("sctlr_el1", sctlr);
    check("el0_wfi_trapped_esr", wfi_esr, 0x07e0_0000);
    check("el0_wfi_trapped_elr", wfi_elr, el0_va(32));
    check("el0_ctr_el0_trapped_esr", ctr_esr, 0x6232_c001);
    check("el0_ctr_el0_trapped_elr", ctr_elr, el0_va(40));
    check_that(
        "el0_ctr_el0_with_uct",
        ctr_traps == 0 && ctr != 0,
        ctr_traps,
        0,
    );
    check("el0_svc_esr", esr, 0x5600_0077);
    check("el0_svc_elr", elr, el0_va(28));
}

/// Arms the virtual timer to fire now and waits (masked) until it has.
fn vtimer_fire_now() {
    let now = mrs!("cntvct_el0");
    msr!("cntv_cval_el0", now);
    msr!("cntv_ctl_el0", 1);
    for _ in 0..1_000_000 {
        if mrs!("cntv_ctl_el0") & 4 != 0 {
            break;
        }
    }
}

fn test_unmask(name: &str, unmask: unsafe extern "C" fn() -> u64) {
    vtimer_fire_now();
    let before = IRQS.load(Relaxed);
    let at = call_ret(unmask);
    let taken = IRQS.load(Relaxed) - before;
    check_that(
        name,
        taken == 1 && IRQ_ELR.load(Relaxed) == at && IRQ_INTID.load(Relaxed) == 27,
        IRQ_ELR.load(Relaxed),
        at,
    );
}

fn test_interrupts() {
    test_unmask("irq_at_msr_daifclr", unmask_daifclr);
    test_unmask("irq_at_msr_daif", unmask_msr_daif);
    test_unmask("irq_at_eret_to_unmasked", unmask_eret);
    // WFI wakes with the interrupt masked, and takes nothing.
    vtimer_fire_now();
    let before = IRQS.load(Relaxed);
    call0(wfi_masked);
    check(
        "wfi_wakes_masked_without_taking",
        IRQS.load(Relaxed) - before,
        0,
    );
    let at = call_ret(unmask_daifclr);
    check(
        "pending_irq_taken_after_masked_wfi",
        IRQ_ELR.load(Relaxed),
        at,
    );
    // WFI with IRQs unmasked: taken after the WFI, virtual timer 10 ms out.
    let freq = mrs!("cntfrq_el0");
    check_that("cntfrq_nonzero", freq != 0, freq, 1);
    // t0 before arming: the deadline is at least 10 ms after it (long
    // enough for a host-timed machine to reach the WFI first).
    let t0 = mrs!("cntvct_el0");
    msr!("cntv_tval_el0", freq / 100);
    msr!("cntv_ctl_el0", 1);
    let before = IRQS.load(Relaxed);
    let at = call_ret(unmask_wfi);
    let t1 = mrs!("cntvct_el0");
    check_that(
        "irq_after_wfi_vtimer",
        IRQS.load(Relaxed) - before == 1 && IRQ_ELR.load(Relaxed) == at,
        IRQ_ELR.load(Relaxed),
        at,
    );
    check_that(
        "vtimer_waited_its_time",
        t1 - t0 >= freq / 100,
        t1 - t0,
        freq / 100,
    );
    // The EL1 physical timer, PPI 30.
    msr!("cntp_tval_el0", freq / 1000);
    msr!("cntp_ctl_el0", 1);
    let before = IRQS.load(Relaxed);
    for _ in 0..100 {
        call_ret(unmask_wfi);
        if IRQS.load(Relaxed) != before {
            break;
        }
    }
    check_that(
        "ptimer_irq_ppi30",
        IRQS.load(Relaxed) - before == 1 && IRQ_INTID.load(Relaxed) == 30,
        IRQ_INTID.load(Relaxed),
        30,
    );
    // An SGI to itself through ICC_SGI1R_EL1 (target list: Aff0 0).
    let before = IRQS.load(Relaxed);
    msr!("s3_0_c12_c11_5", (5 << 24) | 1);
    call_ret(unmask_daifclr);
    check_that(
        "sgi_to_self",
        IRQS.load(Relaxed) - before == 1 && IRQ_INTID.load(Relaxed) == 5,
        IRQ_INTID.load(Relaxed),
        5,
    );
    // CPU_SUSPEND (standby) returns once an interrupt is pending.
    msr!("cntv_tval_el0", freq / 1000);
    msr!("cntv_ctl_el0", 1);
    let r = psci(PSCI_CPU_SUSPEND, 0, 0, 0);
    check("psci_cpu_suspend_standby", r as u64, 0);
    call_ret(unmask_daifclr);
}

/// The GIC as a kernel polls it, with IRQs masked: pending and active
/// state in the SGI/PPI frame, acknowledge and running priority, priority
/// drop and deactivation (EOImode 0 and 1), priority masking and order.
fn test_gic() {
    let Some(sgi) = gic::sgi_frame(0) else {
        return;
    };
    let (ispendr, icpendr, isactiver) = (sgi + 0x200, sgi + 0x280, sgi + 0x300);
    let (isenabler, icenabler) = (sgi + 0x100, sgi + 0x180);
    let pend = |intid: u32| gic::w32(ispendr, 1 << intid);
    let iar = || mrs!("s3_0_c12_c12_0") & 0xff_ffff;
    let eoi = |intid: u64| msr!("s3_0_c12_c12_1", intid);
    let rpr = || mrs!("s3_0_c12_c11_3");
    msr!("s3_0_c4_c6_0", 0xff);
    check("gic_pmr_implemented_bits", mrs!("s3_0_c4_c6_0"), 0xf8);
    check("gic_nothing_pending_spurious", iar(), 1023);
    check("gic_rpr_idle", rpr(), 0xff);
    // SGI 7 set pending by its ISPENDR bit, acknowledged: active, at its
    // priority; EOI (EOImode 0) drops the priority and deactivates it.
    pend(7);
    check(
        "gic_ispendr_reads_pending",
        u64::from(gic::r32(ispendr) & (1 << 7)),
        1 << 7,
    );
    check("gic_hppir_pending", mrs!("s3_0_c12_c12_2") & 0xff_ffff, 7);
    check("gic_iar_acknowledges", iar(), 7);
    check(
        "gic_acknowledged_active_not_pending",
        u64::from(gic::r32(isactiver) >> 7 & 1) << 1 | u64::from(gic::r32(ispendr) >> 7 & 1),
        0b10,
    );
    check("gic_rpr_running", rpr(), 0x80);
    eoi(7);
    check("gic_eoi_drops_priority", rpr(), 0xff);
    check(
        "gic_eoi_deactivates",
        u64::from(gic::r32(isactiver) & (1 << 7)),
        0,
    );
    // EOImode 1: EOI only drops the priority, DIR deactivates.
    let ctlr = mrs!("s3_0_c12_c12_4");
    msr!("s3_0_c12_c12_4", ctlr | 2);
    pend(8);
    let id = iar();
    eoi(id);
    check("gic_eoimode1_ack", id, 8);
    check("gic_eoimode1_drop", rpr(), 0xff);
    check(
        "gic_eoimode1_still_active",
        u64::from(gic::r32(isactiver) & (1 << 8)),
        1 << 8,
    );
    msr!("s3_0_c12_c11_1", 8); // ICC_DIR_EL1
    check(
        "gic_dir_deactivates",
        u64::from(gic::r32(isactiver) & (1 << 8)),
        0,
    );
    msr!("s3_0_c12_c12_4", ctlr);
    // PMR at the interrupt's priority masks it; opened, it is taken.
    msr!("s3_0_c4_c6_0", 0x80);
    pend(9);
    check("gic_pmr_masks_equal_priority", iar(), 1023);
    msr!("s3_0_c4_c6_0", 0xff);
    let id = iar();
    eoi(id);
    check("gic_pmr_opened", id, 9);
    // Disabled: pending but never signalled; ICPENDR clears it.
    gic::w32(icenabler, 1 << 10);
    pend(10);
    check("gic_disabled_not_signalled", iar(), 1023);
    gic::w32(icpendr, 1 << 10);
    check(
        "gic_icpendr_clears",
        u64::from(gic::r32(ispendr) & (1 << 10)),
        0,
    );
    gic::w32(isenabler, 1 << 10);
    check("gic_cleared_not_signalled", iar(), 1023);
    // The higher priority (lower value) first; the lower one does not
    // preempt the running one and waits for its EOI.
    let prio = sgi + 0x400 + 12; // IPRIORITYR bytes of SGIs 12..15
    let saved = gic::r32(prio);
    gic::w32(prio, 0x8080_a040);
    pend(13);
    pend(12);
    let first = iar();
    check("gic_priority_order_first", first, 12);
    check("gic_rpr_of_first", rpr(), 0x40);
    check("gic_lower_priority_waits", iar(), 1023);
    eoi(first);
    let second = iar();
    eoi(second);
    check("gic_priority_order_second", second, 13);
    gic::w32(prio, saved);
    test_gic_spi();
}

/// A shared peripheral interrupt no device drives (INTID 40), set up and
/// made pending through the distributor: routed to this CPU by
/// GICD_IROUTER, group 1, its trigger configuration kept.
fn test_gic_spi() {
    const GICD: u64 = 0x0800_0000;
    const SPI: u32 = 40;
    let (word, bit) = (u64::from(SPI / 32) * 4, 1 << (SPI % 32));
    let typer = gic::r32(GICD + 0x4);
    // ITLinesNumber: 256 INTIDs on virt.
    check("gicd_typer_itlines", u64::from(typer & 0x1f), 7);
    check(
        "gicd_ctlr_are_group1",
        u64::from(gic::r32(GICD) & 0x12),
        0x12,
    );
    // SAFETY: GICD_IROUTER<n> is a 64-bit register of the virt board.
    unsafe { write_volatile((GICD + 0x6000 + 8 * u64::from(SPI)) as *mut u64, 0) };
    gic::w32(GICD + 0x80 + word, gic::r32(GICD + 0x80 + word) | bit);
    let prio = GICD + 0x400 + u64::from(SPI & !3);
    gic::w32(prio, 0x8080_8080);
    // ICFGR: two bits per INTID, 0b10 for edge.
    let cfg = GICD + 0xc00 + u64::from(SPI / 16) * 4;
    let shift = (SPI % 16) * 2 + 1;
    gic::w32(cfg, gic::r32(cfg) | (1 << shift));
    check(
        "gicd_icfgr_edge_reads_back",
        u64::from(gic::r32(cfg) >> shift & 1),
        1,
    );
    gic::w32(GICD + 0x100 + word, bit);
    check(
        "gicd_isenabler_reads_enabled",
        u64::from(gic::r32(GICD + 0x100 + word) & bit),
        u64::from(bit),
    );
    gic::w32(GICD + 0x200 + word, bit);
    let id = mrs!("s3_0_c12_c12_0") & 0xff_ffff;
    check("gicd_spi_pending_taken", id, u64::from(SPI));
    check(
        "gicd_spi_active_after_ack",
        u64::from(gic::r32(GICD + 0x300 + word) & bit),
        u64::from(bit),
    );
    msr!("s3_0_c12_c12_1", id);
    check(
        "gicd_spi_inactive_after_eoi",
        u64::from(gic::r32(GICD + 0x300 + word) & bit),
        0,
    );
    gic::w32(GICD + 0x180 + word, bit);
}

/// Waits up to 2 s of counter time for `cond`.
fn wait_for(mut cond: impl FnMut() -> bool) -> bool {
    let freq = mrs!("cntfrq_el0");
    let start = mrs!("cntvct_el0");
    while mrs!("cntvct_el0") - start < 2 * freq {
        if cond() {
            return true;
        }
        core::hint::spin_loop();
    }
    cond()
}

/// Rounds each CPU makes through the contended lock.
const ROUNDS: u32 = 3000;
static START: AtomicU32 = AtomicU32::new(0);
static DONE: AtomicU32 = AtomicU32::new(0);
static LOCK: AtomicU32 = AtomicU32::new(0);
/// Incremented under LOCK with a plain read and write.
static GUARDED: Shared<u64> = Shared::new(0);
/// Incremented with LSE `ldadd`.
static LSE_COUNT: Shared<u32> = Shared::new(0);

/// This CPU's share of the contention test: ROUNDS increments under a
/// load-exclusive/store-exclusive spinlock, ROUNDS with LSE atomics.
fn contend() {
    for _ in 0..ROUNDS {
        while LOCK
            .compare_exchange_weak(0, 1, Ordering::Acquire, Relaxed)
            .is_err()
        {
            core::hint::spin_loop();
        }
        // SAFETY: LOCK is held.
        unsafe { write_volatile(GUARDED.ptr(), read_volatile(GUARDED.ptr()) + 1) };
        LOCK.store(0, Ordering::Release);
        // SAFETY: `ldadd w1, w2, [x0]` (LSE, which -cpu max has) on a
        // 4-byte aligned word.
        unsafe { asm!(".inst 0xb8210002", in("x0") LSE_COUNT.ptr(), in("x1") 1u64, out("x2") _) };
    }
}

fn test_smp(dtb: &dt::Tree, ncpus: usize) {
    let regs = dtb.cpu_regs();
    let mpidr0 = mrs!("mpidr_el1") & 0xff_00ff_ffff;
    check("mpidr_cpu0_matches_dt", mpidr0, regs[0]);
    check_that("dt_has_two_or_more_cpus", ncpus >= 2, ncpus as u64, 2);
    if ncpus < 2 {
        return;
    }
    check(
        "psci_affinity_info_off",
        psci(PSCI_AFFINITY_INFO, regs[1], 0, 0) as u64,
        1,
    );
    check(
        "psci_affinity_info_invalid",
        psci(PSCI_AFFINITY_INFO, 0xff_0000, 0, 0) as u64,
        -2i64 as u64,
    );
    for (i, &mpidr) in regs.iter().enumerate().take(ncpus).skip(1) {
        let r = psci(PSCI_CPU_ON, mpidr, fn_addr(secondary_entry), i as u64);
        check_that("psci_cpu_on", r == 0, r as u64, 0);
    }
    let all = wait_for(|| (1..ncpus).all(|i| CPU_READY[i].load(Relaxed) != 0));
    check_that("secondaries_started", all, 0, 1);
    check(
        "psci_affinity_info_on",
        psci(PSCI_AFFINITY_INFO, regs[1], 0, 0) as u64,
        0,
    );
    check(
        "psci_cpu_on_already_on",
        psci(PSCI_CPU_ON, regs[1], fn_addr(secondary_entry), 1) as u64,
        -4i64 as u64,
    );
    let mut distinct = true;
    for i in 1..ncpus {
        let m = CPU_MPIDR[i].load(Relaxed) & 0xff_00ff_ffff;
        distinct &= m == regs[i];
    }
    check_that("mpidr_all_cpus_match_dt", distinct, 0, 1);
    START.store(1, Ordering::Release);
    contend();
    let all = wait_for(|| DONE.load(Ordering::Acquire) == ncpus as u32 - 1);
    let want = u64::from(ROUNDS) * ncpus as u64;
    // SAFETY: every CPU is done with them.
    let (guarded, lse) = unsafe { (read_volatile(GUARDED.ptr()), read_volatile(LSE_COUNT.ptr())) };
    check_that(
        "exclusives_spinlock_contended",
        all && guarded == want,
        guarded,
        want,
    );
    check("lse_ldadd_contended", u64::from(lse), want);
    START.store(2, Ordering::Release);
    // SGI 3 to CPU 1 only (target list).
    let aff = regs[1];
    let sgi = |intid: u64, list: u64| {
        (intid << 24) | ((aff >> 16 & 0xff) << 32) | ((aff >> 8 & 0xff) << 16) | list
    };
    msr!("s3_0_c12_c11_5", sgi(3, 1 << (aff & 0xf)));
    let got = wait_for(|| CPU_SGIS[1].load(Relaxed) == 1);
    check_that(
        "sgi_target_list",
        got && CPU_LAST_SGI[1].load(Relaxed) == 3,
        CPU_LAST_SGI[1].load(Relaxed) as u64,
        3,
    );
    let others = (2..ncpus).map(|i| CPU_SGIS[i].load(Relaxed)).sum::<u32>();
    check("sgi_target_list_only_target", others as u64, 0);
    // SGI 4 to every CPU but this one (IRM).
    let before = IRQS.load(Relaxed);
    msr!("s3_0_c12_c11_5", (4 << 24) | (1 << 40));
    let got = wait_for(|| (1..ncpus).all(|i| CPU_LAST_SGI[i].load(Relaxed) == 4));
    check_that("sgi_irm_all_but_self", got, 0, 1);
    call_ret(unmask_daifclr);
    check("sgi_irm_not_to_self", IRQS.load(Relaxed) - before, 0);
    // CPU 1 turns itself off on SGI 7.
    msr!("s3_0_c12_c11_5", sgi(7, 1 << (aff & 0xf)));
    let off = wait_for(|| psci(PSCI_AFFINITY_INFO, regs[1], 0, 0) == 1);
    check_that("psci_affinity_info_after_cpu_off", off, 0, 1);
    // On again: PSCI brings it up with the MMU off, though it went off
    // with the MMU on.
    CPU_READY[1].store(0, Relaxed);
    let r = psci(PSCI_CPU_ON, regs[1], fn_addr(secondary_entry), 1);
    let up = r == 0 && wait_for(|| CPU_READY[1].load(Relaxed) != 0);
    let sctlr = CPU_SCTLR_AT_ENTRY[1].load(Relaxed);
    check_that("psci_cpu_on_again_mmu_off", up && sctlr & 1 == 0, sctlr, 0);
}

fn test_psci() {
    let v = psci(PSCI_VERSION, 0, 0, 0) as u64;
    check_that("psci_version_1_0_or_later", v >= 0x1_0000, v, 0x1_0000);
    for (name, f) in [
        ("psci_features_version", PSCI_VERSION),
        ("psci_features_cpu_suspend", PSCI_CPU_SUSPEND),
        ("psci_features_cpu_off", PSCI_CPU_OFF),
        ("psci_features_cpu_on", PSCI_CPU_ON),
        ("psci_features_affinity_info", PSCI_AFFINITY_INFO),
        ("psci_features_migrate_info_type", PSCI_MIGRATE_INFO_TYPE),
        ("psci_features_system_off", PSCI_SYSTEM_OFF),
        ("psci_features_system_reset", PSCI_SYSTEM_RESET),
        ("psci_features_features", PSCI_FEATURES),
    ] {
        let r = psci(PSCI_FEATURES, f, 0, 0);
        check_that(name, r >= 0, r as u64, 0);
    }
    check(
        "psci_features_unknown",
        psci(PSCI_FEATURES, 0x8400_00ff, 0, 0) as u64,
        -1i64 as u64,
    );
    check(
        "psci_migrate_info_type",
        psci(PSCI_MIGRATE_INFO_TYPE, 0, 0, 0) as u64,
        2,
    );
}

fn test_devices(dtb: &dt::Tree) {
    // virtio-mmio transports with no device behind them.
    let mut absent = true;
    for i in 0..32u64 {
        let base = 0x0a00_0000 + i * 0x200;
        // SAFETY: device reads through the identity device mapping.
        let (magic, version, id) = (load_u32(base), load_u32(base + 4), load_u32(base + 8));
        absent &= magic == 0x7472_6976 && (1..=2).contains(&version) && id == 0;
    }
    check_that("virtio_mmio_transports_absent", absent, 0, 1);
    // PL031 RTC: PrimeCell identification and its device tree node.
    let mut ids = 0u64;
    for (i, want) in [0x31u64, 0x10, 0x14, 0x00, 0x0d, 0xf0, 0x05, 0xb1]
        .into_iter()
        .enumerate()
    {
        let got = load_u32(0x0901_0fe0 + 4 * i as u64) & 0xff;
        ids |= u64::from(got == want) << i;
    }
    check("pl031_primecell_ids", ids, 0xff);
    check_that(
        "pl031_in_device_tree",
        dtb.has_compatible("arm,pl031"),
        0,
        1,
    );
    let dr = load_u32(0x0901_0000);
    check_that("pl031_counts_seconds", dr > 0, dr, 1);
    // A PMU is advertised in the ID registers exactly when the device
    // tree lists one.
    let pmuver = (mrs!("id_aa64dfr0_el1") >> 8) & 0xf;
    let in_dt = dtb.has_compatible("arm,armv8-pmuv3");
    // Without a PMU its registers are UNDEFINED; with one they read.
    let (esr, _, _) = expect_sync(|| call_ret(read_pmcr));
    let want = if pmuver == 0 { 0x0200_0000 } else { 0 };
    check("pmu_registers_follow_pmuver", esr, want);
    check_that(
        "pmu_id_registers_match_device_tree",
        (pmuver != 0 && pmuver != 0xf) == in_dt,
        pmuver,
        u64::from(in_dt),
    );
}

/// Reads the 32-bit device register at `addr` (through the identity
/// device mapping).
fn load_u32(addr: u64) -> u64 {
    // SAFETY: callers name device registers of the virt board.
    u64::from(unsafe { read_volatile(addr as *const u32) })
}

/// PSCI SYSTEM_OFF, which does not return.
fn power_off() -> ! {
    psci(PSCI_SYSTEM_OFF, 0, 0, 0);
    loop {
        // SAFETY: waits for an event that will not come.
        unsafe { asm!("wfe") };
    }
}

/// The boot CPU.
#[unsafe(no_mangle)]
extern "C" fn kmain(x0: u64) -> ! {
    puts("virt-conformance: start\n");
    // QEMU leaves x0 zero for ELF images and puts the tree at RAM base.
    let tree = dt::Tree::at(x0).or_else(|| dt::Tree::at(0x4000_0000));
    let Some(tree) = tree else {
        puts("FAIL device_tree: none found\n");
        power_off()
    };
    let ncpus = tree.cpu_regs().iter().filter(|&&r| r != u64::MAX).count();
    gic::init_distributor();
    gic::init_cpu(0);
    test_psci();
    test_undefined();
    test_brk_svc();
    test_fp_trap();
    test_debug();
    mmu_on();
    test_aborts_el1();
    test_alignment();
    test_el0();
    test_debug_el0();
    test_interrupts();
    test_gic();
    test_devices(&tree);
    test_smp(&tree, ncpus);
    puts("virt-conformance: ");
    put_dec(u64::from(PASSED.load(Relaxed)));
    puts(" passed, ");
    put_dec(u64::from(FAILED.load(Relaxed)));
    puts(" failed\n");
    power_off()
}

/// A secondary CPU, started by PSCI CPU_ON with its number as context.
#[unsafe(no_mangle)]
extern "C" fn secondary_main(cpu: u64) -> ! {
    let cpu = (cpu as usize).min(MAX_CPUS - 1);
    CPU_SCTLR_AT_ENTRY[cpu].store(mrs!("sctlr_el1"), Relaxed);
    CPU_MPIDR[cpu].store(mrs!("mpidr_el1"), Relaxed);
    gic::init_cpu(cpu_index(mrs!("mpidr_el1")));
    mmu_enable();
    CPU_READY[cpu].store(1, Relaxed);
    while START.load(Ordering::Acquire) == 0 {
        core::hint::spin_loop();
    }
    // START is 2 once the contention test is over (a CPU turned on again).
    if START.load(Ordering::Acquire) == 1 {
        contend();
        DONE.fetch_add(1, Ordering::AcqRel);
    }
    loop {
        call_ret(unmask_wfi);
    }
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    puts("FAIL panic\n");
    power_off()
}
