//! A guest that branches into a device's registers. QEMU `virt` (TCG)
//! reads the register there and executes its value; the UART's data
//! register and the GIC's control registers read as words in A64's
//! unallocated space, so the guest takes an UNDEFINED instruction
//! exception: ESR_EL1 0x02000000 (EC 0x00, IL), ELR_EL1 = the device
//! address. (Measured on qemu-system-aarch64 -M virt,gic-version=3 with the
//! same image, MMU off, and with the windows mapped Device-nGnRnE.) The emu
//! backend must give the guest the same, not end the run.
//!
//! Images are raw (loaded at RAM base 0x4000_0000, entry there, MMU off,
//! EL1h).

mod common;

use apflab_vmm::{GuestExit, NoFarMemory, Vm};
use common::{config, image, temp_file};

/// Sets VBAR_EL1 to RAM base + 0x800 and branches to `target` (x1 =
/// `movz x1, #target >> 16, lsl #16`); the vector (current EL, SPx,
/// synchronous) powers off if ESR_EL1 is 0x02000000 and ELR_EL1 is the
/// target, and resets otherwise.
fn branch_into(movz_x1: u32) -> Vec<u8> {
    let entry = [
        0xd2a80009, // movz x9, #0x4000, lsl #16
        0x9120012a, // add x10, x9, #0x800
        0xd518c00a, // msr vbar_el1, x10
        0xd5033fdf, // isb
        movz_x1,    // movz x1, #target, lsl #16
        0xd61f0020, // br x1
    ];
    let vector = [
        0xd5385202, // mrs x2, esr_el1
        0xd5384023, // mrs x3, elr_el1
        0xd2a04004, // movz x4, #0x0200, lsl #16
        0xeb04005f, // cmp x2, x4
        0x540000c1, // b.ne reset
        0xeb01007f, // cmp x3, x1
        0x54000081, // b.ne reset
        0xd2800100, // movz x0, #0x8          (SYSTEM_OFF)
        0xf2b08000, // movk x0, #0x8400, lsl #16
        0xd4000002, // hvc #0
        0xd2800120, // reset: movz x0, #0x9   (SYSTEM_RESET)
        0xf2b08000, // movk x0, #0x8400, lsl #16
        0xd4000002, // hvc #0
    ];
    image(&[(0, &entry), (0xa00, &vector)])
}

#[test]
fn a_fetch_from_the_uart_or_the_gic_is_the_undefined_instruction_qemu_gives() {
    for (device, movz_x1) in [
        ("PL011 UART at 0x09000000", 0xd2a12001),
        ("GIC distributor at 0x08000000", 0xd2a10001),
        ("GIC redistributor at 0x080a0000", 0xd2a10141),
    ] {
        let kernel = temp_file(&branch_into(movz_x1));
        let out = Vm::new(config(kernel, 1))
            .unwrap()
            .run(&mut NoFarMemory)
            .unwrap();
        assert_eq!(
            out.exit,
            GuestExit::PowerOff,
            "{device}: the guest's vector saw another ESR or ELR (a reset) or the run ended"
        );
    }
}
