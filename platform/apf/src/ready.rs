//! "Page ready": how the guest learns that a token's page is in.
//!
//! [`ReadyDelivery::Interrupt`] (Paolo Bonzini's first point, x86 since
//! Vitaly Kuznetsov's 2020 series): the token goes into the control
//! block's ready ring and the vCPU's ready PPI is raised; the guest takes
//! the interrupt whenever it can (the interrupt controller holds it until
//! then), consumes the ring up to `ready_head`, publishes `ready_tail` and
//! acknowledges with `APF_ACK`, which lets the host fill the ring again.
//! A ring depth of 1 is the x86 semantics of one token per interrupt and
//! ACK. A token stays outstanding until the guest has consumed it, so the
//! 64-slot ring can never overflow.
//!
//! [`ReadyDelivery::Exception`] (RFCv2): a synchronous exception per token,
//! held until the guest can take it: when the vCPU resumes at EL0, or in a
//! wait the guest marks with `GUEST_IN_IDLE` (its idle and halt loops),
//! never in its no-inject window (`GUEST_NO_INJECT`, or a PC in the range
//! it published) or while the control block still holds an unread
//! notification. With the dedicated exception class it is
//! [`EC_APF_READY`]; with the data-abort variant, a data abort whose control
//! block says "page ready". The backend asks at resume
//! ([`apflab_hypervisor::FaultHook::on_resume`]): the emu scheduler before a
//! vCPU's slice, the kvm vCPU thread before `KVM_RUN` (kicked out of it
//! while something is held for it). The CLI does not offer it on kvm yet:
//! there a held exception was seen to stay held.

use std::collections::VecDeque;

use apflab_abi::apf::{EC_APF_READY, GUEST_IN_IDLE, Token, esr, features};
use apflab_abi::policy::{NotPresentDelivery, ReadyDelivery};
use apflab_hypervisor::ResumeState;
use apflab_hypervisor::SyncException;
use apflab_hypervisor::arch::syndrome::data_abort;
use vm_memory::GuestMemoryMmap;

use crate::control_block::ControlBlockRef;

/// The feature bit the guest must have accepted for `delivery`.
pub fn feature(delivery: ReadyDelivery) -> u64 {
    match delivery {
        ReadyDelivery::Exception => features::READY_EXCEPTION,
        ReadyDelivery::Interrupt => features::READY_INTERRUPT,
    }
}

/// Whether a "page ready" exception can be entered now, with the vCPU in
/// `state`, its control block's `guest_state` and `reason`, and
/// `no_inject` if its PC is in the guest's no-inject window.
pub fn exception_deliverable(
    state: ResumeState,
    guest_state: u32,
    no_inject: bool,
    reason: u32,
) -> bool {
    let where_ok = state.el == 0 || guest_state & GUEST_IN_IDLE != 0;
    where_ok && !no_inject && reason == apflab_abi::apf::REASON_NONE
}

/// The "page ready" exception for `token`, in the class that goes with how
/// its "not present" was delivered, returning to where the vCPU resumes.
pub fn exception(
    not_present: NotPresentDelivery,
    token: Token,
    state: ResumeState,
) -> SyncException {
    let esr = match not_present {
        NotPresentDelivery::DedicatedEc => esr(EC_APF_READY, token.0),
        // After an SDEI "not present", ready comes as RFCv2's did.
        NotPresentDelivery::DataAbort | NotPresentDelivery::Sdei => data_abort(
            state.el == 0,
            false,
            false,
            crate::not_present::NOT_PRESENT_FAULT,
        ),
    };
    SyncException {
        esr,
        far: 0,
        return_pc: state.pc,
    }
}

/// What the guest did wrong with its ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingViolation {
    /// `APF_ACK` with nothing consumed since the last one.
    AckWithoutConsumption,
    /// `ready_tail` behind the last one seen or past `ready_head`.
    TailOutOfRange,
}

/// What an `APF_ACK` did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Acked {
    /// Tokens the guest consumed since the last ACK, oldest first.
    pub consumed: Vec<Token>,
    /// Tokens moved into the ring from the queue.
    pub pushed: Vec<Token>,
    /// The new level of the ready line, if it changes.
    pub line: Option<bool>,
}

/// One vCPU's ready ring, as the host keeps it.
#[derive(Debug)]
pub struct ReadyRing {
    depth: u32,
    /// Tokens pushed into the ring so far (the guest's `ready_head`).
    head: u32,
    /// Tokens the guest has consumed, as of its last ACK.
    tail: u32,
    /// Pushed and not yet consumed, oldest first (`head - tail` of them).
    in_ring: VecDeque<Token>,
    /// Ready, waiting for room in the ring.
    queue: VecDeque<Token>,
    /// Level of the ready PPI.
    line: bool,
}

impl ReadyRing {
    /// An empty ring holding at most `depth` (1..=64) unconsumed tokens.
    pub fn new(depth: u32) -> Self {
        ReadyRing {
            depth: depth.clamp(1, apflab_abi::apf::READY_RING_SLOTS as u32),
            head: 0,
            tail: 0,
            in_ring: VecDeque::new(),
            queue: VecDeque::new(),
            line: false,
        }
    }

    /// Queues `token` for delivery.
    pub fn queue(&mut self, token: Token) {
        self.queue.push_back(token);
    }

