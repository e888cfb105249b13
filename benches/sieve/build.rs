//! Links the kernel with its own script (`link.ld`): loaded at 0x4020_0000,
//! past the room QEMU `virt` leaves for the device tree at the start of RAM.

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo");
    println!("cargo::rustc-link-arg-bins=-T{dir}/link.ld");
    println!("cargo::rerun-if-changed=link.ld");
    println!("cargo::rerun-if-changed=build.rs");
}
