//! The GICv3 (arm-gic): distributor and redistributors over MMIO (32-bit
//! `LDR`/`STR` through safe-mmio), the CPU interface through the ICC system
//! registers.

use apflab_abi::memory_map::{APF_READY_PPI, GICD_BASE, GICR_BASE, VTIMER_PPI};
use arm_gic::gicv3::registers::{Gicd, GicrSgi};
use arm_gic::gicv3::{GicCpuInterface, GicV3};
use arm_gic::{IntId, UniqueMmioPointer};
use core::ptr::NonNull;
use spin::mutex::SpinMutex;

/// Priority of every interrupt the kernel uses (all equal: no nesting).
const PRIORITY: u8 = 0x80;

/// The virtual timer's interrupt.
pub const VTIMER: IntId = IntId::ppi(VTIMER_PPI - 16);
/// The async PF "page ready" interrupt.
pub const APF_READY: IntId = IntId::ppi(APF_READY_PPI - 16);

struct Gic(Option<GicV3<'static>>);

// SAFETY: the GIC registers are reachable from every CPU; the driver is only
// used under the SpinMutex below.
unsafe impl Send for Gic {}

static GIC: SpinMutex<Gic> = SpinMutex::new(Gic(None));

/// Initialises the distributor and all `cpus` redistributors (boot CPU).
pub fn init(cpus: usize) {
    let gicd = NonNull::new(GICD_BASE as *mut Gicd).expect("not null");
    let gicr = NonNull::new(GICR_BASE as *mut GicrSgi).expect("not null");
    // SAFETY: GICD_BASE/GICR_BASE are the `virt` board's GICv3 frames, mapped
    // as device memory for `cpus` redistributors; this is the only driver.
    let gic = unsafe { GicV3::new(UniqueMmioPointer::new(gicd), gicr, cpus) }
        .unwrap_or_else(|e| panic!("GICv3 at {GICD_BASE:#x}: {e}"));
    let mut g = GIC.lock();
    let gic = g.0.insert(gic);
    gic.setup(0);
}

/// Wakes this CPU's redistributor, enables its CPU interface and the
/// interrupts the kernel uses (every CPU, including the boot CPU).
pub fn init_cpu(cpu: usize) {
    let mut g = GIC.lock();
    let gic = g.0.as_mut().expect("gic::init ran");
    if cpu != 0 {
        gic.init_cpu(cpu);
        GicCpuInterface::enable_group1(true);
    }
    GicCpuInterface::set_priority_mask(0xff);
    gic.set_interrupt_priority(VTIMER, Some(cpu), PRIORITY)
        .and_then(|()| gic.enable_interrupt(VTIMER, Some(cpu), true))
        .unwrap_or_else(|e| panic!("GIC cpu {cpu}: cannot enable the virtual timer: {e}"));
}

/// Enables the "page ready" interrupt on this CPU.
pub fn enable_apf_ready(cpu: usize) {
    let mut g = GIC.lock();
    let gic = g.0.as_mut().expect("gic::init ran");
    gic.set_interrupt_priority(APF_READY, Some(cpu), PRIORITY)
        .and_then(|()| gic.enable_interrupt(APF_READY, Some(cpu), true))
        .unwrap_or_else(|e| panic!("GIC cpu {cpu}: cannot enable the page-ready PPI: {e}"));
}

/// Acknowledges the highest-priority pending group 1 interrupt.
pub fn acknowledge() -> Option<IntId> {
    GicCpuInterface::get_and_acknowledge_interrupt(arm_gic::InterruptGroup::Group1)
}

/// Ends (priority drop + deactivate) an acknowledged interrupt.
pub fn end(intid: IntId) {
    GicCpuInterface::end_interrupt(intid, arm_gic::InterruptGroup::Group1);
}
