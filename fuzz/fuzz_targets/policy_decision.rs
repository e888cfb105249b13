//! A valid policy module returning arbitrary decision words: the host must
//! hand on exactly the decisions that unpack, give the fallback for every
//! other word (counted as malformed), count failed notifications, and
//! disable the policy after the configured number of failures in a row.
//!
//! The module answers each fault with the fault's IPA as its decision word
//! and traps in a ready notification for an odd token, so the input (tagged
//! 9-byte records: even tag = a fault with that word as IPA, odd tag = a
//! ready notification for that token) chooses every answer. One compiled
//! module serves every input; each input gets a fresh instance.

#![no_main]

use std::sync::LazyLock;

use apflab_abi::policy::{Completion, Decision, FaultInfo, Policy};
use apflab_policy_host::{FailureCause, PolicyConfig, PolicyModule};
use libfuzzer_sys::fuzz_target;

const ECHO: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "apf_abi_version") (result i32) i32.const 2)
  (func (export "apf_decide")
    (param i32 i64 i32 i32 i32 i32 i64 i64) (result i64)
    local.get 1)
  (func (export "apf_on_ready") (param $token i64) (param i64)
    (if (i64.ne (i64.and (local.get $token) (i64.const 1)) (i64.const 0))
      (then unreachable)))
  (func (export "apf_on_run_end")))"#;

const MAX_FAILURES: u32 = 5;

static MODULE: LazyLock<PolicyModule> = LazyLock::new(|| {
    let config = PolicyConfig {
        max_consecutive_failures: MAX_FAILURES,
        ..PolicyConfig::default()
    };
    PolicyModule::from_bytes("echo.wat", ECHO.as_bytes(), &config).expect("the echo module loads")
});

fuzz_target!(|data: &[u8]| {
    let mut policy = MODULE.instantiate().expect("the echo module instantiates");
    // The host's books, kept here independently.
    let (mut in_a_row, mut disabled) = (0u32, false);
    let (mut malformed, mut trapped, mut after_disabled) = (0u64, 0u64, 0u64);
    let (mut decisions, mut notifications) = (0u64, 0u64);
    let fail = |in_a_row: &mut u32, disabled: &mut bool| {
        *in_a_row += 1;
        if *in_a_row >= MAX_FAILURES {
            *disabled = true;
        }
    };
    for record in data.as_chunks::<9>().0 {
        let word = u64::from_le_bytes(record[1..].try_into().expect("8 bytes"));
        if record[0] & 1 == 0 {
            decisions += 1;
            let fault = FaultInfo {
                ipa: word,
                ..FaultInfo::default()
            };
            let got = policy.decide(&fault);
            let expected = if disabled {
                after_disabled += 1;
                Decision::FALLBACK
            } else {
                // The echo module speaks ABI v2, whose decisions may carry
                // an (ignored) prefetch count.
                match Decision::unpack_v2(word as i64) {
                    Ok((d, _prefetch)) => {
                        in_a_row = 0;
                        d
                    }
                    Err(_) => {
                        malformed += 1;
                        fail(&mut in_a_row, &mut disabled);
                        Decision::FALLBACK
                    }
                }
            };
            assert_eq!(got, expected, "decision word {word:#x}");
        } else {
            notifications += 1;
            policy.on_complete(&Completion {
                asynchronous: true,
                token: word,
                ..Completion::default()
            });
            if !disabled {
                if word & 1 != 0 {
                    trapped += 1;
                    fail(&mut in_a_row, &mut disabled);
                } else {
                    in_a_row = 0;
                }
            }
        }
    }
    let stats = policy.stats();
    assert_eq!(stats.decisions, decisions);
    assert_eq!(stats.notifications, notifications);
    assert_eq!(stats.disabled, disabled);
    assert_eq!(
        stats.fallbacks.get(FailureCause::MalformedDecision),
        malformed
    );
    assert_eq!(stats.fallbacks.get(FailureCause::Disabled), after_disabled);
    assert_eq!(stats.failed_notifications.get(FailureCause::Trap), trapped);
});
