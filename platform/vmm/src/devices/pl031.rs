//! PL031 real-time clock, as QEMU's `virt` board has one: a seconds
//! counter the guest can read and load, in virtual time.
//!
//! Deterministic: at power-on the counter reads [`EPOCH_SECONDS`] and it
//! advances with the VM's virtual time, never with the host's clock, so
//! two runs of the same guest read the same dates. The match interrupt is
//! not raised (the match register is kept, and the raw status stays
//! clear): nothing in the VMM schedules a deadline for it.

use serde::{Deserialize, Serialize};

/// What the counter reads at virtual time 0: 2025-01-01T00:00:00Z.
pub const EPOCH_SECONDS: u32 = 1_735_689_600;

/// PrimeCell identification (UARTPeriphID0..3, PCellID0..3 at 0xfe0..).
const ID: [u32; 8] = [0x31, 0x10, 0x14, 0x00, 0x0d, 0xf0, 0x05, 0xb1];

const DR: u64 = 0x00;
const MR: u64 = 0x04;
const LR: u64 = 0x08;
const CR: u64 = 0x0c;
const IMSC: u64 = 0x10;
const RIS: u64 = 0x14;
const MIS: u64 = 0x18;
const ICR: u64 = 0x1c;

/// The RTC's registers.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Pl031 {
    /// Counter value at `loaded_ns`.
    loaded: u32,
    /// Virtual time of the last load, ns.
    loaded_ns: u64,
    matched: u32,
    imsc: u32,
}

impl Default for Pl031 {
    fn default() -> Self {
        Pl031 {
            loaded: EPOCH_SECONDS,
            loaded_ns: 0,
            matched: 0,
            imsc: 0,
        }
    }
}

impl Pl031 {
    fn count(&self, now_ns: u64) -> u32 {
        let secs = now_ns.saturating_sub(self.loaded_ns) / 1_000_000_000;
        self.loaded.wrapping_add(secs as u32)
    }

    /// Reads the register at `offset` at virtual time `now_ns`.
    pub fn read(&self, offset: u64, now_ns: u64) -> u32 {
        match offset {
            DR => self.count(now_ns),
            MR => self.matched,
            LR => self.loaded,
            // The counter always runs (RTCCR.RTCStart reads 1).
            CR => 1,
            IMSC => self.imsc,
            RIS | MIS => 0,
            0xfe0..=0xffc if offset.is_multiple_of(4) => ID[((offset - 0xfe0) / 4) as usize],
            _ => 0,
        }
    }

    /// Writes the register at `offset` at virtual time `now_ns`.
    pub fn write(&mut self, offset: u64, value: u32, now_ns: u64) {
        match offset {
            MR => self.matched = value,
            LR => {
                self.loaded = value;
                self.loaded_ns = now_ns;
            }
            IMSC => self.imsc = value & 1,
            // Starting a running counter and clearing a status that is
            // never raised change nothing.
            CR | ICR => {}
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_virtual_seconds_from_the_epoch_and_from_a_load() {
        let mut rtc = Pl031::default();
        assert_eq!(rtc.read(DR, 0), EPOCH_SECONDS);
        assert_eq!(rtc.read(DR, 2_999_999_999), EPOCH_SECONDS + 2);
        rtc.write(LR, 100, 5_500_000_000);
        assert_eq!(rtc.read(DR, 5_500_000_000), 100);
        assert_eq!(rtc.read(DR, 6_499_999_999), 100);
        assert_eq!(rtc.read(DR, 6_500_000_000), 101);
        assert_eq!(rtc.read(LR, 0), 100);
        assert_eq!(rtc.read(CR, 0), 1);
        let ids: Vec<u32> = (0..8).map(|i| rtc.read(0xfe0 + 4 * i, 0)).collect();
        assert_eq!(ids, ID);
        assert_eq!(rtc.read(0xfe1, 0), 0);
    }
}
