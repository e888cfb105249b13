//! The fault engine's host-side work per fault, synchronous against
//! asynchronous, on the same pager and pages (each iteration faults a page
//! in and, past the resident limit, evicts and writes one back):
//!
//! - `sync`: the fault (policy call, pager, eviction), then the end of the
//!   stall (install);
//! - `async/interrupt`: the fault (policy call, token, "not present" in the
//!   control block and the exception), the fetch done (install, ready ring,
//!   line), the guest's ACK (ring bookkeeping, line);
//! - `async/exception`: the same fault, the fetch done (install, queued
//!   for delivery), and the "page ready" exception entered when the guest
//!   resumes at EL0 (control block, the exception).
//!
//! Goal: an async fault's host-side work at most 2x a sync fault's. The
//! guest's side (exception entry, the scheduler) runs in the guest and is
//! not part of it; the exit itself is in the `emu` bench.

use std::hint::black_box;
use std::path::Path;

use apflab_abi::addr::Pfn;
use apflab_abi::apf::{self, CONTROL_BLOCK_VERSION, cb_offset};
use apflab_abi::hypercall as hc;
use apflab_abi::memory_map::RAM_BASE;
use apflab_abi::policy::{Decision, Initiation, NotPresentDelivery, ReadyDelivery, Sleep};
use apflab_apf::plain::PlainMachine;
use apflab_apf::{ApfConfig, Engine};
use apflab_hypervisor::arch::pstate;
use apflab_hypervisor::{Action, EngineCall, FaultHook, ResumeState};
use apflab_hypervisor::{NotResidentFault, PageAccess};
use apflab_pager::{ManagedRange, PagerConfig, Prepared, VirtualPager};
use apflab_policy_host::BuiltinFixed;
use criterion::{Criterion, criterion_group, criterion_main};
use vm_memory::{Bytes, GuestAddress};

const RAM: u64 = 64 << 20;
/// Pages cycled through: twice the resident limit, so every fault evicts.
const PAGES: u64 = 1024;
const CONTROL_BLOCK: u64 = RAM_BASE + 0x10_0000;

fn engine(decision: Decision, offered: ApfConfig) -> (Engine, PlainMachine) {
    let config: PagerConfig = toml::from_str(
        "store = { kind = \"synthetic\", seed = 1 }\n\
         latency = { model = \"constant\", us = 10.0 }\n\
         resident_limit = \"2 MiB\"\ninitially_resident = 0.0\n",
    )
    .expect("pager config");
    let pager = VirtualPager::new(Prepared::new(&config, RAM, Path::new(".")).expect("pager"));
    let mut e = Engine::new(1, pager, Box::new(BuiltinFixed(decision)), offered);
    let mut m = PlainMachine::new(RAM);
    e.init(&mut m).expect("init");
    (e, m)
}

fn fault(k: u64) -> NotResidentFault {
    let first = ManagedRange::for_guest_ram(RAM).expect("range").first_pfn;
    let access = if k.is_multiple_of(3) {
        PageAccess::Write
    } else {
        PageAccess::Read
    };
    // From a user task (EL0t), IRQs unmasked.
    NotResidentFault::new(
        Pfn(first + k % PAGES).gpa(),
        access,
        RAM_BASE + 0x1000,
        0x10_0000_0000 + (k % PAGES) * 4096,
        pstate::EL0T,
    )
}

fn sync_fault(c: &mut Criterion) {
    let (mut e, mut m) = engine(Decision::Sync, ApfConfig::OFF);
    let (mut k, mut now) = (0u64, 0u64);
    c.bench_function("apf_host_work/sync", |b| {
        b.iter(|| {
            k += 1;
            now += 20_000;
            let Action::StallUntil(t) = e.on_not_resident(0, &fault(k), now, &mut m) else {
                panic!("a sync fault stalls")
            };
            now = t;
            black_box(e.on_wait_end(0, now, &mut m))
        })
    });
}

fn async_fault(c: &mut Criterion) {
    let decision = Decision::Async {
        not_present: NotPresentDelivery::DedicatedEc,
        ready: ReadyDelivery::Interrupt,
        initiation: Initiation::Host,
        sleep: Sleep::Reschedule,
    };
    let (mut e, mut m) = enabled(decision);
    let ack = EngineCall {
        function: hc::FN_APF_ACK,
        args: [0; 5],
    };
    let tail = GuestAddress(CONTROL_BLOCK + cb_offset::READY_TAIL as u64);
    let (mut k, mut now, mut consumed) = (0u64, 0u64, 0u32);
    c.bench_function("apf_host_work/async_interrupt", |b| {
        b.iter(|| {
            k += 1;
            now += 20_000;
            let action = e.on_not_resident(0, &fault(k), now, &mut m);
            assert!(matches!(action, Action::InjectException(_)), "{action:?}");
            now = e.next_deadline().expect("the fetch is due");
            black_box(e.on_time(now, &mut m));
            // The guest consumes the ring and acknowledges.
            consumed += 1;
            m.memory.write_obj(consumed, tail).expect("ready tail");
            black_box(e.on_hypercall(0, ack, now, &mut m))
        })
    });
    assert_eq!(e.metrics().ready_delivered, u64::from(consumed));
}

/// An engine for `decision` with async PF enabled on vCPU 0.
fn enabled(decision: Decision) -> (Engine, PlainMachine) {
    let (mut e, mut m) = engine(decision, ApfConfig::all(64));
    m.memory
        .write_obj(CONTROL_BLOCK_VERSION, GuestAddress(CONTROL_BLOCK))
        .expect("control block");
    let enable = EngineCall {
        function: hc::FN_APF_ENABLE,
        args: [CONTROL_BLOCK, apf::features::ALL, 0, 0, 0],
    };
    assert_eq!(e.on_hypercall(0, enable, 0, &mut m).regs[0], 0);
    (e, m)
}

fn async_fault_ready_exception(c: &mut Criterion) {
    let decision = Decision::Async {
        not_present: NotPresentDelivery::DataAbort,
        ready: ReadyDelivery::Exception,
        initiation: Initiation::Host,
        sleep: Sleep::Reschedule,
    };
    let (mut e, mut m) = enabled(decision);
    let reason = GuestAddress(CONTROL_BLOCK + cb_offset::REASON as u64);
    let at_el0 = ResumeState {
        el: 0,
        pc: 0x10_0000_0000,
    };
    let (mut k, mut now) = (0u64, 0u64);
    c.bench_function("apf_host_work/async_exception", |b| {
        b.iter(|| {
            k += 1;
            now += 20_000;
            let action = e.on_not_resident(0, &fault(k), now, &mut m);
            assert!(matches!(action, Action::InjectException(_)), "{action:?}");
            // The guest read its "not present".
            m.memory
                .write_obj(apf::REASON_NONE, reason)
                .expect("reason");
            now = e.next_deadline().expect("the fetch is due");
            black_box(e.on_time(now, &mut m));
            let ready = e.on_resume(0, at_el0, now, &mut m);
            assert!(matches!(ready, Action::InjectException(_)), "{ready:?}");
            // And its "page ready".
            m.memory
                .write_obj(apf::REASON_NONE, reason)
                .expect("reason");
            black_box(ready)
        })
    });
    assert_eq!(e.metrics().ready_exceptions, k);
}

criterion_group!(
    benches,
    sync_fault,
    async_fault,
    async_fault_ready_exception
);
criterion_main!(benches);
