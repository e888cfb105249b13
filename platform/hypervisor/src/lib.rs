//! The seam between apflab's backends (`platform/vmm`: emu and kvm) and
//! its fault engine (`platform/apf`), owned by neither side, in the shape
//! of Cloud Hypervisor's `hypervisor` crate.
//!
//! * [`backend`]: what a backend is to the VMM: a [`Hypervisor`] (guest
//!   memory, vCPU creation), its [`Vcpu`]s and why one stopped
//!   ([`VmExit`]), the device callbacks ([`VmOps`]) and per-page
//!   [`Residency`].
//! * [`crash`]: why a backend stopped a vCPU for good ([`CrashReason`]).
//! * [`fault_hook`]: what the fault engine is to a backend: a
//!   [`FaultHook`] told of not-resident pages, engine hypercalls and
//!   time, answering with [`Action`]s.
//! * [`page_server`]: the other way a fault is served, inside the host
//!   kernel's fault path (kvm), by a [`PageServer`] over [`HostRam`].
//! * `host_memory` (Linux): guest RAM's memfd and its views, the layout
//!   the kvm backend runs guests in and the pager serves.
//! * [`arch`]: the pure arm64 code both sides use: registers, syndromes,
//!   the guest's stage-1 walk, the decode of a faulting access and the two
//!   combined into the page behind a fault.
//!
//! Nothing here runs guest code or touches a page: the fault engine can be
//! tested and fuzzed against it without a backend.

pub mod arch;
pub mod backend;
pub mod crash;
pub mod fault_hook;
#[cfg(target_os = "linux")]
pub mod host_memory;
pub mod page_server;

pub use backend::{
    Conduit, Hypervisor, HypervisorError, MmioWriteKind, NotResidentFault, PageAccess, Residency,
    SyncException, Vcpu, VmExit, VmOps,
};
pub use crash::{CrashReason, CrashSource};
pub use fault_hook::{
    Action, EngineCall, FailureSource, FaultHook, HookFailure, HookInitError, HypercallAnswer,
    NoFarMemory, ResumeState, is_engine_call, no_async_pf,
};
pub use page_server::{HostRam, PageServer, PageServerError};
