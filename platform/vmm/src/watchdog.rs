//! The watchdog: a run whose guest shows no sign of life for a span of time
//! (virtual on emu, host time on kvm) is stopped with a [`HangDiagnosis`].
//!
//! Retired instructions alone are no sign of life: a guest spinning with
//! interrupts masked retires them forever, and so does one looping on WFI
//! with an interrupt pending that it has masked. What counts is what the
//! VMM sees the guest do: an exit it handles (an MMIO access, console
//! output among them; a hypercall; a trapped system register; a
//! not-resident page), and, on emu, an interrupt the guest takes. WFI and
//! the VMM's own slice ends and kicks are not counted. So a vCPU stalled on
//! a page that does not come, a guest halted with nothing left to wake it,
//! a masked spin and a masked WFI loop all end the run once the span has
//! passed; a guest that keeps taking interrupts is alive as far as the VMM
//! can tell, and its time limit ends it.
//!
//! The watchdog only reads the counters: it never changes what runs when,
//! so the virtual time and instruction counts of a run it does not stop
//! are what they would be without it.

use std::fmt;

/// The guest has been quiet since `since_ns`, as of its last sign of life.
/// (Only the backends' run loops use it: a build with neither, such as the
/// fuzz targets' or a kvm-only one on a host that is not aarch64 Linux, has
/// none.)
#[cfg_attr(
    not(any(
        feature = "emu",
        all(target_arch = "aarch64", target_os = "linux", feature = "kvm")
    )),
    allow(dead_code)
)]
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct Watchdog {
    span_ns: u64,
    activity: u64,
    since_ns: u64,
}

#[cfg_attr(
    not(any(
        feature = "emu",
        all(target_arch = "aarch64", target_os = "linux", feature = "kvm")
    )),
    allow(dead_code)
)]
impl Watchdog {
    /// A watchdog that bites after `span_ns` without a sign of life.
    pub(crate) fn new(span_ns: u64) -> Self {
        Watchdog {
            span_ns,
            activity: 0,
            since_ns: 0,
        }
    }

    /// Notes the run's sign-of-life counter `activity` as seen at `now_ns`:
    /// a change restarts the span.
    pub(crate) fn observe(&mut self, activity: u64, now_ns: u64) {
        if activity != self.activity {
            self.activity = activity;
            self.since_ns = self.since_ns.max(now_ns);
        }
    }

    /// This watchdog (its signs of life so far) with the span `span_ns`.
    // Only a run resumed from an emu snapshot re-arms a saved watchdog.
    #[cfg_attr(not(feature = "emu"), allow(dead_code))]
    pub(crate) fn with_span(self, span_ns: u64) -> Self {
        Watchdog { span_ns, ..self }
    }

    /// When the watchdog bites unless the guest shows life first.
    pub(crate) fn deadline_ns(&self) -> u64 {
        self.since_ns.saturating_add(self.span_ns)
    }

    /// How long the guest has been quiet at `at_ns`: the span when the
    /// watchdog bites at its deadline, less when the run is stopped sooner
    /// (its time limit came first, and nothing was left to wake the guest).
    pub(crate) fn quiet_ns(&self, at_ns: u64) -> u64 {
        at_ns.saturating_sub(self.since_ns).min(self.span_ns)
    }
}

/// Why the watchdog stopped a run: what every vCPU was doing and what the
/// fault engine still owed the guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HangDiagnosis {
    /// The span without a sign of life that ended the run, ns.
    pub quiet_ns: u64,
    /// When the run was stopped, ns (virtual on emu, since the start of the
    /// run on kvm).
    pub at_ns: u64,
    /// Every vCPU, by index.
    pub vcpus: Vec<VcpuDiagnosis>,
    /// What the fault hook had outstanding ([`crate::FaultHook::pending`]):
    /// stalls on pages and tokens not yet consumed, one line each.
    pub pending: Vec<String>,
}

