//! [`Engine`]: the fault engine behind the VMM's [`FaultHook`].
//!
//! Per fault: the policy decides, the page side ([`FarMemory`]) asks the
//! pager and applies its evictions, and the engine answers the backend
//! with an [`Action`]. The engine keeps per vCPU the fault it waits on and
//! since when, which is where the one stall metric of a run comes from.
//!
//! Every decision is served synchronously: the vCPU stalls until its page
//! is in (the baseline). An async decision is counted and served the same
//! way until the async protocol is part of the engine.

use apflab_abi::addr::Gpa;
use apflab_abi::policy::{Decision, FaultInfo, Policy};
use apflab_pager::{Access, PagerMetrics};
use apflab_vmm::hypervisor::{NotResidentFault, Residency};
use apflab_vmm::{Action, FaultHook, HookInitError};

use crate::far_memory::{FarMemory, Fetch};
use crate::metrics::FaultMetrics;

/// What the engine remembers about one vCPU.
#[derive(Clone, Copy, Debug, Default)]
struct VcpuState {
    /// The page its stall waits for.
    waiting_for: Option<Gpa>,
    /// When its current stall began (a retry that faults again continues
    /// the same stall).
    stalled_since: Option<u64>,
}

/// The fault engine of one run.
///
/// ```
/// use apflab_apf::Engine;
/// use apflab_pager::{PagerConfig, Prepared, VirtualPager};
///
/// let config: PagerConfig = toml::from_str(r#"
///     store = { kind = "zero" }
///     latency = { model = "constant", us = 10.0 }
/// "#)?;
/// let prepared = Prepared::new(&config, 64 << 20, std::path::Path::new("."))?;
/// let engine = Engine::new(2, VirtualPager::new(prepared), Box::new(Sync));
/// // `vm.run(&mut engine)` drives it; afterwards:
/// assert_eq!(engine.metrics().stalled_ns, [0, 0]);
///
/// /// The baseline policy: every fault stalls its vCPU.
/// struct Sync;
/// impl apflab_abi::policy::Policy for Sync {
///     fn decide(&mut self, _: &apflab_abi::policy::FaultInfo) -> apflab_abi::policy::Decision {
///         apflab_abi::policy::Decision::Sync { prefetch: 0 }
///     }
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Engine {
    far: FarMemory,
    policy: Box<dyn Policy>,
    vcpus: Vec<VcpuState>,
    metrics: FaultMetrics,
}

impl Engine {
    /// An engine for `vcpus` vCPUs over `pager`, deciding with `policy`.
    pub fn new(vcpus: u32, pager: apflab_pager::VirtualPager, policy: Box<dyn Policy>) -> Self {
        Engine {
            far: FarMemory::new(pager),
            policy,
            vcpus: vec![VcpuState::default(); vcpus as usize],
            metrics: FaultMetrics::new(vcpus),
        }
    }

    /// What the engine counted so far.
    pub fn metrics(&self) -> &FaultMetrics {
        &self.metrics
    }

    /// What the pager did so far.
    pub fn pager_metrics(&self) -> PagerMetrics {
        self.far.metrics()
    }

    /// Tells the policy the run is over.
    pub fn finish(&mut self) {
        self.policy.on_run_end();
    }

    fn vcpu(&mut self, vcpu: u32) -> &mut VcpuState {
        let i = vcpu as usize;
        if self.vcpus.len() <= i {
            self.vcpus.resize(i + 1, VcpuState::default());
        }
        &mut self.vcpus[i]
    }

    fn decide(&mut self, vcpu: u32, fault: &NotResidentFault, now_ns: u64) {
        let info = FaultInfo {
            vcpu,
            ipa: fault.gpa.0,
            el: u32::from(fault.el),
            // The guest's control block is not read yet: it cannot be asked.
            can_reschedule: false,
            runnable: 0,
            outstanding: 0,
            now_ns,
            est_fetch_ns: 0,
        };
        let prefetch = match self.policy.decide(&info) {
            Decision::Sync { prefetch } => {
                self.metrics.sync_faults += 1;
                prefetch
            }
            Decision::Async { prefetch, .. } => {
                self.metrics.async_decisions_served_sync += 1;
                prefetch
            }
        };
        if prefetch > 0 {
            self.metrics.prefetch_requests_ignored += 1;
        }
    }
}

impl FaultHook for Engine {
    fn init(&mut self, pages: &mut dyn Residency) -> Result<(), HookInitError> {
        Ok(self.far.init(pages)?)
    }

    fn on_not_resident(
        &mut self,
        vcpu: u32,
        fault: &NotResidentFault,
        now_ns: u64,
        pages: &mut dyn Residency,
    ) -> Action {
        self.metrics.faults += 1;
        self.decide(vcpu, fault, now_ns);
        let access = if fault.write {
            Access::Write
        } else {
            Access::Read
        };
        match self.far.fault(fault.gpa, access, now_ns, pages) {
            Ok(Fetch::Mapped) => Action::Retry,
            Ok(Fetch::DueAt(t)) => {
                let state = self.vcpu(vcpu);
                state.waiting_for = Some(fault.gpa);
                state.stalled_since.get_or_insert(now_ns);
                Action::StallUntil(t)
            }
            Err(e) => Action::Fail(format!("page {:#x} unavailable: {e}", fault.gpa)),
        }
    }

    fn on_wait_end(&mut self, vcpu: u32, now_ns: u64, pages: &mut dyn Residency) -> Action {
        let state = self.vcpu(vcpu);
        let since = state.stalled_since.take();
        let waiting_for = state.waiting_for.take();
        if let Some(since) = since {
            let ns = now_ns.saturating_sub(since);
            self.far.record_stall(vcpu, ns);
            self.metrics.add_stall(vcpu, ns);
        }
        let Some(gpa) = waiting_for else {
            return Action::Retry;
        };
        match self.far.complete_due(gpa, now_ns, pages) {
            Ok(()) => Action::Retry,
            Err(e) => Action::Fail(format!("page {gpa:#x} could not be made resident: {e}")),
        }
    }
}
