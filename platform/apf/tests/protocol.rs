//! The async protocol as the engine plays it, call by call, against a fake
//! machine that plays the guest's side: enable, fault, "not present",
//! request, fetch done, ready ring, ACK, disable; and what a misbehaving
//! guest gets.

mod common;

use std::sync::Arc;
use std::sync::atomic::AtomicU32;

use apflab_abi::addr::{Gpa, Pfn};
use apflab_abi::apf::{
    self, CONTROL_BLOCK_VERSION, EC_APF_NOT_PRESENT, EC_DATA_ABORT_LOWER, REASON_NOT_PRESENT,
    Token, cb_offset, esr_ec,
};
use apflab_abi::hypercall as hc;
use apflab_abi::memory_map::RAM_BASE;
use apflab_abi::policy::{Decision, Initiation, NotPresentDelivery, ReadyDelivery, Sleep};
use apflab_apf::{ApfConfig, Engine, TokenEvent};
use apflab_hypervisor::Residency;
use apflab_hypervisor::{Action, EngineCall, FaultHook};
use common::{FakeMachine, Fixed, RAM, config, fault, managed, pager};
use vm_memory::{Bytes, GuestAddress};

/// Where the fake guest keeps vCPU 0's control block.
const CB: u64 = RAM_BASE + 0x10_0000;

fn engine(decision: Decision, depth: u32) -> (Engine, FakeMachine) {
    let mut c = config(None, 0.0);
    c.queue_depth = 4;
    let policy = Fixed(decision, Arc::new(AtomicU32::new(0)));
    let mut e = Engine::new(1, pager(&c), Box::new(policy), ApfConfig::all(depth));
    let mut m = FakeMachine::new(RAM);
    e.init(&mut m).unwrap();
    (e, m)
}

fn call(
    e: &mut Engine,
    m: &mut FakeMachine,
    function: u32,
    args: [u64; 5],
    now: u64,
) -> ([u64; 4], Action) {
    let a = e.on_hypercall(0, EngineCall { function, args }, now, m);
    (a.regs, a.action)
}

/// An engine for `decision` with async PF enabled on vCPU 0.
fn enabled(decision: Decision, depth: u32) -> (Engine, FakeMachine) {
    let (mut e, mut m) = engine(decision, depth);
    enable(&mut e, &mut m);
    (e, m)
}

/// An async fault on managed page `k` at `now`: the "not present" injected.
fn inject(
    e: &mut Engine,
    m: &mut FakeMachine,
    k: u64,
    write: bool,
    now: u64,
) -> apflab_hypervisor::SyncException {
    match e.on_not_resident(0, &fault(Pfn(managed(k)).gpa(), write), now, m) {
        Action::InjectException(exc) => exc,
        other => panic!("an async fault injects \"not present\", not {other:?}"),
    }
}

/// Enables async PF on vCPU 0 with everything accepted.
fn enable(e: &mut Engine, m: &mut FakeMachine) {
    m.memory
        .write_obj(CONTROL_BLOCK_VERSION, GuestAddress(CB))
        .unwrap();
    let (regs, _) = call(e, m, hc::FN_FEATURES, [0; 5], 0);
    assert_eq!(regs[0], ApfConfig::IMPLEMENTED);
    let (regs, action) = call(
        e,
        m,
        hc::FN_APF_ENABLE,
        [CB, apf::features::ALL, 0, 0, 0],
        0,
    );
    assert_eq!((regs[0], action), (0, Action::Retry));
}

fn cb_u32(m: &FakeMachine, offset: usize) -> u32 {
    m.memory.read_obj(GuestAddress(CB + offset as u64)).unwrap()
}

fn ring_slot(m: &FakeMachine, i: u32) -> u64 {
    let slot = (i as usize % apf::READY_RING_SLOTS) as u64;
    m.memory
        .read_obj(GuestAddress(CB + cb_offset::READY_RING as u64 + 8 * slot))
        .unwrap()
}

/// The guest consumes its ring up to `tail`.
fn consume(m: &FakeMachine, tail: u32) {
    m.memory
        .write_obj(tail, GuestAddress(CB + cb_offset::READY_TAIL as u64))
        .unwrap();
}

fn decision(not_present: NotPresentDelivery, initiation: Initiation) -> Decision {
    Decision::Async {
        not_present,
        ready: ReadyDelivery::Interrupt,
        initiation,
        sleep: Sleep::Reschedule,
    }
}

