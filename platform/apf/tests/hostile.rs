//! The engine against a guest that does anything: seeded random sequences
//! of faults (from EL0 and EL1, IRQs masked or not), protocol calls with
//! good and bad arguments, writes to any control-block field, resumes in
//! any state and time passing, on four vCPUs, with a policy that decides at
//! random. The engine must never panic, and its books must stay straight:
//! each token is handed out once, consumed at most once, never after it was
//! dropped, and never consumed before its page came in; no vCPU holds more
//! than 64 tokens.

mod common;

use apflab_abi::addr::Pfn;
use apflab_abi::apf::{self, CONTROL_BLOCK_VERSION, MAX_OUTSTANDING, cb_offset};
use apflab_abi::hypercall as hc;
use apflab_abi::memory_map::RAM_BASE;
use apflab_abi::policy::{
    Decision, FaultInfo, Initiation, NotPresentDelivery, Policy, ReadyDelivery, Sleep,
};
use apflab_apf::{ApfConfig, Engine};
use apflab_hypervisor::{EngineCall, FaultHook, ResumeState};
use common::{FakeMachine, RAM, config, fault, managed, pager};
use vm_memory::{Bytes, GuestAddress};

const VCPUS: u32 = 4;
const STEPS: u32 = 20_000;

/// xorshift64*: the test's own deterministic randomness.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[self.below(from.len() as u64) as usize]
    }
}

/// A policy that decides at random.
struct RandomPolicy(Rng);

impl Policy for RandomPolicy {
    fn decide(&mut self, _: &FaultInfo) -> Decision {
        let r = &mut self.0;
        if r.below(4) == 0 {
            return Decision::Sync;
        }
        Decision::Async {
            not_present: r.pick(&[
                NotPresentDelivery::DataAbort,
                NotPresentDelivery::DedicatedEc,
                NotPresentDelivery::Sdei,
            ]),
            ready: r.pick(&[ReadyDelivery::Interrupt, ReadyDelivery::Exception]),
            initiation: r.pick(&[Initiation::Host, Initiation::Guest]),
            sleep: r.pick(&[Sleep::Halt, Sleep::Reschedule]),
        }
    }
}

/// Where the guest keeps vCPU `v`'s control block (or, sometimes, where it
/// claims to).
fn control_block(v: u32) -> u64 {
    RAM_BASE + 0x10_0000 + u64::from(v) * 0x1000
}

/// One random step of the hostile guest and the passing time.
fn step(rng: &mut Rng, e: &mut Engine, m: &mut FakeMachine, now: &mut u64) {
    let v = rng.below(u64::from(VCPUS)) as u32;
    *now += rng.below(20_000);
    let cb = control_block(v);
    match rng.below(10) {
        0..=2 => {
            let mut f = fault(Pfn(managed(rng.below(256))).gpa(), rng.below(2) == 0);
            f.el = rng.pick(&[0, 0, 0, 1]);
            f.irqs_masked = rng.below(3) == 0;
            let _ = e.on_not_resident(v, &f, *now, m);
        }
        3 => {
            let _ = e.on_wait_end(v, *now, m);
        }
        4 => {
            let _ = e.on_time(*now, m);
        }
        5 => {
            let state = ResumeState {
                el: rng.pick(&[0, 1]),
                pc: 0x4000_2000,
            };
            let _ = e.on_resume(v, state, *now, m);
        }
        6 => {
            // A good block, or a misaligned one, one outside RAM, one of
            // another version.
            let base = rng.pick(&[cb, cb, cb + 8, 0x1000, RAM_BASE + RAM - 64]);
            let version = rng.pick(&[CONTROL_BLOCK_VERSION, CONTROL_BLOCK_VERSION, 99]);
            let _ = m.memory.write_obj(version, GuestAddress(cb));
            let function = rng.pick(&[hc::FN_APF_ENABLE, hc::FN_APF_ENABLE, hc::FN_APF_DISABLE]);
            let call = EngineCall {
                function,
                args: [base, rng.next(), 0, 0, 0],
            };
            let _ = e.on_hypercall(v, call, *now, m);
        }
        7 => {
            // Consume some of the ring (or claim more than was pushed), ACK.
            let head: u32 = m
                .memory
                .read_obj(GuestAddress(cb + cb_offset::READY_HEAD as u64))
                .unwrap_or(0);
            let tail = head.wrapping_sub(rng.below(3) as u32) + rng.pick(&[0, 0, 0, 5]);
            let _ = m
                .memory
                .write_obj(tail, GuestAddress(cb + cb_offset::READY_TAIL as u64));
            let ack = EngineCall {
                function: hc::FN_APF_ACK,
                args: [0; 5],
            };
            let _ = e.on_hypercall(v, ack, *now, m);
        }
        8 => {
            // A request for the token just handed out, or any other.
            let current: u64 = m
                .memory
                .read_obj(GuestAddress(cb + cb_offset::TOKEN as u64))
                .unwrap_or(0);
            let other = rng.next();
            let token = rng.pick(&[current, current, other, apf::TOKEN_WAKE_ALL]);
            let call = EngineCall {
                function: hc::FN_APF_PAGE_REQUEST,
                args: [token, 0, 0, 0, 0],
            };
            let _ = e.on_hypercall(v, call, *now, m);
        }
        _ => {
            // Any value into any field the guest writes.
            let field = rng.pick(&[
                cb_offset::REASON,
                cb_offset::GUEST_STATE,
                cb_offset::RUNNABLE_TASKS,
                cb_offset::PREEMPT_COUNT,
            ]);
            // (Weighted towards states without GUEST_NO_INJECT, in which
            // every fault is sync, so that tokens still get far.)
            let value = rng.pick(&[0, 1, 1, 2, 3, 3, 7, u32::MAX]);
            let _ = m.memory.write_obj(value, GuestAddress(cb + field as u64));
        }
    }
}

#[test]
fn a_guest_that_does_anything_never_breaks_the_engine_or_its_books() {
    for seed in [1u64, 7, 0xdead_beef] {
        let mut c = config(Some(128), 0.0);
        c.queue_depth = 4;
        let policy = RandomPolicy(Rng(seed ^ 0x5eed));
        let mut e = Engine::new(VCPUS, pager(&c), Box::new(policy), ApfConfig::all(8));
        let mut m = FakeMachine::new(RAM);
        e.init(&mut m).unwrap();
        let mut rng = Rng(seed);
        let mut now = 0;
        for _ in 0..STEPS {
            step(&mut rng, &mut e, &mut m, &mut now);
        }
        let mt = e.metrics();
        assert!(
            mt.async_faults > 100,
            "seed {seed}: the guest got tokens: {mt:?}"
        );
        assert!(
            mt.ready_delivered > 10,
            "seed {seed}: and consumed some: {mt:?}"
        );
        assert!(!mt.violations.is_empty(), "seed {seed}: and misbehaved");
        assert!(mt.ready_delivered + mt.tokens_dropped <= mt.async_faults);
        assert!(
            mt.outstanding_high_water
                .iter()
                .all(|&n| n as usize <= MAX_OUTSTANDING)
        );
        let lives = apflab_apf::events::lives(e.events());
        assert_eq!(lives.len() as u64, mt.async_faults, "seed {seed}");
        for (token, life) in &lives {
            if let Err(e) = apflab_apf::events::check_life(*token, life) {
                panic!("seed {seed}: {e}");
            }
        }
    }
}
