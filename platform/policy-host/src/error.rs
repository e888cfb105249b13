//! Why a policy module cannot be used.

use crate::stats::FailureCause;

/// A policy module that cannot be loaded or started. `module` is the file
/// (or label) it came from.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file could not be read.
    #[error("policy {module}: cannot read: {source}")]
    Read {
        module: String,
        #[source]
        source: std::io::Error,
    },
    /// The module is larger than [`PolicyConfig::max_module_bytes`](crate::PolicyConfig).
    #[error("policy {module}: {size} bytes is larger than the limit of {max} bytes")]
    TooLarge {
        module: String,
        size: usize,
        max: usize,
    },
    /// The engine could not be created with the sandbox's settings.
    #[error("policy engine: {0}")]
    Engine(String),
    /// Not valid WebAssembly (binary or text), or cranelift rejected it.
    #[error("policy {module}: not a valid module: {message}")]
    Compile { module: String, message: String },
    /// A required export is absent.
    #[error("policy {module}: missing export `{export}` (expected {expected})")]
    MissingExport {
        module: String,
        export: &'static str,
        expected: String,
    },
    /// A required export has the wrong kind or signature.
    #[error("policy {module}: export `{export}` is {found}, expected {expected}")]
    WrongExport {
        module: String,
        export: &'static str,
        expected: String,
        found: String,
    },
    /// A WASI import: policies get no system interface, so runs stay
    /// deterministic.
    #[error(
        "policy {module}: imports `{import_module}.{name}`; WASI is not available to policies (only `apf.log` may be imported)"
    )]
    WasiImport {
        module: String,
        import_module: String,
        name: String,
    },
    /// An import the host does not provide.
    #[error(
        "policy {module}: unknown import `{import_module}.{name}` ({ty}); only `apf.log` may be imported"
    )]
    UnknownImport {
        module: String,
        import_module: String,
        name: String,
        ty: String,
    },
    /// `apf.log` imported with the wrong type.
    #[error("policy {module}: import `apf.log` is {found}, expected {expected}")]
    WrongImport {
        module: String,
        expected: String,
        found: String,
    },
    /// `apf_abi_version` returned a version this host does not speak.
    #[error("policy {module}: ABI version {found}, this host speaks version {expected}")]
    AbiVersion {
        module: String,
        expected: i32,
        found: i32,
    },
    /// Instantiation (memory set-up, the start function) failed.
    #[error("policy {module}: instantiation failed ({cause}): {message}")]
    Instantiate {
        module: String,
        cause: FailureCause,
        message: String,
    },
    /// Calling `apf_abi_version` failed.
    #[error("policy {module}: `apf_abi_version` failed ({cause}): {message}")]
    AbiVersionCall {
        module: String,
        cause: FailureCause,
        message: String,
    },
}
