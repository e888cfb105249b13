//! `apf.log`: rate-limited messages from a policy to tracing.

use apflab_abi::policy::LOG_MAX_BYTES;

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
