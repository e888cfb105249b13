//! The generic timer as the emu backend presents it: a counter derived from
//! virtual time and the two EL1 timers (virtual and physical) per vCPU.
//!
//! The counter runs at [`CNTFRQ_HZ`] = 62.5 MHz, QEMU's long-standing
//! default, chosen because one tick is exactly 16 ns: conversions between
//! virtual nanoseconds and ticks are exact integer arithmetic, so the
//! counter is deterministic and round-trips. CNTVOFF is 0 (virtual count =
//! physical count).

use apflab_abi::memory_map::{PTIMER_PPI, VTIMER_PPI};

use apflab_hypervisor::arch::{SysRegId, sysreg};
use serde::{Deserialize, Serialize};

/// Counter frequency.
pub const CNTFRQ_HZ: u64 = 62_500_000;
/// Nanoseconds per counter tick.
pub const NS_PER_TICK: u64 = 1_000_000_000 / CNTFRQ_HZ;

/// CNTV_CTL_EL0 bits.
const CTL_ENABLE: u64 = 1 << 0;
const CTL_IMASK: u64 = 1 << 1;
const CTL_ISTATUS: u64 = 1 << 2;

/// Counter value at virtual time `ns`.
pub const fn ticks_at(ns: u64) -> u64 {
    ns / NS_PER_TICK
}

/// Virtual time at which the counter reaches `ticks`.
pub const fn ns_at(ticks: u64) -> u64 {
    ticks.saturating_mul(NS_PER_TICK)
}

/// The registers of one EL1 timer (virtual or physical).
struct TimerRegs {
    ctl: SysRegId,
    cval: SysRegId,
    tval: SysRegId,
}

const VIRTUAL: TimerRegs = TimerRegs {
    ctl: sysreg::CNTV_CTL_EL0,
    cval: sysreg::CNTV_CVAL_EL0,
    tval: sysreg::CNTV_TVAL_EL0,
};
const PHYSICAL: TimerRegs = TimerRegs {
    ctl: sysreg::CNTP_CTL_EL0,
    cval: sysreg::CNTP_CVAL_EL0,
    tval: sysreg::CNTP_TVAL_EL0,
};

/// One comparator: CTL and CVAL of an EL1 timer. Both timers compare
/// against the same count (CNTVOFF is 0).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
struct Comparator {
    ctl: u64,
    cval: u64,
}

impl Comparator {
    /// Whether the timer condition is met at `now_ns` (ISTATUS).
    fn condition(&self, now_ns: u64) -> bool {
        self.ctl & CTL_ENABLE != 0 && ticks_at(now_ns) >= self.cval
    }

    fn irq_level(&self, now_ns: u64) -> bool {
        self.condition(now_ns) && self.ctl & CTL_IMASK == 0
    }

    fn deadline_ns(&self, now_ns: u64) -> Option<u64> {
        if self.ctl & CTL_ENABLE == 0 || self.ctl & CTL_IMASK != 0 || self.condition(now_ns) {
            return None;
        }
        Some(ns_at(self.cval))
    }

    fn read(&self, regs: &TimerRegs, reg: SysRegId, now_ns: u64) -> Option<u64> {
        Some(if reg == regs.ctl {
            (self.ctl & (CTL_ENABLE | CTL_IMASK))
                | if self.condition(now_ns) {
                    CTL_ISTATUS
                } else {
                    0
                }
        } else if reg == regs.cval {
            self.cval
        } else if reg == regs.tval {
            // TVAL is the signed 32-bit distance to CVAL.
            u64::from(self.cval.wrapping_sub(ticks_at(now_ns)) as u32)
        } else {
            return None;
        })
    }

    fn write(&mut self, regs: &TimerRegs, reg: SysRegId, value: u64, now_ns: u64) -> bool {
        if reg == regs.ctl {
            self.ctl = value & (CTL_ENABLE | CTL_IMASK);
        } else if reg == regs.cval {
            self.cval = value;
        } else if reg == regs.tval {
            let delta = i64::from(value as u32 as i32);
            self.cval = ticks_at(now_ns).wrapping_add_signed(delta);
        } else {
            return false;
        }
        true
    }
}

/// One vCPU's EL1 timers: the virtual timer (PPI [`VTIMER_PPI`]) and the
/// physical timer (PPI [`PTIMER_PPI`]), as the device tree lists them.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct CpuTimers {
    virt: Comparator,
    phys: Comparator,
}