fn kinds(e: &Engine, token: Token) -> Vec<TokenEvent> {
    e.events()
        .iter()
        .filter(|ev| ev.token == token)
        .map(|ev| ev.kind)
        .collect()
}

#[test]
fn host_initiated_fault_injects_not_present_then_rings_ready_then_acks() {
    let (mut e, mut m) = enabled(
        decision(NotPresentDelivery::DedicatedEc, Initiation::Host),
        64,
    );
    let page = Pfn(managed(0)).gpa();
    let exc = inject(&mut e, &mut m, 0, false, 1_000);
    assert_eq!(esr_ec(exc.esr), EC_APF_NOT_PRESENT);
    let token = Token(exc.esr & 0x1ff_ffff);
    assert_eq!(token.vcpu(), 0);
    assert_eq!((exc.far, exc.return_pc), (0x10_0000, 0x4000_1000));
    assert_eq!(cb_u32(&m, cb_offset::REASON), REASON_NOT_PRESENT);
    let cb_token: u64 = m
        .memory
        .read_obj(GuestAddress(CB + cb_offset::TOKEN as u64))
        .unwrap();
    assert_eq!(cb_token, token.0);
    assert!(!m.is_resident(page));
    // The fetch was started at the fault: 10 µs later it is due.
    assert_eq!(e.next_deadline(), Some(11_000));
    assert_eq!(e.on_time(11_000, &mut m), [(0, Action::SetReadyLine(true))]);
    assert!(m.is_resident(page), "installed before ready is delivered");
    assert_eq!(cb_u32(&m, cb_offset::READY_HEAD), 1);
    assert_eq!(ring_slot(&m, 0), token.0);
    assert_eq!(e.next_deadline(), None);
    consume(&m, 1);
    let (regs, action) = call(&mut e, &mut m, hc::FN_APF_ACK, [0; 5], 12_000);
    assert_eq!((regs[0], action), (0, Action::SetReadyLine(false)));
    assert_eq!(
        kinds(&e, token),
        [
            TokenEvent::Fault,
            TokenEvent::NotPresent,
            TokenEvent::FetchDone,
            TokenEvent::Pushed,
            TokenEvent::Consumed
        ]
    );
    let mt = e.metrics();
    assert_eq!(
        (mt.async_faults, mt.sync_faults, mt.ready_delivered),
        (1, 0, 1)
    );
    assert_eq!((mt.acks, mt.ready_interrupts), (1, 1));
    assert_eq!(mt.not_present["dedicated_ec"], 1);
    assert_eq!(mt.outstanding_high_water, [1]);
    // 11 µs from fault to consumed: the 8..16 µs bucket.
    assert_eq!(mt.token_latency_log2_us[3], 1);
}

#[test]
fn guest_initiated_fetch_starts_at_the_request() {
    let (mut e, mut m) = enabled(
        decision(NotPresentDelivery::DataAbort, Initiation::Guest),
        64,
    );
    let exc = inject(&mut e, &mut m, 3, true, 1_000);
    assert_eq!(esr_ec(exc.esr), EC_DATA_ABORT_LOWER);
    let token: u64 = m
        .memory
        .read_obj(GuestAddress(CB + cb_offset::TOKEN as u64))
        .unwrap();
    assert_eq!(
        e.next_deadline(),
        None,
        "nothing is fetched before the request"
    );
    assert_eq!(e.pager_metrics().fetches, 0);
    let (regs, _) = call(
        &mut e,
        &mut m,
        hc::FN_APF_PAGE_REQUEST,
        [token, 0, 0, 0, 0],
        50_000,
    );
    assert_eq!(regs[0], 0);
    assert_eq!(
        e.next_deadline(),
        Some(60_000),
        "latency counts from the request"
    );
    // A second request for the same token is refused.
    let (regs, _) = call(
        &mut e,
        &mut m,
        hc::FN_APF_PAGE_REQUEST,
        [token, 0, 0, 0, 0],
        50_000,
    );
    assert_eq!(regs[0], hc::SMCCC_INVALID_PARAMETERS as u64);
    assert_eq!(e.metrics().violations["request_not_awaited"], 1);
    assert_eq!(e.on_time(60_000, &mut m), [(0, Action::SetReadyLine(true))]);
    assert_eq!(
        kinds(&e, Token(token)),
        [
            TokenEvent::Fault,
            TokenEvent::NotPresent,
            TokenEvent::Request,
            TokenEvent::FetchDone,
            TokenEvent::Pushed
        ]
    );
    assert_eq!(e.metrics().page_requests, 1);
}

