//! GICv3 bring-up as a kernel for `virt` does it: distributor with
//! affinity routing and group 1, each CPU's redistributor (found by
//! affinity in GICR_TYPER) awake with SGIs/PPIs in group 1 and enabled,
//! and the system-register CPU interface.

use core::ptr::{read_volatile, write_volatile};

const GICD: u64 = 0x0800_0000;
const GICR: u64 = 0x080a_0000;
const GICR_STRIDE: u64 = 0x2_0000;
const SGI_BASE: u64 = 0x1_0000;

pub fn r32(a: u64) -> u32 {
    // SAFETY: a GIC register of the virt board.
    unsafe { read_volatile(a as *const u32) }
}

pub fn w32(a: u64, v: u32) {
    // SAFETY: a GIC register of the virt board.
    unsafe { write_volatile(a as *mut u32, v) }
}

/// GICD_CTLR: ARE and EnableGrp1 (single security state).
pub fn init_distributor() {
    w32(GICD, (1 << 4) | (1 << 1));
}

/// The redistributor whose GICR_TYPER affinity is `aff0` (Aff1..3 = 0).
fn redistributor(aff0: usize) -> Option<u64> {
    for i in 0..8u64 {
        let rd = GICR + i * GICR_STRIDE;
        let typer_hi = r32(rd + 0xc);
        if typer_hi as usize == aff0 {
            return Some(rd);
        }
        if r32(rd + 0x8) & (1 << 4) != 0 {
            break;
        }
    }
    None
}

/// The SGI/PPI frame of the redistributor whose affinity is `aff0`.
pub fn sgi_frame(aff0: usize) -> Option<u64> {
    redistributor(aff0).map(|rd| rd + SGI_BASE)
}

/// Brings up the redistributor and CPU interface of the calling CPU.
pub fn init_cpu(aff0: usize) {
    let Some(rd) = redistributor(aff0) else {
        crate::puts("FAIL gicr_typer_affinity: no redistributor for this CPU\n");
        return;
    };
    // GICR_WAKER: clear ProcessorSleep, wait for ChildrenAsleep to clear.
    w32(rd + 0x14, r32(rd + 0x14) & !(1 << 1));
    while r32(rd + 0x14) & (1 << 2) != 0 {}
    let sgi = rd + SGI_BASE;
    w32(sgi + 0x80, u32::MAX); // IGROUPR0: all group 1
    for i in 0..8 {
        w32(sgi + 0x400 + 4 * i, 0x8080_8080); // IPRIORITYR
    }
    // SGIs 0-15, PPIs 27 (virtual timer) and 30 (physical timer).
    w32(sgi + 0x100, 0xffff | (1 << 27) | (1 << 30));
    // SAFETY: the GICv3 CPU interface at EL1: SRE on, PMR open, group 1 on.
    unsafe {
        core::arch::asm!(
            "mrs {t}, s3_0_c12_c12_5",
            "orr {t}, {t}, #1",
            "msr s3_0_c12_c12_5, {t}",
            "isb",
            "mov {t}, #0xff",
            "msr s3_0_c4_c6_0, {t}",
            "mov {t}, #1",
            "msr s3_0_c12_c12_7, {t}",
            "isb",
            t = out(reg) _,
        );
    }
}
