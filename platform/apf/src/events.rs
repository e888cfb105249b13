//! The life of every token, as an event log a test can read and
//! `RUST_LOG=apflab_apf=debug` shows: fault, "not present" injected, page
//! request, fetch done, pushed into the ready ring, consumed by the guest,
//! or dropped when the guest disabled async PF.

use std::collections::BTreeMap;

use apflab_abi::addr::Gpa;
use apflab_abi::apf::Token;
use apflab_abi::policy::{Completion, Decision, FaultInfo};

/// What happened to a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TokenEvent {
    /// The fault was decided async and the token allocated.
    Fault,
    /// "Not present" was injected for it.
    NotPresent,
    /// The guest asked for its page (`APF_PAGE_REQUEST`).
    Request,
    /// Its page is in.
    FetchDone,
    /// It was put into the ready ring.
    Pushed,
    /// The guest consumed it from the ring (acknowledged).
    Consumed,
    /// The guest disabled async PF before consuming it.
    Dropped,
}

impl TokenEvent {
    /// Its name in a token log.
    pub fn name(self) -> &'static str {
        match self {
            TokenEvent::Fault => "fault",
            TokenEvent::NotPresent => "not_present",
            TokenEvent::Request => "request",
            TokenEvent::FetchDone => "fetch_done",
            TokenEvent::Pushed => "pushed",
            TokenEvent::Consumed => "consumed",
            TokenEvent::Dropped => "dropped",
        }
    }
}

/// One entry of the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// When (ns, the backend's clock).
    pub t: u64,
    /// Which token (its vCPU is in it).
    pub token: Token,
    /// What happened.
    pub kind: TokenEvent,
}

/// Every token's life in `events` (its event kinds in order), by token.
pub fn lives(events: &[Event]) -> BTreeMap<Token, Vec<TokenEvent>> {
    let mut lives: BTreeMap<Token, Vec<TokenEvent>> = BTreeMap::new();
    for e in events {
        lives.entry(e.token).or_default().push(e.kind);
    }
    lives
}

/// A token whose life breaks the books ([`check_life`]): the token, the
/// rule its life breaks, and the life.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{token:?} {rule}: {life:?}")]
pub struct BrokenLife {
    /// The token.
    pub token: Token,
    /// The rule broken.
    pub rule: LifeRule,
    /// Its event kinds in order.
    pub life: Vec<TokenEvent>,
}

/// A rule of the token books ([`check_life`]), worded as its breach.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LifeRule {
    /// A life starts with its one fault.
    #[error("does not start with its one fault")]
    OneFaultFirst,
    /// A life ends (consumed or dropped) at most once.
    #[error("ended twice")]
    EndsOnce,
    /// A token is consumed only after its page came in.
    #[error("was consumed before its page came in")]
    ConsumedAfterFetch,
    /// A token asks for its page at most once.
    #[error("asked for its page twice")]
    RequestsOnce,
}

/// Checks the token books the protocol keeps whatever the guest does:
/// each life starts with its one fault, ends at most once, is consumed only
/// after its page came in, and asks for its page at most once. The error
/// names the token, the rule and the life.
pub fn check_life(token: Token, life: &[TokenEvent]) -> Result<(), BrokenLife> {
    let count = |k: TokenEvent| life.iter().filter(|&&x| x == k).count();
    let bad = |rule| {
        Err(BrokenLife {
            token,
            rule,
            life: life.to_vec(),
        })
    };
    if life.first() != Some(&TokenEvent::Fault) || count(TokenEvent::Fault) != 1 {
        return bad(LifeRule::OneFaultFirst);
    }
    if count(TokenEvent::Consumed) + count(TokenEvent::Dropped) > 1 {
        return bad(LifeRule::EndsOnce);
    }
    if let Some(at) = life.iter().position(|&k| k == TokenEvent::Consumed)
        && !life[..at].contains(&TokenEvent::FetchDone)
    {
        return bad(LifeRule::ConsumedAfterFetch);
    }
    if count(TokenEvent::Request) > 1 {
        return bad(LifeRule::RequestsOnce);
    }
    Ok(())
}

/// A synchronous stall of a vCPU on a page, from the fault to the end of
/// its wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stall {
    /// The vCPU.
    pub vcpu: u32,
    /// The page it waited for.
    pub page: Gpa,
    /// When the stall began (ns, the backend's clock).
    pub start: u64,
    /// When it ended.
    pub end: u64,
}

/// The log, bounded so a long run cannot grow it without end (what does
/// not fit is counted).
#[derive(Debug, Default)]
pub struct EventLog {
    events: Vec<Event>,
    stalls: Vec<Stall>,
    dropped: u64,
}

/// Most events kept.
const MAX_EVENTS: usize = 1 << 20;

impl EventLog {
    /// Records `kind` for `token` at `t`.
    pub fn record(&mut self, t: u64, token: Token, kind: TokenEvent) {
        tracing::debug!(target: "apflab_apf::tokens", t, token = format_args!("{:#x}", token.0), ?kind);
        if self.events.len() < MAX_EVENTS {
            self.events.push(Event { t, token, kind });
        } else {
            self.dropped += 1;
        }
    }

    /// Records a stall.
    pub fn record_stall(&mut self, stall: Stall) {
        if self.stalls.len() < MAX_EVENTS {
            self.stalls.push(stall);
        } else {
            self.dropped += 1;
        }
    }

    /// Every stall kept, in the order they ended.
    pub fn stalls(&self) -> &[Stall] {
        &self.stalls
    }

    /// Every event kept, in the order they happened.
    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// Events and stalls not kept because the log was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

/// One call the engine made into its policy, with what it passed (and, for
/// a decision, what came back): the run's policy input log, which
/// `apflab policy test` replays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyCall {
    /// `decide`, and the policy's answer (before any fallback).
    Decide {
        /// The facts.
        fault: FaultInfo,
        /// The decision.
        decision: Decision,
    },
    /// `on_complete`.
    Complete(Completion),
}

/// The policy calls of a run, kept when asked for and bounded like the
/// token log.
#[derive(Debug, Default)]
pub(crate) struct PolicyCallLog {
    pub(crate) on: bool,
    pub(crate) calls: Vec<PolicyCall>,
    pub(crate) dropped: u64,
}

impl PolicyCallLog {
    pub(crate) fn record(&mut self, call: PolicyCall) {
        if !self.on {
            return;
        }
        if self.calls.len() < MAX_EVENTS {
            self.calls.push(call);
        } else {
            self.dropped += 1;
        }
    }
}
