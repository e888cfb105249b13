//! [`Engine`]: the fault engine behind the VMM's [`FaultHook`].
//!
//! Per fault: the policy decides ([`decision`](crate::decision)), and the
//! engine either stalls the vCPU until the page is in (sync) or hands the
//! guest a token: "not present" is injected on the faulting instruction
//! ([`not_present`](crate::not_present)), the fetch starts now or when the
//! guest asks ([`initiation`](crate::initiation)), the guest sleeps as the
//! decision says ([`sleep`](crate::sleep)), and once the page is in, "page
//! ready" reaches it ([`ready`](crate::ready)). The page side
//! ([`FarMemory`]) is the same for both. The engine keeps per vCPU the
//! fault it stalls on, its control block, its tokens and its ready ring;
//! the one stall metric and every protocol counter of a run come from here.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Range;
use std::time::{Duration, Instant};

use apflab_abi::addr::Gpa;
use apflab_abi::apf::{self, GUEST_CAN_RESCHEDULE, REASON_NOT_PRESENT, Token};
use apflab_abi::hypercall as hc;
use apflab_abi::policy::{AccessKind, Completion, FaultInfo, Policy, PolicyUsage};
use apflab_abi::policy::{NotPresentDelivery, ReadyDelivery};
use apflab_hypervisor::{
    Action, EngineCall, FaultHook, HookFailure, HookInitError, HypercallAnswer, ResumeState,
};
use apflab_hypervisor::{NotResidentFault, Residency};
use apflab_pager::{Access, PagerMetrics};

use crate::control_block::{BadBlock, ControlBlockRef, in_no_inject_window};
use crate::decision::{AsyncPlan, Served, VcpuFacts, serve};
use crate::events::{Event, EventLog, PolicyCall, PolicyCallLog, Stall, TokenEvent};
use crate::far_memory::{FarMemory, Fetch};
use crate::initiation;
use crate::metrics::FaultMetrics;
use crate::not_present;
use crate::ready;
use crate::ready::{ReadyRing, RingViolation};
use crate::sleep;

/// What the host offers the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApfConfig {
    /// Feature bits `FEATURES` answers ([`apflab_abi::apf::features`]); 0
    /// offers no async PF at all (the guest never enables it).
    pub offered: u64,
    /// Most unconsumed tokens in a vCPU's ready ring (1..=64).
    pub ring_depth: u32,
}

impl ApfConfig {
    /// Every feature this engine implements.
    pub const IMPLEMENTED: u64 = apf::features::NOT_PRESENT_DATA_ABORT
        | apf::features::NOT_PRESENT_DEDICATED_EC
        | apf::features::NOT_PRESENT_SDEI
        | apf::features::READY_EXCEPTION
        | apf::features::READY_INTERRUPT
        | apf::features::READY_RING
        | apf::features::GUEST_INITIATED
        | apf::features::KERNEL_MODE_ASYNC;

    /// No async PF offered: the synchronous baseline.
    pub const OFF: ApfConfig = ApfConfig {
        offered: 0,
        ring_depth: apf::READY_RING_SLOTS as u32,
    };

    /// Everything implemented offered, with a ring of `ring_depth`.
    pub fn all(ring_depth: u32) -> ApfConfig {
        ApfConfig {
            offered: Self::IMPLEMENTED,
            ring_depth,
        }
    }
}

/// Where an outstanding token's page is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TokenState {
    /// Guest-initiated: waiting for `APF_PAGE_REQUEST`.
    AwaitingRequest,
    /// Being fetched; the pager has it at `due`.
    Fetching { due: u64 },
    /// In; queued for or in the ready ring.
    Ready,
}

/// A token handed to the guest and not yet consumed.
#[derive(Clone, Copy, Debug)]
struct Outstanding {
    page: Gpa,
    access: Access,
    fault_ns: u64,
    /// When its fetch started: the fault, or the guest's page request.
    fetch_start_ns: u64,
    state: TokenState,
    /// How "not present" went (the ready exception matches it).
    not_present: NotPresentDelivery,
    /// How "ready" goes.
    ready: ReadyDelivery,
}

