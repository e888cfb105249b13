//! The C header the kernel patches carry (`asm/apflab_abi.h`, added by the
//! first patch of `guest/linux/kernel/patches`) is the one
//! `apflab_abi::c_header` generates: the kernel and the VMM cannot drift
//! apart on a constant or the control block's layout.

use std::path::Path;

/// The lines the patch adds to `path`, as the file's text.
fn added_file(patch: &str, path: &str) -> Option<String> {
    let start = patch.find(&format!("+++ b/{path}\n"))?;
    let mut lines = patch[start..].lines().skip(1);
    let hunk = lines.next()?;
    if !hunk.starts_with("@@ -0,0 +1") {
        return None;
    }
    let mut text = String::new();
    for line in lines.map_while(|l| l.strip_prefix('+')) {
        text.push_str(line);
        text.push('\n');
    }
    Some(text)
}

#[test]
fn the_patched_kernel_carries_the_generated_header() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("kernel/patches");
    let mut patches: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "patch"))
        .collect();
    patches.sort();
    let first = std::fs::read_to_string(&patches[0]).unwrap();
    let in_patch = added_file(&first, apflab_abi::c_header::PATH).unwrap_or_else(|| {
        panic!(
            "{} adds no {}",
            patches[0].display(),
            apflab_abi::c_header::PATH
        )
    });
    let mut generated = String::new();
    apflab_abi::c_header::write(&mut generated).unwrap();
    assert!(
        in_patch == generated,
        "{} carries another header than platform/abi generates: regenerate it with \
         `cargo run -p apflab-abi --example linux-header` (see guest/linux/kernel/README.md)",
        patches[0].display()
    );
}
