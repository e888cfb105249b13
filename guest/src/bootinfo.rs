//! What the device tree tells the kernel: CPUs (with their MPIDR), RAM and
//! the bootargs from `/chosen` (parsed with the `fdt` crate).

use crate::percpu::MAX_CPUS;
use apflab_abi::memory_map::{DTB_ADDR, DTB_MAX_SIZE, RAM_BASE};
use fdt::Fdt;

/// `compatible` of the apflab VMM's doorbell node.
const DOORBELL_COMPATIBLE: &str = "apflab,doorbell";

/// Big-endian magic word at the start of a flattened device tree.
const FDT_MAGIC: u32 = 0xd00d_feed;

/// The facts the kernel takes from the device tree.
pub struct BootInfo {
    /// MPIDR affinity values of the CPUs, in device tree order (index 0 is
    /// the boot CPU's entry on QEMU and apflab).
    cpu_mpidrs: [u64; MAX_CPUS],
    cpu_count: usize,
    /// Size of the RAM bank at [`RAM_BASE`] in bytes.
    pub ram_size: u64,
    /// `/chosen/bootargs` ("" when absent).
    pub bootargs: &'static str,
    /// The device tree has apflab's hypercall doorbell page.
    pub doorbell: bool,
}

impl BootInfo {
    /// Reads the device tree passed in x0, or the one at [`DTB_ADDR`] when
    /// x0 does not hold a valid blob (QEMU leaves x0 zero for ELF images).
    /// Panics when neither is a device tree: nothing can run without it.
    pub fn from_device_tree(x0: u64) -> BootInfo {
        let dtb_addr = if looks_like_fdt(x0) { x0 } else { DTB_ADDR };
        assert!(
            looks_like_fdt(dtb_addr),
            "no device tree in x0 ({x0:#x}) nor at {DTB_ADDR:#x}"
        );
        // SAFETY: the blob starts with the FDT magic inside RAM mapped by the
        // initial page table, and the kernel never writes to it (it sits
        // below the kernel image, outside any allocation). Only the VMM
        // does, while every CPU is stopped at the boot point, and the
        // kernel reads the tree again after it (see `main`).
        let fdt = unsafe { Fdt::from_ptr(dtb_addr as *const u8) }
            .unwrap_or_else(|e| panic!("bad device tree at {dtb_addr:#x}: {e:?}"));

        let mut cpu_mpidrs = [0; MAX_CPUS];
        let mut cpu_count = 0;
        for cpu in fdt.cpus() {
            assert!(
                cpu_count < MAX_CPUS,
                "device tree lists more than {MAX_CPUS} cpus"
            );
            cpu_mpidrs[cpu_count] = cpu.ids().first() as u64;
            cpu_count += 1;
        }
        assert!(cpu_count > 0, "device tree lists no cpus");

        let ram_size = fdt
            .memory()
            .regions()
            .find(|r| r.starting_address as u64 == RAM_BASE)
            .and_then(|r| r.size)
            .unwrap_or_else(|| panic!("device tree has no /memory bank at {RAM_BASE:#x}"))
            as u64;

        BootInfo {
            cpu_mpidrs,
            cpu_count,
            ram_size,
            bootargs: fdt.chosen().bootargs().unwrap_or(""),
            doorbell: fdt.find_compatible(&[DOORBELL_COMPATIBLE]).is_some(),
        }
    }

    /// MPIDR values of the CPUs.
    pub fn cpus(&self) -> &[u64] {
        &self.cpu_mpidrs[..self.cpu_count]
    }
}

/// Whether `addr` is a plausible device tree address holding the magic.
fn looks_like_fdt(addr: u64) -> bool {
    // Only the first GiB of RAM is mapped this early; the blob is always
    // near the start of RAM.
    if !(RAM_BASE..RAM_BASE + (1 << 30) - DTB_MAX_SIZE).contains(&addr) || !addr.is_multiple_of(8) {
        return false;
    }
    // SAFETY: addr is 8-aligned inside RAM, which the initial page table maps
    // as normal memory.
    let magic = unsafe { core::ptr::read_volatile(addr as *const u32) };
    u32::from_be(magic) == FDT_MAGIC
}
