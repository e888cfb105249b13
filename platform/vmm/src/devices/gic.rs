//! GICv3 model: distributor (SPIs), one redistributor per vCPU (SGIs and
//! PPIs) and the system-register CPU interface (ICC_*), for a machine with a
//! single security state (GICD_CTLR.DS = 1), affinity routing on, no LPIs.
//!
//! Only group 1 interrupts are ever signalled (group 0 acknowledges read as
//! spurious): that is what a non-secure OS uses. Priorities have 5 bits,
//! like QEMU's GICv3.

use std::cell::Cell;
use std::collections::BTreeMap;

use apflab_abi::memory_map::{GIC_INTIDS, GICR_STRIDE, MAX_VCPUS};

use apflab_hypervisor::arch::{SysRegId, sysreg};
use serde::{Deserialize, Serialize};

/// One past the highest INTID.
const NUM_INTIDS: u32 = GIC_INTIDS;
/// Number of SPIs the distributor implements (INTIDs 32..NUM_INTIDS).
pub const NUM_SPIS: u32 = NUM_INTIDS - 32;
/// 64-bit words of a bitmap with one bit per SPI.
const SPI_WORDS: usize = NUM_SPIS.div_ceil(64) as usize;
/// INTID returned by an acknowledge when nothing is pending.
pub const SPURIOUS: u32 = 1023;
/// Implemented priority bits (5): the mask applied to priorities and PMR.
const PRIO_MASK: u8 = 0xf8;
/// Size of a redistributor's RD_base frame; SGI_base follows it.
const RD_FRAME: u64 = 0x1_0000;
/// PIDR2 offset and value (architecture revision 3).
const PIDR2: u64 = 0xffe8;
const PIDR2_GICV3: u64 = 0x3b;

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
struct Irq {
    enabled: bool,
    /// Edge latch (also set by ISPENDR writes).
    pending: bool,
    active: bool,
    /// Level of the input line (level-sensitive sources).
    level: bool,
    group1: bool,
    priority: u8,
    /// ICFGR: true = edge-triggered.
    edge: bool,
}

impl Irq {
    fn is_pending(&self) -> bool {
        self.pending || (!self.edge && self.level)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct CpuInterface {
    pmr: u8,
    igrpen1: bool,
    bpr1: u8,
    /// EOImode bit of ICC_CTLR_EL1.
    eoi_mode: bool,
    /// Acknowledged interrupts whose priority has not been dropped, oldest
    /// first; the running priority is the last one's.
    active_priorities: Vec<(u32, u8)>,
    /// Redistributor GICR_WAKER.ProcessorSleep.
    processor_sleep: bool,
    private: [Irq; 32],
}

impl CpuInterface {
    fn new() -> Self {
        let mut private = [Irq::default(); 32];
        for (i, irq) in private.iter_mut().enumerate() {
            // SGIs are always edge-triggered; PPIs reset to level.
            irq.edge = i < 16;
        }
        CpuInterface {
            pmr: 0,
            igrpen1: false,
            bpr1: 0,
            eoi_mode: false,
            active_priorities: Vec::new(),
            processor_sleep: true,
            private,
        }
    }

    fn running_priority(&self) -> u16 {
        self.active_priorities
            .last()
            .map_or(0x100, |&(_, p)| u16::from(p))
    }
}

/// The whole interrupt controller.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Gic {
    cpus: Vec<CpuInterface>,
    /// GICD_CTLR EnableGrp0 / EnableGrp1.
    dist_enable: u32,
    spis: Vec<Irq>,
    irouter: Vec<u64>,
    /// Interrupts acknowledged, by INTID.
    acknowledged: BTreeMap<u32, u64>,
    /// The SPIs enabled, one bit each, so that looking for the highest
    /// pending interrupt (at every slice of every vCPU) skips the many
    /// disabled ones; `None` until the next look finds them (after an
    /// enable or disable, and in a restored or cloned GIC).
    #[serde(skip)]
    enabled_spis: Cell<Option<[u64; SPI_WORDS]>>,
}

impl Gic {
    /// A GIC for `vcpus` CPUs, in its reset state.
    pub fn new(vcpus: u32) -> Self {
        let vcpus = vcpus.clamp(1, MAX_VCPUS);
        Gic {
            cpus: (0..vcpus).map(|_| CpuInterface::new()).collect(),
            dist_enable: 0,
            spis: vec![
                Irq {
                    edge: false,
                    ..Irq::default()
                };
                NUM_SPIS as usize
            ],
            irouter: vec![0; NUM_SPIS as usize],
            acknowledged: BTreeMap::new(),
            enabled_spis: Cell::new(None),
        }
    }