/// One vCPU at the moment the watchdog stopped the run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VcpuDiagnosis {
    /// Its index.
    pub vcpu: u32,
    /// Its run state, in words (`running`, `halted in WFI`, `stalled by the
    /// fault engine until 1234 ns`, ...).
    pub state: String,
    /// Where it was (when the backend can tell): program counter, exception
    /// level and whether IRQs were masked.
    pub at: Option<GuestPosition>,
    /// An interrupt signalled to it and not yet taken (INTID), if any.
    pub pending_irq: Option<u32>,
}

/// Where a vCPU's guest code was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestPosition {
    /// Program counter.
    pub pc: u64,
    /// Exception level (0 or 1).
    pub el: u8,
    /// PSTATE.I: IRQs masked.
    pub irqs_masked: bool,
}

impl fmt::Display for HangDiagnosis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "watchdog: no sign of life from the guest (no exit, interrupt taken, console \
             output or page completed) for {} ms, stopped at {} ns",
            ms_text(self.quiet_ns),
            self.at_ns
        )?;
        for v in &self.vcpus {
            write!(f, "; vCPU {}: {}", v.vcpu, v.state)?;
            if let Some(p) = v.at {
                write!(
                    f,
                    " at pc {:#x} (EL{}, IRQs {})",
                    p.pc,
                    p.el,
                    if p.irqs_masked { "masked" } else { "unmasked" }
                )?;
            }
            if let Some(irq) = v.pending_irq {
                write!(f, ", interrupt {irq} pending")?;
            }
        }
        if self.pending.is_empty() {
            write!(f, "; the fault engine owes the guest nothing")
        } else {
            write!(f, "; outstanding: {}", self.pending.join(", "))
        }
    }
}

/// `ns` in ms, exact: `1000`, `0.25`.
fn ms_text(ns: u64) -> String {
    if ns.is_multiple_of(1_000_000) {
        (ns / 1_000_000).to_string()
    } else {
        let text = format!("{:.6}", ns as f64 / 1e6);
        text.trim_end_matches('0').to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_change_of_the_counter_restarts_the_span() {
        let mut w = Watchdog::new(100);
        assert_eq!(w.deadline_ns(), 100);
        w.observe(0, 50);
        assert_eq!(w.deadline_ns(), 100, "no new activity");
        w.observe(3, 70);
        assert_eq!(w.deadline_ns(), 170);
        w.observe(3, 150);
        assert_eq!(w.deadline_ns(), 170);
        // Seen late (a vCPU whose clock is behind): the span never moves
        // back.
        w.observe(4, 20);
        assert_eq!(w.deadline_ns(), 170);
        assert_eq!(Watchdog::new(u64::MAX).deadline_ns(), u64::MAX);
    }

    #[test]
    fn the_diagnosis_names_every_vcpu_and_what_is_outstanding() {
        let d = HangDiagnosis {
            quiet_ns: 5_000_000,
            at_ns: 9_000_000,
            vcpus: vec![
                VcpuDiagnosis {
                    vcpu: 0,
                    state: "running".into(),
                    at: Some(GuestPosition {
                        pc: 0x4000_0008,
                        el: 1,
                        irqs_masked: true,
                    }),
                    pending_irq: Some(27),
                },
                VcpuDiagnosis {
                    vcpu: 1,
                    state: "off".into(),
                    at: None,
                    pending_irq: None,
                },
            ],
            pending: vec!["vCPU 0 stalled on page 0x48000000".into()],
        };
        let s = d.to_string();
        assert!(s.contains("for 5 ms"), "{s}");
        assert!(
            s.contains("vCPU 0: running at pc 0x40000008 (EL1, IRQs masked), interrupt 27 pending"),
            "{s}"
        );
        assert!(s.contains("vCPU 1: off;"), "{s}");
        assert!(
            s.ends_with("outstanding: vCPU 0 stalled on page 0x48000000"),
            "{s}"
        );
    }
}
