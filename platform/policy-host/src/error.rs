//! Why a policy module cannot be used.

use crate::stats::FailureCause;

/// A policy module that cannot be loaded or started. `module` is the file
/// (or label) it came from.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file could not be read.
    #[error("policy {module}: cannot read: {source}")]
    Read {
        /// The file (or label) the module came from.
        module: String,
        /// Why reading failed.
        #[source]
        source: std::io::Error,
    },
    /// The module is larger than [`PolicyConfig::max_module_bytes`](crate::PolicyConfig).
    #[error("policy {module}: {size} bytes is larger than the limit of {max} bytes")]
    TooLarge {
        /// The file (or label) the module came from.
        module: String,
        /// The module's size in bytes.
        size: usize,
        /// The limit in bytes.
        max: usize,
    },
    /// The engine could not be created with the sandbox's settings, or the
    /// host's functions could not be linked.
    #[error("policy engine: {source}")]
    Engine {
        /// Wasmtime's error, whose causes follow it in the chain.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Not valid WebAssembly (binary or text), or cranelift rejected it.
    #[error("policy {module}: not a valid module: {message}")]
    Compile {
        /// The file (or label) the module came from.
        module: String,
        /// Wasmtime's error, with its causes.
        message: String,
    },
    /// A required export is absent.
    #[error("policy {module}: missing export `{export}` (expected {expected})")]
    MissingExport {
        /// The file (or label) the module came from.
        module: String,
        /// The export's name.
        export: &'static str,
        /// What the export must be (kind and signature).
        expected: String,
    },
    /// A required export has the wrong kind or signature.
    #[error("policy {module}: export `{export}` is {found}, expected {expected}")]
    WrongExport {
        /// The file (or label) the module came from.
        module: String,
        /// The export's name.
        export: &'static str,
        /// What the export must be (kind and signature).
        expected: String,
        /// What the module exports under that name.
        found: String,
    },
    /// A WASI import: policies get no system interface, so runs stay
    /// deterministic.
    #[error(
        "policy {module}: imports `{import_module}.{name}`; WASI is not available to policies (only `apf.log`, `apf.log_at` and `apf.input` may be imported)"
    )]
    WasiImport {
        /// The file (or label) the module came from.
        module: String,
        /// The import's module name (`wasi_snapshot_preview1`, ...).
        import_module: String,
        /// The imported item's name.
        name: String,
    },
    /// An import the host does not provide.
    #[error(
        "policy {module}: unknown import `{import_module}.{name}` ({ty}); only `apf.log`, `apf.log_at` and `apf.input` may be imported"
    )]
    UnknownImport {
        /// The file (or label) the module came from.
        module: String,
        /// The import's module name.
        import_module: String,
        /// The imported item's name.
        name: String,
        /// The imported item's kind and type.
        ty: String,
    },
    /// An `apf` import with the wrong type.
    #[error("policy {module}: import `{import}` is {found}, expected {expected}")]
    WrongImport {
        /// The file (or label) the module came from.
        module: String,
        /// The import (`apf.log`, ...).
        import: String,
        /// The signature the host provides.
        expected: String,
        /// The type the module imports it with.
        found: String,
    },
    /// `apf_abi_version` returned a version this host does not speak.
    #[error(
        "policy {module}: ABI version {found}, this host speaks versions {oldest} to {expected}"
    )]
    AbiVersion {
        /// The file (or label) the module came from.
        module: String,
        /// The host's version, [`POLICY_ABI_VERSION`](apflab_abi::policy::POLICY_ABI_VERSION).
        expected: i32,
        /// The oldest version the host still runs.
        oldest: i32,
        /// The version the module returned.
        found: i32,
    },
    /// Instantiation (memory set-up, the start function) failed.
    #[error("policy {module}: instantiation failed ({cause}): {message}")]
    Instantiate {
        /// The file (or label) the module came from.
        module: String,
        /// What kind of failure it was.
        cause: FailureCause,
        /// Wasmtime's error, with its causes.
        message: String,
    },
    /// Calling `apf_abi_version` failed.
    #[error("policy {module}: `apf_abi_version` failed ({cause}): {message}")]
    AbiVersionCall {
        /// The file (or label) the module came from.
        module: String,
        /// What kind of failure it was.
        cause: FailureCause,
        /// Wasmtime's error, with its causes.
        message: String,
    },
}

/// A module that refused the config's `[policy] params` (its
/// `apf_configure` returned non-zero or failed), or params it cannot take.
#[derive(Debug, thiserror::Error)]
#[error("policy {module}: {message}")]
pub struct ConfigureError {
    /// The file (or label) the module came from.
    pub module: String,
    /// Why: the module's own last message, or the failure.
    pub message: String,
}

impl PolicyError {
    /// Wasmtime's `err` creating the engine or linking the host functions.
    /// (`wasmtime::Error` is not a `std::error::Error` itself: its boxed
    /// form is, with the same causes.)
    pub(crate) fn engine(err: wasmtime::Error) -> Self {
        Self::Engine {
            source: err.into_boxed_dyn_error(),
        }
    }
}
