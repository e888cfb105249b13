//! `apf.log`: the one thing a policy may ask of the host.

use apflab_abi::policy::LOG_MAX_BYTES;
use core::fmt;

#[cfg(target_arch = "wasm32")]
mod host {
    #[link(wasm_import_module = "apf")]
    unsafe extern "C" {
        /// `apf.log(ptr, len)`: UTF-8 text in this module's memory.
        #[link_name = "log"]
        pub fn log(ptr: *const u8, len: usize);
    }
}

/// Sends `msg` to the host's log (tracing, target `apflab::policy`). The
/// host rate-limits messages and truncates them to [`LOG_MAX_BYTES`]. When
/// the policy runs natively rather than as Wasm this does nothing: a `no_std`
/// policy has nowhere else to write.
pub fn log(msg: &str) {
    #[cfg(target_arch = "wasm32")]
    // SAFETY: the host only reads `len` bytes at `ptr` from this module's
    // memory during the call, and they are the bytes of `msg`.
    unsafe {
        host::log(msg.as_ptr(), msg.len())
    }
    #[cfg(not(target_arch = "wasm32"))]
    let _ = msg;
}

/// Formats into a fixed buffer and sends it with [`log`]; prefer the
/// [`log!`](crate::log!) macro.
pub fn log_fmt(args: fmt::Arguments<'_>) {
    let mut buf = LogBuffer::new();
    // A full buffer only truncates, so the error is not worth reporting.
    let _ = fmt::write(&mut buf, args);
    log(buf.as_str());
}

/// Formats a message like `format!` and sends it to the host's log:
/// `apflab_policy_sdk::log!("ewma now {} ns", ewma)`.
#[macro_export]
macro_rules! log {
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