    /// Number of CPU interfaces.
    pub fn cpus(&self) -> u32 {
        self.cpus.len() as u32
    }

    fn irq(&self, cpu: u32, intid: u32) -> Option<&Irq> {
        if intid < 32 {
            self.cpus
                .get(cpu as usize)
                .map(|c| &c.private[intid as usize])
        } else {
            self.spis.get((intid - 32) as usize)
        }
    }

    fn irq_mut(&mut self, cpu: u32, intid: u32) -> Option<&mut Irq> {
        if intid < 32 {
            self.cpus
                .get_mut(cpu as usize)
                .map(|c| &mut c.private[intid as usize])
        } else {
            self.spis.get_mut((intid - 32) as usize)
        }
    }

    /// The CPU an SPI is routed to (IRM = 1 routes to CPU 0).
    fn spi_target(&self, intid: u32) -> u32 {
        let route = self.irouter[(intid - 32) as usize];
        if route & (1 << 31) != 0 {
            0
        } else {
            (route & 0xff) as u32
        }
    }

    /// Drives the input line of a level-sensitive interrupt (a PPI of `cpu`
    /// or an SPI).
    pub fn set_level(&mut self, cpu: u32, intid: u32, level: bool) {
        if let Some(irq) = self.irq_mut(cpu, intid) {
            irq.level = level;
        }
    }

    /// Makes an edge interrupt pending (an SGI or a PPI of `cpu`, or an
    /// SPI).
    pub fn set_pending(&mut self, cpu: u32, intid: u32) {
        if let Some(irq) = self.irq_mut(cpu, intid) {
            irq.pending = true;
        }
    }

    /// Highest-priority pending, enabled, inactive group 1 interrupt for
    /// `cpu`, ignoring masks: `(intid, priority)`.
    fn highest_pending(&self, cpu: u32) -> Option<(u32, u8)> {
        let c = self.cpus.get(cpu as usize)?;
        let mut best: Option<(u32, u8)> = None;
        let mut consider = |intid: u32, irq: &Irq| {
            if irq.enabled && irq.group1 && !irq.active && irq.is_pending() {
                let p = irq.priority & PRIO_MASK;
                if best.is_none_or(|(_, bp)| p < bp) {
                    best = Some((intid, p));
                }
            }
        };
        for (i, irq) in c.private.iter().enumerate() {
            consider(i as u32, irq);
        }
        if self.dist_enable & 2 != 0 {
            // In INTID order, as a scan of every SPI would consider them.
            for (word, mut bits) in self.enabled_spis().into_iter().enumerate() {
                while bits != 0 {
                    let i = word * 64 + bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    let intid = 32 + i as u32;
                    if self.spi_target(intid) == cpu {
                        consider(intid, &self.spis[i]);
                    }
                }
            }
        }
        best
    }

    /// The bitmap of enabled SPIs, found again if it is not known.
    fn enabled_spis(&self) -> [u64; SPI_WORDS] {
        if let Some(bits) = self.enabled_spis.get() {
            return bits;
        }
        let mut bits = [0u64; SPI_WORDS];
        for (i, irq) in self.spis.iter().enumerate() {
            if irq.enabled {
                bits[i / 64] |= 1 << (i % 64);
            }
        }
        self.enabled_spis.set(Some(bits));
        bits
    }

    /// The interrupt the CPU interface would signal to `cpu` now (group 1
    /// enabled, priority above the mask and the running priority).
    pub fn signalled(&self, cpu: u32) -> Option<u32> {
        let c = self.cpus.get(cpu as usize)?;
        if !c.igrpen1 {
            return None;
        }
        let (intid, prio) = self.highest_pending(cpu)?;
        (prio < (c.pmr & PRIO_MASK) && u16::from(prio) < c.running_priority()).then_some(intid)
    }

