//! The fault engine's hypercalls and control blocks against a guest that
//! does anything: the input is a script of faults, protocol calls with any
//! function id and arguments, writes of any bytes anywhere in (or around) a
//! control block, resumes and passing time on four vCPUs, decided by a
//! policy whose answers come from the input too. The coverage-guided twin
//! of platform/apf/tests/hostile.rs, with the same books checked at the
//! end: each token is handed out once, ends at most once, is never
//! consumed before its page came in, and no vCPU holds more than 64.

#![no_main]

use std::path::Path;
use std::sync::LazyLock;

use apflab_abi::addr::Pfn;
use apflab_abi::apf::{self, CONTROL_BLOCK_VERSION, MAX_OUTSTANDING, cb_offset};
use apflab_abi::hypercall as hc;
use apflab_abi::memory_map::RAM_BASE;
use apflab_abi::policy::{Decision, FaultInfo, Policy};
use apflab_apf::plain::PlainMachine;
use apflab_apf::{ApfConfig, Engine};
use apflab_hypervisor::NotResidentFault;
use apflab_hypervisor::{EngineCall, FaultHook, ResumeState};
use apflab_pager::{ManagedRange, PagerConfig, Prepared, VirtualPager};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress};

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

/// Where the well-behaved guest keeps vCPU `v`'s control block.
fn control_block(v: u32) -> u64 {
    RAM_BASE + 0x10_0000 + u64::from(v) * 0x1000
}

/// A control block base as a guest might pass it: its own, misaligned,
/// straddling the end of RAM, outside RAM, in another vCPU's block, or any
/// value at all.
fn block_base(u: &mut Unstructured, v: u32) -> Result<u64> {
    Ok(match u.int_in_range(0..=6)? {
        0..=2 => control_block(v),
        3 => control_block(v) + u64::from(u.int_in_range(1..=63u8)?),
        4 => RAM_BASE + RAM - u64::from(u.int_in_range(0..=1024u16)?),
        5 => control_block(u.int_in_range(0..=VCPUS - 1)?),
        _ => u.arbitrary()?,
    })
}

fn function(u: &mut Unstructured) -> Result<u32> {
    const KNOWN: [u32; 8] = [
        hc::FN_FEATURES,
        hc::FN_APF_ENABLE,
        hc::FN_APF_DISABLE,
        hc::FN_APF_ACK,
        hc::FN_APF_PAGE_REQUEST,
        hc::FN_REPORT,
        hc::FN_PANIC,
        hc::FN_TASK_DONE,
    ];
    Ok(if u.ratio(7, 8)? {
        *u.choose(&KNOWN)?
    } else {
        hc::APFLAB_FN_BASE | u32::from(u.arbitrary::<u16>()?)
    })
}

/// One step of the hostile guest and the passing time.
fn step(u: &mut Unstructured, e: &mut Engine, m: &mut PlainMachine, now: &mut u64) -> Result<()> {
    let v = u.int_in_range(0..=VCPUS - 1)?;
    *now += u64::from(u.arbitrary::<u16>()?);
    let cb = control_block(v);
    match u.int_in_range(0..=9u8)? {
        0..=2 => {
            let k = u64::from(u.arbitrary::<u16>()?) % MANAGED.pages;
            let f = NotResidentFault {
                gpa: Pfn(MANAGED.first_pfn + k).gpa(),
                write: u.arbitrary()?,
                fetch: u.ratio(1, 8)?,
                pc: u.arbitrary()?,
                va: u.arbitrary()?,
                el: u.int_in_range(0..=1)?,
                irqs_masked: u.arbitrary()?,
            };
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
                el: u.int_in_range(0..=1)?,
                pc: u.arbitrary()?,
            };
            let _ = e.on_resume(v, state, *now, m);
        }
        6 => {
            let function = function(u)?;
            let first = if function == hc::FN_APF_ENABLE {
                let base = block_base(u, v)?;
                if u.ratio(3, 4)? {
                    // As a guest prepares its block before registering it.
                    let _ = m
                        .memory
                        .write_obj(CONTROL_BLOCK_VERSION, GuestAddress(base));
                }
                base
            } else if function == hc::FN_APF_PAGE_REQUEST && u.ratio(3, 4)? {
                // The token just handed out, mostly: the path that works.
                m.memory
                    .read_obj(GuestAddress(cb + cb_offset::TOKEN as u64))
                    .unwrap_or(0)
            } else {
                u.arbitrary()?
            };
            let call = EngineCall {
                function,
                args: [first, u.arbitrary()?, u.arbitrary()?, 0, 0],
            };
            let _ = e.on_hypercall(v, call, *now, m);
        }
        7 => {
            // Consume some of the ring (or claim anything), then ACK.
            let head: u32 = m
                .memory
                .read_obj(GuestAddress(cb + cb_offset::READY_HEAD as u64))
                .unwrap_or(0);
            let tail = if u.ratio(3, 4)? {
                head.wrapping_sub(u.int_in_range(0..=3)?)
            } else {
                u.arbitrary()?
            };
            let _ = m
                .memory
                .write_obj(tail, GuestAddress(cb + cb_offset::READY_TAIL as u64));
            let ack = EngineCall {
                function: hc::FN_APF_ACK,
                args: [0; 5],
            };
            let _ = e.on_hypercall(v, ack, *now, m);
        }
        _ => {
            // Any bytes anywhere in the block or just past it.
            let at = cb + u64::from(u.int_in_range(0..=640u16)?);
            let len = u.int_in_range(1..=16usize)?;
            let bytes = u.bytes(len)?;
            let _ = m.memory.write_slice(bytes, GuestAddress(at));
        }
    }
    Ok(())
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
    let mut now = 0;
    let mut steps = 0;
    while !u.is_empty() && steps < MAX_STEPS {
        step(u, &mut e, &mut m, &mut now)?;
        steps += 1;
    }
    check_books(&e, &m);
    Ok(())
}

/// The books of every token, from the engine's event log.
fn check_books(e: &Engine, m: &PlainMachine) {
    let mt = e.metrics();
    assert!(
        mt.ready_delivered + mt.tokens_dropped <= mt.async_faults,
        "{mt:?}"
    );
    assert!(
        mt.outstanding_high_water
            .iter()
            .all(|&n| n as usize <= MAX_OUTSTANDING),
        "{mt:?}"
    );
    let lives = apflab_apf::events::lives(e.events());
    if e.events_dropped() == 0 {
        assert_eq!(lives.len() as u64, mt.async_faults, "one life per token");
    }
    for (token, life) in &lives {
        if let Err(e) = apflab_apf::events::check_life(*token, life) {
            panic!("{e}");
        }
    }
    // Every page the engine says is absent is one the guest could fault on.
    for page in &m.absent {
        let pfn = page.0 >> 12;
        assert!(
            MANAGED.first_pfn <= pfn && pfn < MANAGED.first_pfn + MANAGED.pages,
            "{:#x} made absent outside the managed range",
            page.0
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
