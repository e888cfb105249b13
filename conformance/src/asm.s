// virt-conformance: boot, exception vectors and the instruction-level test
// helpers. Everything a test must pin to one instruction (the address an
// exception is taken at, the instruction after an unmask) lives here.

    .section .text.boot, "ax"
    .global _start
_start:
    // Only the boot CPU enters here; secondaries enter at secondary_entry.
    mov     x19, x0
    adrp    x2, __bss_start
    add     x2, x2, :lo12:__bss_start
    adrp    x3, __bss_end
    add     x3, x3, :lo12:__bss_end
1:  cmp     x2, x3
    b.hs    2f
    str     xzr, [x2], #8
    b       1b
2:  mov     x0, #0
    bl      cpu_setup
    mov     x0, x19
    bl      kmain
park:
    wfe
    b       park

    // x0 = CPU number (the PSCI context id): stack and vectors, then Rust.
    .global secondary_entry
secondary_entry:
    mov     x19, x0
    bl      cpu_setup
    mov     x0, x19
    bl      secondary_main
    b       park

    // x0 = CPU number: SP = top of that CPU's stack, VBAR_EL1 = vectors.
cpu_setup:
    adrp    x2, STACKS
    add     x2, x2, :lo12:STACKS
    add     x3, x0, #1
    lsl     x3, x3, #14
    add     x2, x2, x3
    mov     sp, x2
    adrp    x2, vectors
    add     x2, x2, :lo12:vectors
    msr     vbar_el1, x2
    isb
    ret

// Vector table: each entry saves x0/x1, passes its number and joins the
// common path, which saves the rest and calls `exception(frame, kind)`.
.macro VENTRY kind
    .balign 0x80
    sub     sp, sp, #0x120
    stp     x0, x1, [sp]
    mov     x1, #\kind
    b       exc_common
.endm

    .section .text.vectors, "ax"
    .balign 0x800
    .global vectors
vectors:
    VENTRY 0
    VENTRY 1
    VENTRY 2
    VENTRY 3
    VENTRY 4
    VENTRY 5
    VENTRY 6
    VENTRY 7
    VENTRY 8
    VENTRY 9
    VENTRY 10
    VENTRY 11
    VENTRY 12
    VENTRY 13
    VENTRY 14
    VENTRY 15

