//! Loading a policy module: compile once, validate against the ABI version
//! it speaks (3, or 2 for modules built before it), and start one fresh
//! instance per run.

use crate::config::PolicyConfig;
use crate::error::PolicyError;
use crate::log::{LogLimiter, message_text};
use crate::runner::WasmPolicy;
use crate::sandbox::{HostState, Limits};
use crate::stats::FailureCause;
use apflab_abi::policy::{
    EXPORT_ABI_VERSION, EXPORT_CONFIGURE, EXPORT_DECIDE, EXPORT_MEMORY, EXPORT_ON_COMPLETE,
    EXPORT_ON_READY, EXPORT_ON_RUN_END, IMPORT_INPUT, IMPORT_LOG, IMPORT_LOG_AT, IMPORT_MODULE,
    LogLevel, OLDEST_POLICY_ABI_VERSION, POLICY_ABI_VERSION,
};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use wasmtime::{
    Caller, Config, Engine, ExternType, FuncType, InstancePre, Linker, Module, Store, ValType,
};

/// The Wasm value types the ABI uses.
#[derive(Clone, Copy)]
enum Ty {
    I32,
    I64,
}

impl Ty {
    fn matches(self, v: &ValType) -> bool {
        matches!((self, v), (Ty::I32, ValType::I32) | (Ty::I64, ValType::I64))
    }

    fn name(self) -> &'static str {
        match self {
            Ty::I32 => "i32",
            Ty::I64 => "i64",
        }
    }
}

/// A function signature the ABI requires.
struct Signature {
    params: &'static [Ty],
    results: &'static [Ty],
}

impl Signature {
    fn matches(&self, ft: &FuncType) -> bool {
        ft.params().len() == self.params.len()
            && ft.results().len() == self.results.len()
            && ft.params().zip(self.params).all(|(v, t)| t.matches(&v))
            && ft.results().zip(self.results).all(|(v, t)| t.matches(&v))
    }

    fn describe(&self) -> String {
        let names = |tys: &[Ty]| tys.iter().map(|t| t.name()).collect::<Vec<_>>().join(", ");
        format!("func({}) -> ({})", names(self.params), names(self.results))
    }
}

const SIG_ABI_VERSION: Signature = Signature {
    params: &[],
    results: &[Ty::I32],
};
const SIG_DECIDE_V2: Signature = Signature {
    params: &[
        Ty::I32,
        Ty::I64,
        Ty::I32,
        Ty::I32,
        Ty::I32,
        Ty::I32,
        Ty::I64,
        Ty::I64,
    ],
    results: &[Ty::I64],
};
const SIG_DECIDE: Signature = Signature {
    params: &[],
    results: &[Ty::I64],
};
const SIG_ON_READY_V2: Signature = Signature {
    params: &[Ty::I64, Ty::I64],
    results: &[],
};
const SIG_NOTIFY: Signature = Signature {
    params: &[],
    results: &[],
};
const SIG_CONFIGURE: Signature = Signature {
    params: &[],
    results: &[Ty::I32],
};
const SIG_LOG: Signature = Signature {
    params: &[Ty::I32, Ty::I32],
    results: &[],
};
const SIG_LOG_AT: Signature = Signature {
    params: &[Ty::I32, Ty::I32, Ty::I32],
    results: &[],
};
const SIG_INPUT: Signature = Signature {
    params: &[Ty::I32, Ty::I32],
    results: &[Ty::I32],
};

/// The imports a module may have, with their types.
const IMPORTS: [(&str, Signature); 3] = [
    (IMPORT_LOG, SIG_LOG),
    (IMPORT_LOG_AT, SIG_LOG_AT),
    (IMPORT_INPUT, SIG_INPUT),
];

/// The function exports of ABI v2, all required.
const V2_FUNCS: [(&str, Signature); 3] = [
    (EXPORT_DECIDE, SIG_DECIDE_V2),
    (EXPORT_ON_READY, SIG_ON_READY_V2),
    (EXPORT_ON_RUN_END, SIG_NOTIFY),
];

