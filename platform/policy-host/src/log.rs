//! `apf.log`: rate-limited messages from a policy, kept for the run's
//! `policy.log` and passed to tracing.

use apflab_abi::policy::{LOG_MAX_BYTES, LogLevel};
use serde::Serialize;
use std::fmt;

/// Most lines a run's [`PolicyLog`] keeps; later ones are counted only.
pub const MAX_LOG_LINES: usize = 10_000;

/// Who wrote a log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogSource {
    /// The module (`apf.log`, `apf.log_at`).
    Module,
    /// The host, about the module (failed calls, disabling, refusals).
    Host,
}

/// One line of a policy's log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogLine {
    /// The run's time of the call it came from, ns.
    pub t_ns: u64,
    /// Its level.
    pub level: LogLevel,
    /// Who wrote it.
    pub source: LogSource,
    /// The message.
    pub text: String,
}

impl fmt::Display for LogLine {
    /// `t_ns LEVEL source: text`, as `policy.log` has it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let source = match self.source {
            LogSource::Module => "module",
            LogSource::Host => "host",
        };
        write!(
            f,
            "{:>14} {:<5} {source}: {}",
            self.t_ns,
            self.level.name(),
            self.text
        )
    }
}

/// A run's policy log: what the module logged (within its rate limit) and
/// what the host said about it, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyLog {
    /// The lines kept.
    pub lines: Vec<LogLine>,
    /// Lines beyond [`MAX_LOG_LINES`], not kept.
    pub dropped: u64,
}

impl PolicyLog {
    pub(crate) fn push(&mut self, t_ns: u64, level: LogLevel, source: LogSource, text: String) {
        if self.lines.len() >= MAX_LOG_LINES {
            self.dropped += 1;
            return;
        }
        self.lines.push(LogLine {
            t_ns,
            level,
            source,
            text,
        });
    }

    /// The text of `policy.log`: one line each, then how many were not
    /// kept, if any.
    pub fn render(&self) -> String {
        use fmt::Write as _;
        let mut out = String::new();
        for line in &self.lines {
            let _ = writeln!(out, "{line}");
        }
        if self.dropped > 0 {
            let _ = writeln!(
                out,
                "({} more lines not kept: at most {MAX_LOG_LINES} per run)",
                self.dropped
            );
        }
        out
    }
}

/// A token bucket refilled by decisions rather than by time, so whether a
/// message is dropped depends only on the run, never on the host's speed.
#[derive(Debug)]
pub(crate) struct LogLimiter {
    burst: u32,
    tokens: u32,
    refill_decisions: u64,
    decisions_since_refill: u64,
    pub(crate) passed: u64,
    pub(crate) dropped: u64,
}

impl LogLimiter {
    pub(crate) fn new(burst: u32, refill_decisions: u64) -> Self {
        Self {
            burst,
            tokens: burst,
            refill_decisions,
            decisions_since_refill: 0,
            passed: 0,
            dropped: 0,
        }
    }

    /// Counts one decision towards the next token.
    pub(crate) fn on_decision(&mut self) {
        if self.refill_decisions == 0 {
            return;
        }
        self.decisions_since_refill += 1;
        if self.decisions_since_refill >= self.refill_decisions {
            self.decisions_since_refill = 0;
            self.tokens = (self.tokens + 1).min(self.burst);
        }
    }

    /// Takes a token if there is one.
    pub(crate) fn admit(&mut self) -> bool {
        if self.tokens > 0 {
            self.tokens -= 1;
            self.passed += 1;
            true
        } else {
            self.dropped += 1;
            false
        }
    }
}

/// The text of a message: at most [`LOG_MAX_BYTES`] of `bytes`, invalid
/// UTF-8 replaced.
pub(crate) fn message_text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(LOG_MAX_BYTES)]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_one_per_refill_period() {
        let mut l = LogLimiter::new(2, 3);
        assert!(l.admit());
        assert!(l.admit());
        assert!(!l.admit());
        l.on_decision();
        l.on_decision();
        assert!(!l.admit());
        l.on_decision();
        assert!(l.admit());
        assert!(!l.admit());
        assert_eq!((l.passed, l.dropped), (3, 3));
    }

    #[test]
    fn messages_are_truncated_and_lossy() {
        assert_eq!(message_text(&[b'a'; 1000]).len(), LOG_MAX_BYTES);
        assert_eq!(message_text(b"ok\xff"), "ok\u{fffd}");
    }
}