/// What the engine keeps about one vCPU.
#[derive(Debug)]
struct VcpuState {
    /// The page its synchronous stall waits for.
    waiting_for: Option<Gpa>,
    /// When its current stall began (a retry that faults again continues
    /// the same stall).
    stalled_since: Option<u64>,
    /// The token its current stall's decision was given (its completion
    /// carries it).
    stall_token: Option<Token>,
    /// Its control block, once the guest enabled async PF.
    cb: Option<ControlBlockRef>,
    /// Features the guest accepted with `APF_ENABLE`.
    accepted: u64,
    /// Sequence number of the next token.
    next_id: u64,
    tokens: BTreeMap<Token, Outstanding>,
    ring: ReadyRing,
    /// Ready tokens to be delivered as exceptions, with when they became
    /// ready, oldest first.
    pending_exceptions: VecDeque<(Token, u64)>,
}

impl VcpuState {
    fn new(ring_depth: u32) -> Self {
        VcpuState {
            waiting_for: None,
            stalled_since: None,
            stall_token: None,
            cb: None,
            accepted: 0,
            next_id: 1,
            tokens: BTreeMap::new(),
            ring: ReadyRing::new(ring_depth),
            pending_exceptions: VecDeque::new(),
        }
    }

    /// A token not outstanding on `vcpu` (ids wrap within what a token
    /// holds, and never give 0 or the wake-all token).
    fn new_token(&mut self, vcpu: u32) -> Token {
        let (token, next_id) = self.peek_token(vcpu);
        self.next_id = next_id;
        token
    }

    /// The token [`VcpuState::new_token`] would give now, and the next id
    /// after it.
    fn peek_token(&self, vcpu: u32) -> (Token, u64) {
        let mut id = self.next_id;
        loop {
            let next = if id >= (u64::MAX >> Token::VCPU_BITS) - 1 {
                1
            } else {
                id + 1
            };
            let t = Token::new(id, vcpu);
            if !self.tokens.contains_key(&t) {
                return (t, next);
            }
            id = next;
        }
    }
}

/// The fault engine of one run.
///
/// ```
/// use apflab_apf::{ApfConfig, Engine};
/// use apflab_pager::{PagerConfig, Prepared, VirtualPager};
///
/// let config: PagerConfig = toml::from_str(r#"
///     store = { kind = "zero" }
///     latency = { model = "constant", us = 10.0 }
/// "#)?;
/// let prepared = Prepared::new(&config, 64 << 20, std::path::Path::new("."))?;
/// let engine = Engine::new(2, VirtualPager::new(prepared), Box::new(Sync), ApfConfig::OFF);
/// // `vm.run(&mut engine)` drives it; afterwards:
/// assert_eq!(engine.metrics().stalled_ns, [0, 0]);
///
/// /// The baseline policy: every fault stalls its vCPU.
/// struct Sync;
/// impl apflab_abi::policy::Policy for Sync {
///     fn decide(&mut self, _: &apflab_abi::policy::FaultInfo) -> apflab_abi::policy::Decision {
///         apflab_abi::policy::Decision::Sync
///     }
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Engine {
    far: FarMemory,
    policy: Box<dyn Policy>,
    config: ApfConfig,
    vcpus: Vec<VcpuState>,
    metrics: FaultMetrics,
    events: EventLog,
    /// Moving average of the fetch time of every completed fetch (the
    /// policy's `est_fetch_ns`), and how many it is made of.
    fetch_estimate_ns: u64,
    fetches_completed: u64,
    /// The policy's calls, when kept.
    policy_calls: PolicyCallLog,
    /// Host time spent in the policy's calls.
    policy_time: Duration,
    /// Host time spent serving the VMM's calls (the policy's included).
    host_time: Duration,
    /// What the kernel image loads read-only: no control block goes there.
    kernel_read_only: Vec<Range<u64>>,
}

impl Engine {
    /// An engine for `vcpus` vCPUs over `pager`, deciding with `policy`,
    /// offering what `config` says.
    pub fn new(
        vcpus: u32,
        pager: apflab_pager::VirtualPager,
        policy: Box<dyn Policy>,
        config: ApfConfig,
    ) -> Self {
        Engine {
            far: FarMemory::new(pager),
            policy,
            config,
            vcpus: (0..vcpus)
                .map(|_| VcpuState::new(config.ring_depth))
                .collect(),
            metrics: FaultMetrics::new(vcpus),
            events: EventLog::default(),
            fetch_estimate_ns: 0,
            fetches_completed: 0,
            policy_calls: PolicyCallLog::default(),
            policy_time: Duration::ZERO,
            host_time: Duration::ZERO,
            kernel_read_only: Vec::new(),
        }
    }