/// The function exports of ABI v3: required, then optional.
const V3_REQUIRED: [(&str, Signature); 1] = [(EXPORT_DECIDE, SIG_DECIDE)];
const V3_OPTIONAL: [(&str, Signature); 3] = [
    (EXPORT_ON_COMPLETE, SIG_NOTIFY),
    (EXPORT_CONFIGURE, SIG_CONFIGURE),
    (EXPORT_ON_RUN_END, SIG_NOTIFY),
];

fn describe_func(ft: &FuncType) -> String {
    let join = |it: &mut dyn Iterator<Item = ValType>| {
        it.map(|v| v.to_string()).collect::<Vec<_>>().join(", ")
    };
    format!(
        "func({}) -> ({})",
        join(&mut ft.params()),
        join(&mut ft.results())
    )
}

fn describe_extern(ty: &ExternType) -> String {
    match ty {
        ExternType::Func(ft) => describe_func(ft),
        ExternType::Memory(_) => "memory".into(),
        ExternType::Table(_) => "table".into(),
        ExternType::Global(_) => "global".into(),
        ExternType::Tag(_) => "tag".into(),
    }
}

/// One import or export of a module: its name and type.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ItemInfo {
    /// `name` for an export, `module.name` for an import.
    pub name: String,
    /// E.g. `func(i64, i64) -> ()` or `memory`.
    pub ty: String,
}

/// What `apflab policy check` reports about a valid module.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ModuleInfo {
    /// The file (or label) it came from.
    pub module: String,
    /// Size of the file in bytes.
    pub size_bytes: usize,
    /// SHA-256 of the file, hex.
    pub sha256: String,
    /// What `apf_abi_version` returned.
    pub abi_version: i32,
    /// Every export, in module order.
    pub exports: Vec<ItemInfo>,
    /// Every import, in module order.
    pub imports: Vec<ItemInfo>,
}

impl fmt::Display for ModuleInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{}: valid policy, ABI version {}",
            self.module, self.abi_version
        )?;
        writeln!(f, "  size    {} bytes", self.size_bytes)?;
        writeln!(f, "  sha256  {}", self.sha256)?;
        writeln!(f, "  exports")?;
        for e in &self.exports {
            writeln!(f, "    {:<18} {}", e.name, e.ty)?;
        }
        if self.imports.is_empty() {
            writeln!(f, "  imports (none)")
        } else {
            writeln!(f, "  imports")?;
            for i in &self.imports {
                writeln!(f, "    {:<18} {}", i.name, i.ty)?;
            }
            Ok(())
        }
    }
}

/// A compiled, validated policy module: compile once per run, then
/// [`instantiate`](Self::instantiate) for each run (fresh state every time).
pub struct PolicyModule {
    engine: Engine,
    pre: InstancePre<HostState>,
    config: PolicyConfig,
    name: Arc<str>,
    info: ModuleInfo,
}

