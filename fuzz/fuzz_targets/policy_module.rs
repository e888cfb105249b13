//! Policy modules (`[policy] module = FILE`, `apflab policy check`): any
//! bytes, binary Wasm or text, through loading (size, compilation, the
//! import and export checks, the start function and the ABI version under
//! fuel), and a module that loads through a run's calls: decisions, ready
//! notifications and the end of the run, each under fuel and the memory
//! and table limits. A call that fails must give the fallback decision and
//! be counted, never unwind into the VMM.

#![no_main]

use apflab_abi::policy::{Completion, Decision, FaultInfo, Policy};
use apflab_policy_host::{PolicyConfig, PolicyModule};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Less fuel than a run gets, so that a module that loops costs the
    // fuzzer milliseconds, not the default's tenths of a second.
    let config = PolicyConfig {
        fuel_per_call: 10_000,
        max_consecutive_failures: 4,
        ..PolicyConfig::default()
    };
    let Ok(module) = PolicyModule::from_bytes("fuzz.wasm", data, &config) else {
        return;
    };
    let Ok(mut policy) = module.instantiate() else {
        return;
    };
    let mut fault = FaultInfo {
        vcpu: 1,
        ipa: 0x4200_0000,
        el: 0,
        can_reschedule: true,
        runnable: 2,
        outstanding: 0,
        ..FaultInfo::default()
    };
    for i in 0..8u64 {
        fault.ipa += i << 12;
        fault.now_ns = i * 1_000;
        let decision = policy.decide(&fault);
        assert_eq!(
            Decision::unpack(decision.pack()),
            Ok(decision),
            "a decision the host hands on is well formed"
        );
        policy.on_complete(&Completion {
            vcpu: 1,
            asynchronous: i % 2 == 0,
            token: i,
            ipa: fault.ipa,
            fetch_ns: 10_000,
            wait_ns: 10_000,
            now_ns: fault.now_ns + 10_000,
        });
    }
    policy.on_run_end();
    let stats = policy.stats();
    assert_eq!(stats.decisions, 8);
    assert!(stats.fallbacks.total() <= 8, "{stats:?}");
});