#[test]
fn a_ring_of_depth_one_delivers_one_token_per_interrupt() {
    let (mut e, mut m) = enabled(
        decision(NotPresentDelivery::DedicatedEc, Initiation::Host),
        1,
    );
    for k in 0..3 {
        inject(&mut e, &mut m, k, false, 0);
    }
    assert_eq!(e.metrics().outstanding_high_water, [3]);
    // All three fetches overlap (queue depth 4) and are due at 10 µs.
    assert_eq!(e.on_time(10_000, &mut m), [(0, Action::SetReadyLine(true))]);
    assert_eq!(cb_u32(&m, cb_offset::READY_HEAD), 1, "one token at a time");
    for tail in 1..=3 {
        consume(&m, tail);
        let (_, action) = call(&mut e, &mut m, hc::FN_APF_ACK, [0; 5], 20_000);
        assert_eq!(cb_u32(&m, cb_offset::READY_HEAD), 3.min(tail + 1));
        let expect = if tail < 3 {
            Action::Retry
        } else {
            Action::SetReadyLine(false)
        };
        assert_eq!(action, expect, "after ACK {tail}");
    }
    let mt = e.metrics();
    assert_eq!((mt.ready_delivered, mt.acks), (3, 3));
    assert_eq!(mt.tokens_per_ack[&1], 3);
}

#[test]
fn the_65th_outstanding_fault_is_served_sync() {
    let (mut e, mut m) = enabled(
        decision(NotPresentDelivery::DedicatedEc, Initiation::Guest),
        64,
    );
    for k in 0..apf::MAX_OUTSTANDING as u64 {
        inject(&mut e, &mut m, k, false, 0);
    }
    let page = Pfn(managed(100)).gpa();
    assert!(matches!(
        e.on_not_resident(0, &fault(page, false), 0, &mut m),
        Action::StallUntil(_)
    ));
    assert_eq!(e.metrics().fallbacks["outstanding_cap"], 1);
    // A fault again on a page the vCPU holds a token for waits for it.
    let held = Pfn(managed(5)).gpa();
    assert!(matches!(
        e.on_not_resident(0, &fault(held, false), 0, &mut m),
        Action::StallUntil(_)
    ));
    assert_eq!(e.metrics().fallbacks["repeat_fault"], 1);
}

#[test]
fn a_fault_in_the_guests_no_inject_window_is_served_sync() {
    let (mut e, mut m) = enabled(
        decision(NotPresentDelivery::DedicatedEc, Initiation::Host),
        64,
    );
    let state = GuestAddress(CB + cb_offset::GUEST_STATE as u64);
    m.memory
        .write_obj(apf::GUEST_CAN_RESCHEDULE | apf::GUEST_NO_INJECT, state)
        .unwrap();
    let page = Pfn(managed(0)).gpa();
    assert!(matches!(
        e.on_not_resident(0, &fault(page, false), 0, &mut m),
        Action::StallUntil(_)
    ));
    assert_eq!(e.metrics().fallbacks["no_inject_window"], 1);
    assert_eq!(
        cb_u32(&m, cb_offset::REASON),
        apf::REASON_NONE,
        "nothing written"
    );
    // Out of the window, the next fault is async again.
    m.memory
        .write_obj(apf::GUEST_CAN_RESCHEDULE, state)
        .unwrap();
    let next = Pfn(managed(1)).gpa();
    assert!(matches!(
        e.on_not_resident(0, &fault(next, false), 0, &mut m),
        Action::InjectException(_)
    ));
    assert_eq!(e.metrics().async_faults, 1);
}

