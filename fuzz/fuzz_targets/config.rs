//! Experiment config text (`apflab run CONFIG`) through the parser and its
//! validation. A config that loads must also be one the VMM accepts and
//! whose device tree builds: anything else would fail only when the run
//! starts, as a failed run instead of an error at load.

#![no_main]

use std::path::Path;

use apflab::Config;
use apflab_vmm::fdt;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The reader refuses non-UTF-8 before the parser sees it.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Relative paths (kernel, samples, store, policy files) resolve
    // beside the committed configs, as for `apflab run configs/X.toml`.
    let base_dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../configs"));
    let Ok(config) = Config::from_text("fuzz.toml", text, base_dir) else {
        return;
    };
    let vm = config.vm_config(false);
    if let Err(e) = vm.validate() {
        panic!("a config that loads is refused by the VMM: {e}");
    }
    if let Err(e) = fdt::build(vm.vcpus, vm.memory_mib << 20, &vm.bootargs) {
        panic!("a config that loads gives no device tree: {e}");
    }
});
