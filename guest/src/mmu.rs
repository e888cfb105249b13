//! The kernel's page tables (aarch64-paging, 4 KiB pages, one address space
//! shared by all CPUs and tasks).
//!
//! Layout (EL1&0, TTBR0, 39-bit VA as set up by aarch64-rt's TCR):
//! - devices (UART, GIC distributor and redistributors, doorbell): identity,
//!   Device-nGnRE, kernel only, never executable;
//! - RAM below the workload region: identity, kernel read/write, except the
//!   kernel text (read-only, executable at EL1 and EL0: the workloads' EL0
//!   code lives in the kernel image), the read-only data (also readable by
//!   EL0 for string constants) and the EL0 task stacks (EL0 read/write);
//! - the workload region `RAM_BASE + WORKLOAD_REGION_OFFSET ..` at
//!   [`WORKLOAD_VA`], EL0 read/write, never executable. Only EL0 tasks
//!   touch it, so all faults the pager causes there come from EL0.

use crate::bootinfo::BootInfo;
use aarch64_paging::descriptor::{El1Attributes, PhysicalAddress};
use aarch64_paging::paging::{Constraints, El1And0, MemoryRegion, PageTable, Translation, VaRange};
use aarch64_paging::{MapError, Mapping};
use apflab_abi::boot::{WORKLOAD_REGION_OFFSET, WORKLOAD_VA};
use apflab_abi::memory_map::{
    DOORBELL_BASE, DOORBELL_SIZE, GICD_BASE, GICD_SIZE, GICR_BASE, GICR_STRIDE, PAGE_SIZE,
    RAM_BASE, UART_BASE, UART_SIZE,
};
use core::arch::asm;
use core::ops::Range;
use core::ptr::NonNull;
use spin::Once;

/// Normal write-back memory (MAIR index 1 of aarch64-rt's default MAIR).
const NORMAL: El1Attributes = El1Attributes::VALID
    .union(El1Attributes::ATTRIBUTE_INDEX_1)
    .union(El1Attributes::INNER_SHAREABLE)
    .union(El1Attributes::ACCESSED);
/// Kernel data: read/write, no execution.
const KERNEL_DATA: El1Attributes = NORMAL.union(El1Attributes::UXN).union(El1Attributes::PXN);
/// Kernel text: read-only, executable at EL1 and EL0.
const TEXT: El1Attributes = NORMAL
    .union(El1Attributes::USER)
    .union(El1Attributes::READ_ONLY);
/// Read-only data, readable by EL0.
const RODATA: El1Attributes = NORMAL
    .union(El1Attributes::USER)
    .union(El1Attributes::READ_ONLY)
    .union(El1Attributes::UXN)
    .union(El1Attributes::PXN);
/// EL0 read/write data (task stacks, workload memory).
const USER_DATA: El1Attributes = NORMAL
    .union(El1Attributes::USER)
    .union(El1Attributes::UXN)
    .union(El1Attributes::PXN);
/// Device-nGnRE (MAIR index 0), kernel only.
const DEVICE: El1Attributes = El1Attributes::VALID
    .union(El1Attributes::ATTRIBUTE_INDEX_0)
    .union(El1Attributes::ACCESSED)
    .union(El1Attributes::UXN)
    .union(El1Attributes::PXN);

unsafe extern "C" {
    // Symbols of aarch64-rt's image.ld.
    static text_begin: u8;
    static text_end: u8;
    static rodata_begin: u8;
    static rodata_end: u8;
    /// First byte after the image (stacks included).
    static dma_region: u8;
}

/// Page-table pages come from the RAM between the end of the kernel image
/// and the workload region; they are never freed (the tables are built once
/// at boot), so a bump pointer suffices.
struct TableFrames {
    next: u64,
    end: u64,
}

impl Translation<El1Attributes> for TableFrames {
    fn allocate_table(&mut self) -> (NonNull<PageTable<El1Attributes>>, PhysicalAddress) {
        assert!(
            self.next + PAGE_SIZE <= self.end,
            "out of memory for page tables below the workload region"
        );
        let pa = self.next;
        self.next += PAGE_SIZE;
        let ptr = NonNull::new(pa as *mut PageTable<El1Attributes>).expect("not null");
        // SAFETY: the page lies in RAM between the image end and the workload
        // region, which nothing else uses, and is mapped (identity) by the
        // current page table; a zeroed page is an empty table.
        unsafe { core::ptr::write_bytes(pa as *mut u8, 0, PAGE_SIZE as usize) };
        (ptr, PhysicalAddress(pa as usize))
    }

    unsafe fn deallocate_table(&mut self, _table: NonNull<PageTable<El1Attributes>>) {
        // Tables are built once and live for the whole run.
    }

    fn physical_to_virtual(&self, pa: PhysicalAddress) -> NonNull<PageTable<El1Attributes>> {
        NonNull::new(pa.0 as *mut PageTable<El1Attributes>).expect("not null")
    }
}

/// The one address space.
struct AddressSpace(Mapping<TableFrames, El1And0>);