    /// Interrupts acknowledged so far, by INTID.
    pub fn acknowledged(&self) -> &BTreeMap<u32, u64> {
        &self.acknowledged
    }

    fn acknowledge(&mut self, cpu: u32) -> u32 {
        let Some(intid) = self.signalled(cpu) else {
            return SPURIOUS;
        };
        let prio = {
            let irq = self.irq_mut(cpu, intid).expect("signalled INTID exists");
            irq.pending = false;
            irq.active = true;
            irq.priority & PRIO_MASK
        };
        self.cpus[cpu as usize]
            .active_priorities
            .push((intid, prio));
        *self.acknowledged.entry(intid).or_default() += 1;
        intid
    }

    fn end_of_interrupt(&mut self, cpu: u32, intid: u32) {
        let c = &mut self.cpus[cpu as usize];
        if let Some(pos) = c.active_priorities.iter().rposition(|&(i, _)| i == intid) {
            c.active_priorities.remove(pos);
        } else {
            // EOI of an interrupt that is not active: ignored, as the
            // architecture allows (UNPREDICTABLE, we choose to do nothing).
            return;
        }
        if !c.eoi_mode {
            self.deactivate(cpu, intid);
        }
    }

    fn deactivate(&mut self, cpu: u32, intid: u32) {
        if let Some(irq) = self.irq_mut(cpu, intid) {
            irq.active = false;
        }
    }

    /// ICC_SGI1R_EL1 write from `cpu`: returns the CPUs that got the SGI.
    fn generate_sgi(&mut self, cpu: u32, value: u64) -> Vec<u32> {
        let intid = ((value >> 24) & 0xf) as u32;
        let irm = value & (1 << 40) != 0;
        let aff1 = (value >> 16) & 0xff;
        let aff2 = (value >> 32) & 0xff;
        let aff3 = (value >> 48) & 0xff;
        let rs = (value >> 44) & 0xf;
        let targets: Vec<u32> = if irm {
            (0..self.cpus()).filter(|&c| c != cpu).collect()
        } else if aff1 == 0 && aff2 == 0 && aff3 == 0 && rs == 0 {
            (0..16u32)
                .filter(|b| value & (1 << b) != 0 && *b < self.cpus())
                .collect()
        } else {
            // Our CPUs all have Aff1..3 = 0: no one else matches.
            Vec::new()
        };
        for &t in &targets {
            self.set_pending(t, intid);
        }
        targets
    }

    /// A read of an ICC_* register by `cpu`; `None` if `reg` is not part of
    /// the CPU interface.
    pub fn sysreg_read(&mut self, cpu: u32, reg: SysRegId) -> Option<u64> {
        if cpu >= self.cpus() {
            return Some(0);
        }
        let c = &self.cpus[cpu as usize];
        let v = match reg {
            sysreg::ICC_IAR1_EL1 => u64::from(self.acknowledge(cpu)),
            sysreg::ICC_HPPIR1_EL1 => {
                u64::from(self.highest_pending(cpu).map_or(SPURIOUS, |p| p.0))
            }
            sysreg::ICC_PMR_EL1 => u64::from(c.pmr & PRIO_MASK),
            sysreg::ICC_IGRPEN1_EL1 => u64::from(c.igrpen1),
            sysreg::ICC_BPR1_EL1 => u64::from(c.bpr1),
            // SRE, DFB and DIB set: system register interface only.
            sysreg::ICC_SRE_EL1 => 0x7,
            // PRIbits = 4 (5 bits), IDbits = 0 (16-bit INTIDs), A3V = 0,
            // EOImode as written.
            sysreg::ICC_CTLR_EL1 => (4 << 8) | u64::from(c.eoi_mode) << 1,
            sysreg::ICC_RPR_EL1 => u64::from(c.running_priority().min(0xff) as u8),
            sysreg::ICC_IAR0_EL1 => u64::from(SPURIOUS),
            sysreg::ICC_IGRPEN0_EL1 | sysreg::ICC_BPR0_EL1 => 0,
            r if r.op0 == 3 && r.op1 == 0 && r.crn == 12 && (8..=12).contains(&r.crm) => 0,
            _ => return None,
        };
        Some(v)
    }

