//! The engine against a guest that does anything (`apflab_apf::hostile`,
//! also the fuzz target's guest) driven by seeded random choices: faults
//! (from EL0 and EL1, IRQs masked or not), protocol calls with good and bad
//! arguments, writes to any control-block field, resumes in any state and
//! time passing, on four vCPUs, with a policy that decides at random. The engine must never panic, and its books must stay straight:
//! each token is handed out once, consumed at most once, never after it was
//! dropped, and never consumed before its page came in; no vCPU holds more
//! than 64 tokens.

mod common;

use apflab_abi::policy::{
    Decision, FaultInfo, Initiation, NotPresentDelivery, Policy, ReadyDelivery, Sleep,
};
use apflab_apf::hostile::{Choices, HostileGuest};
use apflab_apf::{ApfConfig, Engine};
use apflab_guest_core::XorShift64Star;
use apflab_hypervisor::FaultHook;
use apflab_pager::ManagedRange;
use common::{FakeMachine, RAM, config, pager};

const VCPUS: u32 = 4;
const STEPS: u32 = 20_000;

/// The test's deterministic randomness: the guest's own generator.
struct Rng(XorShift64Star);

impl Rng {
    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[self.0.below(from.len() as u64) as usize]
    }
}

impl Choices for Rng {
    fn below(&mut self, n: u64) -> Option<u64> {
        Some(self.0.below(n))
    }

    fn any(&mut self) -> Option<u64> {
        Some(self.0.next_u64())
    }
}

/// A policy that decides at random.
struct RandomPolicy(Rng);

impl Policy for RandomPolicy {
    fn decide(&mut self, _: &FaultInfo) -> Decision {
        let r = &mut self.0;
        if r.0.below(4) == 0 {
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

/// The hostile guest on four vCPUs, and an engine (every protocol feature
/// offered, a pager with 128 resident pages and four fetches in flight)
/// whose policy decides at random from `policy_seed`.
fn hostile_setup(policy_seed: u64) -> (HostileGuest, Engine, FakeMachine) {
    let mut c = config(Some(128), 0.0);
    c.queue_depth = 4;
    let policy = RandomPolicy(Rng(XorShift64Star::from_state(policy_seed)));
    let mut e = Engine::new(VCPUS, pager(&c), Box::new(policy), ApfConfig::all(8));
    let mut m = FakeMachine::new(RAM);
    e.init(&mut m).unwrap();
    let guest = HostileGuest {
        vcpus: VCPUS,
        ram: RAM,
        managed: ManagedRange::for_guest_ram(RAM).unwrap(),
    };
    (guest, e, m)
}

#[test]
fn a_guest_that_does_anything_never_breaks_the_engine_or_its_books() {
    for seed in [1u64, 7, 0xdead_beef] {
        let (guest, mut e, mut m) = hostile_setup(seed ^ 0x5eed);
        let mut rng = Rng(XorShift64Star::from_state(seed));
        let mut now = 0;
        for _ in 0..STEPS {
            guest.step(&mut rng, &mut e, &mut m, &mut now);
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
        guest.assert_books(&e, &m);
    }
}

/// Choices read from a script, as the fuzz target's come from its input;
/// none once it runs out.
struct Scripted(std::vec::IntoIter<u64>);

impl Choices for Scripted {
    fn below(&mut self, n: u64) -> Option<u64> {
        self.0.next().map(|v| v % n)
    }

    fn any(&mut self) -> Option<u64> {
        self.0.next()
    }
}

/// The fuzz target found this one: a control block registered at the very
/// top of the address space, whose fields' addresses wrap.
#[test]
fn a_control_block_at_the_top_of_the_address_space_is_refused_not_a_panic() {
    let (guest, mut e, mut m) = hostile_setup(1);
    // vCPU 0, no time passing, step 7 (register a block), a base of any
    // value (choice 9, then not another vCPU's), u64::MAX - 8, prepared
    // (7 in 8) with this version, then ENABLE with any two arguments.
    let script = vec![0, 0, 7, 9, 1, u64::MAX - 8, 0, 0, 0, 0, 0];
    let mut now = 0;
    let stepped = guest.step(&mut Scripted(script.into_iter()), &mut e, &mut m, &mut now);
    assert_eq!(stepped, Some(()), "the script covers the whole step");
    assert!(
        !e.metrics().violations.is_empty(),
        "a block outside RAM is refused: {:?}",
        e.metrics()
    );
    guest.assert_books(&e, &m);
}
