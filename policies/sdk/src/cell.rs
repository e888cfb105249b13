//! The one value of a policy that lives for the whole run.

use core::cell::UnsafeCell;

/// Holds a policy value created on first use. Used by
/// [`export_policy!`](crate::export_policy) from a `static`.
pub struct PolicyCell<P>(UnsafeCell<Option<P>>);

// SAFETY: a wasm32 module without the `atomics` feature has exactly one
// thread, so a static is never touched from two threads at once.
#[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
unsafe impl<P> Sync for PolicyCell<P> {}

impl<P> PolicyCell<P> {
    /// An empty cell.
    pub const fn new() -> Self {
        Self(UnsafeCell::new(None))
    }

    /// Runs `f` on the value, creating it with `init` first if needed.
    ///
    /// # Safety
    /// No other call of `with` on this cell may be running (no re-entrancy
    /// from within `f` or `init`, no second thread).
    pub unsafe fn with<R>(&self, init: impl FnOnce() -> P, f: impl FnOnce(&mut P) -> R) -> R {
        // SAFETY: the caller promises that no other `with` on this cell is
        // running, so this is the only reference to the slot while it lives.
        let slot = unsafe { &mut *self.0.get() };
        f(slot.get_or_insert_with(init))
    }
}

impl<P> Default for PolicyCell<P> {
    fn default() -> Self {
        Self::new()
    }
}