    /// A write of an ICC_* register by `cpu`: `None` if `reg` is not part of
    /// the CPU interface, otherwise the CPUs that received an SGI (empty
    /// for other registers).
    pub fn sysreg_write(&mut self, cpu: u32, reg: SysRegId, value: u64) -> Option<Vec<u32>> {
        if cpu >= self.cpus() {
            return Some(Vec::new());
        }
        let c = &mut self.cpus[cpu as usize];
        match reg {
            sysreg::ICC_EOIR1_EL1 => self.end_of_interrupt(cpu, (value & 0xff_ffff) as u32),
            sysreg::ICC_DIR_EL1 => self.deactivate(cpu, (value & 0xff_ffff) as u32),
            sysreg::ICC_PMR_EL1 => c.pmr = (value as u8) & PRIO_MASK,
            sysreg::ICC_IGRPEN1_EL1 => c.igrpen1 = value & 1 != 0,
            sysreg::ICC_BPR1_EL1 => c.bpr1 = (value & 7) as u8,
            sysreg::ICC_CTLR_EL1 => c.eoi_mode = value & 2 != 0,
            sysreg::ICC_SGI1R_EL1 => return Some(self.generate_sgi(cpu, value)),
            r if r.op0 == 3 && r.op1 == 0 && r.crn == 12 && (8..=12).contains(&r.crm) => {}
            _ => return None,
        }
        Some(Vec::new())
    }

    /// Reads a bitmap register (one bit per INTID from `first`).
    fn read_bits(&self, cpu: u32, first: u32, f: impl Fn(&Irq) -> bool) -> u64 {
        (0..32)
            .filter(|i| self.irq(cpu, first + i).is_some_and(&f))
            .fold(0, |acc, i| acc | (1 << i))
    }

    /// Applies `f` to every INTID from `first` whose bit is set in `value`.
    fn write_bits(&mut self, cpu: u32, first: u32, value: u64, f: impl Fn(&mut Irq)) {
        for i in 0..32 {
            if value & (1 << i) != 0
                && let Some(irq) = self.irq_mut(cpu, first + i)
            {
                f(irq);
            }
        }
    }

    /// Register blocks shared by the distributor (SPIs, `first` >= 32) and
    /// the redistributor SGI frame (`first` = 0): reads.
    fn read_irq_block(&self, cpu: u32, offset: u64, first_of: impl Fn(u64, u64) -> u32) -> u64 {
        match offset {
            0x080..0x100 => self.read_bits(cpu, first_of(offset, 0x080), |i| i.group1),
            0x100..0x180 => self.read_bits(cpu, first_of(offset, 0x100), |i| i.enabled),
            0x180..0x200 => self.read_bits(cpu, first_of(offset, 0x180), |i| i.enabled),
            0x200..0x280 => self.read_bits(cpu, first_of(offset, 0x200), Irq::is_pending),
            0x280..0x300 => self.read_bits(cpu, first_of(offset, 0x280), Irq::is_pending),
            0x300..0x380 => self.read_bits(cpu, first_of(offset, 0x300), |i| i.active),
            0x380..0x400 => self.read_bits(cpu, first_of(offset, 0x380), |i| i.active),
            0x400..0x800 => {
                // IPRIORITYR: one byte per INTID; read 4 bytes at a time.
                let base = (offset - 0x400) as u32;
                (0..4).fold(0, |acc, b| {
                    let p = self
                        .irq(cpu, base + b)
                        .map_or(0, |i| i.priority & PRIO_MASK);
                    acc | u64::from(p) << (8 * b)
                })
            }
            0xc00..0xd00 => {
                // ICFGR: two bits per INTID, bit 1 = edge.
                let base = ((offset - 0xc00) / 4 * 16) as u32;
                (0..16).fold(0, |acc, i| {
                    let edge = self.irq(cpu, base + i).is_some_and(|q| q.edge);
                    acc | (u64::from(edge) << (2 * i + 1))
                })
            }
            _ => 0,
        }
    }

