//! Guests and configs that used to hang the emu backend, with no limit to
//! catch them: a branch to address 0, slices shorter than the engine's
//! blocks, and slices or instruction costs that put the virtual-time limit
//! out of reach. Each run here is bounded by a host timeout, so a hang
//! fails the test instead of stalling it. Images are raw (loaded at RAM
//! base 0x4000_0000, entry there, MMU off, EL1h).

mod common;

use std::sync::mpsc;
use std::time::Duration;

use apflab_vmm::config::{MAX_SLICE_INSTRUCTIONS, MIN_SLICE_INSTRUCTIONS};
use apflab_vmm::{GuestExit, NoFarMemory, RunOutcome, Vm, VmConfig};
use common::{SYSTEM_OFF, config, image, temp_file};

/// Runs `cfg` on a thread of its own; fails the test if it has not ended
/// within 60 s of host time.
fn run_bounded(cfg: VmConfig) -> RunOutcome {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let out = Vm::new(cfg).unwrap().run(&mut NoFarMemory).unwrap();
        let _ = tx.send(out);
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("the run ended within 60 s of host time")
}

#[test]
fn a_guest_that_branches_to_address_0_faults_there_instead_of_running_nothing_forever() {
    let jump_to_0 = [
        0xd2800000, // 0x000: movz x0, #0
        0xd61f0000, // 0x004: br x0
    ];
    let out = run_bounded(config(temp_file(&image(&[(0, &jump_to_0)])), 1));
    match &out.exit {
        // An instruction abort (external: nothing answers at 0), taken to
        // VBAR_EL1 = 0, where the same happens again.
        GuestExit::Crash(msg) => assert!(
            msg.contains("ESR_EL1 0x86000010") && msg.contains("address 0x0"),
            "{msg}"
        ),
        e => panic!("expected a crash at address 0, got {e:?}"),
    }
}

/// 600 `add x1, x1, #1` in a row (longer than the engine's longest block,
/// 512 instructions), then PSCI SYSTEM_OFF.
fn long_block() -> Vec<u32> {
    let mut words = vec![0x91000421; 600];
    words.extend_from_slice(&SYSTEM_OFF);
    words
}

#[test]
fn the_shortest_slice_accepted_still_runs_the_longest_block_and_shorter_ones_are_refused() {
    let path = temp_file(&image(&[(0, &long_block())]));
    let mut cfg = config(path.clone(), 1);
    cfg.slice_instructions = MIN_SLICE_INSTRUCTIONS;
    let out = run_bounded(cfg);
    assert_eq!(out.exit, GuestExit::PowerOff);
    assert!(
        out.metrics.instructions >= 603,
        "{}",
        out.metrics.instructions
    );

    // A slice of 80 ended before the first block every time (the block
    // that reaches the budget runs in the next slice): refused at once.
    for slice in [0, 1, 80, MIN_SLICE_INSTRUCTIONS - 1] {
        let mut cfg = config(path.clone(), 1);
        cfg.slice_instructions = slice;
        let e = Vm::new(cfg).err().expect("refused").to_string();
        assert!(
            e.contains(&format!("slice_instructions = {slice}")) && e.contains("513"),
            "{e}"
        );
    }
}

#[test]
fn configs_that_put_the_virtual_time_limit_out_of_reach_are_refused() {
    let path = temp_file(&image(&[(0, &SYSTEM_OFF)]));
    let err = |f: &dyn Fn(&mut VmConfig)| {
        let mut cfg = config(path.clone(), 1);
        f(&mut cfg);
        Vm::new(cfg).err().expect("refused").to_string()
    };
    let e = err(&|c| c.slice_instructions = u64::MAX);
    assert!(
        e.contains("slice_instructions = 18446744073709551615"),
        "{e}"
    );
    let e = err(&|c| c.slice_instructions = MAX_SLICE_INSTRUCTIONS + 1);
    assert!(e.contains("1000000000"), "{e}");
    let e = err(&|c| c.cost.ns_per_instruction = 1e-300);
    assert!(
        e.contains("cost.ns_per_instruction") && e.contains("0.01"),
        "{e}"
    );
    // Costs near 2^63 would wrap the virtual clock after two exits.
    let e = err(&|c| c.cost.exit_ns = 1 << 63);
    assert!(e.contains("cost.exit_ns = 9223372036854775808"), "{e}");
    let e = err(&|c| c.cost.hypercall_ns = u64::MAX);
    assert!(e.contains("cost.hypercall_ns"), "{e}");
    let e = err(&|c| c.cost.inject_ns = u64::MAX);
    assert!(e.contains("cost.inject_ns"), "{e}");
    let e = err(&|c| c.max_virtual_ns = u64::MAX);
    assert!(e.contains("max_virtual_ns"), "{e}");
    let e = err(&|c| c.memory_mib = 1 << 40);
    assert!(e.contains("memory"), "{e}");
    // The longest slice accepted still ends, and the run with it.
    let mut cfg = config(temp_file(&image(&[(0, &long_block())])), 1);
    cfg.slice_instructions = MAX_SLICE_INSTRUCTIONS;
    assert_eq!(run_bounded(cfg).exit, GuestExit::PowerOff);
}