// SAFETY: the mapping is only modified during boot on the boot CPU, before
// any other CPU starts; afterwards it is only read (activate).
unsafe impl Sync for AddressSpace {}
// SAFETY: as above.
unsafe impl Send for AddressSpace {}

static ADDRESS_SPACE: Once<AddressSpace> = Once::new();

/// Physical range of the workload region.
static WORKLOAD_PHYS: Once<Range<u64>> = Once::new();

fn addr_of_symbol(s: &u8) -> u64 {
    s as *const u8 as u64
}

fn page_up(x: u64) -> u64 {
    x.next_multiple_of(PAGE_SIZE)
}

/// Maps `va..va+len` to `pa` with `attrs`, at 4 KiB granularity.
fn map(m: &mut Mapping<TableFrames, El1And0>, va: u64, pa: u64, len: u64, attrs: El1Attributes) {
    let region = MemoryRegion::new(va as usize, (va + len) as usize);
    let result: Result<(), MapError> = m.map_range(
        &region,
        PhysicalAddress(pa as usize),
        attrs,
        Constraints::NO_BLOCK_MAPPINGS,
    );
    if let Err(e) = result {
        panic!("cannot map {va:#x}+{len:#x}: {e}");
    }
}

/// Builds the page tables and switches the boot CPU to them.
pub fn init(boot: &BootInfo, user_stacks: Range<u64>) {
    let kernel_ram_end = RAM_BASE + WORKLOAD_REGION_OFFSET;
    let ram_end = RAM_BASE + boot.ram_size;
    assert!(
        ram_end > kernel_ram_end,
        "RAM ({} MiB) ends below the workload region",
        boot.ram_size >> 20
    );
    // SAFETY: linker symbols; only their addresses are used.
    let (text, rodata, image_end) = unsafe {
        (
            addr_of_symbol(&text_begin)..addr_of_symbol(&text_end),
            addr_of_symbol(&rodata_begin)..addr_of_symbol(&rodata_end),
            addr_of_symbol(&dma_region),
        )
    };
    let frames = TableFrames {
        next: page_up(image_end),
        end: kernel_ram_end,
    };
    let mut m = Mapping::with_asid_and_va_range(frames, 0, 1, El1And0, VaRange::Lower);

    map(&mut m, UART_BASE, UART_BASE, UART_SIZE, DEVICE);
    map(&mut m, GICD_BASE, GICD_BASE, GICD_SIZE, DEVICE);
    let gicr_len = GICR_STRIDE * boot.cpus().len() as u64;
    map(&mut m, GICR_BASE, GICR_BASE, gicr_len, DEVICE);
    map(&mut m, DOORBELL_BASE, DOORBELL_BASE, DOORBELL_SIZE, DEVICE);

    map(
        &mut m,
        RAM_BASE,
        RAM_BASE,
        WORKLOAD_REGION_OFFSET,
        KERNEL_DATA,
    );
    let text_start = text.start & !(PAGE_SIZE - 1);
    map(
        &mut m,
        text_start,
        text_start,
        page_up(text.end) - text_start,
        TEXT,
    );
    let ro_start = rodata.start & !(PAGE_SIZE - 1);
    map(
        &mut m,
        ro_start,
        ro_start,
        page_up(rodata.end) - ro_start,
        RODATA,
    );
    map(
        &mut m,
        user_stacks.start,
        user_stacks.start,
        user_stacks.end - user_stacks.start,
        USER_DATA,
    );
    map(
        &mut m,
        WORKLOAD_VA,
        kernel_ram_end,
        ram_end - kernel_ram_end,
        USER_DATA,
    );

    WORKLOAD_PHYS.call_once(|| kernel_ram_end..ram_end);
    ADDRESS_SPACE.call_once(|| AddressSpace(m));
    activate();
}

/// Switches this CPU to the kernel's page tables.
pub fn activate() {
    let space = ADDRESS_SPACE.get().expect("mmu::init ran");
    // SAFETY: the tables identity-map everything the kernel uses with the
    // same memory types as the initial table, and live for the whole run.
    unsafe {
        space.0.activate();
        // The initial table's entries may still be cached: drop them.
        asm!(
            "tlbi vmalle1",
            "dsb nsh",
            "isb",
            options(nostack, preserves_flags)
        );
    }
}

/// Physical addresses backing the workload region.
pub fn workload_phys() -> Range<u64> {
    WORKLOAD_PHYS.get().expect("mmu::init ran").clone()
}

/// Whether `va..va+len` lies in memory EL0 may read: the read-only data,
/// the task stacks or the workload window (for the `write` syscall).
pub fn el0_readable(va: u64, len: u64, user_stacks: &Range<u64>) -> bool {
    let Some(end) = va.checked_add(len) else {
        return false;
    };
    // SAFETY: linker symbols; only their addresses are used.
    let rodata = unsafe { addr_of_symbol(&rodata_begin)..addr_of_symbol(&rodata_end) };
    let workload = workload_phys();
    let workload_va = WORKLOAD_VA..WORKLOAD_VA + (workload.end - workload.start);
    [rodata, user_stacks.clone(), workload_va]
        .iter()
        .any(|r| va >= r.start && end <= r.end)
}