impl fmt::Debug for PolicyModule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyModule")
            .field("info", &self.info)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl PolicyModule {
    /// Loads a `.wasm` (binary) or `.wat` (text) file.
    pub fn load(path: &Path, config: &PolicyConfig) -> Result<Self, PolicyError> {
        let name = path.display().to_string();
        let max = config.max_module_bytes as u64;
        // Refuse by size (and anything but a regular file) before reading
        // a huge file into memory, or blocking on a FIFO.
        let bytes =
            apflab_files::read_regular(path, max, "max_module_bytes").map_err(|source| {
                if source.kind() == std::io::ErrorKind::FileTooLarge {
                    let size = std::fs::metadata(path).map_or(u64::MAX, |m| m.len());
                    PolicyError::TooLarge {
                        module: name.clone(),
                        size: usize::try_from(size).unwrap_or(usize::MAX),
                        max: config.max_module_bytes,
                    }
                } else {
                    PolicyError::Read {
                        module: name.clone(),
                        source,
                    }
                }
            })?;
        Self::from_bytes(&name, &bytes, config)
    }

    /// Loads a module from memory, binary or text; `name` names it in
    /// errors and logs (and is the file name in the source positions of a
    /// text module's errors).
    pub fn from_bytes(
        name: &str,
        bytes: &[u8],
        config: &PolicyConfig,
    ) -> Result<Self, PolicyError> {
        let module_name = || name.to_string();
        if bytes.len() > config.max_module_bytes {
            return Err(PolicyError::TooLarge {
                module: module_name(),
                size: bytes.len(),
                max: config.max_module_bytes,
            });
        }
        // Wasmtime reads anything without the binary's magic as text: a
        // random file would be "not valid UTF-8", which says nothing of
        // what a module is.
        if !bytes.starts_with(b"\0asm")
            && let Err(e) = std::str::from_utf8(bytes)
        {
            return Err(PolicyError::Compile {
                module: module_name(),
                message: format!(
                    "neither a Wasm binary (it does not start with the magic bytes \\0asm) nor \
                     WAT text (byte {} is not UTF-8)",
                    e.valid_up_to()
                ),
            });
        }
        let engine = new_engine()?;
        let binary = crate::source::to_binary(name, bytes)?;
        let module = Module::new(&engine, &binary).map_err(|e| PolicyError::Compile {
            module: module_name(),
            message: crate::source::explain(name, bytes, &binary, &format!("{e:#}")),
        })?;
        let imports = validate_imports(name, &module)?;
        expect_func(name, &module, EXPORT_ABI_VERSION, &SIG_ABI_VERSION)?;
        expect_memory(name, &module)?;

        let mut linker = Linker::new(&engine);
        linker
            .func_wrap(IMPORT_MODULE, IMPORT_LOG, host_log)
            .and_then(|l| l.func_wrap(IMPORT_MODULE, IMPORT_LOG_AT, host_log_at))
            .and_then(|l| l.func_wrap(IMPORT_MODULE, IMPORT_INPUT, host_input))
            .map_err(PolicyError::engine)?;
        let pre = linker
            .instantiate_pre(&module)
            .map_err(|e| PolicyError::Compile {
                module: module_name(),
                message: format!("{e:#}"),
            })?;

        let mut this = Self {
            engine,
            pre,
            config: config.clone(),
            name: name.into(),
            info: ModuleInfo {
                module: module_name(),
                size_bytes: bytes.len(),
                sha256: hex(&Sha256::digest(bytes)),
                abi_version: 0,
                exports: Vec::new(),
                imports,
            },
        };
        // Run the start function and ask the version once now, so a module
        // that cannot start or speaks another ABI is refused at load.
        let (mut store, instance) = this.new_instance()?;
        let version = instance
            .get_typed_func::<(), i32>(&mut store, EXPORT_ABI_VERSION)
            .and_then(|f| f.call(&mut store, ()))
            .map_err(|e| PolicyError::AbiVersionCall {
                module: module_name(),
                cause: FailureCause::of_call(&e, store.data().limits.hit),
                message: format!("{e:#}"),
            })?;
        if !(OLDEST_POLICY_ABI_VERSION..=POLICY_ABI_VERSION).contains(&version) {
            return Err(PolicyError::AbiVersion {
                module: module_name(),
                expected: POLICY_ABI_VERSION,
                oldest: OLDEST_POLICY_ABI_VERSION,
                found: version,
            });
        }
        this.info.exports = validate_exports(name, &module, version)?;
        this.info.abi_version = version;
        Ok(this)
    }

    /// What the module exports and imports, its ABI version and hash.
    pub fn info(&self) -> &ModuleInfo {
        &self.info
    }

    /// The limits it runs under.
    pub fn config(&self) -> &PolicyConfig {
        &self.config
    }

    /// A fresh instance for one run: new memory, new state, fresh counters.
    pub fn instantiate(&self) -> Result<WasmPolicy, PolicyError> {
        let (store, instance) = self.new_instance()?;
        WasmPolicy::new(
            store,
            instance,
            &self.config,
            &self.name,
            self.info.abi_version,
        )
    }

    /// A store with this module's limits and an instance in it; the start
    /// function runs under the per-call fuel.
    fn new_instance(&self) -> Result<(Store<HostState>, wasmtime::Instance), PolicyError> {
        let mut store = Store::new(
            &self.engine,
            HostState::new(
                Limits::new(
                    self.config.memory_limit_bytes,
                    self.config.table_elements_limit,
                ),
                LogLimiter::new(self.config.log_burst, self.config.log_refill_decisions),
                self.name.clone(),
            ),
        );
        store.limiter(|s| &mut s.limits);
        let instantiate = store
            .set_fuel(self.config.fuel_per_call)
            .and_then(|()| self.pre.instantiate(&mut store));
        match instantiate {
            Ok(instance) => Ok((store, instance)),
            Err(e) => Err(PolicyError::Instantiate {
                module: self.name.to_string(),
                cause: FailureCause::of_call(&e, store.data().limits.hit),
                message: format!("{e:#}"),
            }),
        }
    }
}

