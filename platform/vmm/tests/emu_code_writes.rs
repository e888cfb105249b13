//! Guest stores into its own code (third_party/unicorn, patch 0007): a
//! store to a page that holds no translated code stays on the engine's
//! fast path, so when the page gains code the engine must send stores back
//! to the slow path, which invalidates code, through every TLB entry that
//! maps the page, including one for another virtual address filled while
//! the page had none. (Linux writes code through its linear map and runs
//! it at a user address: two virtual addresses of one page.) The image is
//! raw (loaded at RAM base, entry there, EL1h); the words were assembled
//! with llvm-mc and carry their source.

mod common;

use apflab_vmm::{GuestExit, NoFarMemory, Vm};
use common::{config, image, temp_file};

/// Turns the MMU on with three 1 GiB blocks (the page table at +0x3000):
/// VA 0 as device memory (the PL011), RAM at its own address, and RAM
/// again at RAM base + 1 GiB, an alias. Writes `mov w4, #'A'; ret` into
/// the page at +0x2000 through the alias (that TLB entry is filled while
/// the page has no code) and calls it at its own address, which gives the
/// page code; overwrites the `mov` with `mov w4, #'B'` through the alias
/// again and calls it again; prints both results and powers off. Nothing
/// in between leaves the engine (no MMIO, no exit), so no TLB flush hides
/// a stale entry, and the instruction cache maintenance the architecture
/// asks for is there but is not what the engine goes by.
const ALIAS_WRITE_CALL_REWRITE_CALL: [u32; 42] = [
    0x10018000, // 0x00: adr x0, table (0x3000)
    0xd5182000, // 0x04: msr ttbr0_el1, x0
    0x580004c1, // 0x08: ldr x1, tcr
    0xd5182041, // 0x0c: msr tcr_el1, x1
    0xd2801fe1, // 0x10: mov x1, #0xff           (attr 0 normal, attr 1 device)
    0xd518a201, // 0x14: msr mair_el1, x1
    0xd5033fdf, // 0x18: isb
    0xd5381001, // 0x1c: mrs x1, sctlr_el1
    0xb2400021, // 0x20: orr x1, x1, #0x1        (M)
    0xd5181001, // 0x24: msr sctlr_el1, x1
    0xd5033fdf, // 0x28: isb
    0x1000feaa, // 0x2c: adr x10, page (0x2000)
    0xd2a80008, // 0x30: mov x8, #0x40000000
    0x8b080149, // 0x34: add x9, x10, x8         (the page's alias)
    0x180002eb, // 0x38: ldr w11, insn_a
    0x180002ec, // 0x3c: ldr w12, insn_b
    0x180002ed, // 0x40: ldr w13, insn_ret
    0xd2a12003, // 0x44: movz x3, #0x900, lsl #16 (PL011)
    0xb900012b, // 0x48: str w11, [x9]
    0xb900052d, // 0x4c: str w13, [x9, #4]
    0xd5033b9f, // 0x50: dsb ish
    0xd508751f, // 0x54: ic iallu
    0xd5033b9f, // 0x58: dsb ish
    0xd5033fdf, // 0x5c: isb
    0xd63f0140, // 0x60: blr x10
    0x2a0403e5, // 0x64: mov w5, w4
    0xb900012c, // 0x68: str w12, [x9]
    0xd5033b9f, // 0x6c: dsb ish
    0xd508751f, // 0x70: ic iallu
    0xd5033b9f, // 0x74: dsb ish
    0xd5033fdf, // 0x78: isb
    0xd63f0140, // 0x7c: blr x10
    0xb9000065, // 0x80: str w5, [x3]
    0xb9000064, // 0x84: str w4, [x3]
    0xd2800100, // 0x88: movz x0, #0x8
    0xf2b08000, // 0x8c: movk x0, #0x8400, lsl #16 (SYSTEM_OFF)
    0xd4000002, // 0x90: hvc #0
    0x52800824, // 0x94: insn_a: mov w4, #'A'
    0x52800844, // 0x98: insn_b: mov w4, #'B'
    0xd65f03c0, // 0x9c: insn_ret: ret
    0x00803519, // 0xa0: tcr: T0SZ 25, 4 KiB granule, WB inner shareable,
    0x00000002, // 0xa4:      EPD1 (no TTBR1 walks), IPS 40 bits
];

/// Level 1 block descriptors (AF, 1 GiB each): VA 0 → PA 0 device
/// (AttrIndx 1); VA RAM base → RAM base, normal inner shareable (AttrIndx
/// 0); VA RAM base + 1 GiB → RAM base, the same.
const TABLE: [u32; 6] = [0x00000405, 0, 0x40000701, 0, 0x40000701, 0];

#[test]
fn a_store_through_an_alias_to_a_page_that_gained_code_invalidates_that_code() {
    let pieces: [(usize, &[u32]); 3] = [
        (0, &ALIAS_WRITE_CALL_REWRITE_CALL),
        (0x2000, &[0]),
        (0x3000, &TABLE),
    ];
    let r = Vm::new(config(temp_file(&image(&pieces)), 1))
        .unwrap()
        .run(&mut NoFarMemory)
        .unwrap();
    assert_eq!(r.exit, GuestExit::PowerOff, "console: {}", r.console);
    // "AA" would mean the second call ran the first `mov` translated.
    assert_eq!(r.console, "AB");
}