    /// What the engine counted so far.
    pub fn metrics(&self) -> &FaultMetrics {
        &self.metrics
    }

    /// Every token's life so far.
    pub fn events(&self) -> &[Event] {
        self.events.events()
    }

    /// Every synchronous stall so far.
    pub fn stalls(&self) -> &[Stall] {
        self.events.stalls()
    }

    /// Token events and stalls not kept because the log was full.
    pub fn events_dropped(&self) -> u64 {
        self.events.dropped()
    }

    /// What the pager did so far.
    pub fn pager_metrics(&self) -> PagerMetrics {
        self.far.metrics()
    }

    /// Keeps every policy call from now on ([`Engine::policy_calls`]).
    pub fn record_policy_calls(&mut self) {
        self.policy_calls.on = true;
    }

    /// The policy calls kept so far, in order, and how many did not fit.
    pub fn policy_calls(&self) -> (&[PolicyCall], u64) {
        (&self.policy_calls.calls, self.policy_calls.dropped)
    }

    /// Tells the policy a fetch completed, after folding its fetch time
    /// into the estimate the next decisions get.
    fn complete(&mut self, done: Completion) {
        self.fetch_estimate_ns = if self.fetches_completed == 0 {
            done.fetch_ns
        } else {
            // avg + (sample - avg) / 8, without overflow.
            let avg = self.fetch_estimate_ns;
            if done.fetch_ns >= avg {
                avg + (done.fetch_ns - avg) / 8
            } else {
                avg - (avg - done.fetch_ns) / 8
            }
        };
        self.fetches_completed += 1;
        self.metrics.completions += 1;
        self.policy_calls.record(PolicyCall::Complete(done));
        self.call_policy(|p| p.on_complete(&done));
    }

    /// Tells the policy the run is over.
    pub fn finish(&mut self) {
        self.call_policy(|p| p.on_run_end());
    }

    /// Calls the policy, adding the host time the call took.
    fn call_policy<R>(&mut self, call: impl FnOnce(&mut dyn Policy) -> R) -> R {
        let start = Instant::now();
        let r = call(self.policy.as_mut());
        self.policy_time += start.elapsed();
        r
    }

    /// What running the policy cost, by its own account (fuel, failed
    /// calls).
    pub fn policy_usage(&self) -> PolicyUsage {
        self.policy.usage()
    }

    /// What the policy logged during the run (empty for a native one).
    pub fn policy_log(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = self.policy.write_log(&mut text);
        text
    }

    /// Host time spent in the policy's calls (not deterministic: it belongs
    /// with a run's wall-clock facts).
    pub fn policy_time(&self) -> Duration {
        self.policy_time
    }

    /// Host time spent serving the VMM's fault, hypercall, resume and timer
    /// calls, the pager's and the policy's work included: the VMM's side of
    /// every fault (wall-clock, like [`Engine::policy_time`]).
    pub fn host_time(&self) -> Duration {
        self.host_time
    }

    /// Runs one of the hook's calls, adding the host time it took.
    fn timed<R>(&mut self, call: impl FnOnce(&mut Self) -> R) -> R {
        let start = Instant::now();
        let r = call(self);
        self.host_time += start.elapsed();
        r
    }

    fn vcpu(&mut self, vcpu: u32) -> &mut VcpuState {
        let i = vcpu as usize;
        if self.vcpus.len() <= i {
            let depth = self.config.ring_depth;
            self.vcpus.resize_with(i + 1, || VcpuState::new(depth));
        }
        &mut self.vcpus[i]
    }

    fn violation(&mut self, kind: &str) -> HypercallAnswer {
        FaultMetrics::count(&mut self.metrics.violations, kind);
        HypercallAnswer::returning(hc::SMCCC_INVALID_PARAMETERS as u64)
    }