#[test]
fn the_published_no_inject_window_keeps_kernel_faults_and_ready_exceptions_out_of_it() {
    use apflab_abi::apf::{GUEST_IN_IDLE, REASON_NONE};
    use apflab_hypervisor::ResumeState;
    // The kernel's exception entry path, as the guest published it.
    let (start, end) = (0xffff_8000_0801_0000u64, 0xffff_8000_0801_0800u64);
    let publish = |m: &mut FakeMachine| {
        let at = |o: usize| GuestAddress(CB + o as u64);
        m.memory
            .write_obj(start, at(cb_offset::NO_INJECT_START))
            .unwrap();
        m.memory
            .write_obj(end, at(cb_offset::NO_INJECT_END))
            .unwrap();
    };
    let kernel_at = |page: u64, pc: u64| apflab_hypervisor::NotResidentFault {
        pc,
        el: 1,
        ..fault(Pfn(managed(page)).gpa(), false)
    };
    // Kernel-mode async-halt, ready as an exception.
    let halt = Decision::Async {
        not_present: NotPresentDelivery::DataAbort,
        ready: ReadyDelivery::Exception,
        initiation: Initiation::Host,
        sleep: Sleep::Halt,
    };
    let (mut e, mut m) = enabled(halt, 64);
    publish(&mut m);
    for pc in [start, end - 4] {
        assert!(matches!(
            e.on_not_resident(0, &kernel_at(0, pc), 0, &mut m),
            Action::StallUntil(_)
        ));
    }
    assert_eq!(e.metrics().fallbacks["no_inject_window"], 2);
    assert_eq!(
        cb_u32(&m, cb_offset::REASON),
        REASON_NONE,
        "nothing written"
    );
    // Just past the window the same fault goes async.
    assert!(matches!(
        e.on_not_resident(0, &kernel_at(1, end), 0, &mut m),
        Action::InjectException(_)
    ));
    assert_eq!(e.metrics().async_faults, 1);
    m.memory
        .write_obj(REASON_NONE, GuestAddress(CB + cb_offset::REASON as u64))
        .unwrap();
    // Its "ready" waits for the halted vCPU to leave the window, even in a
    // marked wait.
    e.on_time(10_000, &mut m);
    let state = GuestAddress(CB + cb_offset::GUEST_STATE as u64);
    m.memory.write_obj(GUEST_IN_IDLE, state).unwrap();
    let inside = ResumeState {
        el: 1,
        pc: start + 0x80,
    };
    assert_eq!(e.on_resume(0, inside, 11_000, &mut m), Action::Retry);
    assert_eq!(e.metrics().ready_exception_held, 1);
    let outside = ResumeState { el: 1, pc: end };
    assert!(matches!(
        e.on_resume(0, outside, 12_000, &mut m),
        Action::InjectException(_)
    ));
}

#[test]
fn kernel_mode_faults_stay_sync_unless_the_policy_says_halt() {
    let mut kernel = fault(Pfn(managed(0)).gpa(), false);
    kernel.el = 1;
    // Reschedule is never served in the kernel.
    let (mut e, mut m) = enabled(
        decision(NotPresentDelivery::DedicatedEc, Initiation::Host),
        64,
    );
    assert!(matches!(
        e.on_not_resident(0, &kernel, 0, &mut m),
        Action::StallUntil(_)
    ));
    assert_eq!(e.metrics().fallbacks["kernel_mode"], 1);
    // Async-halt is, with IRQs unmasked: a data abort of the current level.
    let halt = Decision::Async {
        not_present: NotPresentDelivery::DataAbort,
        ready: ReadyDelivery::Interrupt,
        initiation: Initiation::Host,
        sleep: Sleep::Halt,
    };
    let (mut e, mut m) = enabled(halt, 64);
    let Action::InjectException(exc) = e.on_not_resident(0, &kernel, 0, &mut m) else {
        panic!("async-halt in the kernel injects \"not present\"")
    };
    assert_eq!(esr_ec(exc.esr), apf::EC_DATA_ABORT_CURRENT);
    assert_eq!(cb_u32(&m, cb_offset::ACTION), apf::ACTION_HALT);
    // With IRQs masked the kernel could not wait: sync.
    let masked = apflab_hypervisor::NotResidentFault {
        gpa: Pfn(managed(1)).gpa(),
        irqs_masked: true,
        ..kernel
    };
    assert!(matches!(
        e.on_not_resident(0, &masked, 0, &mut m),
        Action::StallUntil(_)
    ));
    assert_eq!(e.metrics().fallbacks["kernel_mode"], 1);
    assert_eq!(e.metrics().async_faults, 1);
}

