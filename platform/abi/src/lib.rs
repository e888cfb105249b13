//! The one contract shared by the apflab VMM, its arm64 guest and its Wasm
//! policies.
//!
//! Everything that both sides of a boundary must agree on lives here and only
//! here: the guest memory map, the boot information keys and their limits, hypercall function
//! ids, the async page fault control block and token format, the exception
//! classes used for notifications, the SDEI firmware interface, the guest's
//! results report and the policy ABI. Layouts are `#[repr(C)]` and checked with `size_of`/`offset_of`
//! assertions at compile time, so a change on one side that the other side
//! would not understand fails to build.
#![no_std]

pub mod addr;
pub mod apf;
pub mod boot;
pub mod boot_point;
pub mod c_header;
pub mod hypercall;
pub mod limits;
pub mod linux;
pub mod memory_map;
pub mod pattern;
pub mod policy;
pub mod report;
pub mod sdei;
pub mod trace;
