//! The fault engine's hypercalls and control blocks against a guest that
//! does anything: the input is a script of faults, protocol calls with any
//! function id and arguments, writes of any bytes anywhere in (or around) a
//! control block, resumes and passing time on four vCPUs, decided by a
//! policy whose answers come from the input too. The guest is the engine's
//! own hostile driver (`apflab_apf::hostile`, which its seeded test drives
//! too) with the input as its choices, and the same books are checked at
//! the end: each token is handed out once, ends at most once, is never
//! consumed before its page came in, and no vCPU holds more than 64.

#![no_main]

use std::path::Path;
use std::sync::LazyLock;

use apflab_abi::apf;
use apflab_abi::policy::{Decision, FaultInfo, Policy};
use apflab_apf::hostile::{Choices, HostileGuest};
use apflab_apf::plain::PlainMachine;
use apflab_apf::{ApfConfig, Engine};
use apflab_hypervisor::FaultHook;
use apflab_pager::{ManagedRange, PagerConfig, Prepared, VirtualPager};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

const VCPUS: u32 = 4;
/// Guest RAM: the 32 MiB kernel part and 512 managed pages (few, so that
/// faults hit the same pages again and each input maps little memory).
const RAM: u64 = 34 << 20;
/// Most steps of one script (each costs at most a few page copies).
const MAX_STEPS: usize = 4096;

/// Synthetic pages, 10 µs fetches, 128 pages resident at most.
static PAGER: LazyLock<PagerConfig> = LazyLock::new(|| {
    toml::from_str(
        "store = { kind = \"synthetic\", seed = 7 }\n\
         latency = { model = \"constant\", us = 10.0 }\n\
         initially_resident = 0.0\n\
         resident_limit = \"512 KiB\"\n\
         queue_depth = 4\n",
    )
    .expect("a valid [pager] section")
});

static MANAGED: LazyLock<ManagedRange> =
    LazyLock::new(|| ManagedRange::for_guest_ram(RAM).expect("RAM has managed pages"));

/// A policy replaying decisions the input chose, in a loop.
struct Scripted {
    decisions: Vec<Decision>,
    next: usize,
}

impl Policy for Scripted {
    fn decide(&mut self, _: &FaultInfo) -> Decision {
        if self.decisions.is_empty() {
            return Decision::FALLBACK;
        }
        let d = self.decisions[self.next % self.decisions.len()];
        self.next += 1;
        d
    }
}

/// The fuzzer's input as the hostile guest's choices.
struct Input<'a, 'b>(&'a mut Unstructured<'b>);

impl Choices for Input<'_, '_> {
    fn below(&mut self, n: u64) -> Option<u64> {
        self.0.int_in_range(0..=n - 1).ok()
    }

    fn any(&mut self) -> Option<u64> {
        self.0.arbitrary().ok()
    }
}

fn run(u: &mut Unstructured) -> Result<()> {
    let offered = u.arbitrary::<u64>()? & ApfConfig::IMPLEMENTED;
    let ring_depth = u.int_in_range(1..=apf::READY_RING_SLOTS as u32)?;
    let mut decisions = Vec::new();
    for _ in 0..u.int_in_range(0..=8)? {
        if let Ok(d) = Decision::unpack(u.arbitrary()?) {
            decisions.push(d);
        }
    }
    let policy = Scripted { decisions, next: 0 };
    let prepared = Prepared::new(&PAGER, RAM, Path::new(".")).expect("the pager prepares");
    let config = ApfConfig {
        offered,
        ring_depth,
    };
    let mut e = Engine::new(VCPUS, VirtualPager::new(prepared), Box::new(policy), config);
    let mut m = PlainMachine::new(RAM);
    e.init(&mut m).expect("the engine starts");
    let guest = HostileGuest {
        vcpus: VCPUS,
        ram: RAM,
        managed: *MANAGED,
    };
    let mut now = 0;
    let mut steps = 0;
    while !u.is_empty() && steps < MAX_STEPS {
        if guest
            .step(&mut Input(u), &mut e, &mut m, &mut now)
            .is_none()
        {
            break;
        }
        steps += 1;
    }
    guest.assert_books(&e, &m);
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
