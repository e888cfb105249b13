//! apflab-sieve: a compute kernel shaped like a third party's bare-metal
//! test program, for `benches/qemu-ratio`. On QEMU's `virt` board (and on
//! apflab, which models it) it identity-maps RAM and the devices with 1 GiB
//! blocks, turns the MMU and caches on, runs a byte-array sieve of
//! Eratosthenes over 16 Mi numbers [`PASSES`] times, prints the prime
//! count on the PL011 and powers off with PSCI. It uses nothing of apflab
//! (no command line, no hypercalls beyond PSCI), so both machines run the
//! same image.

#![no_std]
#![no_main]

use core::arch::{asm, global_asm};
use core::cell::UnsafeCell;
use core::panic::PanicInfo;
use core::ptr::{read_volatile, write_volatile};

/// Numbers sieved per pass.
const N: usize = 1 << 24;
/// Sieve passes (each over the whole array again).
const PASSES: usize = 2;
/// The PL011 of the virt board.
const UART: usize = 0x0900_0000;
/// PSCI SYSTEM_OFF (SMC32 function id), through HVC as on QEMU virt.
const PSCI_SYSTEM_OFF: u64 = 0x8400_0008;

// Boot: zero .bss, a stack, the page table and the MMU, then Rust.
global_asm!(
    r#"
    .section .text.boot, "ax"
    .global _start
_start:
    adrp    x2, __bss_start
    add     x2, x2, :lo12:__bss_start
    adrp    x3, __bss_end
    add     x3, x3, :lo12:__bss_end
1:  cmp     x2, x3
    b.hs    2f
    stp     xzr, xzr, [x2], #16
    b       1b
2:  adrp    x2, stack_top
    add     x2, x2, :lo12:stack_top
    mov     sp, x2

    // Level 1, 4 KiB granule, 39-bit VA: [0, 1 GiB) device (attr 1,
    // execute-never), [1 GiB, 2 GiB) RAM (attr 0, inner shareable).
    adrp    x0, l1_table
    ldr     x1, =0x0060000000000405
    str     x1, [x0]
    ldr     x1, =0x40000701
    str     x1, [x0, #8]
    // MAIR: attr 0 normal write-back, attr 1 device nGnRnE.
    mov     x1, #0xff
    msr     mair_el1, x1
    // TCR: T0SZ 25, inner/outer write-back, inner shareable, 4 KiB,
    // TTBR1 walks disabled, 40-bit IPS.
    ldr     x1, =0x200803519
    msr     tcr_el1, x1
    msr     ttbr0_el1, x0
    dsb     ish
    tlbi    vmalle1
    dsb     ish
    isb
    // SCTLR_EL1: MMU, data and instruction caches on; alignment checks
    // and WXN off.
    mrs     x1, sctlr_el1
    mov     x2, #0x1005
    orr     x1, x1, x2
    bic     x1, x1, #0x2
    bic     x1, x1, #0x80000
    msr     sctlr_el1, x1
    isb
    bl      kmain
3:  wfe
    b       3b
    .ltorg

    .section .bss.boot, "aw", @nobits
    .balign 4096
l1_table:
    .space  4096
    .balign 16
    .space  0x10000
stack_top:
"#
);

/// The sieve's array (in .bss, which the boot code zeroes).
struct Sieve(UnsafeCell<[u8; N]>);

// SAFETY: one CPU runs this kernel.
unsafe impl Sync for Sieve {}

static SIEVE: Sieve = Sieve(UnsafeCell::new([0; N]));

/// One pass: marks the composites below `s.len()`, returns the primes.
fn sieve(s: &mut [u8]) -> usize {
    s.fill(1);
    s[0] = 0;
    s[1] = 0;
    let mut i = 2;
    while i * i < s.len() {
        if s[i] != 0 {
            let mut j = i * i;
            while j < s.len() {
                s[j] = 0;
                j += i;
            }
        }
        i += 1;
    }
    s.iter().filter(|&&b| b != 0).count()
}

fn putc(c: u8) {
    // SAFETY: the PL011's flag and data registers, mapped as device
    // memory; TXFF is bit 5 of UARTFR.
    unsafe {
        while read_volatile((UART + 0x18) as *const u32) & (1 << 5) != 0 {}
        write_volatile(UART as *mut u32, u32::from(c));
    }
}

fn puts(s: &str) {
    s.bytes().for_each(putc);
}

fn put_decimal(mut n: usize) {
    let mut digits = [0u8; 20];
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    digits[..len].iter().rev().for_each(|&d| putc(d));
}

fn system_off() -> ! {
    // SAFETY: PSCI SYSTEM_OFF does not return; if it did, the loop parks
    // the CPU.
    unsafe { asm!("hvc #0", in("x0") PSCI_SYSTEM_OFF, options(nomem, nostack)) };
    loop {
        // SAFETY: waits for an event; nothing else runs.
        unsafe { asm!("wfe", options(nomem, nostack)) };
    }
}

/// Entered from `_start` with the MMU on.
#[unsafe(no_mangle)]
extern "C" fn kmain() -> ! {
    // SAFETY: the only reference to the array, on the only CPU.
    let s = unsafe { &mut *SIEVE.0.get() };
    let mut primes = 0;
    for _ in 0..PASSES {
        primes = sieve(s);
    }
    puts("sieve: ");
    put_decimal(PASSES);
    puts(" passes, ");
    put_decimal(primes);
    puts(" primes below ");
    put_decimal(N);
    puts("\n");
    system_off()
}

#[panic_handler]
fn panic(_: &PanicInfo) -> ! {
    puts("sieve: panic\n");
    system_off()
}