    fn write_irq_block(
        &mut self,
        cpu: u32,
        offset: u64,
        size: usize,
        value: u64,
        first_of: impl Fn(u64, u64) -> u32,
    ) {
        match offset {
            0x080..0x100 => {
                let first = first_of(offset, 0x080);
                for i in 0..32 {
                    if let Some(irq) = self.irq_mut(cpu, first + i) {
                        irq.group1 = value & (1 << i) != 0;
                    }
                }
            }
            0x100..0x180 => {
                self.enabled_spis.set(None);
                self.write_bits(cpu, first_of(offset, 0x100), value, |i| i.enabled = true)
            }
            0x180..0x200 => {
                self.enabled_spis.set(None);
                self.write_bits(cpu, first_of(offset, 0x180), value, |i| i.enabled = false)
            }
            0x200..0x280 => {
                self.write_bits(cpu, first_of(offset, 0x200), value, |i| i.pending = true)
            }
            0x280..0x300 => {
                self.write_bits(cpu, first_of(offset, 0x280), value, |i| i.pending = false)
            }
            0x300..0x380 => {
                self.write_bits(cpu, first_of(offset, 0x300), value, |i| i.active = true)
            }
            0x380..0x400 => {
                self.write_bits(cpu, first_of(offset, 0x380), value, |i| i.active = false)
            }
            0x400..0x800 => {
                let base = (offset - 0x400) as u32;
                for b in 0..size.min(8) as u32 {
                    if let Some(irq) = self.irq_mut(cpu, base + b) {
                        irq.priority = (value >> (8 * b)) as u8 & PRIO_MASK;
                    }
                }
            }
            0xc00..0xd00 => {
                let base = ((offset - 0xc00) / 4 * 16) as u32;
                for i in 0..16 {
                    let intid = base + i;
                    // SGI configuration is read-only (always edge).
                    if intid >= 16
                        && let Some(irq) = self.irq_mut(cpu, intid)
                    {
                        irq.edge = value & (1 << (2 * i + 1)) != 0;
                    }
                }
            }
            _ => {}
        }
    }

    /// Distributor MMIO read (`offset` from GICD_BASE).
    pub fn dist_read(&self, offset: u64) -> u64 {
        match offset {
            // RWP = 0, DS = 1, ARE = 1 (RAO), group enables.
            0x0000 => u64::from(self.dist_enable) | (1 << 6) | (1 << 4),
            // IDbits = 9 (10-bit INTIDs), ITLinesNumber.
            0x0004 => (9 << 19) | u64::from(NUM_INTIDS / 32 - 1),
            // IIDR: implementer ARM.
            0x0008 => 0x43b,
            0x000c => 0,
            0x6000..0x8000 => {
                let n = ((offset - 0x6000) / 8) as u32;
                if (32..NUM_INTIDS).contains(&n) {
                    self.irouter[(n - 32) as usize]
                } else {
                    0
                }
            }
            PIDR2 => PIDR2_GICV3,
            // Blocks for INTIDs 0..31 are RAZ/WI in the distributor when
            // affinity routing is on.
            o if o < 0x0d00 && Self::block_first(o) < 32 => 0,
            o => self.read_irq_block(0, o, Self::first_for),
        }
    }

    /// Distributor MMIO write.
    pub fn dist_write(&mut self, offset: u64, size: usize, value: u64) {
        match offset {
            0x0000 => self.dist_enable = (value & 3) as u32,
            0x6000..0x8000 => {
                let n = ((offset - 0x6000) / 8) as u32;
                if (32..NUM_INTIDS).contains(&n) {
                    let slot = &mut self.irouter[(n - 32) as usize];
                    if size == 8 && offset.is_multiple_of(8) {
                        *slot = value;
                    } else if offset.is_multiple_of(8) {
                        *slot = (*slot & !0xffff_ffff) | (value & 0xffff_ffff);
                    } else {
                        *slot = (*slot & 0xffff_ffff) | (value << 32);
                    }
                }
            }
            o if o < 0x0d00 && Self::block_first(o) < 32 => {}
            o => self.write_irq_block(0, o, size, value, Self::first_for),
        }
    }

    /// First INTID covered by the register at `offset` of a 1-bit-per-INTID
    /// block starting at `base`.
    fn first_for(offset: u64, base: u64) -> u32 {
        ((offset - base) / 4 * 32) as u32
    }

    /// First INTID a distributor register at `offset` covers (used to make
    /// the private range RAZ/WI).
    fn block_first(offset: u64) -> u32 {
        match offset {
            0x080..0x400 => ((offset % 0x80) / 4 * 32) as u32,
            0x400..0x800 => (offset - 0x400) as u32,
            0xc00..0xd00 => ((offset - 0xc00) / 4 * 16) as u32,
            _ => u32::MAX,
        }
    }