#[test]
fn a_misbehaving_guest_gets_errors_and_is_counted() {
    let (mut e, mut m) = engine(
        decision(NotPresentDelivery::DedicatedEc, Initiation::Host),
        64,
    );
    let bad = hc::SMCCC_INVALID_PARAMETERS as u64;
    // Before enabling: ACK and requests.
    assert_eq!(call(&mut e, &mut m, hc::FN_APF_ACK, [0; 5], 0).0[0], bad);
    // Control blocks misaligned, outside RAM, of another version.
    assert_eq!(
        call(&mut e, &mut m, hc::FN_APF_ENABLE, [CB + 8, 0, 0, 0, 0], 0).0[0],
        bad
    );
    assert_eq!(
        call(&mut e, &mut m, hc::FN_APF_ENABLE, [0x1000, 0, 0, 0, 0], 0).0[0],
        bad
    );
    assert_eq!(
        call(&mut e, &mut m, hc::FN_APF_ENABLE, [CB, 0, 0, 0, 0], 0).0[0],
        bad
    );
    enable(&mut e, &mut m);
    assert_eq!(call(&mut e, &mut m, hc::FN_APF_ACK, [0; 5], 0).0[0], bad);
    assert_eq!(
        call(
            &mut e,
            &mut m,
            hc::FN_APF_PAGE_REQUEST,
            [0x7001, 0, 0, 0, 0],
            0
        )
        .0[0],
        bad
    );
    consume(&m, 9);
    assert_eq!(call(&mut e, &mut m, hc::FN_APF_ACK, [0; 5], 0).0[0], bad);
    let v = &e.metrics().violations;
    for (kind, n) in [
        ("ack_not_enabled", 1),
        ("control_block_misaligned", 1),
        ("control_block_outside_ram", 1),
        ("control_block_version", 1),
        ("ack_without_consumption", 1),
        ("request_unknown_token", 1),
        ("ready_tail_out_of_range", 1),
    ] {
        assert_eq!(v.get(kind), Some(&n), "{kind}: {v:?}");
    }
}

#[test]
fn disable_drops_every_token_and_offers_nothing_when_off() {
    let (mut e, mut m) = enabled(
        decision(NotPresentDelivery::DedicatedEc, Initiation::Host),
        64,
    );
    let page = Pfn(managed(0)).gpa();
    e.on_not_resident(0, &fault(page, false), 0, &mut m);
    e.on_time(10_000, &mut m);
    let (regs, action) = call(&mut e, &mut m, hc::FN_APF_DISABLE, [0; 5], 10_000);
    assert_eq!((regs[0], regs[1]), (0, apf::TOKEN_WAKE_ALL));
    assert_eq!(action, Action::SetReadyLine(false));
    assert_eq!((e.metrics().wake_alls, e.metrics().tokens_dropped), (1, 1));
    // Faults after the disable are sync again.
    let other = Pfn(managed(1)).gpa();
    assert!(matches!(
        e.on_not_resident(0, &fault(other, false), 10_000, &mut m),
        Action::StallUntil(_)
    ));

    let mut c = config(None, 0.0);
    c.queue_depth = 1;
    let policy = Fixed(
        decision(NotPresentDelivery::DedicatedEc, Initiation::Host),
        Arc::new(AtomicU32::new(0)),
    );
    let mut off = Engine::new(1, pager(&c), Box::new(policy), ApfConfig::OFF);
    let mut m = FakeMachine::new(RAM);
    off.init(&mut m).unwrap();
    let (regs, _) = call(&mut off, &mut m, hc::FN_FEATURES, [0; 5], 0);
    assert_eq!(regs[0], 0);
    let (regs, _) = call(&mut off, &mut m, hc::FN_APF_ENABLE, [CB, 0, 0, 0, 0], 0);
    assert_eq!(regs[0], hc::SMCCC_NOT_SUPPORTED as u64);
    let _ = Gpa(0);
}

