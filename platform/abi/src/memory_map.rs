//! The guest physical memory map.
//!
//! It follows QEMU's `virt` board so that the same guest ELF boots under
//! apflab and under `qemu-system-aarch64 -M virt,gic-version=3`. The only
//! apflab-specific device is the hypercall doorbell, placed in a hole of the
//! `virt` map; it is advertised in the device tree and the guest only uses it
//! when the device tree says so.

/// Base of guest RAM (QEMU `virt`: `VIRT_MEM`).
pub const RAM_BASE: u64 = 0x4000_0000;

/// PL011 UART (QEMU `virt`: `VIRT_UART`).
pub const UART_BASE: u64 = 0x0900_0000;
/// Size of the PL011 register window.
pub const UART_SIZE: u64 = 0x1000;
/// SPI number of the UART interrupt (INTID = 32 + this).
pub const UART_SPI: u32 = 1;

/// PL031 real-time clock (QEMU `virt`: `VIRT_RTC`).
pub const RTC_BASE: u64 = 0x0901_0000;
/// Size of the PL031 register window.
pub const RTC_SIZE: u64 = 0x1000;
/// SPI number of the RTC interrupt (INTID = 32 + this).
pub const RTC_SPI: u32 = 2;

/// First virtio-mmio transport (QEMU `virt`: `VIRT_MMIO`); apflab plugs
/// nothing into them.
pub const VIRTIO_MMIO_BASE: u64 = 0x0a00_0000;
/// Size of the window of all transports (32 of 0x200 bytes each).
pub const VIRTIO_MMIO_SIZE: u64 = 32 * 0x200;
/// Size of one transport's register window.
pub const VIRTIO_MMIO_STRIDE: u64 = 0x200;

/// GICv3 distributor (QEMU `virt`: `VIRT_GIC_DIST`).
pub const GICD_BASE: u64 = 0x0800_0000;
/// Size of the distributor window.
pub const GICD_SIZE: u64 = 0x1_0000;
/// First GICv3 redistributor (QEMU `virt`: `VIRT_GIC_REDIST`).
pub const GICR_BASE: u64 = 0x080A_0000;
/// Distance between two vCPUs' redistributors: RD_base + SGI_base frames.
pub const GICR_STRIDE: u64 = 0x2_0000;
/// Size of the redistributor region QEMU reserves (123 redistributors).
pub const GICR_REGION_SIZE: u64 = 0x00F6_0000;

/// apflab hypercall doorbell: an MMIO page used for hypercalls on hosts where
/// HVC cannot be forwarded to the VMM (arm64 KVM before the SMCCC filter).
/// See [`crate::hypercall::doorbell`] for the register layout.
pub const DOORBELL_BASE: u64 = 0x0B00_0000;
/// Size of the doorbell window.
pub const DOORBELL_SIZE: u64 = 0x1000;
/// `compatible` of the device tree node of the doorbell.
pub const DOORBELL_COMPATIBLE: &str = "apflab,doorbell";

/// Where QEMU's `-kernel` loads a raw (non-ELF) image: the start of RAM
/// (bare-metal images without a Linux header are loaded at RAM base).
pub const RAW_IMAGE_LOAD_ADDR: u64 = RAM_BASE;

/// Largest number of vCPUs the machine offers (token format and control
/// block tables are sized for it).
pub const MAX_VCPUS: u32 = 8;

/// Guest page size. Everything in apflab works on 4 KiB pages.
pub const PAGE_SIZE: u64 = 4096;
/// log2 of [`PAGE_SIZE`].
pub const PAGE_SHIFT: u32 = 12;

/// PPI INTID of the EL1 virtual timer (the architected one QEMU and KVM use).
pub const VTIMER_PPI: u32 = 27;
/// INTIDs the board's GIC implements (32 SGIs and PPIs, then SPIs), as
/// QEMU `virt`'s does: GICD_TYPER.ITLinesNumber = 7 on both backends.
pub const GIC_INTIDS: u32 = 256;
/// PPI INTID of the EL1 (non-secure) physical timer.
pub const PTIMER_PPI: u32 = 30;
/// PPI INTID on which "page ready" is signalled when ready is an interrupt.
pub const APF_READY_PPI: u32 = 20;
/// `compatible` of the device tree node that names [`APF_READY_PPI`] for
/// guests that take their interrupts from the device tree (Linux).
pub const APF_COMPATIBLE: &str = "apflab,apf";
/// SGI INTID the guest uses to kick another CPU's scheduler.
pub const RESCHEDULE_SGI: u32 = 1;

/// Where the device tree blob is placed: the start of RAM, as QEMU `virt`
/// does for bare-metal (non-Linux) images. apflab also passes it in x0; the
/// guest uses x0 when it holds a valid blob and this address otherwise
/// (QEMU leaves x0 zero for ELF images).
pub const DTB_ADDR: u64 = RAM_BASE;
/// Room reserved for the device tree at [`DTB_ADDR`].
pub const DTB_MAX_SIZE: u64 = 2 << 20;
/// Physical address the guest kernel is linked at: just past the device
/// tree's room.
pub const KERNEL_LOAD_ADDR: u64 = RAM_BASE + DTB_MAX_SIZE;
