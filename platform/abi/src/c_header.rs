//! The C header of this ABI for the Linux guest's async PF client
//! (`arch/arm64/include/asm/apflab_abi.h` in `guest/linux/kernel/patches`).
//!
//! Every value in it comes from the constants of this crate, and every
//! offset of the control block is checked by a `static_assert` against
//! [`crate::apf::cb_offset`], so the kernel does not build against a
//! layout this crate does not have. The names are the C ones, prefixed
//! `APFLAB_` (the Rust modules' names would collide in C: `VERSION`,
//! `ALL`, `SUCCESS`), which is why this is a generator of its own rather
//! than cbindgen's output. The test in `guest/linux` (`kernel_header`)
//! fails when the header in the patch is not this one; `cargo run -p
//! apflab-abi --example linux-header` prints it.

use core::fmt::{self, Write};
use core::mem::size_of;

use crate::apf::{self, ControlBlock, cb_offset, features};
use crate::hypercall;
use crate::linux::APF_COUNTERS;
use crate::memory_map;
use crate::sdei;

/// Where the header goes in the kernel tree.
pub const PATH: &str = "arch/arm64/include/asm/apflab_abi.h";

/// The `#define`s: C name, value, and whether the value prints in hex.
fn defines() -> [(&'static str, u64, bool); 34] {
    [
        ("APFLAB_FN_FEATURES", hypercall::FN_FEATURES.into(), true),
        (
            "APFLAB_FN_APF_ENABLE",
            hypercall::FN_APF_ENABLE.into(),
            true,
        ),
        (
            "APFLAB_FN_APF_DISABLE",
            hypercall::FN_APF_DISABLE.into(),
            true,
        ),
        ("APFLAB_FN_APF_ACK", hypercall::FN_APF_ACK.into(), true),
        (
            "APFLAB_FN_APF_PAGE_REQUEST",
            hypercall::FN_APF_PAGE_REQUEST.into(),
            true,
        ),
        (
            "APFLAB_APF_F_NOT_PRESENT_DATA_ABORT",
            features::NOT_PRESENT_DATA_ABORT,
            true,
        ),
        (
            "APFLAB_APF_F_NOT_PRESENT_DEDICATED_EC",
            features::NOT_PRESENT_DEDICATED_EC,
            true,
        ),
        (
            "APFLAB_APF_F_READY_EXCEPTION",
            features::READY_EXCEPTION,
            true,
        ),
        (
            "APFLAB_APF_F_READY_INTERRUPT",
            features::READY_INTERRUPT,
            true,
        ),
        (
            "APFLAB_APF_F_GUEST_INITIATED",
            features::GUEST_INITIATED,
            true,
        ),
        ("APFLAB_APF_F_READY_RING", features::READY_RING, true),
        (
            "APFLAB_APF_F_KERNEL_MODE_ASYNC",
            features::KERNEL_MODE_ASYNC,
            true,
        ),
        ("APFLAB_APF_F_DOORBELL", features::DOORBELL, true),
        (
            "APFLAB_APF_F_NOT_PRESENT_SDEI",
            features::NOT_PRESENT_SDEI,
            true,
        ),
        (
            "APFLAB_APF_EC_NOT_PRESENT",
            apf::EC_APF_NOT_PRESENT.into(),
            true,
        ),
        ("APFLAB_APF_EC_READY", apf::EC_APF_READY.into(), true),
        ("APFLAB_APF_ISS_TOKEN_MASK", 0x1FF_FFFF, true),
        (
            "APFLAB_APF_MAX_OUTSTANDING",
            apf::MAX_OUTSTANDING as u64,
            false,
        ),
        ("APFLAB_APF_TOKEN_WAKE_ALL", apf::TOKEN_WAKE_ALL, true),
        ("APFLAB_APF_REASON_NONE", apf::REASON_NONE.into(), false),
        (
            "APFLAB_APF_REASON_NOT_PRESENT",
            apf::REASON_NOT_PRESENT.into(),
            false,
        ),
        (
            "APFLAB_APF_REASON_PAGE_READY",
            apf::REASON_PAGE_READY.into(),
            false,
        ),
        (
            "APFLAB_APF_ACTION_RESCHEDULE",
            apf::ACTION_RESCHEDULE.into(),
            false,
        ),
        ("APFLAB_APF_ACTION_HALT", apf::ACTION_HALT.into(), false),
        (
            "APFLAB_APF_ACTION_SLEEP_MASK",
            apf::ACTION_SLEEP_MASK.into(),
            true,
        ),
        (
            "APFLAB_APF_ACTION_REQUEST_PAGE",
            apf::ACTION_REQUEST_PAGE.into(),
            true,
        ),
        (
            "APFLAB_APF_GUEST_CAN_RESCHEDULE",
            apf::GUEST_CAN_RESCHEDULE.into(),
            true,
        ),
        ("APFLAB_APF_GUEST_IN_IDLE", apf::GUEST_IN_IDLE.into(), true),
        (
            "APFLAB_APF_GUEST_NO_INJECT",
            apf::GUEST_NO_INJECT.into(),
            true,
        ),
        (
            "APFLAB_APF_READY_RING_SLOTS",
            apf::READY_RING_SLOTS as u64,
            false,
        ),
        (
            "APFLAB_APF_CB_VERSION",
            apf::CONTROL_BLOCK_VERSION.into(),
            false,
        ),
        (
            "APFLAB_APF_CB_SIZE",
            size_of::<ControlBlock>() as u64,
            false,
        ),
        ("APFLAB_SDEI_EVENT_APF", sdei::EVENT_APF.into(), true),
        ("APFLAB_PAGE_SIZE", memory_map::PAGE_SIZE, false),
    ]
}

/// The control block's fields: C declaration and the offset it must have.
fn fields() -> [(&'static str, usize); 13] {
    [
        ("u32 version", cb_offset::VERSION),
        ("u32 reason", cb_offset::REASON),
        ("u64 token", cb_offset::TOKEN),
        ("u32 action", cb_offset::ACTION),
        ("u32 guest_state", cb_offset::GUEST_STATE),
        ("u32 runnable_tasks", cb_offset::RUNNABLE_TASKS),
        ("u32 preempt_count", cb_offset::PREEMPT_COUNT),
        ("u64 fault_ipa", cb_offset::FAULT_IPA),
        ("u32 ready_head", cb_offset::READY_HEAD),
        ("u32 ready_tail", cb_offset::READY_TAIL),
        ("u64 no_inject_start", cb_offset::NO_INJECT_START),
        ("u64 no_inject_end", cb_offset::NO_INJECT_END),
        (
            "u64 ready_ring[APFLAB_APF_READY_RING_SLOTS]",
            cb_offset::READY_RING,
        ),
    ]
}

/// Writes the header.
pub fn write(out: &mut dyn Write) -> fmt::Result {
    out.write_str(
        "/* SPDX-License-Identifier: GPL-2.0 */\n\
         /*\n\
         \x20* The apflab hypervisor interface of the async page fault client:\n\
         \x20* hypercall ids, feature bits, exception classes, tokens and the\n\
         \x20* per-CPU control block the host writes \"not present\" and \"page\n\
         \x20* ready\" into.\n\
         \x20*\n\
         \x20* Generated from apflab's platform/abi crate (c_header.rs) by\n\
         \x20* `cargo run -p apflab-abi --example linux-header`. Do not edit.\n\
         \x20*/\n\
         #ifndef __ASM_APFLAB_ABI_H\n\
         #define __ASM_APFLAB_ABI_H\n\
         \n\
         #include <linux/build_bug.h>\n\
         #include <linux/stddef.h>\n\
         #include <linux/types.h>\n\
         \n",
    )?;
    for (name, value, hex) in defines() {
        let value = if hex {
            // A value past 31 bits needs its type in C.
            let suffix = if value > 0x7fff_ffff { "UL" } else { "" };
            Number::Hex(value, suffix)
        } else {
            Number::Dec(value)
        };
        writeln!(out, "#define {name}\t{value}")?;
    }
    out.write_str(
        "\n/* The counters of /proc/apflab-apf, in the order of the guest's report. */\n\
         enum apflab_apf_counter {\n",
    )?;
    for name in APF_COUNTERS {
        writeln!(out, "\tAPFLAB_APF_COUNTER_{},", Upper(name))?;
    }
    out.write_str(
        "\tAPFLAB_APF_NR_COUNTERS\n\
         };\n\
         \n\
         static const char * const apflab_apf_counter_names[APFLAB_APF_NR_COUNTERS] = {\n",
    )?;
    for name in APF_COUNTERS {
        writeln!(out, "\t\"{name}\",")?;
    }
    out.write_str("};\n")?;
    out.write_str("\n/* The device tree node that carries the \"page ready\" PPI. */\n")?;
    writeln!(
        out,
        "#define APFLAB_DT_COMPATIBLE\t\"{}\"",
        memory_map::APF_COMPATIBLE
    )?;
    out.write_str(
        "\n/*\n\
         \x20* One per CPU, registered with APFLAB_FN_APF_ENABLE. Each field is\n\
         \x20* written by one side only and read with single accesses of its width.\n\
         \x20*/\n\
         struct apflab_apf_control_block {\n",
    )?;
    let mut reserved_at = 0;
    for (decl, offset) in fields() {
        if offset > reserved_at {
            // The gap is the block's reserved words.
            writeln!(out, "\tu32 reserved[{}];", (offset - reserved_at) / 4)?;
        }
        writeln!(out, "\t{decl};")?;
        reserved_at = offset + decl_size(decl);
    }
    out.write_str("} __aligned(64);\n\n")?;
    for (decl, offset) in fields() {
        let field = decl
            .rsplit(' ')
            .next()
            .and_then(|f| f.split('[').next())
            .unwrap_or(decl);
        writeln!(
            out,
            "static_assert(offsetof(struct apflab_apf_control_block, {field}) == {offset});"
        )?;
    }
    out.write_str(
        "static_assert(sizeof(struct apflab_apf_control_block) == APFLAB_APF_CB_SIZE);\n\
         \n\
         #endif /* __ASM_APFLAB_ABI_H */\n",
    )
}

/// Size in bytes of a field declared as `decl` in [`fields`].
fn decl_size(decl: &str) -> usize {
    let width = if decl.starts_with("u64") { 8 } else { 4 };
    if decl.contains('[') {
        width * apf::READY_RING_SLOTS
    } else {
        width
    }
}

/// A `#define`'s value as C spells it.
enum Number {
    Dec(u64),
    Hex(u64, &'static str),
}

impl fmt::Display for Number {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Number::Dec(v) => write!(f, "{v}"),
            Number::Hex(v, suffix) => write!(f, "0x{v:x}{suffix}"),
        }
    }
}

/// A counter's name as a C identifier part.
struct Upper<'a>(&'a str);

