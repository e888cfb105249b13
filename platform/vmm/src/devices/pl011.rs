//! ARM PrimeCell PL011 UART, transmit side (what a console needs), with
//! enough of the register set that an ordinary PL011 driver initialises and
//! runs: data, flags, baud divisors, line and control, interrupt mask, raw
//! and masked status, interrupt clear, peripheral and cell ids.

use serde::{Deserialize, Serialize};
use std::io::Write;

/// Register offsets.
mod reg {
    pub const DR: u64 = 0x000;
    pub const RSR_ECR: u64 = 0x004;
    pub const FR: u64 = 0x018;
    pub const ILPR: u64 = 0x020;
    pub const IBRD: u64 = 0x024;
    pub const FBRD: u64 = 0x028;
    pub const LCR_H: u64 = 0x02c;
    pub const CR: u64 = 0x030;
    pub const IFLS: u64 = 0x034;
    pub const IMSC: u64 = 0x038;
    pub const RIS: u64 = 0x03c;
    pub const MIS: u64 = 0x040;
    pub const ICR: u64 = 0x044;
    pub const DMACR: u64 = 0x048;
    pub const ID_BASE: u64 = 0xfe0;
}

/// FR: receive FIFO empty.
const FR_RXFE: u32 = 1 << 4;
/// FR: transmit FIFO empty.
const FR_TXFE: u32 = 1 << 7;
/// Interrupt bit: transmit.
const INT_TX: u32 = 1 << 5;
/// Peripheral id (0xfe0..) then PrimeCell id (0xff0..), one byte per word
/// (the values QEMU's pl011 reports).
const IDS: [u32; 8] = [0x11, 0x10, 0x14, 0x00, 0x0d, 0xf0, 0x05, 0xb1];

/// Console output kept at most (a flooding guest cannot exhaust host memory).
pub const CONSOLE_MAX_BYTES: usize = 16 << 20;

/// The UART's state.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Pl011 {
    console: Vec<u8>,
    dropped: u64,
    /// Not saved: a run resumed from a snapshot echoes as it was told.
    #[serde(skip)]
    echo: bool,
    ibrd: u32,
    fbrd: u32,
    lcr_h: u32,
    cr: u32,
    ifls: u32,
    imsc: u32,
    ris: u32,
    dmacr: u32,
    ilpr: u32,
}

impl Pl011 {
    /// A UART in its reset state; `echo` copies output to stdout.
    pub fn new(echo: bool) -> Self {
        Pl011 {
            console: Vec::new(),
            dropped: 0,
            echo,
            ibrd: 0,
            fbrd: 0,
            lcr_h: 0,
            // Reset value: TXE and RXE set, UART disabled.
            cr: 0x300,
            ifls: 0x12,
            imsc: 0,
            ris: 0,
            dmacr: 0,
            ilpr: 0,
        }
    }

    /// Reads the register at `offset`.
    pub fn read(&mut self, offset: u64) -> u32 {
        match offset {
            // No input: reads of DR return 0 (RXFE tells drivers not to).
            reg::DR | reg::RSR_ECR => 0,
            reg::FR => FR_TXFE | FR_RXFE,
            reg::ILPR => self.ilpr,
            reg::IBRD => self.ibrd,
            reg::FBRD => self.fbrd,
            reg::LCR_H => self.lcr_h,
            reg::CR => self.cr,
            reg::IFLS => self.ifls,
            reg::IMSC => self.imsc,
            reg::RIS => self.ris,
            reg::MIS => self.ris & self.imsc,
            reg::DMACR => self.dmacr,
            o if (reg::ID_BASE..reg::ID_BASE + 0x20).contains(&o) && o % 4 == 0 => {
                IDS[((o - reg::ID_BASE) / 4) as usize]
            }
            _ => 0,
        }
    }

    /// Writes the register at `offset`.
    pub fn write(&mut self, offset: u64, value: u32) {
        match offset {
            reg::DR => {
                self.transmit(value as u8);
                self.ris |= INT_TX;
            }
            reg::RSR_ECR => {}
            reg::ILPR => self.ilpr = value & 0xff,
            reg::IBRD => self.ibrd = value & 0xffff,
            reg::FBRD => self.fbrd = value & 0x3f,
            reg::LCR_H => self.lcr_h = value & 0xff,
            reg::CR => self.cr = value & 0xffff,
            reg::IFLS => self.ifls = value & 0x3f,
            reg::IMSC => self.imsc = value & 0x7ff,
            reg::ICR => self.ris &= !value,
            reg::DMACR => self.dmacr = value & 0x7,
            _ => {}
        }
    }

    /// Level of the UART's interrupt line.
    pub fn irq_level(&self) -> bool {
        self.ris & self.imsc != 0
    }

    fn transmit(&mut self, byte: u8) {
        if self.echo {
            let mut out = std::io::stdout().lock();
            // A closed stdout must not stop the guest; the byte is still
            // kept in the console buffer.
            let _ = out.write_all(&[byte]);
            if byte == b'\n' {
                let _ = out.flush();
            }
        }
        if self.console.len() < CONSOLE_MAX_BYTES {
            self.console.push(byte);
        } else {
            self.dropped += 1;
        }
    }

    /// Whether output is copied to stdout.
    pub fn echo(&self) -> bool {
        self.echo
    }

    /// Copies output to stdout from now on, or stops.
    pub fn set_echo(&mut self, echo: bool) {
        self.echo = echo;
    }

    /// Everything written so far (invalid UTF-8 replaced).
    pub fn console_text(&self) -> String {
        let mut text = String::from_utf8_lossy(&self.console).into_owned();
        if self.dropped > 0 {
            text.push_str(&format!(
                "\n[apflab: {} console bytes dropped]\n",
                self.dropped
            ));
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transmits_and_raises_tx_interrupt_when_unmasked() {
        let mut u = Pl011::new(false);
        assert_eq!(u.read(reg::FR) & FR_TXFE, FR_TXFE);
        u.write(reg::DR, u32::from(b'h'));
        u.write(reg::DR, u32::from(b'i'));
        assert_eq!(u.console_text(), "hi");
        assert!(!u.irq_level(), "masked");
        u.write(reg::IMSC, INT_TX);
        assert!(u.irq_level());
        assert_eq!(u.read(reg::MIS), INT_TX);
        u.write(reg::ICR, INT_TX);
        assert!(!u.irq_level());
        assert_eq!(u.read(0xfe0), 0x11);
        assert_eq!(u.read(0xffc), 0xb1);
    }
}
