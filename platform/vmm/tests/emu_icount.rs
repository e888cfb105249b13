//! The engine's own instruction counter (third_party/unicorn, patches 0001
//! and 0003): slice budgets end at block boundaries whatever the slice
//! length, a budget that runs out inside a long block lets the block run
//! to its end, counts stay exact, and an interrupt that waits for the
//! guest to unmask IRQs is entered right after the unmask. Images are raw
//! (loaded at RAM base 0x4000_0000, entry there, MMU off, EL1h); the words
//! were assembled with llvm-mc and carry their source.

mod common;

use apflab_vmm::{GuestExit, NoFarMemory, RunOutcome, Vm};
use common::{TIMER_SETUP, config, image, temp_file};

fn run(pieces: &[(usize, &[u32])], slice: u64) -> RunOutcome {
    let mut cfg = config(temp_file(&image(pieces)), 1);
    cfg.slice_instructions = slice;
    Vm::new(cfg).unwrap().run(&mut NoFarMemory).unwrap()
}

/// Instructions in the loop's block: 400 adds and the branch back.
const LOOP_BLOCK: u64 = 401;

/// At 0x4c (after TIMER_SETUP, which unmasks IRQs at 0x48): x1 = 0, then
/// a loop whose block is 400 `add x1, x1, #1` and the branch back.
fn long_loop() -> Vec<u32> {
    let mut words = vec![0xd2800001]; // 0x04c: mov x1, #0
    words.extend(std::iter::repeat_n(0x91000421, 400)); // 0x050: add x1, x1, #1
    words.push(0x17fffe70); // 0x690: b 0x050
    words
}

/// VBAR + 0x280 (IRQ, current EL with SP_EL1): prints 'B' if the
/// interrupt came at the loop's block boundary (ELR_EL1 = RAM base +
/// 0x50), 'W' if x1 counts whole blocks (a multiple of 400), then powers
/// off.
const BOUNDARY_IRQ: [u32; 16] = [
    0xd5384022, // 0x000: mrs x2, elr_el1
    0xcb090042, // 0x004: sub x2, x2, x9
    0xd2a12003, // 0x008: movz x3, #0x900, lsl #16   (PL011)
    0xf101405f, // 0x00c: cmp x2, #0x50
    0x54000061, // 0x010: b.ne 1f
    0x52800844, // 0x014: mov w4, #'B'
    0xb9000064, // 0x018: str w4, [x3]
    0xd2803205, // 0x01c: 1: movz x5, #400
    0x9ac50826, // 0x020: udiv x6, x1, x5
    0x9b0584c7, // 0x024: msub x7, x6, x5, x1
    0xb5000067, // 0x028: cbnz x7, 2f
    0x52800ae4, // 0x02c: mov w4, #'W'
    0xb9000064, // 0x030: str w4, [x3]
    0xd2800100, // 0x034: 2: movz x0, #0x8
    0xf2b08000, // 0x038: movk x0, #0x8400, lsl #16  (SYSTEM_OFF)
    0xd4000002, // 0x03c: hvc #0
];

/// The timer's deadline falls inside the loop's 401-instruction block for
/// any slice length: the budget that runs out there lets the block run to
/// its end (x1 counts whole blocks) and the interrupt is entered at the
/// block boundary. The total is exact (setup, whole blocks, handler) and
/// the same for slices shorter and longer than the block.
#[test]
fn a_budget_that_runs_out_inside_a_long_block_ends_the_slice_at_its_end() {
    let lp = long_loop();
    let pieces: [(usize, &[u32]); 3] = [
        (0, &TIMER_SETUP),
        (0x4c, &lp),
        (0x800 + 0x280, &BOUNDARY_IRQ),
    ];
    let runs: Vec<RunOutcome> = [513, 4096, 100_000]
        .into_iter()
        .map(|slice| run(&pieces, slice))
        .collect();
    let first = &runs[0];
    assert_eq!(first.exit, GuestExit::PowerOff);
    assert_eq!(first.console, "BW");
    // TIMER_SETUP's 19 and the `mov`, whole loop blocks, the handler's 16.
    let loops = first.metrics.instructions - 19 - 1 - 16;
    assert_eq!(loops % LOOP_BLOCK, 0, "{}", first.metrics.instructions);
    // 1 ms at the default cost is millions of instructions.
    assert!(loops / LOOP_BLOCK > 5_000, "{loops}");
    for r in &runs[1..] {
        assert_eq!(r.console, first.console);
        assert_eq!(r.metrics.instructions, first.metrics.instructions);
        assert_eq!(r.metrics.interrupts, first.metrics.interrupts);
    }
}