/// Validates a module file without keeping it: what `apflab policy check`
/// runs. Uses the default limits.
pub fn check(path: &Path) -> Result<ModuleInfo, PolicyError> {
    check_with(path, &PolicyConfig::default())
}

/// [`check`] with explicit limits.
pub fn check_with(path: &Path, config: &PolicyConfig) -> Result<ModuleInfo, PolicyError> {
    PolicyModule::load(path, config).map(|m| m.info)
}

/// The engine for policies: fuel metering on, and the few Wasm features
/// that could make a result depend on the host turned to their
/// deterministic form.
fn new_engine() -> Result<Engine, PolicyError> {
    let mut config = Config::new();
    config
        .consume_fuel(true)
        .cranelift_nan_canonicalization(true)
        .relaxed_simd_deterministic(true);
    Engine::new(&config).map_err(PolicyError::engine)
}

fn validate_imports(name: &str, module: &Module) -> Result<Vec<ItemInfo>, PolicyError> {
    let mut out = Vec::new();
    for import in module.imports() {
        let ty = import.ty();
        let (m, n) = (import.module(), import.name());
        if m.starts_with("wasi") {
            return Err(PolicyError::WasiImport {
                module: name.into(),
                import_module: m.into(),
                name: n.into(),
            });
        }
        let Some((_, sig)) = IMPORTS.iter().find(|(i, _)| m == IMPORT_MODULE && n == *i) else {
            return Err(PolicyError::UnknownImport {
                module: name.into(),
                import_module: m.into(),
                name: n.into(),
                ty: describe_extern(&ty),
            });
        };
        match &ty {
            ExternType::Func(ft) if sig.matches(ft) => {}
            other => {
                return Err(PolicyError::WrongImport {
                    module: name.into(),
                    import: format!("{m}.{n}"),
                    expected: sig.describe(),
                    found: describe_extern(other),
                });
            }
        }
        out.push(ItemInfo {
            name: format!("{m}.{n}"),
            ty: describe_extern(&ty),
        });
    }
    Ok(out)
}

/// Checks that `export` is a function of type `sig` (or absent, when
/// `required` is false); whether it is there.
fn check_func(
    name: &str,
    module: &Module,
    export: &'static str,
    sig: &Signature,
    required: bool,
) -> Result<bool, PolicyError> {
    match module.get_export(export) {
        None if required => Err(PolicyError::MissingExport {
            module: name.into(),
            export,
            expected: sig.describe(),
        }),
        None => Ok(false),
        Some(ExternType::Func(ft)) if sig.matches(&ft) => Ok(true),
        Some(other) => Err(PolicyError::WrongExport {
            module: name.into(),
            export,
            expected: sig.describe(),
            found: describe_extern(&other),
        }),
    }
}

fn expect_func(
    name: &str,
    module: &Module,
    export: &'static str,
    sig: &Signature,
) -> Result<(), PolicyError> {
    check_func(name, module, export, sig, true).map(|_| ())
}