    fn decide(
        &mut self,
        vcpu: u32,
        fault: &NotResidentFault,
        now_ns: u64,
        pages: &dyn Residency,
    ) -> Served {
        let (estimate, fetches_completed) = (self.fetch_estimate_ns, self.fetches_completed);
        let page = fault.gpa.page_base();
        let v = self.vcpu(vcpu);
        let (token, _) = v.peek_token(vcpu);
        let (guest_state, runnable, window) = v.cb.map_or((0, 0, 0..0), |cb| {
            let mem = pages.guest_memory();
            (
                cb.guest_state(mem),
                cb.runnable_tasks(mem),
                cb.no_inject_window(mem),
            )
        });
        let can_reschedule = guest_state & GUEST_CAN_RESCHEDULE != 0;
        let facts = VcpuFacts {
            accepted: v.cb.map(|_| v.accepted),
            el: fault.el,
            outstanding: v.tokens.len(),
            repeat: v.tokens.values().any(|o| o.page == page),
            irqs_masked: fault.irqs_masked,
            no_inject: in_no_inject_window(guest_state, &window, fault.pc),
        };
        let info = FaultInfo {
            vcpu,
            ipa: page.0,
            token: token.0,
            access: if fault.fetch {
                AccessKind::Fetch
            } else if fault.write {
                AccessKind::Write
            } else {
                AccessKind::Read
            },
            el: u32::from(fault.el),
            can_reschedule,
            runnable,
            outstanding: facts.outstanding as u32,
            now_ns,
            est_fetch_ns: estimate,
            fetches_completed,
        };
        self.metrics.policy_calls += 1;
        let decision = self.call_policy(|p| p.decide(&info));
        self.policy_calls.record(PolicyCall::Decide {
            fault: info,
            decision,
        });
        self.vcpu(vcpu).stall_token = Some(token);
        serve(decision, facts)
    }

    /// The synchronous baseline: the vCPU stalls until the page is in.
    fn stall(
        &mut self,
        vcpu: u32,
        fault: &NotResidentFault,
        now_ns: u64,
        pages: &mut dyn Residency,
    ) -> Action {
        self.metrics.sync_faults += 1;
        match self.far.fault(fault.gpa, access(fault), now_ns, pages) {
            Ok(Fetch::Mapped) => Action::Retry,
            Ok(Fetch::DueAt(t)) => {
                let state = self.vcpu(vcpu);
                state.waiting_for = Some(fault.gpa);
                state.stalled_since.get_or_insert(now_ns);
                Action::StallUntil(t)
            }
            Err(e) => Action::Fail(HookFailure::unavailable(fault.gpa, e)),
        }
    }

    /// Hands the guest a token for the fault, as `plan` says.
    fn go_async(
        &mut self,
        vcpu: u32,
        fault: &NotResidentFault,
        plan: AsyncPlan,
        now_ns: u64,
        pages: &mut dyn Residency,
    ) -> Action {
        let page = fault.gpa.page_base();
        let state = if initiation::fetch_at_fault(plan.initiation) {
            match self.far.fault(page, access(fault), now_ns, pages) {
                // A stale mapping: nothing to wait for.
                Ok(Fetch::Mapped) => return Action::Retry,
                Ok(Fetch::DueAt(due)) => TokenState::Fetching { due },
                Err(e) => return Action::Fail(HookFailure::unavailable(page, e)),
            }
        } else {
            TokenState::AwaitingRequest
        };
        let v = self.vcpu(vcpu);
        let token = v.new_token(vcpu);
        let Some(cb) = v.cb else {
            unreachable!("served async only with a control block");
        };
        let written = cb.write_notification(
            pages.guest_memory(),
            REASON_NOT_PRESENT,
            token.0,
            sleep::action(plan.sleep) | initiation::action_flags(plan.initiation),
            page,
        );
        if !written {
            // Checked at registration: cannot happen while RAM stays.
            return Action::Fail(HookFailure::ControlBlockUnwritable { vcpu });
        }
        v.tokens.insert(
            token,
            Outstanding {
                page,
                access: access(fault),
                fault_ns: now_ns,
                fetch_start_ns: now_ns,
                state,
                not_present: plan.not_present,
                ready: plan.ready,
            },
        );
        let outstanding = v.tokens.len();
        self.metrics.outstanding(vcpu, outstanding);
        self.metrics.async_faults += 1;
        let kind = match plan.not_present {
            NotPresentDelivery::DataAbort => "data_abort",
            NotPresentDelivery::DedicatedEc => "dedicated_ec",
            NotPresentDelivery::Sdei => "sdei",
        };
        FaultMetrics::count(&mut self.metrics.not_present, kind);
        self.events.record(now_ns, token, TokenEvent::Fault);
        self.events.record(now_ns, token, TokenEvent::NotPresent);
        not_present::action(plan.not_present, token, fault)
    }

