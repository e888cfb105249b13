//! The per-run store data: resource limits and the log limiter.

use crate::log::LogLimiter;
use std::sync::Arc;
use wasmtime::{ResourceLimiter, StoreLimits, StoreLimitsBuilder};

/// Data of one run's store.
pub(crate) struct HostState {
    pub(crate) limits: Limits,
    pub(crate) log: LogLimiter,
    /// The module's name for log lines.
    pub(crate) module: Arc<str>,
}

/// wasmtime's [`StoreLimits`], remembering whether a limit was hit so a
/// failed call can be reported as a resource limit rather than a plain trap.
pub(crate) struct Limits {
    inner: StoreLimits,
    pub(crate) hit: bool,
}

impl Limits {
    pub(crate) fn new(memory_bytes: usize, table_elements: usize) -> Self {
        Self {
            inner: StoreLimitsBuilder::new()
                .memory_size(memory_bytes)
                .table_elements(table_elements)
                // One instance of one module per store; a policy needs one
                // memory and the one function table Rust emits.
                .instances(1)
                .memories(1)
                .tables(2)
                // A denied grow traps instead of returning -1, so a module
                // cannot keep retrying and the failure is counted.
                .trap_on_grow_failure(true)
                .build(),
            hit: false,
        }
    }

    fn note<T>(
        &mut self,
        r: wasmtime::Result<T>,
        allowed: impl Fn(&T) -> bool,
    ) -> wasmtime::Result<T> {
        match &r {
            Ok(v) if allowed(v) => {}
            _ => self.hit = true,
        }
        r
    }
}

impl ResourceLimiter for Limits {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let r = self.inner.memory_growing(current, desired, maximum);
        self.note(r, |ok| *ok)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.hit = true;
        self.inner.memory_grow_failed(error)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let r = self.inner.table_growing(current, desired, maximum);
        self.note(r, |ok| *ok)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.hit = true;
        self.inner.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.inner.instances()
    }

    fn tables(&self) -> usize {
        self.inner.tables()
    }

    fn memories(&self) -> usize {
        self.inner.memories()
    }
}