impl CpuTimers {
    /// Levels of the timers' interrupt outputs at `now_ns`: (INTID, level)
    /// for the virtual and the physical timer.
    pub fn irq_levels(&self, now_ns: u64) -> [(u32, bool); 2] {
        [
            (VTIMER_PPI, self.virt.irq_level(now_ns)),
            (PTIMER_PPI, self.phys.irq_level(now_ns)),
        ]
    }

    /// Earliest virtual time at which an output will rise, if one is
    /// enabled, unmasked and not already high.
    pub fn deadline_ns(&self, now_ns: u64) -> Option<u64> {
        [self.virt.deadline_ns(now_ns), self.phys.deadline_ns(now_ns)]
            .into_iter()
            .flatten()
            .min()
    }

    /// Reads a counter/timer register at `now_ns`; `None` if not one of
    /// them.
    pub fn read(&self, reg: SysRegId, now_ns: u64) -> Option<u64> {
        match reg {
            sysreg::CNTFRQ_EL0 => Some(CNTFRQ_HZ),
            sysreg::CNTVCT_EL0
            | sysreg::CNTPCT_EL0
            | sysreg::CNTVCTSS_EL0
            | sysreg::CNTPCTSS_EL0 => Some(ticks_at(now_ns)),
            _ => self
                .virt
                .read(&VIRTUAL, reg, now_ns)
                .or_else(|| self.phys.read(&PHYSICAL, reg, now_ns)),
        }
    }

    /// Writes a timer register at `now_ns`; false if not one of them (the
    /// counters and CNTFRQ are read-only at EL1 and EL0: writes ignored).
    pub fn write(&mut self, reg: SysRegId, value: u64, now_ns: u64) -> bool {
        match reg {
            sysreg::CNTFRQ_EL0
            | sysreg::CNTVCT_EL0
            | sysreg::CNTPCT_EL0
            | sysreg::CNTVCTSS_EL0
            | sysreg::CNTPCTSS_EL0 => true,
            _ => {
                self.virt.write(&VIRTUAL, reg, value, now_ns)
                    || self.phys.write(&PHYSICAL, reg, value, now_ns)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tval_programs_a_deadline_in_ticks() {
        let mut t = CpuTimers::default();
        let now = 1_000_000; // 1 ms
        assert!(t.write(sysreg::CNTV_TVAL_EL0, 625, now)); // 10 us
        assert!(t.write(sysreg::CNTV_CTL_EL0, 1, now));
        assert_eq!(t.deadline_ns(now), Some(1_010_000));
        assert!(!t.irq_levels(1_009_999)[0].1);
        assert!(t.irq_levels(1_010_000)[0].1);
        assert_eq!(t.read(sysreg::CNTV_CTL_EL0, 1_010_000), Some(0b101));
        // Past the deadline TVAL reads negative.
        assert_eq!(
            t.read(sysreg::CNTV_TVAL_EL0, 1_010_016),
            Some(u64::from(u32::MAX))
        );
        t.write(sysreg::CNTV_CTL_EL0, 0b11, now);
        assert!(!t.irq_levels(2_000_000)[0].1, "masked");
        assert_eq!(t.deadline_ns(now), None);
        assert_eq!(t.read(sysreg::CNTFRQ_EL0, 0), Some(62_500_000));
        assert_eq!(t.read(sysreg::CNTVCT_EL0, 160), Some(10));
    }

    #[test]
    fn the_physical_timer_is_a_second_comparator_on_ppi_30() {
        let mut t = CpuTimers::default();
        assert!(t.write(sysreg::CNTP_CVAL_EL0, 100, 0));
        assert!(t.write(sysreg::CNTP_CTL_EL0, 1, 0));
        assert!(t.write(sysreg::CNTV_TVAL_EL0, 50, 0));
        assert!(t.write(sysreg::CNTV_CTL_EL0, 1, 0));
        // The virtual timer is first: 50 ticks.
        assert_eq!(t.deadline_ns(0), Some(800));
        assert_eq!(t.read(sysreg::CNTP_CTL_EL0, 1600), Some(0b101));
        assert_eq!(t.irq_levels(1600), [(27, true), (30, true)]);
        assert_eq!(t.irq_levels(1599), [(27, true), (30, false)]);
        assert_eq!(t.deadline_ns(1000), Some(1600));
        t.write(sysreg::CNTP_CTL_EL0, 0, 0);
        assert_eq!(t.irq_levels(1600), [(27, true), (30, false)]);
        assert_eq!(t.read(sysreg::CNTPCT_EL0, 1600), Some(100));
    }
}