    /// The page of `token` was due at `now_ns`: install it, or fetch it
    /// again if it is not in (its frame waited, or it was evicted before).
    fn fetch_due(
        &mut self,
        vcpu: u32,
        token: Token,
        now_ns: u64,
        pages: &mut dyn Residency,
    ) -> Result<(), HookFailure> {
        let Some(o) = self.vcpus[vcpu as usize].tokens.get(&token).copied() else {
            return Ok(());
        };
        self.far
            .complete_due(o.page, now_ns, pages)
            .map_err(|e| HookFailure::not_made_resident(o.page, e))?;
        let state = if self.far.pager().is_resident(o.page.pfn().0) {
            TokenState::Ready
        } else {
            match self.far.fault(o.page, o.access, now_ns, pages) {
                Ok(Fetch::Mapped) => TokenState::Ready,
                Ok(Fetch::DueAt(due)) => TokenState::Fetching { due },
                Err(e) => return Err(HookFailure::unavailable(o.page, e)),
            }
        };
        let v = &mut self.vcpus[vcpu as usize];
        if let Some(t) = v.tokens.get_mut(&token) {
            t.state = state;
        }
        if state == TokenState::Ready {
            match o.ready {
                ReadyDelivery::Interrupt => v.ring.queue(token),
                ReadyDelivery::Exception => v.pending_exceptions.push_back((token, now_ns)),
            }
            self.metrics.fetches_done += 1;
            self.events.record(now_ns, token, TokenEvent::FetchDone);
            self.complete(Completion {
                vcpu,
                asynchronous: true,
                token: token.0,
                ipa: o.page.0,
                fetch_ns: now_ns.saturating_sub(o.fetch_start_ns),
                wait_ns: now_ns.saturating_sub(o.fault_ns),
                now_ns,
            });
        }
        Ok(())
    }

    /// Moves ready tokens of `vcpu` into its ring; whether the ready line
    /// went up.
    fn fill_ring(&mut self, vcpu: u32, now_ns: u64, pages: &dyn Residency) -> bool {
        let v = &mut self.vcpus[vcpu as usize];
        let Some(cb) = v.cb else {
            return false;
        };
        let (pushed, raised) = v.ring.fill(&cb, pages.guest_memory());
        self.note_pushed(&pushed, now_ns);
        if raised {
            self.metrics.ready_interrupts += 1;
        }
        raised
    }

    /// Counts and logs tokens that went into a ready ring.
    fn note_pushed(&mut self, pushed: &[Token], now_ns: u64) {
        self.metrics.ready_pushed += pushed.len() as u64;
        for t in pushed {
            self.events.record(now_ns, *t, TokenEvent::Pushed);
        }
    }

    fn enable(
        &mut self,
        vcpu: u32,
        args: [u64; 5],
        now_ns: u64,
        pages: &mut dyn Residency,
    ) -> HypercallAnswer {
        let block =
            ControlBlockRef::register(pages.guest_memory(), Gpa(args[0]), &self.kernel_read_only);
        let cb = match block {
            Ok(cb) => cb,
            Err(bad) => {
                return self.violation(match bad {
                    BadBlock::Misaligned => "control_block_misaligned",
                    BadBlock::OutsideRam => "control_block_outside_ram",
                    BadBlock::OverKernelCode => "control_block_over_kernel_code",
                    BadBlock::Version => "control_block_version",
                });
            }
        };
        let lower = self.drop_tokens(vcpu, now_ns);
        let offered = self.config.offered;
        let v = self.vcpu(vcpu);
        v.cb = Some(cb);
        v.accepted = args[1] & offered;
        HypercallAnswer {
            regs: [hc::SMCCC_SUCCESS as u64, 0, 0, 0],
            action: if lower {
                Action::SetReadyLine(false)
            } else {
                Action::Retry
            },
        }
    }