/// With IRQs masked, the timer fires during a long countdown; the guest
/// then unmasks in the middle of straight-line code. The interrupt is
/// entered at the instruction right after the `msr daifclr` (0x84), with
/// none of the adds after it executed.
const MASKED_UNTIL_0X80: [u32; 26] = [
    0xd2a00405, // 0x048: movz x5, #0x20, lsl #16
    0xf10004a5, // 0x04c: 1: subs x5, x5, #1
    0x54ffffe1, // 0x050: b.ne 1b
    0xd2800001, // 0x054: mov x1, #0
    0x91000421, // 0x058: add x1, x1, #1
    0x91000421, // 0x05c: add x1, x1, #1
    0x91000421, // 0x060: add x1, x1, #1
    0x91000421, // 0x064: add x1, x1, #1
    0x91000421, // 0x068: add x1, x1, #1
    0x91000421, // 0x06c: add x1, x1, #1
    0x91000421, // 0x070: add x1, x1, #1
    0x91000421, // 0x074: add x1, x1, #1
    0x91000421, // 0x078: add x1, x1, #1
    0x91000421, // 0x07c: add x1, x1, #1
    0xd50342ff, // 0x080: msr daifclr, #2
    0x91000421, // 0x084: add x1, x1, #1
    0x91000421, // 0x088: add x1, x1, #1
    0x91000421, // 0x08c: add x1, x1, #1
    0x91000421, // 0x090: add x1, x1, #1
    0x91000421, // 0x094: add x1, x1, #1
    0x91000421, // 0x098: add x1, x1, #1
    0x91000421, // 0x09c: add x1, x1, #1
    0x91000421, // 0x0a0: add x1, x1, #1
    0x91000421, // 0x0a4: add x1, x1, #1
    0x91000421, // 0x0a8: add x1, x1, #1
    0x14000000, // 0x0ac: 2: b 2b
];

/// VBAR + 0x280: prints 'U' if ELR_EL1 is RAM base + 0x84, 'X' if x1 is
/// 10, then powers off.
const UNMASK_IRQ: [u32; 14] = [
    0xd5384022, // 0x000: mrs x2, elr_el1
    0xcb090042, // 0x004: sub x2, x2, x9
    0xd2a12003, // 0x008: movz x3, #0x900, lsl #16
    0xf102105f, // 0x00c: cmp x2, #0x84
    0x54000061, // 0x010: b.ne 1f
    0x52800aa4, // 0x014: mov w4, #'U'
    0xb9000064, // 0x018: str w4, [x3]
    0xf100283f, // 0x01c: 1: cmp x1, #10
    0x54000061, // 0x020: b.ne 2f
    0x52800b04, // 0x024: mov w4, #'X'
    0xb9000064, // 0x028: str w4, [x3]
    0xd2800100, // 0x02c: 2: movz x0, #0x8
    0xf2b08000, // 0x030: movk x0, #0x8400, lsl #16
    0xd4000002, // 0x034: hvc #0
];

#[test]
fn an_interrupt_waiting_for_an_unmask_is_entered_right_after_it() {
    // TIMER_SETUP without its last word, the unmask.
    let pieces: [(usize, &[u32]); 3] = [
        (0, &TIMER_SETUP[..18]),
        (0x48, &MASKED_UNTIL_0X80),
        (0x800 + 0x280, &UNMASK_IRQ),
    ];
    for slice in [513, 100_000] {
        let out = run(&pieces, slice);
        assert_eq!(out.exit, GuestExit::PowerOff, "slice {slice}");
        assert_eq!(out.console, "UX", "slice {slice}");
        // 18 + the countdown's 1 + 2 x 0x200000 + 12 up to the unmask, and
        // the handler's 14.
        assert_eq!(
            out.metrics.instructions,
            18 + 1 + 2 * 0x20_0000 + 12 + 14,
            "slice {slice}"
        );
    }
}
