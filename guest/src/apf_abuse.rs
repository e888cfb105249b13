//! A guest that misuses the async PF protocol (`apflab.apf_abuse=on`), so
//! the tests can check that the host refuses every misuse with an SMCCC
//! error, counts it by kind and lets the well-behaved rest of the run
//! finish. The boot CPU misuses the protocol around its own `APF_ENABLE`
//! (what needs the protocol's state: before and after registering, ACK
//! floods, garbage in its block, disable/enable loops), and a task of its
//! own, beside the workload's, makes calls with random ids and arguments
//! while the others fault ([`misuse`], through `SYS_MISUSE`).

use core::fmt::Write;
use core::ptr::{addr_of, addr_of_mut};

use apflab_abi::apf::{CONTROL_BLOCK_VERSION, ControlBlock, GUEST_NO_INJECT};
use apflab_abi::boot::{
    APF_ABUSE_ACK_FLOOD, APF_ABUSE_RANDOM_CALLS, APF_ABUSE_TOGGLES, WORKLOAD_VA,
};
use apflab_abi::hypercall::{
    APFLAB_FN_BASE, PSCI_AFFINITY_INFO, PSCI_CPU_ON, SMCCC_INVALID_PARAMETERS, SMCCC_NOT_SUPPORTED,
    SMCCC_SUCCESS,
};
use apflab_abi::pattern::splitmix64;
use apflab_abi::report::MAX_REPORTED_TASKS;
use spin::mutex::SpinMutex;

use crate::apf::{self, AroundEnable};
use crate::sched::TaskParams;
use crate::uapi::{self as user, E_INVAL};
use crate::{config, console, hypercall};

/// A token the host never handed out (its id is far beyond any run's).
const NEVER_GIVEN: u64 = 0xdead_beef << 12;
/// An address outside guest RAM (below it, where the board has flash).
const OUTSIDE_RAM: u64 = 0x1000;

/// The boot CPU's misuses around its `APF_ENABLE`.
static AROUND_ENABLE: AroundEnable = AroundEnable {
    before: before_enable,
    after: after_enable,
    done: print_tally,
};

/// What the host answered to the boot CPU's misuses so far.
static TALLY: SpinMutex<Refused> = SpinMutex::new(Refused {
    sent: 0,
    refused: 0,
});

/// Has the boot CPU misuse the protocol around its `APF_ENABLE` (boot CPU,
/// before [`apf::init_cpu`]; only when the boot options ask for it).
pub fn register() {
    apf::around_enable(&AROUND_ENABLE);
}

/// How many misuses were sent and how many the host answered as it must.
#[derive(Clone, Copy, Debug, Default)]
struct Refused {
    sent: u64,
    refused: u64,
}

impl Refused {
    fn expect(&mut self, result: i64, answer: i64) {
        self.sent += 1;
        self.refused += u64::from(result == answer);
    }

    fn expect_refused(&mut self, result: i64) {
        self.expect(result, SMCCC_INVALID_PARAMETERS);
    }

    /// Adds `other`'s counts.
    fn add(&mut self, other: Refused) {
        self.sent += other.sent;
        self.refused += other.refused;
    }
}

/// Prints the tally of the boot CPU's misuses, for the tests to read.
fn print_tally() {
    let tally = *TALLY.lock();
    console::println!(
        "apf abuse: {} of {} misuses answered as they must be",
        tally.refused,
        tally.sent
    );
}

/// Misuses before `cb` is registered: calls that need async PF enabled,
/// and control blocks the host must not accept (misaligned, outside RAM,
/// over the kernel's code, of another version). `cb` is left as it was.
fn before_enable(cb: *mut ControlBlock, offered: u64) {
    let mut r = Refused::default();
    r.expect_refused(hypercall::apf_ack());
    r.expect_refused(hypercall::apf_page_request(NEVER_GIVEN));
    r.expect_refused(hypercall::apf_disable());
    r.expect_refused(hypercall::apf_enable(cb as u64 + 8, offered));
    r.expect_refused(hypercall::apf_enable(OUTSIDE_RAM, offered));
    // Over the kernel's own code (identity mapped: the address is the
    // physical one), where the host would write its ready ring.
    let code = before_enable as *const () as u64 & !63;
    r.expect_refused(hypercall::apf_enable(code, offered));
    // SAFETY: this CPU's own block, not registered with the host yet.
    unsafe { addr_of_mut!((*cb).version).write_volatile(CONTROL_BLOCK_VERSION + 1) };
    r.expect_refused(hypercall::apf_enable(cb as u64, offered));
    // SAFETY: as above.
    unsafe { addr_of_mut!((*cb).version).write_volatile(CONTROL_BLOCK_VERSION) };
    TALLY.lock().add(r);
}