    /// Forgets every token of `vcpu` (the guest wakes its sleepers itself);
    /// whether the ready line must be lowered.
    fn drop_tokens(&mut self, vcpu: u32, now_ns: u64) -> bool {
        let v = self.vcpu(vcpu);
        let dropped: Vec<Token> = std::mem::take(&mut v.tokens).into_keys().collect();
        v.pending_exceptions.clear();
        let lower = v.ring.clear();
        self.metrics.tokens_dropped += dropped.len() as u64;
        for t in dropped {
            self.events.record(now_ns, t, TokenEvent::Dropped);
        }
        lower
    }

    fn disable(&mut self, vcpu: u32, now_ns: u64) -> HypercallAnswer {
        if self.vcpu(vcpu).cb.is_none() {
            return self.violation("disable_not_enabled");
        }
        let lower = self.drop_tokens(vcpu, now_ns);
        self.vcpu(vcpu).cb = None;
        self.metrics.wake_alls += 1;
        HypercallAnswer {
            regs: [hc::SMCCC_SUCCESS as u64, apf::TOKEN_WAKE_ALL, 0, 0],
            action: if lower {
                Action::SetReadyLine(false)
            } else {
                Action::Retry
            },
        }
    }

    fn ack(&mut self, vcpu: u32, now_ns: u64, pages: &mut dyn Residency) -> HypercallAnswer {
        let v = self.vcpu(vcpu);
        let Some(cb) = v.cb else {
            return self.violation("ack_not_enabled");
        };
        let acked = match v.ring.ack(&cb, pages.guest_memory()) {
            Ok(a) => a,
            Err(RingViolation::AckWithoutConsumption) => {
                return self.violation("ack_without_consumption");
            }
            Err(RingViolation::TailOutOfRange) => return self.violation("ready_tail_out_of_range"),
        };
        for t in &acked.consumed {
            let fault_ns = self.vcpus[vcpu as usize]
                .tokens
                .remove(t)
                .map(|o| o.fault_ns);
            self.events.record(now_ns, *t, TokenEvent::Consumed);
            if let Some(at) = fault_ns {
                self.metrics.token_latency(now_ns.saturating_sub(at));
            }
        }
        let n = acked.consumed.len() as u64;
        self.metrics.ready_delivered += n;
        self.metrics.acks += 1;
        *self
            .metrics
            .tokens_per_ack
            .entry(n.min(apf::READY_RING_SLOTS as u64) as u32)
            .or_default() += 1;
        self.note_pushed(&acked.pushed, now_ns);
        let action = match acked.line {
            Some(level) => {
                if level {
                    self.metrics.ready_interrupts += 1;
                }
                Action::SetReadyLine(level)
            }
            None => {
                if !acked.pushed.is_empty() || self.vcpus[vcpu as usize].ring.pending() > 0 {
                    // The line stays up: the guest takes it again.
                    self.metrics.ready_interrupts += 1;
                }
                Action::Retry
            }
        };
        HypercallAnswer {
            regs: [hc::SMCCC_SUCCESS as u64, 0, 0, 0],
            action,
        }
    }

    fn page_request(
        &mut self,
        vcpu: u32,
        token: u64,
        now_ns: u64,
        pages: &mut dyn Residency,
    ) -> HypercallAnswer {
        let token = Token(token);
        let v = self.vcpu(vcpu);
        if v.cb.is_none() {
            return self.violation("request_not_enabled");
        }
        let Some(o) = v.tokens.get(&token).copied() else {
            return self.violation("request_unknown_token");
        };
        if o.state != TokenState::AwaitingRequest {
            return self.violation("request_not_awaited");
        }
        self.metrics.page_requests += 1;
        self.events.record(now_ns, token, TokenEvent::Request);
        let state = match self.far.fault(o.page, o.access, now_ns, pages) {
            Ok(Fetch::Mapped) => TokenState::Fetching { due: now_ns },
            Ok(Fetch::DueAt(due)) => TokenState::Fetching { due },
            Err(e) => {
                return HypercallAnswer {
                    regs: [hc::SMCCC_SUCCESS as u64, 0, 0, 0],
                    action: Action::Fail(HookFailure::unavailable(o.page, e)),
                };
            }
        };
        if let Some(t) = self.vcpus[vcpu as usize].tokens.get_mut(&token) {
            t.state = state;
            t.fetch_start_ns = now_ns;
        }
        HypercallAnswer::returning(hc::SMCCC_SUCCESS as u64)
    }
}