fn expect_memory(name: &str, module: &Module) -> Result<(), PolicyError> {
    match module.get_export(EXPORT_MEMORY) {
        Some(ExternType::Memory(_)) => Ok(()),
        None => Err(PolicyError::MissingExport {
            module: name.into(),
            export: EXPORT_MEMORY,
            expected: "memory".into(),
        }),
        Some(other) => Err(PolicyError::WrongExport {
            module: name.into(),
            export: EXPORT_MEMORY,
            expected: "memory".into(),
            found: describe_extern(&other),
        }),
    }
}

/// Checks the exports a module of ABI `version` must and may have.
fn validate_exports(
    name: &str,
    module: &Module,
    version: i32,
) -> Result<Vec<ItemInfo>, PolicyError> {
    if version == 2 {
        for (export, sig) in &V2_FUNCS {
            expect_func(name, module, export, sig)?;
        }
    } else {
        for (export, sig) in &V3_REQUIRED {
            expect_func(name, module, export, sig)?;
        }
        for (export, sig) in &V3_OPTIONAL {
            check_func(name, module, export, sig, false)?;
        }
    }
    Ok(module
        .exports()
        .map(|e| ItemInfo {
            name: e.name().into(),
            ty: describe_extern(&e.ty()),
        })
        .collect())
}

/// The text of `len` bytes at `ptr` in the caller's memory, if they are
/// inside it.
fn memory_text(caller: &mut Caller<'_, HostState>, ptr: i32, len: i32) -> Option<String> {
    let mem = caller.get_export(EXPORT_MEMORY)?.into_memory()?;
    let data = mem.data(&*caller);
    let start = usize::try_from(ptr as u32).ok()?;
    let end = start.checked_add(usize::try_from(len as u32).ok()?)?;
    data.get(start..end).map(message_text)
}

/// `apf.log(ptr, len)`: [`host_log_at`] at level info.
fn host_log(caller: Caller<'_, HostState>, ptr: i32, len: i32) {
    host_log_at(caller, LogLevel::Info as i32, ptr, len);
}

/// `apf.log_at(level, ptr, len)`: a message from the module, kept for the
/// run's log and passed to tracing if the rate limit allows. Bad pointers
/// drop the message rather than trap: a log line is not worth failing a
/// decision for.
fn host_log_at(mut caller: Caller<'_, HostState>, level: i32, ptr: i32, len: i32) {
    if !caller.data_mut().log.admit() {
        return;
    }
    let text = memory_text(&mut caller, ptr, len);
    let state = caller.data_mut();
    match text {
        Some(text) => state.module_message(LogLevel::from_raw(level), text),
        None => {
            // Counted as dropped, not passed.
            state.log.passed -= 1;
            state.log.dropped += 1;
            tracing::debug!(target: "apflab::policy", policy = %state.module, ptr, len, "apf.log outside the module's memory");
        }
    }
}

/// `apf.input(ptr, cap) -> size`: copies the first `min(cap, size)` bytes
/// of the current call's input record to `ptr`; the record's size (0 in a
/// call without one). A copy outside the module's memory traps: the
/// module's bug, counted like any other.
fn host_input(mut caller: Caller<'_, HostState>, ptr: i32, cap: i32) -> wasmtime::Result<i32> {
    let record = std::mem::take(&mut caller.data_mut().input);
    let n = record.len().min(cap as u32 as usize);
    let result = (|| {
        let mem = caller
            .get_export(EXPORT_MEMORY)
            .and_then(|e| e.into_memory())
            .ok_or_else(|| wasmtime::Error::msg("apf.input: the module exports no memory"))?;
        mem.write(&mut caller, ptr as u32 as usize, &record[..n])
            .map_err(|_| {
                wasmtime::Error::msg(format!(
                    "apf.input: {n} bytes at {:#x} are outside the module's memory",
                    ptr as u32
                ))
            })
    })();
    let size = record.len() as i32;
    caller.data_mut().input = record;
    result.map(|()| size)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
