//! Write an apflab async page fault policy in about twenty lines of Rust.
//!
//! A policy is a type implementing [`Policy`] (from the shared ABI crate, so
//! the very same code also runs natively on the host). [`export_policy!`]
//! turns it into a module the host can load: on `wasm32` it emits the ABI v2
//! exports (`apf_abi_version`, `apf_decide`, `apf_on_ready`,
//! `apf_on_run_end`) around one value of the type that lives for the whole
//! run; on any other target it emits nothing, so the crate is also a plain
//! Rust library.
//!
//! ```
//! use apflab_policy_sdk::{Decision, FaultInfo, Policy};
//!
//! /// Sync in kernel mode, otherwise the RFCv2 transport with a reschedule.
//! #[derive(Default)]
//! pub struct Example;
//!
//! impl Policy for Example {
//!     fn decide(&mut self, fault: &FaultInfo) -> Decision {
//!         if fault.el != 0 {
//!             return Decision::Sync { prefetch: 0 };
//!         }
//!         apflab_policy_sdk::rfcv2(apflab_policy_sdk::Sleep::Reschedule)
//!     }
//! }
//!
//! apflab_policy_sdk::export_policy!(Example);
//! ```
//!
//! The crate of such a policy is `crate-type = ["cdylib", "rlib"]` and starts
//! with `#![cfg_attr(target_arch = "wasm32", no_std)]`; build it with
//! `cargo build --release --target wasm32-unknown-unknown`.
//!
//! On `wasm32` this crate also provides the panic handler (feature
//! `panic-handler`, on by default): a panic traps, the host counts the trap
//! and uses its fallback decision for that fault.
#![no_std]

mod cell;
mod log;

pub use apflab_abi::apf::MAX_OUTSTANDING;
pub use apflab_abi::policy::{
    DecideArgs, Decision, FaultInfo, Initiation, LOG_MAX_BYTES, MAX_PREFETCH, NotPresentDelivery,
    POLICY_ABI_VERSION, Policy, ReadyDelivery, Sleep,
};
pub use cell::PolicyCell;
pub use log::{LogBuffer, log, log_fmt};

/// An async decision with the transport of Gavin Shan's RFCv2 series: "not
/// present" as a data abort, "ready" as an injected exception, the host
/// starts the fetch, no prefetch.
pub const fn rfcv2(sleep: Sleep) -> Decision {
    Decision::Async {
        not_present: NotPresentDelivery::DataAbort,
        ready: ReadyDelivery::Exception,
        initiation: Initiation::Host,
        sleep,
        prefetch: 0,
    }
}

/// Whether the vCPU has room for one more async fault (fewer than
/// [`MAX_OUTSTANDING`] outstanding); beyond that the host handles faults
/// synchronously whatever the policy says.
pub const fn has_async_room(fault: &FaultInfo) -> bool {
    (fault.outstanding as usize) < MAX_OUTSTANDING
}

/// Emits the ABI v2 exports for a [`Policy`] type on `wasm32` (nothing on
/// other targets).
///
/// `export_policy!(MyPolicy)` starts the run with `MyPolicy::default()`;
/// `export_policy!(MyPolicy = MyPolicy::new(5))` with that expression. The
/// value is created on the first call and kept in the module's memory for
/// the rest of the run (the host instantiates the module afresh per run).
#[macro_export]
macro_rules! export_policy {
    ($ty:ty) => {
        $crate::export_policy!($ty = <$ty as ::core::default::Default>::default());
    };
    ($ty:ty = $init:expr) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            static POLICY: $crate::PolicyCell<$ty> = $crate::PolicyCell::new();

            fn with_policy<R>(f: impl FnOnce(&mut $ty) -> R) -> R {
                // SAFETY: the exports below are the only users of POLICY,
                // none of them calls another, and the host never calls into
                // the module while one of them runs (`apf.log` returns
                // without re-entering), so the borrow is exclusive.
                unsafe { POLICY.with(|| $init, f) }
            }

            #[unsafe(no_mangle)]
            pub extern "C" fn apf_abi_version() -> i32 {
                $crate::POLICY_ABI_VERSION
            }

            #[unsafe(no_mangle)]
            #[allow(clippy::too_many_arguments)]
            pub extern "C" fn apf_decide(
                vcpu: i32,
                ipa: i64,
                el: i32,
                can_reschedule: i32,
                runnable: i32,
                outstanding: i32,
                now_ns: i64,
                est_fetch_ns: i64,
            ) -> i64 {
                let fault = $crate::FaultInfo::from_args((
                    vcpu,
                    ipa,
                    el,
                    can_reschedule,
                    runnable,
                    outstanding,
                    now_ns,
                    est_fetch_ns,
                ));
                with_policy(|p| $crate::Policy::decide(p, &fault)).pack()
            }

            #[unsafe(no_mangle)]
            pub extern "C" fn apf_on_ready(token: i64, latency_ns: i64) {
                with_policy(|p| $crate::Policy::on_ready(p, token as u64, latency_ns as u64))
            }

            #[unsafe(no_mangle)]
            pub extern "C" fn apf_on_run_end() {
                with_policy(|p| $crate::Policy::on_run_end(p))
            }
        };
    };
}

#[cfg(all(target_arch = "wasm32", feature = "panic-handler"))]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    core::arch::wasm32::unreachable()
}