fn access(fault: &NotResidentFault) -> Access {
    if fault.write {
        Access::Write
    } else {
        Access::Read
    }
}

/// The hook's calls, untimed; [`FaultHook`] times each one.
impl Engine {
    fn serve_on_not_resident(
        &mut self,
        vcpu: u32,
        fault: &NotResidentFault,
        now_ns: u64,
        pages: &mut dyn Residency,
    ) -> Action {
        self.metrics.faults += 1;
        match self.decide(vcpu, fault, now_ns, pages) {
            Served::Sync(fallback) => {
                if let Some(f) = fallback {
                    FaultMetrics::count(&mut self.metrics.fallbacks, f.name());
                }
                self.stall(vcpu, fault, now_ns, pages)
            }
            Served::Async(plan) => self.go_async(vcpu, fault, plan, now_ns, pages),
        }
    }

    fn serve_on_wait_end(&mut self, vcpu: u32, now_ns: u64, pages: &mut dyn Residency) -> Action {
        let state = self.vcpu(vcpu);
        let since = state.stalled_since.take();
        let waiting_for = state.waiting_for.take();
        let stall_token = state.stall_token.take();
        if let Some(since) = since {
            let ns = now_ns.saturating_sub(since);
            self.far.record_stall(vcpu, ns);
            self.metrics.add_stall(vcpu, ns);
            if let Some(page) = waiting_for {
                self.events.record_stall(Stall {
                    vcpu,
                    page,
                    start: since,
                    end: now_ns,
                });
                self.complete(Completion {
                    vcpu,
                    asynchronous: false,
                    token: stall_token.map_or(0, |t| t.0),
                    ipa: page.page_base().0,
                    fetch_ns: ns,
                    wait_ns: ns,
                    now_ns,
                });
            }
        }
        let Some(gpa) = waiting_for else {
            return Action::Retry;
        };
        match self.far.complete_due(gpa, now_ns, pages) {
            Ok(()) => Action::Retry,
            Err(e) => Action::Fail(HookFailure::not_made_resident(gpa, e)),
        }
    }

    fn serve_on_hypercall(
        &mut self,
        vcpu: u32,
        call: EngineCall,
        now_ns: u64,
        pages: &mut dyn Residency,
    ) -> HypercallAnswer {
        if call.function == hc::FN_FEATURES {
            return HypercallAnswer::returning(self.config.offered);
        }
        if self.config.offered == 0 {
            return HypercallAnswer::not_supported();
        }
        match call.function {
            hc::FN_APF_ENABLE => self.enable(vcpu, call.args, now_ns, pages),
            hc::FN_APF_DISABLE => self.disable(vcpu, now_ns),
            hc::FN_APF_ACK => self.ack(vcpu, now_ns, pages),
            hc::FN_APF_PAGE_REQUEST => self.page_request(vcpu, call.args[0], now_ns, pages),
            _ => HypercallAnswer::not_supported(),
        }
    }

    fn serve_on_resume(
        &mut self,
        vcpu: u32,
        state: ResumeState,
        now_ns: u64,
        pages: &mut dyn Residency,
    ) -> Action {
        let v = self.vcpu(vcpu);
        let (Some(&(token, _)), Some(cb)) = (v.pending_exceptions.front(), v.cb) else {
            return Action::Retry;
        };
        let mem = pages.guest_memory();
        let reason = cb.reason(mem).unwrap_or(u32::MAX);
        let guest_state = cb.guest_state(mem);
        let no_inject = in_no_inject_window(guest_state, &cb.no_inject_window(mem), state.pc);
        if !ready::exception_deliverable(state, guest_state, no_inject, reason) {
            // Held until the guest can take it.
            self.metrics.ready_exception_held += 1;
            return Action::Retry;
        }
        v.pending_exceptions.pop_front();
        let Some(o) = v.tokens.remove(&token) else {
            return Action::Retry;
        };
        if !cb.write_ready(mem, token.0) {
            return Action::Fail(HookFailure::ControlBlockUnwritable { vcpu });
        }
        self.metrics.ready_delivered += 1;
        self.metrics.ready_exceptions += 1;
        self.metrics
            .token_latency(now_ns.saturating_sub(o.fault_ns));
        self.events.record(now_ns, token, TokenEvent::Consumed);
        Action::InjectException(ready::exception(o.not_present, token, state))
    }