impl fmt::Display for Upper<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            f.write_char(c.to_ascii_uppercase())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Text {
        buf: [u8; 8192],
        len: usize,
    }

    impl Write for Text {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            let end = self.len + s.len();
            self.buf
                .get_mut(self.len..end)
                .ok_or(fmt::Error)?
                .copy_from_slice(s.as_bytes());
            self.len = end;
            Ok(())
        }
    }

    fn header() -> Text {
        let mut t = Text {
            buf: [0; 8192],
            len: 0,
        };
        write(&mut t).unwrap();
        t
    }

    fn text(t: &Text) -> &str {
        core::str::from_utf8(&t.buf[..t.len]).unwrap()
    }

    #[test]
    fn the_control_block_declares_every_byte() {
        // The declared fields and reserved words add up to the Rust size.
        let t = header();
        let s = text(&t);
        assert!(!s.contains("reserved"));
        assert!(s.contains("\tu64 no_inject_end;\n\tu64 ready_ring[APFLAB_APF_READY_RING_SLOTS];"));
        assert!(s.contains("#define APFLAB_APF_CB_SIZE\t576\n"));
        assert!(s.contains(
            "static_assert(offsetof(struct apflab_apf_control_block, ready_ring) == 64);"
        ));
    }

    #[test]
    fn values_come_from_the_constants() {
        let t = header();
        let s = text(&t);
        assert!(s.contains("#define APFLAB_FN_APF_ENABLE\t0xc6000001UL\n"));
        assert!(s.contains("#define APFLAB_APF_TOKEN_WAKE_ALL\t0xffffffffffffffffUL\n"));
        assert!(s.contains("#define APFLAB_APF_EC_NOT_PRESENT\t0x1e\n"));
        assert!(s.contains("#define APFLAB_SDEI_EVENT_APF\t0x40400000\n"));
        assert!(s.contains("\tAPFLAB_APF_COUNTER_NOT_PRESENT,\n"));
        assert!(s.contains("\t\"halted_ns\",\n};"));
    }
}
