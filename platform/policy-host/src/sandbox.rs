//! The per-run store data: resource limits, the log and the current
//! call's input record.

use crate::log::{LogLimiter, LogSource, PolicyLog};
use apflab_abi::policy::LogLevel;
use std::sync::Arc;
use wasmtime::{ResourceLimiter, StoreLimits, StoreLimitsBuilder};

/// Data of one run's store.
pub(crate) struct HostState {
    pub(crate) limits: Limits,
    pub(crate) log: LogLimiter,
    /// The module's name for log lines.
    pub(crate) module: Arc<str>,
    /// The input record of the call running (`apf.input` copies it).
    pub(crate) input: Vec<u8>,
    /// The run's time at the call running, for log lines.
    pub(crate) now_ns: u64,
    /// What the module and the host said during the run.
    pub(crate) lines: PolicyLog,
}

impl HostState {
    pub(crate) fn new(limits: Limits, log: LogLimiter, module: Arc<str>) -> Self {
        HostState {
            limits,
            log,
            module,
            input: Vec::new(),
            now_ns: 0,
            lines: PolicyLog::default(),
        }
    }

    /// A message from the module: kept, and passed to tracing.
    pub(crate) fn module_message(&mut self, level: LogLevel, text: String) {
        let module = &self.module;
        match level {
            LogLevel::Error => {
                tracing::error!(target: "apflab::policy", policy = %module, "{text}")
            }
            LogLevel::Warn => tracing::warn!(target: "apflab::policy", policy = %module, "{text}"),
            LogLevel::Info => tracing::info!(target: "apflab::policy", policy = %module, "{text}"),
            LogLevel::Debug => {
                tracing::debug!(target: "apflab::policy", policy = %module, "{text}")
            }
        }
        self.lines.push(self.now_ns, level, LogSource::Module, text);
    }

    /// What the host says about the module (a failed call, disabling):
    /// kept; the caller traces it.
    pub(crate) fn host_message(&mut self, level: LogLevel, text: String) {
        self.lines.push(self.now_ns, level, LogSource::Host, text);
    }
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
