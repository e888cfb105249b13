//! The generic timer as the emu backend presents it: a counter derived from
//! virtual time and one EL1 virtual timer per vCPU.
//!
//! The counter runs at [`CNTFRQ_HZ`] = 62.5 MHz, QEMU's long-standing
//! default, chosen because one tick is exactly 16 ns: conversions between
//! virtual nanoseconds and ticks are exact integer arithmetic, so the
//! counter is deterministic and round-trips. CNTVOFF is 0 (virtual count =
//! physical count).

use crate::arch::{SysRegId, sysreg};

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

/// One vCPU's EL1 virtual timer.
#[derive(Clone, Copy, Debug, Default)]
pub struct VirtualTimer {
    ctl: u64,
    cval: u64,
}

impl VirtualTimer {
    /// Whether the timer condition is met at `now_ns` (ISTATUS).
    fn condition(&self, now_ns: u64) -> bool {
        self.ctl & CTL_ENABLE != 0 && ticks_at(now_ns) >= self.cval
    }

    /// Level of the timer's interrupt output (PPI 27) at `now_ns`.
    pub fn irq_level(&self, now_ns: u64) -> bool {
        self.condition(now_ns) && self.ctl & CTL_IMASK == 0
    }

    /// Virtual time at which the output will rise, if it is enabled,
    /// unmasked and not already high.
    pub fn deadline_ns(&self, now_ns: u64) -> Option<u64> {
        if self.ctl & CTL_ENABLE == 0 || self.ctl & CTL_IMASK != 0 || self.condition(now_ns) {
            return None;
        }
        Some(ns_at(self.cval))
    }

    /// Reads a counter/timer register at `now_ns`; `None` if not one of
    /// them.
    pub fn read(&self, reg: SysRegId, now_ns: u64) -> Option<u64> {
        Some(match reg {
            sysreg::CNTFRQ_EL0 => CNTFRQ_HZ,
            sysreg::CNTVCT_EL0
            | sysreg::CNTPCT_EL0
            | sysreg::CNTVCTSS_EL0
            | sysreg::CNTPCTSS_EL0 => ticks_at(now_ns),
            sysreg::CNTV_CTL_EL0 => {
                (self.ctl & (CTL_ENABLE | CTL_IMASK))
                    | if self.condition(now_ns) {
                        CTL_ISTATUS
                    } else {
                        0
                    }
            }
            sysreg::CNTV_CVAL_EL0 => self.cval,
            // TVAL is the signed 32-bit distance to CVAL.
            sysreg::CNTV_TVAL_EL0 => u64::from(self.cval.wrapping_sub(ticks_at(now_ns)) as u32),
            _ => return None,
        })
    }

    /// Writes a timer register at `now_ns`; false if not one of them (the
    /// counters and CNTFRQ are read-only at EL1 and EL0: writes ignored).
    pub fn write(&mut self, reg: SysRegId, value: u64, now_ns: u64) -> bool {
        match reg {
            sysreg::CNTV_CTL_EL0 => self.ctl = value & (CTL_ENABLE | CTL_IMASK),
            sysreg::CNTV_CVAL_EL0 => self.cval = value,
            sysreg::CNTV_TVAL_EL0 => {
                let delta = i64::from(value as u32 as i32);
                self.cval = ticks_at(now_ns).wrapping_add_signed(delta);
            }
            sysreg::CNTFRQ_EL0
            | sysreg::CNTVCT_EL0
            | sysreg::CNTPCT_EL0
            | sysreg::CNTVCTSS_EL0
            | sysreg::CNTPCTSS_EL0 => {}
            _ => return false,
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tval_programs_a_deadline_in_ticks() {
        let mut t = VirtualTimer::default();
        let now = 1_000_000; // 1 ms
        assert!(t.write(sysreg::CNTV_TVAL_EL0, 625, now)); // 10 us
        assert!(t.write(sysreg::CNTV_CTL_EL0, 1, now));
        assert_eq!(t.deadline_ns(now), Some(1_010_000));
        assert!(!t.irq_level(1_009_999));
        assert!(t.irq_level(1_010_000));
        assert_eq!(t.read(sysreg::CNTV_CTL_EL0, 1_010_000), Some(0b101));
        // Past the deadline TVAL reads negative.
        assert_eq!(
            t.read(sysreg::CNTV_TVAL_EL0, 1_010_016),
            Some(u64::from(u32::MAX))
        );
        t.write(sysreg::CNTV_CTL_EL0, 0b11, now);
        assert!(!t.irq_level(2_000_000), "masked");
        assert_eq!(t.deadline_ns(now), None);
        assert_eq!(t.read(sysreg::CNTFRQ_EL0, 0), Some(62_500_000));
        assert_eq!(t.read(sysreg::CNTVCT_EL0, 160), Some(10));
    }
}
