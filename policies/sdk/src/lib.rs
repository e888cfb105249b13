//! Write an apflab async page fault policy in about twenty lines of Rust.
//!
//! A policy is a type implementing [`Policy`] (from the shared ABI crate, so
//! the very same code also runs natively on the host). [`export_policy!`]
//! turns it into a module the host can load: on `wasm32` it emits the ABI v3
//! exports (`apf_abi_version`, `apf_decide`, `apf_on_complete`,
//! `apf_configure`, `apf_on_run_end`), which read their input records
//! through `apf.input` into [`FaultInfo`], [`Completion`] and [`Params`],
//! around one value of the type that lives for the whole run; on any other
//! target it emits nothing, so the crate is also a plain Rust library.
//!
//! ```
//! use apflab_policy_sdk::{Decision, FaultInfo, ParamError, Params, Policy};
//!
//! /// Sync in kernel mode, otherwise the RFCv2 transport with a reschedule
//! /// once fetches take `min_fetch_ns` (a `[policy] params` key).
//! pub struct Example {
//!     min_fetch_ns: u64,
//! }
//!
//! impl Default for Example {
//!     fn default() -> Self {
//!         Example { min_fetch_ns: 20_000 }
//!     }
//! }
//!
//! impl Policy for Example {
//!     fn configure<'p>(&mut self, params: &Params<'p>) -> Result<(), ParamError<'p>> {
//!         params.only(&["min_fetch_ns"])?;
//!         if let Some(ns) = params.u64("min_fetch_ns")? {
//!             self.min_fetch_ns = ns;
//!         }
//!         Ok(())
//!     }
//!
//!     fn decide(&mut self, fault: &FaultInfo) -> Decision {
//!         if fault.el != 0 || fault.est_fetch_ns < self.min_fetch_ns {
//!             return Decision::Sync;
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
//! `apflab policy new NAME` writes such a crate, ready to build.
//!
//! On `wasm32` this crate also provides the panic handler (feature
//! `panic-handler`, on by default): a panic traps, the host counts the trap
//! and uses its fallback decision for that fault.
#![no_std]

mod cell;
mod log;

pub use apflab_abi::apf::MAX_OUTSTANDING;
pub use apflab_abi::policy::{
    AccessKind, Completion, Decision, FaultInfo, Initiation, LOG_MAX_BYTES, LogLevel,
    NotPresentDelivery, PARAMS_MAX_BYTES, POLICY_ABI_VERSION, ParamError, ParamProblem, ParamValue,
    Params, Policy, ReadyDelivery, Sleep, record,
};
pub use cell::PolicyCell;
pub use log::{LogBuffer, log, log_at, log_fmt, log_fmt_at};

/// An async decision with the transport of Gavin Shan's RFCv2 series: "not
/// present" as a data abort, "ready" as an injected exception, the host
/// starts the fetch.
pub const fn rfcv2(sleep: Sleep) -> Decision {
    Decision::Async {
        not_present: NotPresentDelivery::DataAbort,
        ready: ReadyDelivery::Exception,
        initiation: Initiation::Host,
        sleep,
    }
}

/// Whether the vCPU has room for one more async fault (fewer than
/// [`MAX_OUTSTANDING`] outstanding); beyond that the host handles faults
/// synchronously whatever the policy says.
pub const fn has_async_room(fault: &FaultInfo) -> bool {
    (fault.outstanding as usize) < MAX_OUTSTANDING
}

/// Reads the current call's input record into `buf` (`apf.input`); how
/// many bytes the host's record has (more than `buf` holds: the rest was
/// cut). Off `wasm32` there is no host and no record: 0.
pub fn input(buf: &mut [u8]) -> usize {
    #[cfg(target_arch = "wasm32")]
    {
        // SAFETY: the host writes at most `buf.len()` bytes at its address,
        // all inside this module's memory, during the call.
        unsafe { log::host::input(buf.as_mut_ptr(), buf.len()) as usize }
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = buf;
        0
    }
}

/// The fault `apf_decide` is called for.
pub fn fault_input() -> FaultInfo {
    let mut buf = [0u8; record::fault::BYTES];
    input(&mut buf);
    FaultInfo::decode(&buf)
}

/// The completion `apf_on_complete` is called for.
pub fn completion_input() -> Completion {
    let mut buf = [0u8; record::completion::BYTES];
    input(&mut buf);
    Completion::decode(&buf)
}

/// Runs `f` on the parameters `apf_configure` is called with.
pub fn with_params_input<R>(f: impl FnOnce(&Params<'_>) -> R) -> R {
    let mut buf = [0u8; PARAMS_MAX_BYTES];
    input(&mut buf);
    f(&Params::from_record(&buf))
}

/// Logs a refused parameter at level error (what `apf_configure` does
/// before it refuses; the host shows the message).
pub fn log_param_error(e: &ParamError<'_>) {
    use core::fmt::Write as _;
    let mut buf = LogBuffer::new();
    // A full buffer only truncates.
    e.write_pieces(|s| {
        let _ = buf.write_str(s);
    });
    log_at(LogLevel::Error, buf.as_str());
}

/// Emits the ABI v3 exports for a [`Policy`] type on `wasm32` (nothing on
/// other targets).
///
/// `export_policy!(MyPolicy)` starts the run with `MyPolicy::default()`;
/// `export_policy!(MyPolicy = MyPolicy::new(5))` with that expression. The
/// value is created on the first call and kept in the module's memory for
/// the rest of the run (the host instantiates the module afresh per run).
/// A refused parameter is logged at level error (the host shows it when it
/// refuses to start the run).
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
                // the module while one of them runs (`apf.log` and
                // `apf.input` return without re-entering), so the borrow is
                // exclusive.
                unsafe { POLICY.with(|| $init, f) }
            }

            #[unsafe(no_mangle)]
            pub extern "C" fn apf_abi_version() -> i32 {
                $crate::POLICY_ABI_VERSION
            }

            #[unsafe(no_mangle)]
            pub extern "C" fn apf_configure() -> i32 {
                $crate::with_params_input(|params| {
                    with_policy(|p| match $crate::Policy::configure(p, params) {
                        Ok(()) => 0,
                        Err(e) => {
                            $crate::log_param_error(&e);
                            1
                        }
                    })
                })
            }

            #[unsafe(no_mangle)]
            pub extern "C" fn apf_decide() -> i64 {
                let fault = $crate::fault_input();
                with_policy(|p| $crate::Policy::decide(p, &fault)).pack()
            }

            #[unsafe(no_mangle)]
            pub extern "C" fn apf_on_complete() {
                let done = $crate::completion_input();
                with_policy(|p| $crate::Policy::on_complete(p, &done))
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