/// Misuses once `cb` is registered (nothing outstanding yet): a request
/// for a token never given, ACKs with nothing consumed (a flood), a
/// consumed count beyond what the host published, a fault inside the
/// no-inject window, and disable/enable loops (which must succeed, each a
/// wake-all). `cb` is left as it was, registered with `offered`.
fn after_enable(cb: *mut ControlBlock, offered: u64) {
    let mut r = Refused::default();
    r.expect_refused(hypercall::apf_page_request(NEVER_GIVEN));
    for _ in 0..APF_ABUSE_ACK_FLOOD {
        r.expect_refused(hypercall::apf_ack());
    }
    // SAFETY: this CPU's own block; the host reads `ready_tail` only at an
    // ACK, and nothing is in the ring yet.
    let tail = unsafe { addr_of!((*cb).ready_tail).read_volatile() };
    // SAFETY: as above.
    unsafe { addr_of_mut!((*cb).ready_tail).write_volatile(tail.wrapping_add(9)) };
    r.expect_refused(hypercall::apf_ack());
    // SAFETY: as above.
    unsafe { addr_of_mut!((*cb).ready_tail).write_volatile(tail) };
    // A fault inside the no-inject window: the host must serve it where
    // it is, synchronously. The first page of the workload region is
    // withheld at boot in the far-memory runs; reading it changes nothing
    // a task later sees.
    // SAFETY: this CPU's own block; the host reads `guest_state` only at a
    // fault.
    let state = unsafe { addr_of!((*cb).guest_state).read_volatile() };
    // SAFETY: as above.
    unsafe { addr_of_mut!((*cb).guest_state).write_volatile(state | GUEST_NO_INJECT) };
    // SAFETY: the workload region is mapped at WORKLOAD_VA (EL0 read/write,
    // which EL1 may read: PAN is clear at boot) and holds at least a page.
    unsafe { core::hint::black_box((WORKLOAD_VA as *const u64).read_volatile()) };
    // SAFETY: as above.
    unsafe { addr_of_mut!((*cb).guest_state).write_volatile(state) };
    for _ in 0..APF_ABUSE_TOGGLES {
        r.expect(hypercall::apf_disable(), SMCCC_SUCCESS);
        r.expect(hypercall::apf_enable(cb as u64, offered), SMCCC_SUCCESS);
    }
    TALLY.lock().add(r);
}

/// Misuse `i` of the hostile guest's task (a call with a random id or
/// arguments, of a kind the host must refuse; see
/// [`APF_ABUSE_RANDOM_CALLS`] for the kinds), made for it by the kernel:
/// 1 if the host answered as it must, 0 if not, `E_INVAL` in a guest that
/// is not hostile or past the last misuse.
pub fn misuse(i: u64) -> i64 {
    if !config::get().apf_abuse || i >= APF_ABUSE_RANDOM_CALLS {
        return E_INVAL;
    }
    let x = splitmix64(config::get().seed ^ splitmix64(i));
    // Aff3 is never that of a CPU the board has.
    let no_cpu = x | 0x80_0000_0000;
    let (got, want) = match i % 6 {
        // Past every apflab id the host knows (0..0x100 holds them).
        0 => (
            hypercall::raw(APFLAB_FN_BASE | (0x101 + (x % 0xfeff) as u32), &[x, !x]),
            SMCCC_NOT_SUPPORTED,
        ),
        // PSCI ids the emulated firmware does not implement (0x0B to
        // 0x1F: CPU_FREEZE onwards), 32- and 64-bit.
        1 => {
            let id = 0x0B + (x % 0x15) as u32;
            let convention = if x & (1 << 40) != 0 {
                0xC400_0000
            } else {
                0x8400_0000
            };
            (psci(convention | id, [x, !x, x]), SMCCC_NOT_SUPPORTED)
        }
        2 => (psci(PSCI_CPU_ON, [no_cpu, x, !x]), SMCCC_INVALID_PARAMETERS),
        3 => (
            psci(PSCI_AFFINITY_INFO, [no_cpu, 0, 0]),
            SMCCC_INVALID_PARAMETERS,
        ),
        4 => (
            hypercall::apf_page_request(no_cpu << 12),
            SMCCC_INVALID_PARAMETERS,
        ),
        _ => (
            hypercall::task_done(MAX_REPORTED_TASKS as u32 + (x % 1000) as u32, x),
            SMCCC_INVALID_PARAMETERS,
        ),
    };
    i64::from(got == want)
}

/// The hostile guest's task (EL0 code), beside the workload's: every
/// misuse [`misuse`] knows, made by the kernel for it, yielding every few
/// so they fall among the other tasks' faults; then the tally, for the
/// tests to read.
pub extern "C" fn task(_params: *const TaskParams) -> ! {
    let (mut sent, mut answered) = (0u64, 0u64);
    loop {
        let r = user::misuse(sent);
        if r < 0 {
            break;
        }
        sent += 1;
        answered += r as u64;
        if sent % 8 == 0 {
            user::yield_now();
        }
    }
    let mut line = console::FixedBuf::<96>::new();
    // Truncation cannot happen: the line is far shorter than the buffer.
    let _ = writeln!(
        line,
        "apf abuse task: {answered} of {sent} misuses answered as they must be"
    );
    user::write(line.as_str());
    user::exit()
}

/// A PSCI call (always HVC) with three arguments; x0 as a signed status.
fn psci(function: u32, a: [u64; 3]) -> i64 {
    hypercall::hvc(function, &a)
}