    /// Redistributor MMIO read (`offset` from GICR_BASE).
    pub fn redist_read(&self, offset: u64) -> u64 {
        let cpu = (offset / GICR_STRIDE) as u32;
        if cpu >= self.cpus() {
            return 0;
        }
        let off = offset % GICR_STRIDE;
        let c = &self.cpus[cpu as usize];
        match off {
            0x0000 => 0,
            0x0004 => 0x43b,
            // TYPER: affinity (Aff0 = cpu) in [63:32], processor number in
            // [23:8], Last in bit 4.
            0x0008 => {
                (u64::from(cpu) << 32)
                    | (u64::from(cpu) << 8)
                    | (u64::from(cpu + 1 == self.cpus()) << 4)
            }
            0x000c => u64::from(cpu),
            0x0014 => {
                let s = u64::from(c.processor_sleep);
                (s << 1) | (s << 2)
            }
            PIDR2 => PIDR2_GICV3,
            o if o >= RD_FRAME => {
                self.read_irq_block(
                    cpu,
                    o - RD_FRAME,
                    |o, base| {
                        if o - base < 4 { 0 } else { u32::MAX }
                    },
                )
            }
            _ => 0,
        }
    }

    /// Redistributor MMIO write.
    pub fn redist_write(&mut self, offset: u64, size: usize, value: u64) {
        let cpu = (offset / GICR_STRIDE) as u32;
        if cpu >= self.cpus() {
            return;
        }
        let off = offset % GICR_STRIDE;
        match off {
            0x0014 => self.cpus[cpu as usize].processor_sleep = value & 2 != 0,
            o if o >= RD_FRAME => {
                let o = o - RD_FRAME;
                // Only the first register of each block exists in the SGI
                // frame (INTIDs 0..31); the priority/config blocks are
                // 8 and 2 registers long.
                let in_range = match o {
                    0x080..0x400 => o % 0x80 < 4,
                    0x400..0x420 => true,
                    0xc00..0xc08 => true,
                    _ => false,
                };
                if in_range {
                    self.write_irq_block(cpu, o, size, value, |o, base| {
                        if o - base < 4 { 0 } else { u32::MAX }
                    });
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enable_cpu_interface(g: &mut Gic, cpu: u32) {
        g.sysreg_write(cpu, sysreg::ICC_PMR_EL1, 0xff).unwrap();
        g.sysreg_write(cpu, sysreg::ICC_IGRPEN1_EL1, 1).unwrap();
    }

    #[test]
    fn ppi_is_signalled_acknowledged_and_ended() {
        let mut g = Gic::new(2);
        enable_cpu_interface(&mut g, 1);
        let sgi_base = GICR_STRIDE + RD_FRAME;
        g.redist_write(sgi_base + 0x080, 4, 1 << 27); // group 1
        g.redist_write(sgi_base + 0x100, 4, 1 << 27); // enable
        g.redist_write(sgi_base + 0x418, 4, 0xa0 << 24); // priority of 27
        assert_eq!(g.redist_read(sgi_base + 0x418) >> 24, 0xa0);
        g.set_level(1, 27, true);
        assert_eq!(g.signalled(1), Some(27));
        assert_eq!(g.signalled(0), None, "PPIs are private");
        assert_eq!(g.sysreg_read(1, sysreg::ICC_IAR1_EL1), Some(27));
        // Active: not signalled again while the line is still high.
        assert_eq!(g.signalled(1), None);
        assert_eq!(
            g.sysreg_read(1, sysreg::ICC_IAR1_EL1),
            Some(u64::from(SPURIOUS))
        );
        g.sysreg_write(1, sysreg::ICC_EOIR1_EL1, 27).unwrap();
        assert_eq!(g.signalled(1), Some(27), "level still high");
        g.set_level(1, 27, false);
        assert_eq!(g.signalled(1), None);
        assert_eq!(g.acknowledged().get(&27), Some(&1));
    }

    #[test]
    fn pmr_masks_and_sgi_reaches_the_target_only() {
        let mut g = Gic::new(4);
        for c in 0..4 {
            enable_cpu_interface(&mut g, c);
            let sgi_base = u64::from(c) * GICR_STRIDE + RD_FRAME;
            g.redist_write(sgi_base + 0x080, 4, 0xffff_ffff);
            g.redist_write(sgi_base + 0x100, 4, 1 << 1);
        }
        // SGI 1 to CPUs 2 and 3 from CPU 0.
        let t = g
            .sysreg_write(0, sysreg::ICC_SGI1R_EL1, (1 << 24) | 0b1100)
            .unwrap();
        assert_eq!(t, vec![2, 3]);
        assert_eq!(g.signalled(2), Some(1));
        assert_eq!(g.signalled(1), None);
        // PMR 0 masks everything.
        g.sysreg_write(3, sysreg::ICC_PMR_EL1, 0).unwrap();
        assert_eq!(g.signalled(3), None);
        // IRM: everyone but the sender.
        let t = g
            .sysreg_write(1, sysreg::ICC_SGI1R_EL1, (1 << 40) | (1 << 24))
            .unwrap();
        assert_eq!(t, vec![0, 2, 3]);
    }

    #[test]
    fn spi_routing_needs_the_distributor_enabled() {
        let mut g = Gic::new(2);
        enable_cpu_interface(&mut g, 1);
        g.dist_write(0x084, 4, 1 << 1); // INTID 33 group 1
        g.dist_write(0x104, 4, 1 << 1); // enable 33
        g.dist_write(0x6000 + 33 * 8, 8, 1); // route to CPU 1
        g.set_level(0, 33, true);
        assert_eq!(g.signalled(1), None, "distributor disabled");
        g.dist_write(0, 4, 2);
        assert_eq!(g.signalled(1), Some(33));
        assert_eq!(g.dist_read(0x104), 1 << 1);
        assert_eq!(g.dist_read(0x100), 0, "private block is RAZ");
        assert_eq!(g.dist_read(PIDR2) & 0xf0, 0x30);
    }

    /// A GIC with the distributor on, CPU 0's interface on, and SPIs 33
    /// (priority 0xa0) and 200 (0x80) in group 1, both routed to CPU 0 and
    /// with their lines high, but not enabled.
    fn two_spis_pending() -> Gic {
        let mut g = Gic::new(1);
        enable_cpu_interface(&mut g, 0);
        g.dist_write(0, 4, 2);
        for (intid, prio) in [(33u32, 0xa0u64), (200, 0x80)] {
            let (word, bit) = (u64::from(intid / 32) * 4, intid % 32);
            g.dist_write(0x080 + word, 4, 1 << bit);
            g.dist_write(0x400 + u64::from(intid), 1, prio);
            g.set_level(0, intid, true);
        }
        g
    }

    #[test]
    fn enabling_and_disabling_spis_changes_what_is_signalled() {
        let mut g = two_spis_pending();
        assert_eq!(g.signalled(0), None, "neither is enabled");
        g.dist_write(0x104, 4, 1 << 1); // enable 33
        assert_eq!(g.signalled(0), Some(33));
        g.dist_write(0x118, 4, 1 << 8); // enable 200
        assert_eq!(g.signalled(0), Some(200), "the higher priority");
        g.dist_write(0x198, 4, 1 << 8); // disable 200
        assert_eq!(g.signalled(0), Some(33));
        g.dist_write(0x184, 4, 1 << 1); // disable 33
        assert_eq!(g.signalled(0), None);
    }

    #[test]
    fn a_restored_or_cloned_gic_signals_what_the_original_does() {
        let mut g = two_spis_pending();
        g.dist_write(0x118, 4, 1 << 8); // enable 200
        assert_eq!(g.signalled(0), Some(200));
        let restored: Gic = serde_json::from_str(&serde_json::to_string(&g).unwrap()).unwrap();
        assert_eq!(restored.signalled(0), Some(200));
        let mut cloned = g.clone();
        cloned.dist_write(0x104, 4, 1 << 1); // enable 33 in the clone only
        cloned.dist_write(0x198, 4, 1 << 8); // disable 200 in the clone only
        assert_eq!(cloned.signalled(0), Some(33));
        assert_eq!(g.signalled(0), Some(200));
    }
}
