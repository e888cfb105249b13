//! The EL1 virtual timer (CNTV_*), used one-shot: each CPU programs its
//! next deadline (end of the time slice, earliest sleeper or next request
//! arrival) into CNTV_CVAL_EL0.

use crate::arch;
use crate::config::Config;
use aarch64_cpu::registers::{CNTV_CTL_EL0, CNTV_CVAL_EL0, Writeable};
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Time slice in counter ticks.
static SLICE_TICKS: AtomicU64 = AtomicU64::new(0);

/// Converts the configured time slice to ticks (boot CPU, once).
pub fn init(config: &Config) {
    let ticks = arch::ns_to_ticks(config.timeslice_us * 1000).max(1);
    SLICE_TICKS.store(ticks, Relaxed);
}

/// The time slice in counter ticks.
pub fn slice_ticks() -> u64 {
    SLICE_TICKS.load(Relaxed)
}

/// Arms this CPU's virtual timer to fire at counter value `deadline`
/// (immediately if it has passed).
pub fn arm(deadline: u64) {
    CNTV_CVAL_EL0.set(deadline);
    CNTV_CTL_EL0.write(CNTV_CTL_EL0::ENABLE::SET + CNTV_CTL_EL0::IMASK::CLEAR);
}

/// Stops this CPU's virtual timer (its interrupt line drops).
pub fn disarm() {
    CNTV_CTL_EL0.write(CNTV_CTL_EL0::ENABLE::CLEAR + CNTV_CTL_EL0::IMASK::SET);
}