    /// Tokens ready and not yet consumed (queued or in the ring).
    pub fn pending(&self) -> usize {
        self.in_ring.len() + self.queue.len()
    }

    /// Moves queued tokens into the ring while it has room. Returns them,
    /// and whether the ready line must now be raised.
    pub fn fill(&mut self, cb: &ControlBlockRef, mem: &GuestMemoryMmap) -> (Vec<Token>, bool) {
        let mut pushed = Vec::new();
        while (self.in_ring.len() as u32) < self.depth {
            let Some(t) = self.queue.pop_front() else {
                break;
            };
            if !cb.push_ready(mem, self.head, t.0) {
                // The block was checked at registration; keep the token.
                self.queue.push_front(t);
                break;
            }
            self.head = self.head.wrapping_add(1);
            self.in_ring.push_back(t);
            pushed.push(t);
        }
        let raise = !self.line && !self.in_ring.is_empty();
        if raise {
            self.line = true;
        }
        (pushed, raise)
    }

    /// The guest's `APF_ACK`: reads how far it consumed, refills the ring
    /// and says what becomes of the line.
    pub fn ack(
        &mut self,
        cb: &ControlBlockRef,
        mem: &GuestMemoryMmap,
    ) -> Result<Acked, RingViolation> {
        let tail = cb.ready_tail(mem).ok_or(RingViolation::TailOutOfRange)?;
        let consumed = tail.wrapping_sub(self.tail);
        if consumed as usize > self.in_ring.len() {
            return Err(RingViolation::TailOutOfRange);
        }
        if consumed == 0 {
            return Err(RingViolation::AckWithoutConsumption);
        }
        self.tail = tail;
        let consumed: Vec<Token> = self.in_ring.drain(..consumed as usize).collect();
        let was_high = self.line;
        // The interrupt was taken: the line falls unless the ring still
        // holds tokens, in which case it stays up for them.
        self.line = false;
        let (pushed, _) = self.fill(cb, mem);
        let line = (was_high != self.line).then_some(self.line);
        Ok(Acked {
            consumed,
            pushed,
            line,
        })
    }

    /// Drops every token (the guest disabled async PF); whether the line
    /// must be lowered.
    pub fn clear(&mut self) -> bool {
        self.queue.clear();
        self.in_ring.clear();
        self.tail = self.head;
        std::mem::replace(&mut self.line, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apflab_abi::addr::Gpa;
    use apflab_abi::apf::{CONTROL_BLOCK_VERSION, cb_offset};
    use apflab_abi::memory_map::RAM_BASE;
    use vm_memory::{Bytes, GuestAddress};

    fn setup() -> (GuestMemoryMmap, ControlBlockRef) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(RAM_BASE), 1 << 20)]).unwrap();
        mem.write_obj(CONTROL_BLOCK_VERSION, GuestAddress(RAM_BASE))
            .unwrap();
        let cb = ControlBlockRef::register(&mem, Gpa(RAM_BASE), &[]).unwrap();
        (mem, cb)
    }

    fn consume(mem: &GuestMemoryMmap, tail: u32) {
        mem.write_obj(tail, GuestAddress(RAM_BASE + cb_offset::READY_TAIL as u64))
            .unwrap();
    }

    #[test]
    fn depth_one_is_one_token_per_interrupt_and_ack() {
        let (mem, cb) = setup();
        let mut r = ReadyRing::new(1);
        r.queue(Token::new(1, 0));
        r.queue(Token::new(2, 0));
        let (pushed, raise) = r.fill(&cb, &mem);
        assert_eq!((pushed, raise), (vec![Token::new(1, 0)], true));
        assert_eq!(r.pending(), 2);
        consume(&mem, 1);
        let a = r.ack(&cb, &mem).unwrap();
        assert_eq!(a.consumed, [Token::new(1, 0)]);
        assert_eq!(a.pushed, [Token::new(2, 0)]);
        assert_eq!(a.line, None, "the line stays up for the next token");
        consume(&mem, 2);
        let a = r.ack(&cb, &mem).unwrap();
        assert_eq!((a.consumed.len(), a.line), (1, Some(false)));
        assert_eq!(r.pending(), 0);
    }

    #[test]
    fn a_deep_ring_carries_several_tokens_per_interrupt() {
        let (mem, cb) = setup();
        let mut r = ReadyRing::new(64);
        for i in 1..=5 {
            r.queue(Token::new(i, 0));
        }
        let (pushed, raise) = r.fill(&cb, &mem);
        assert_eq!((pushed.len(), raise), (5, true));
        consume(&mem, 5);
        let a = r.ack(&cb, &mem).unwrap();
        assert_eq!((a.consumed.len(), a.line), (5, Some(false)));
    }

    #[test]
    fn double_acks_and_bad_tails_are_violations() {
        let (mem, cb) = setup();
        let mut r = ReadyRing::new(4);
        r.queue(Token::new(1, 0));
        r.fill(&cb, &mem);
        assert_eq!(r.ack(&cb, &mem), Err(RingViolation::AckWithoutConsumption));
        consume(&mem, 7);
        assert_eq!(r.ack(&cb, &mem), Err(RingViolation::TailOutOfRange));
        consume(&mem, 1);
        assert!(r.ack(&cb, &mem).is_ok());
        assert_eq!(r.ack(&cb, &mem), Err(RingViolation::AckWithoutConsumption));
    }
}