exc_common:
    stp     x2, x3, [sp, #16]
    stp     x4, x5, [sp, #32]
    stp     x6, x7, [sp, #48]
    stp     x8, x9, [sp, #64]
    stp     x10, x11, [sp, #80]
    stp     x12, x13, [sp, #96]
    stp     x14, x15, [sp, #112]
    stp     x16, x17, [sp, #128]
    stp     x18, x19, [sp, #144]
    stp     x20, x21, [sp, #160]
    stp     x22, x23, [sp, #176]
    stp     x24, x25, [sp, #192]
    stp     x26, x27, [sp, #208]
    stp     x28, x29, [sp, #224]
    mrs     x2, elr_el1
    stp     x30, x2, [sp, #240]
    mrs     x3, spsr_el1
    mrs     x2, esr_el1
    mrs     x4, far_el1
    str     x3, [sp, #256]
    stp     x2, x4, [sp, #264]
    mov     x0, sp
    bl      exception
    ldp     x30, x2, [sp, #240]
    ldr     x3, [sp, #256]
    msr     elr_el1, x2
    msr     spsr_el1, x3
    ldp     x2, x3, [sp, #16]
    ldp     x4, x5, [sp, #32]
    ldp     x6, x7, [sp, #48]
    ldp     x8, x9, [sp, #64]
    ldp     x10, x11, [sp, #80]
    ldp     x12, x13, [sp, #96]
    ldp     x14, x15, [sp, #112]
    ldp     x16, x17, [sp, #128]
    ldp     x18, x19, [sp, #144]
    ldp     x20, x21, [sp, #160]
    ldp     x22, x23, [sp, #176]
    ldp     x24, x25, [sp, #192]
    ldp     x26, x27, [sp, #208]
    ldp     x28, x29, [sp, #224]
    ldp     x0, x1, [sp]
    add     sp, sp, #0x120
    eret

    .section .text.helpers, "ax"
// One faulting instruction each, first in its function, so that its
// address is the function's.
    .global do_udf
do_udf:
    udf     #0
    ret
    .global do_brk
do_brk:
    brk     #0x1234
    ret
    .global do_svc
do_svc:
    svc     #0x42
    ret
    .global read_sctlr_el3
read_sctlr_el3:
    mrs     x0, sctlr_el3
    ret
    .global read_hcr_el2
read_hcr_el2:
    mrs     x0, hcr_el2
    ret
    .global read_impdef
read_impdef:
    mrs     x0, s3_0_c11_c15_7
    ret
    .global do_fmov
do_fmov:
    .inst   0x9e670000          // fmov d0, x0
    ret
    .global read_pmcr
read_pmcr:
    mrs     x0, pmcr_el0
    ret
    .global load_u8
load_u8:
    ldrb    w0, [x0]
    ret
    .global load_u64
load_u64:
    ldr     x0, [x0]
    ret
    .global store_u8
store_u8:
    strb    w1, [x0]
    ret
// An unprivileged load: at EL1, with EL0's permissions.
    .global load_u8_unprivileged
load_u8_unprivileged:
    ldtrb   w0, [x0]
    ret
// PSTATE.PAN = x0 (MSR PAN, as its system register, S3_0_C4_C2_3).
    .global set_pan
set_pan:
    lsl     x0, x0, #22
    msr     S3_0_C4_C2_3, x0
    ret
    .global call_addr
call_addr:
    stp     x29, x30, [sp, #-16]!
    blr     x0
    ldp     x29, x30, [sp], #16
    ret

// Unmask IRQs four ways; each returns in x0 the address of the instruction
// the architecture takes a pending IRQ at.
    .global unmask_daifclr
unmask_daifclr:
    adr     x0, 1f
    msr     daifclr, #2
1:  nop
    msr     daifset, #2
    ret
    .global unmask_msr_daif
unmask_msr_daif:
    adr     x0, 1f
    mrs     x1, daif
    bic     x1, x1, #0x80
    msr     daif, x1
1:  nop
    msr     daifset, #2
    ret
    .global unmask_eret
unmask_eret:
    adr     x0, 1f
    msr     elr_el1, x0
    mov     x1, #0x345          // EL1h, D, A, F masked, I clear
    msr     spsr_el1, x1
    eret
1:  nop
    msr     daifset, #2
    ret
    .global unmask_wfi
unmask_wfi:
    adr     x0, 1f
    msr     daifclr, #2
    .global unmask_wfi_wfi
unmask_wfi_wfi:
    wfi
1:  nop
    msr     daifset, #2
    ret
    .global wfi_masked
wfi_masked:
    wfi
    ret

// Software step at EL1: x0 = MDSCR_EL1 for the run, x1 = SPSR_EL1.SS.
// Returns with an ERET to step_target, D clear, so that the nops there are
// stepped (the handler counts the steps and ends stepping).
    .global step_run
step_run:
    msr     mdscr_el1, x0
    isb
    adr     x2, step_target
    msr     elr_el1, x2
    mov     x2, #0x1c5          // EL1h, A, I, F masked, D clear
    orr     x2, x2, x1
    msr     spsr_el1, x2
    eret
    .global step_target
step_target:
    nop
    nop
    nop
    msr     daifset, #8
    ret

// A function to put a hardware breakpoint on: returns 7.
    .global bp_target
bp_target:
    mov     x0, #7
    ret

// Runs EL0 code: x0 = entry, x1 = EL0 stack, x2 = argument in EL0's x0.
// Returns EL0's x0 when EL0 makes `svc #1` (the handler resumes at
// el0_return at EL1). run_el0_stepped returns to EL0 with SPSR_EL1.SS set.
    .global run_el0_stepped
run_el0_stepped:
    mov     x11, #(1 << 21)
    b       1f
    .global run_el0
run_el0:
    mov     x11, #0
1:
    adrp    x9, EL0_SAVED
    add     x9, x9, :lo12:EL0_SAVED
    stp     x19, x20, [x9, #0]
    stp     x21, x22, [x9, #16]
    stp     x23, x24, [x9, #32]
    stp     x25, x26, [x9, #48]
    stp     x27, x28, [x9, #64]
    stp     x29, x30, [x9, #80]
    mov     x10, sp
    str     x10, [x9, #96]
    msr     sp_el0, x1
    msr     elr_el1, x0
    mov     x10, #0x3c0         // EL0t, all masked
    orr     x10, x10, x11
    msr     spsr_el1, x10
    mov     x0, x2
    eret
    .global el0_return
el0_return:
    adrp    x9, EL0_SAVED
    add     x9, x9, :lo12:EL0_SAVED
    ldp     x19, x20, [x9, #0]
    ldp     x21, x22, [x9, #16]
    ldp     x23, x24, [x9, #32]
    ldp     x25, x26, [x9, #48]
    ldp     x27, x28, [x9, #64]
    ldp     x29, x30, [x9, #80]
    ldr     x10, [x9, #96]
    mov     sp, x10
    ret

// EL0 code, on a page of its own (mapped EL0-executable by the tests).
    .section .el0, "ax"
    .global el0_base
el0_base:
el0_load:                       // el0_base + 0
    ldr     x0, [x0]
    svc     #1
el0_mrs_sctlr:                  // + 8
    mrs     x0, sctlr_el1
    svc     #1
el0_branch:                     // + 16
    br      x0
    .global el0_exit
el0_exit:                       // + 20
    svc     #1
el0_svc:                        // + 24
    svc     #0x77
    svc     #1
el0_wfi:                        // + 32
    wfi
    svc     #1
el0_mrs_ctr:                    // + 40
    mrs     x0, ctr_el0
    svc     #1
el0_nops:                       // + 48
    nop
    nop
    svc     #1

// A page the tests map execute-never at EL1.
    .section .xn, "ax"
    .global xn_page
xn_page:
    ret