    fn serve_on_time(&mut self, now_ns: u64, pages: &mut dyn Residency) -> Vec<(u32, Action)> {
        let mut actions = Vec::new();
        for v in 0..self.vcpus.len() as u32 {
            let mut due: Vec<(u64, Token)> = self.vcpus[v as usize]
                .tokens
                .iter()
                .filter_map(|(t, o)| match o.state {
                    TokenState::Fetching { due } if due <= now_ns => Some((due, *t)),
                    _ => None,
                })
                .collect();
            due.sort_unstable();
            for (_, token) in due {
                if let Err(failure) = self.fetch_due(v, token, now_ns, pages) {
                    actions.push((v, Action::Fail(failure)));
                    return actions;
                }
            }
            if self.fill_ring(v, now_ns, pages) {
                actions.push((v, Action::SetReadyLine(true)));
            }
        }
        actions
    }
}

impl FaultHook for Engine {
    fn init(&mut self, pages: &mut dyn Residency) -> Result<(), HookInitError> {
        Ok(self.far.init(pages)?)
    }

    fn boot_point(&mut self, now_ns: u64, pages: &mut dyn Residency) -> Result<(), HookInitError> {
        Ok(self.far.arm_at_boot_point(now_ns, pages)?)
    }

    fn kernel_loaded(&mut self, read_only: &[Range<u64>]) {
        self.kernel_read_only = read_only.to_vec();
    }

    fn on_not_resident(
        &mut self,
        vcpu: u32,
        fault: &NotResidentFault,
        now_ns: u64,
        pages: &mut dyn Residency,
    ) -> Action {
        self.timed(|e| e.serve_on_not_resident(vcpu, fault, now_ns, pages))
    }

    fn on_wait_end(&mut self, vcpu: u32, now_ns: u64, pages: &mut dyn Residency) -> Action {
        self.timed(|e| e.serve_on_wait_end(vcpu, now_ns, pages))
    }

    fn on_hypercall(
        &mut self,
        vcpu: u32,
        call: EngineCall,
        now_ns: u64,
        pages: &mut dyn Residency,
    ) -> HypercallAnswer {
        self.timed(|e| e.serve_on_hypercall(vcpu, call, now_ns, pages))
    }

    fn resume_pending_since(&self, vcpu: u32) -> Option<u64> {
        self.vcpus
            .get(vcpu as usize)?
            .pending_exceptions
            .front()
            .map(|&(_, t)| t)
    }

    fn on_resume(
        &mut self,
        vcpu: u32,
        state: ResumeState,
        now_ns: u64,
        pages: &mut dyn Residency,
    ) -> Action {
        self.timed(|e| e.serve_on_resume(vcpu, state, now_ns, pages))
    }

    fn pending(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for (v, state) in self.vcpus.iter().enumerate() {
            if let Some(page) = state.waiting_for {
                let due = match self.far.pager().fetch_ready_at(page.pfn().0) {
                    Some(t) => format!("its fetch due at {t} ns"),
                    None => "no fetch under way".to_owned(),
                };
                lines.push(format!("vCPU {v} stalled on page {page} ({due})"));
            }
            for (token, o) in &state.tokens {
                let where_ = match o.state {
                    TokenState::AwaitingRequest => "awaiting the guest's page request".to_owned(),
                    TokenState::Fetching { due } => format!("fetching, due at {due} ns"),
                    TokenState::Ready => "in, not yet consumed by the guest".to_owned(),
                };
                lines.push(format!(
                    "token {:#x} of vCPU {v} for page {} (faulted at {} ns): {where_}",
                    token.0, o.page, o.fault_ns
                ));
            }
        }
        lines
    }

    fn next_deadline(&self) -> Option<u64> {
        self.vcpus
            .iter()
            .flat_map(|v| v.tokens.values())
            .filter_map(|o| match o.state {
                TokenState::Fetching { due } => Some(due),
                _ => None,
            })
            .min()
    }

    fn on_time(&mut self, now_ns: u64, pages: &mut dyn Residency) -> Vec<(u32, Action)> {
        self.timed(|e| e.serve_on_time(now_ns, pages))
    }
}
