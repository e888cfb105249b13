//! `apf.log`: the one thing a policy may ask of the host.

use apflab_abi::policy::{LOG_MAX_BYTES, LogLevel};
use core::fmt;

#[cfg(target_arch = "wasm32")]
pub(crate) mod host {
    #[link(wasm_import_module = "apf")]
    unsafe extern "C" {
        /// `apf.log_at(level, ptr, len)`: UTF-8 text in this module's memory.
        #[link_name = "log_at"]
        pub fn log_at(level: i32, ptr: *const u8, len: usize);
        /// `apf.input(ptr, cap) -> size`: the current call's input record.
        #[link_name = "input"]
        pub fn input(ptr: *mut u8, cap: usize) -> i32;
    }
}

/// Sends `msg` to the host's log at level info: the run's `policy.log`
/// (and tracing, target `apflab::policy`). The host rate-limits messages
/// and truncates them to [`LOG_MAX_BYTES`]. When the policy runs natively
/// rather than as Wasm this does nothing: a `no_std` policy has nowhere
/// else to write.
pub fn log(msg: &str) {
    log_at(LogLevel::Info, msg);
}

/// [`log`] at `level`.
pub fn log_at(level: LogLevel, msg: &str) {
    #[cfg(target_arch = "wasm32")]
    // SAFETY: the host only reads `len` bytes at `ptr` from this module's
    // memory during the call, and they are the bytes of `msg`.
    unsafe {
        host::log_at(level as i32, msg.as_ptr(), msg.len())
    }
    #[cfg(not(target_arch = "wasm32"))]
    let _ = (level, msg);
}

/// Formats into a fixed buffer and sends it with [`log`]; prefer the
/// [`log!`](crate::log!) macro.
pub fn log_fmt(args: fmt::Arguments<'_>) {
    log_fmt_at(LogLevel::Info, args);
}

/// [`log_fmt`] at `level`; prefer the [`log!`](crate::log!) macro with a
/// level (`log!(warn: "...")`).
pub fn log_fmt_at(level: LogLevel, args: fmt::Arguments<'_>) {
    let mut buf = LogBuffer::new();
    // A full buffer only truncates, so the error is not worth reporting.
    let _ = fmt::write(&mut buf, args);
    log_at(level, buf.as_str());
}

/// Formats a message like `format!` and sends it to the host's log:
/// `apflab_policy_sdk::log!("ewma now {} ns", ewma)` (level info), or with
/// a level first: `log!(warn: "...")`, `log!(error: ...)`, `log!(debug: ...)`.
#[macro_export]
macro_rules! log {
    (error: $($arg:tt)*) => {
        $crate::log_fmt_at($crate::LogLevel::Error, ::core::format_args!($($arg)*))
    };
    (warn: $($arg:tt)*) => {
        $crate::log_fmt_at($crate::LogLevel::Warn, ::core::format_args!($($arg)*))
    };
    (debug: $($arg:tt)*) => {
        $crate::log_fmt_at($crate::LogLevel::Debug, ::core::format_args!($($arg)*))
    };
    ($($arg:tt)*) => {
        $crate::log_fmt(::core::format_args!($($arg)*))
    };
}

/// A message of at most [`LOG_MAX_BYTES`] bytes; what does not fit is cut
/// at a character boundary.
pub struct LogBuffer {
    buf: [u8; LOG_MAX_BYTES],
    len: usize,
}

impl LogBuffer {
    /// An empty message.
    pub const fn new() -> Self {
        Self {
            buf: [0; LOG_MAX_BYTES],
            len: 0,
        }
    }

    /// The text so far.
    pub fn as_str(&self) -> &str {
        // Only whole characters are ever copied in, so this cannot fail;
        // fall back to nothing rather than panic if it ever did.
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

impl Default for LogBuffer {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Write for LogBuffer {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = LOG_MAX_BYTES - self.len;
        let mut take = s.len().min(room);
        while !s.is_char_boundary(take) {
            take -= 1;
        }
        self.buf[self.len..self.len + take].copy_from_slice(&s.as_bytes()[..take]);
        self.len += take;
        if take < s.len() {
            Err(fmt::Error)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::fmt::Write;

    #[test]
    fn long_messages_are_cut_at_a_character_boundary() {
        let mut b = LogBuffer::new();
        for _ in 0..LOG_MAX_BYTES - 1 {
            b.write_str("a").unwrap();
        }
        assert!(b.write_str("é").is_err());
        assert_eq!(b.as_str().len(), LOG_MAX_BYTES - 1);
        let mut b = LogBuffer::new();
        write!(b, "x={}", 42).unwrap();
        assert_eq!(b.as_str(), "x=42");
    }
}