#[test]
fn ready_as_an_exception_waits_until_the_guest_can_take_it() {
    use apflab_abi::apf::{EC_APF_READY, GUEST_IN_IDLE, REASON_NONE, REASON_PAGE_READY};
    use apflab_hypervisor::ResumeState;
    let plan = Decision::Async {
        not_present: NotPresentDelivery::DedicatedEc,
        ready: ReadyDelivery::Exception,
        initiation: Initiation::Host,
        sleep: Sleep::Reschedule,
    };
    let (mut e, mut m) = enabled(plan, 64);
    inject(&mut e, &mut m, 0, false, 0);
    // The guest read its "not present".
    m.memory
        .write_obj(REASON_NONE, GuestAddress(CB + cb_offset::REASON as u64))
        .unwrap();
    assert_eq!(e.resume_pending_since(0), None);
    assert_eq!(e.on_time(10_000, &mut m), [], "no ring, no line");
    assert_eq!(e.resume_pending_since(0), Some(10_000));
    // In the kernel, outside a marked wait: held.
    let kernel = ResumeState {
        el: 1,
        pc: 0x4008_0000,
    };
    assert_eq!(e.on_resume(0, kernel, 11_000, &mut m), Action::Retry);
    // In a marked wait: delivered, returning where the vCPU was.
    let state = GuestAddress(CB + cb_offset::GUEST_STATE as u64);
    m.memory.write_obj(GUEST_IN_IDLE, state).unwrap();
    let Action::InjectException(exc) = e.on_resume(0, kernel, 12_000, &mut m) else {
        panic!("deliverable in a marked wait")
    };
    assert_eq!(esr_ec(exc.esr), EC_APF_READY);
    assert_eq!(exc.return_pc, 0x4008_0000);
    assert_eq!(cb_u32(&m, cb_offset::REASON), REASON_PAGE_READY);
    assert_eq!(e.resume_pending_since(0), None);
    let mt = e.metrics();
    assert_eq!(
        (mt.ready_exceptions, mt.ready_delivered, mt.acks),
        (1, 1, 0)
    );
    assert_eq!(mt.ready_exception_held, 1, "held once, in the kernel");
    // At EL0 the next one goes at once, but not over an unread notification.
    m.memory.write_obj(0u32, state).unwrap();
    let other = Pfn(managed(1)).gpa();
    e.on_not_resident(0, &fault(other, false), 20_000, &mut m);
    e.on_time(30_000, &mut m);
    let user = ResumeState {
        el: 0,
        pc: 0x40_0000,
    };
    assert_eq!(
        e.on_resume(0, user, 30_000, &mut m),
        Action::Retry,
        "the guest has not read the last notification"
    );
    m.memory
        .write_obj(REASON_NONE, GuestAddress(CB + cb_offset::REASON as u64))
        .unwrap();
    assert!(matches!(
        e.on_resume(0, user, 31_000, &mut m),
        Action::InjectException(_)
    ));
}

#[test]
fn every_fetch_completes_to_the_policy_with_its_token_and_fetch_time() {
    // Sync first (async PF not yet enabled), then guest-initiated async.
    let (mut e, mut m) = engine(
        decision(NotPresentDelivery::DataAbort, Initiation::Guest),
        64,
    );
    e.record_policy_calls();
    // Not enabled: served sync; the stall ends 10 µs later.
    let a = Pfn(managed(1)).gpa();
    assert_eq!(
        e.on_not_resident(0, &fault(a, false), 1_000, &mut m),
        Action::StallUntil(11_000)
    );
    assert_eq!(e.on_wait_end(0, 11_000, &mut m), Action::Retry);
    enable(&mut e, &mut m);
    inject(&mut e, &mut m, 3, true, 20_000);
    let token: u64 = m
        .memory
        .read_obj(GuestAddress(CB + cb_offset::TOKEN as u64))
        .unwrap();
    call(
        &mut e,
        &mut m,
        hc::FN_APF_PAGE_REQUEST,
        [token, 0, 0, 0, 0],
        50_000,
    );
    e.on_time(60_000, &mut m);

    let (calls, dropped) = e.policy_calls();
    assert_eq!(dropped, 0);
    let [
        apflab_apf::PolicyCall::Decide { fault: f1, .. },
        apflab_apf::PolicyCall::Complete(c1),
        apflab_apf::PolicyCall::Decide { fault: f2, .. },
        apflab_apf::PolicyCall::Complete(c2),
    ] = calls
    else {
        panic!("{calls:#?}");
    };
    // The sync decision's token comes back with its completion, and the
    // next fault on the vCPU is offered the same one (none was handed out).
    assert_eq!((c1.token, c1.asynchronous), (f1.token, false));
    assert_eq!(
        (c1.fetch_ns, c1.wait_ns, c1.now_ns),
        (10_000, 10_000, 11_000)
    );
    assert_eq!(f1.access, apflab_abi::policy::AccessKind::Read);
    assert_eq!((f1.est_fetch_ns, f1.fetches_completed), (0, 0));
    // The sync fetch is what the next decision's estimate knows.
    assert_eq!((f2.est_fetch_ns, f2.fetches_completed), (10_000, 1));
    assert_eq!(f2.access, apflab_abi::policy::AccessKind::Write);
    assert_eq!(f2.token, token);
    assert_eq!(f2.ipa, Pfn(managed(3)).gpa().0);
    // Guest-initiated: the fetch counts from the request, the wait from
    // the fault.
    assert_eq!((c2.token, c2.asynchronous), (token, true));
    assert_eq!((c2.fetch_ns, c2.wait_ns), (10_000, 40_000));
    assert_eq!(e.metrics().completions, 2);
}
