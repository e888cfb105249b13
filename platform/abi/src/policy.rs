//! The policy ABI, version [`POLICY_ABI_VERSION`] (and the previous
//! version, [`OLDEST_POLICY_ABI_VERSION`], which hosts keep running).
//!
//! A policy is a core WebAssembly module without WASI.
//!
//! ## Version 3
//!
//! | export | signature | |
//! |---|---|---|
//! | [`EXPORT_ABI_VERSION`] | `() -> i32` | required: returns 3 |
//! | [`EXPORT_DECIDE`] | `() -> i64` | required: one decision per fault, packed as [`Decision`]; the fault is the call's input record ([`FaultInfo`]) |
//! | [`EXPORT_ON_COMPLETE`] | `() -> ()` | optional: a fetch completed, sync or async; the input record is a [`Completion`] |
//! | [`EXPORT_CONFIGURE`] | `() -> i32` | optional: called once before the first decision with the config's `[policy] params` as the input record ([`Params`]); 0 accepts them, anything else refuses them and the run does not start (the module's last log message says why) |
//! | [`EXPORT_ON_RUN_END`] | `() -> ()` | optional: the run is over |
//! | `memory` | memory | required: the module's own state |
//!
//! Inputs are *records* a call reads with the import
//! [`IMPORT_MODULE`].[`IMPORT_INPUT`] `(ptr i32, cap i32) -> i32`: the host
//! copies the first `min(cap, size)` bytes of the current call's record to
//! `ptr` in the module's memory and returns the record's full `size`. Every
//! record starts with its `size` (u32) and `kind` (u32, [`record`]); fields
//! are little-endian at fixed offsets and new fields are only ever appended.
//! So the ABI grows without breaking anyone: a module built against a
//! smaller record reads the fields it knows, and one built against a larger
//! record sees from `size` which fields this host did not send (the SDK
//! reads them as 0). Optional exports are discovered at load.
//!
//! Other imports: [`IMPORT_LOG`] `(ptr i32, len i32)` (a message at level
//! info) and [`IMPORT_LOG_AT`] `(level i32, ptr i32, len i32)` (at a
//! [`LogLevel`]), UTF-8 text in the module's memory, rate limited by the
//! host. Nothing gives a policy time, randomness or I/O, so a run is
//! deterministic.
//!
//! ## Version 2 (still loaded)
//!
//! `apf_abi_version` returns 2; `apf_decide(i32 vcpu, i64 ipa, i32 el, i32
//! can_reschedule, i32 runnable, i32 outstanding, i64 now_ns, i64
//! est_fetch_ns) -> i64`, `apf_on_ready(i64 token, i64 latency_ns)` (async
//! faults only, fault to page in) and `apf_on_run_end()` are all required;
//! only `apf.log` may be imported. Its decisions may carry a prefetch count
//! in bits 8..=12 ([`v2`]), which the host accepts and ignores (apflab does
//! not prefetch: see [`Decision`]).

/// Version of this ABI, returned by a module's `apf_abi_version`.
///
/// Version 2 added [`NotPresentDelivery::Sdei`]; version 3 replaced the
/// positional arguments by self-describing input records, added the
/// token, access kind and fetch count to the fault, completions of every
/// fetch ([`EXPORT_ON_COMPLETE`]), parameters ([`EXPORT_CONFIGURE`]) and
/// log levels, and dropped prefetch.
pub const POLICY_ABI_VERSION: i32 = 3;

/// The oldest version a host still runs (modules built against it keep
/// loading and deciding as they did).
pub const OLDEST_POLICY_ABI_VERSION: i32 = 2;

/// Export: `apf_abi_version() -> i32`.
pub const EXPORT_ABI_VERSION: &str = "apf_abi_version";
/// Export: `apf_decide() -> i64` (v3; v2: eight positional arguments).
pub const EXPORT_DECIDE: &str = "apf_decide";
/// Export (v3, optional): `apf_on_complete()`.
pub const EXPORT_ON_COMPLETE: &str = "apf_on_complete";
/// Export (v3, optional): `apf_configure() -> i32`.
pub const EXPORT_CONFIGURE: &str = "apf_configure";
/// Export (v2 only, required there): `apf_on_ready(token: i64, latency_ns: i64)`.
pub const EXPORT_ON_READY: &str = "apf_on_ready";
/// Export (optional in v3, required in v2): `apf_on_run_end()`.
pub const EXPORT_ON_RUN_END: &str = "apf_on_run_end";
/// Export: the module's linear memory.
pub const EXPORT_MEMORY: &str = "memory";
/// The only import module a policy may use.
pub const IMPORT_MODULE: &str = "apf";
/// `apf.log(ptr: i32, len: i32)`: a message at [`LogLevel::Info`].
pub const IMPORT_LOG: &str = "log";
/// `apf.log_at(level: i32, ptr: i32, len: i32)` (v3).
pub const IMPORT_LOG_AT: &str = "log_at";
/// `apf.input(ptr: i32, cap: i32) -> i32` (v3): copies the current call's
/// input record.
pub const IMPORT_INPUT: &str = "input";

/// Longest `apf.log` message the host keeps, in bytes; longer ones are
/// truncated.
pub const LOG_MAX_BYTES: usize = 256;

/// Largest params record (header and text), in bytes: a config whose
/// `[policy] params` need more is refused.
pub const PARAMS_MAX_BYTES: usize = 4096;

/// The level of a log message (`apf.log_at`'s first argument).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(i32)]
pub enum LogLevel {
    /// Something failed.
    Error = 1,
    /// Something looks wrong.
    Warn = 2,
    /// What `apf.log` sends.
    Info = 3,
    /// Detail.
    Debug = 4,
}

impl LogLevel {
    /// The level `raw` names; out-of-range values are [`LogLevel::Info`]
    /// (a log line is not worth failing a call for).
    pub const fn from_raw(raw: i32) -> LogLevel {
        match raw {
            1 => LogLevel::Error,
            2 => LogLevel::Warn,
            4 => LogLevel::Debug,
            _ => LogLevel::Info,
        }
    }

    /// Its name in logs.
    pub const fn name(self) -> &'static str {
        match self {
            LogLevel::Error => "ERROR",
            LogLevel::Warn => "WARN",
            LogLevel::Info => "INFO",
            LogLevel::Debug => "DEBUG",
        }
    }
}

/// The kind of memory access that faulted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum AccessKind {
    /// A data read (also a stage-1 table walk's read on behalf of an
    /// access).
    #[default]
    Read,
    /// A data write.
    Write,
    /// An instruction fetch.
    Fetch,
}

impl AccessKind {
    /// The record's encoding: 0 read, 1 write, 2 fetch.
    pub const fn code(self) -> u32 {
        match self {
            AccessKind::Read => 0,
            AccessKind::Write => 1,
            AccessKind::Fetch => 2,
        }
    }

    /// The kind `code` encodes (unknown codes read as [`AccessKind::Read`]).
    pub const fn from_code(code: u32) -> AccessKind {
        match code {
            1 => AccessKind::Write,
            2 => AccessKind::Fetch,
            _ => AccessKind::Read,
        }
    }

    /// Its name in logs and CSV files.
    pub const fn name(self) -> &'static str {
        match self {
            AccessKind::Read => "read",
            AccessKind::Write => "write",
            AccessKind::Fetch => "fetch",
        }
    }
}

/// The facts a policy decides on, one fault at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FaultInfo {
    /// vCPU that faulted.
    pub vcpu: u32,
    /// The faulting page's guest physical address (page aligned).
    pub ipa: u64,
    /// The token this fault gets if it is served async. A sync decision
    /// completes with the same token in its [`Completion`] before that
    /// vCPU's next decision (a vCPU stalls on one sync fault at a time), so
    /// completions always match decisions. (v3)
    pub token: u64,
    /// What the access was. A stage-1 table walk that needs the page is a
    /// read. (v3)
    pub access: AccessKind,
    /// The exception level the fault was taken at: 0 a user task, 1 the
    /// kernel.
    pub el: u32,
    /// The guest's control block says it can reschedule now (not in its
    /// idle task, preemption enabled). False before the guest enabled
    /// async PF on this vCPU.
    pub can_reschedule: bool,
    /// Tasks on the vCPU's run queue that could run instead, from the
    /// control block: the faulting task itself is *not* counted. 0 before
    /// the guest enabled async PF on this vCPU.
    pub runnable: u32,
    /// Async faults already outstanding on this vCPU (tokens handed out and
    /// not yet consumed).
    pub outstanding: u32,
    /// Now, in ns: virtual on emu, monotonic since VM start on kvm.
    pub now_ns: u64,
    /// The engine's fetch latency estimate in ns: an exponentially weighted
    /// moving average (weight 1/8, the first sample taken as is) of the
    /// fetch time of every completed fetch of the run, sync and async, on
    /// all vCPUs ([`Completion::fetch_ns`]). 0 until the first completes.
    pub est_fetch_ns: u64,
    /// How many completions the estimate is made of. (v3)
    pub fetches_completed: u64,
}

/// A completed fetch: the page of a fault is in. Every fault that waited
/// for a fetch completes once (sync: when the vCPU's stall ends; async:
/// when the page is in, before "ready" is delivered). (v3)
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Completion {
    /// The vCPU of the fault.
    pub vcpu: u32,
    /// Whether the fault was served async (false: the vCPU stalled).
    pub asynchronous: bool,
    /// The token of the fault: the one [`FaultInfo::token`] gave the
    /// decision.
    pub token: u64,
    /// The page.
    pub ipa: u64,
    /// Fetch time: from the start of the fetch (the fault, or the guest's
    /// `APF_PAGE_REQUEST` when the guest initiates) to the page being in,
    /// queueing and bandwidth included.
    pub fetch_ns: u64,
    /// From the fault to the page being in.
    pub wait_ns: u64,
    /// Now (the page is in), ns.
    pub now_ns: u64,
}

/// Record layouts: kinds, sizes and field offsets (little-endian).
pub mod record {
    /// Offset of every record's size (u32, bytes).
    pub const SIZE: usize = 0;
    /// Offset of every record's kind (u32).
    pub const KIND: usize = 4;
    /// Bytes of the header.
    pub const HEADER_BYTES: usize = 8;

    /// Kind: a fault ([`super::FaultInfo`]), `apf_decide`'s input.
    pub const KIND_FAULT: u32 = 1;
    /// Kind: a completion ([`super::Completion`]), `apf_on_complete`'s input.
    pub const KIND_COMPLETION: u32 = 2;
    /// Kind: parameters ([`super::Params`]), `apf_configure`'s input: UTF-8
    /// text after the header.
    pub const KIND_PARAMS: u32 = 3;

    /// Fault record offsets.
    pub mod fault {
        /// u32.
        pub const VCPU: usize = 8;
        /// u32.
        pub const EL: usize = 12;
        /// u64.
        pub const IPA: usize = 16;
        /// u64.
        pub const TOKEN: usize = 24;
        /// u32: 0 read, 1 write, 2 fetch.
        pub const ACCESS: usize = 32;
        /// u32: 0 or 1.
        pub const CAN_RESCHEDULE: usize = 36;
        /// u32.
        pub const RUNNABLE: usize = 40;
        /// u32.
        pub const OUTSTANDING: usize = 44;
        /// u64.
        pub const NOW_NS: usize = 48;
        /// u64.
        pub const EST_FETCH_NS: usize = 56;
        /// u64.
        pub const FETCHES_COMPLETED: usize = 64;
        /// Bytes of a v3 fault record.
        pub const BYTES: usize = 72;
    }

    /// Completion record offsets.
    pub mod completion {
        /// u32.
        pub const VCPU: usize = 8;
        /// u32: 0 sync, 1 async.
        pub const ASYNCHRONOUS: usize = 12;
        /// u64.
        pub const TOKEN: usize = 16;
        /// u64.
        pub const IPA: usize = 24;
        /// u64.
        pub const FETCH_NS: usize = 32;
        /// u64.
        pub const WAIT_NS: usize = 40;
        /// u64.
        pub const NOW_NS: usize = 48;
        /// Bytes of a v3 completion record.
        pub const BYTES: usize = 56;
    }

    /// A field of a record as sent: `bytes` is what the call copied, of
    /// which the header's size says how much the host sent. A field beyond
    /// either is absent (read as 0).
    pub(crate) fn u32_at(bytes: &[u8], at: usize) -> u32 {
        if at + 4 > sent(bytes) {
            return 0;
        }
        u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
    }

    pub(crate) fn u64_at(bytes: &[u8], at: usize) -> u64 {
        if at + 8 > sent(bytes) {
            return 0;
        }
        let mut b = [0u8; 8];
        b.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(b)
    }

    /// Bytes of `bytes` that the host sent (its header's size, at most the
    /// bytes there are).
    pub(crate) fn sent(bytes: &[u8]) -> usize {
        if bytes.len() < HEADER_BYTES {
            return 0;
        }
        let size = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        size.min(bytes.len())
    }

    pub(crate) fn put_u32(out: &mut [u8], at: usize, v: u32) {
        out[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }

    pub(crate) fn put_u64(out: &mut [u8], at: usize, v: u64) {
        out[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }

    /// The kind of a record, or 0 when too short to say.
    pub fn kind(bytes: &[u8]) -> u32 {
        u32_at(bytes, KIND)
    }
}

impl FaultInfo {
    /// Its record, as `apf.input` hands it to `apf_decide`.
    pub fn encode(&self) -> [u8; record::fault::BYTES] {
        use record::fault::*;
        use record::{put_u32, put_u64};
        let mut out = [0u8; BYTES];
        put_u32(&mut out, record::SIZE, BYTES as u32);
        put_u32(&mut out, record::KIND, record::KIND_FAULT);
        put_u32(&mut out, VCPU, self.vcpu);
        put_u32(&mut out, EL, self.el);
        put_u64(&mut out, IPA, self.ipa);
        put_u64(&mut out, TOKEN, self.token);
        put_u32(&mut out, ACCESS, self.access.code());
        put_u32(&mut out, CAN_RESCHEDULE, self.can_reschedule as u32);
        put_u32(&mut out, RUNNABLE, self.runnable);
        put_u32(&mut out, OUTSTANDING, self.outstanding);
        put_u64(&mut out, NOW_NS, self.now_ns);
        put_u64(&mut out, EST_FETCH_NS, self.est_fetch_ns);
        put_u64(&mut out, FETCHES_COMPLETED, self.fetches_completed);
        out
    }

    /// The facts in a record (fields the record does not have are 0).
    pub fn decode(bytes: &[u8]) -> FaultInfo {
        use record::fault::*;
        use record::{u32_at, u64_at};
        FaultInfo {
            vcpu: u32_at(bytes, VCPU),
            ipa: u64_at(bytes, IPA),
            token: u64_at(bytes, TOKEN),
            access: AccessKind::from_code(u32_at(bytes, ACCESS)),
            el: u32_at(bytes, EL),
            can_reschedule: u32_at(bytes, CAN_RESCHEDULE) != 0,
            runnable: u32_at(bytes, RUNNABLE),
            outstanding: u32_at(bytes, OUTSTANDING),
            now_ns: u64_at(bytes, NOW_NS),
            est_fetch_ns: u64_at(bytes, EST_FETCH_NS),
            fetches_completed: u64_at(bytes, FETCHES_COMPLETED),
        }
    }

    /// The arguments of a version 2 module's `apf_decide` for these facts.
    pub const fn to_v2_args(&self) -> v2::DecideArgs {
        (
            self.vcpu as i32,
            self.ipa as i64,
            self.el as i32,
            self.can_reschedule as i32,
            self.runnable as i32,
            self.outstanding as i32,
            self.now_ns as i64,
            self.est_fetch_ns as i64,
        )
    }
}

impl Completion {
    /// Its record, as `apf.input` hands it to `apf_on_complete`.
    pub fn encode(&self) -> [u8; record::completion::BYTES] {
        use record::completion::*;
        use record::{put_u32, put_u64};
        let mut out = [0u8; BYTES];
        put_u32(&mut out, record::SIZE, BYTES as u32);
        put_u32(&mut out, record::KIND, record::KIND_COMPLETION);
        put_u32(&mut out, VCPU, self.vcpu);
        put_u32(&mut out, ASYNCHRONOUS, self.asynchronous as u32);
        put_u64(&mut out, TOKEN, self.token);
        put_u64(&mut out, IPA, self.ipa);
        put_u64(&mut out, FETCH_NS, self.fetch_ns);
        put_u64(&mut out, WAIT_NS, self.wait_ns);
        put_u64(&mut out, NOW_NS, self.now_ns);
        out
    }

    /// The completion in a record (fields it does not have are 0).
    pub fn decode(bytes: &[u8]) -> Completion {
        use record::completion::*;
        use record::{u32_at, u64_at};
        Completion {
            vcpu: u32_at(bytes, VCPU),
            asynchronous: u32_at(bytes, ASYNCHRONOUS) != 0,
            token: u64_at(bytes, TOKEN),
            ipa: u64_at(bytes, IPA),
            fetch_ns: u64_at(bytes, FETCH_NS),
            wait_ns: u64_at(bytes, WAIT_NS),
            now_ns: u64_at(bytes, NOW_NS),
        }
    }
}

/// A config's `[policy] params`, as the text of a params record: one
/// `name=value` per line, a value being `true`/`false`, an integer, a float
/// (with `.` or an exponent) or a string in double quotes (its text taken
/// as is; no line breaks). The host writes it from the config's TOML; a
/// policy reads it with the typed getters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Params<'p> {
    text: &'p str,
}

/// One parameter's value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ParamValue<'p> {
    /// A TOML integer.
    Int(i64),
    /// A TOML float.
    Float(f64),
    /// A TOML boolean.
    Bool(bool),
    /// A TOML string.
    Str(&'p str),
}

impl ParamValue<'_> {
    /// Its type's name in errors.
    pub const fn type_name(&self) -> &'static str {
        match self {
            ParamValue::Int(_) => "integer",
            ParamValue::Float(_) => "float",
            ParamValue::Bool(_) => "boolean",
            ParamValue::Str(_) => "string",
        }
    }

    /// The type name of a raw value, from its form alone.
    fn kind_of(text: &str) -> &'static str {
        match text {
            "true" | "false" => "boolean",
            _ if text.starts_with('"') && text.ends_with('"') && text.len() >= 2 => "string",
            _ if text.contains(['.', 'e', 'E']) => "float",
            _ => "integer",
        }
    }

    fn parse(text: &str) -> Option<ParamValue<'_>> {
        match text {
            "true" => return Some(ParamValue::Bool(true)),
            "false" => return Some(ParamValue::Bool(false)),
            _ => {}
        }
        if let Some(s) = text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
            return Some(ParamValue::Str(s));
        }
        if text.contains(['.', 'e', 'E']) {
            return text.parse().ok().map(ParamValue::Float);
        }
        text.parse().ok().map(ParamValue::Int)
    }
}

impl core::fmt::Display for ParamValue<'_> {
    /// The value as a params record carries it.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ParamValue::Int(v) => write!(f, "{v}"),
            // `{:?}` always writes a `.` or an exponent, and round-trips.
            ParamValue::Float(v) => write!(f, "{v:?}"),
            ParamValue::Bool(v) => write!(f, "{v}"),
            ParamValue::Str(s) => write!(f, "\"{s}\""),
        }
    }
}

/// What is wrong with a parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamProblem {
    /// The policy does not know it.
    Unknown,
    /// The policy needs it and the config does not give it.
    Missing,
    /// It has another type than the policy expects.
    WrongType {
        /// What the policy expects (`integer`, `float`, `boolean`, `string`,
        /// `non-negative integer`).
        expected: &'static str,
        /// What the config gives.
        found: &'static str,
    },
    /// Its value is outside what the policy accepts: why.
    Invalid(&'static str),
    /// The line is not `name=value`.
    Malformed,
}

/// A parameter a policy refuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParamError<'p> {
    /// The parameter's name (or the malformed line).
    pub name: &'p str,
    /// What is wrong.
    pub problem: ParamProblem,
}

impl ParamError<'_> {
    /// The message in pieces, without `core::fmt` (which would more than
    /// double a small module's size): `policy.params.NAME: what`.
    pub fn write_pieces(&self, mut out: impl FnMut(&str)) {
        if let ParamProblem::Malformed = self.problem {
            out("params record: malformed line `");
            out(self.name);
            out("`");
            return;
        }
        out("policy.params.");
        out(self.name);
        out(": ");
        match self.problem {
            ParamProblem::Unknown => out("unknown parameter"),
            ParamProblem::Missing => out("missing"),
            ParamProblem::WrongType { expected, found } => {
                out("a ");
                out(found);
                out(", expected a ");
                out(expected);
            }
            ParamProblem::Invalid(why) => out(why),
            ParamProblem::Malformed => {}
        }
    }
}

impl core::fmt::Display for ParamError<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let mut result = Ok(());
        self.write_pieces(|s| {
            if result.is_ok() {
                result = f.write_str(s);
            }
        });
        result
    }
}

impl<'p> Params<'p> {
    /// No parameters.
    pub const EMPTY: Params<'static> = Params { text: "" };

    /// Parameters in a record's text.
    pub const fn new(text: &'p str) -> Self {
        Params { text }
    }

    /// The parameters in a params record's bytes (text that is not UTF-8
    /// reads as no parameters; the host never sends such).
    pub fn from_record(bytes: &'p [u8]) -> Self {
        let sent = record::sent(bytes);
        let body = bytes.get(record::HEADER_BYTES..sent).unwrap_or(&[]);
        Params::new(core::str::from_utf8(body).unwrap_or(""))
    }

    /// The record's text.
    pub const fn text(&self) -> &'p str {
        self.text
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.text.trim().is_empty()
    }

    /// Every parameter's name and raw value text, in the order given.
    fn raw(&self) -> impl Iterator<Item = Result<(&'p str, &'p str), ParamError<'p>>> {
        self.text.lines().filter(|l| !l.is_empty()).map(|line| {
            line.split_once('=').ok_or(ParamError {
                name: line,
                problem: ParamProblem::Malformed,
            })
        })
    }

    /// Every parameter, in the order given.
    pub fn iter(&self) -> impl Iterator<Item = Result<(&'p str, ParamValue<'p>), ParamError<'p>>> {
        self.raw().map(|entry| {
            let (name, value) = entry?;
            ParamValue::parse(value)
                .map(|v| (name, v))
                .ok_or(ParamError {
                    name,
                    problem: ParamProblem::Malformed,
                })
        })
    }

    /// The raw text of `name`'s value, if given.
    fn raw_value(&self, name: &'p str) -> Result<Option<&'p str>, ParamError<'p>> {
        for entry in self.raw() {
            let (n, v) = entry?;
            if n == name {
                return Ok(Some(v));
            }
        }
        Ok(None)
    }

    /// The value of `name`, if given.
    pub fn get(&self, name: &'p str) -> Result<Option<ParamValue<'p>>, ParamError<'p>> {
        match self.raw_value(name)? {
            None => Ok(None),
            Some(v) => ParamValue::parse(v).map(Some).ok_or(ParamError {
                name,
                problem: ParamProblem::Malformed,
            }),
        }
    }

    /// Parses `name`'s value with `f` if it has type `want` (one of
    /// [`ParamValue::type_name`]'s, or `float` also taking an integer).
    /// Only the parser a getter needs is linked into a module.
    fn typed<T>(
        &self,
        name: &'p str,
        want: &'static str,
        expected: &'static str,
        f: impl FnOnce(&'p str) -> Option<T>,
    ) -> Result<Option<T>, ParamError<'p>> {
        let Some(raw) = self.raw_value(name)? else {
            return Ok(None);
        };
        let found = ParamValue::kind_of(raw);
        let fits = found == want || (want == "float" && found == "integer");
        let wrong = ParamError {
            name,
            problem: ParamProblem::WrongType { expected, found },
        };
        if !fits {
            return Err(wrong);
        }
        f(raw).map(Some).ok_or(wrong)
    }

    /// `name` as a non-negative integer.
    pub fn u64(&self, name: &'p str) -> Result<Option<u64>, ParamError<'p>> {
        self.typed(name, "integer", "non-negative integer", |v| v.parse().ok())
    }

    /// `name` as an integer.
    pub fn i64(&self, name: &'p str) -> Result<Option<i64>, ParamError<'p>> {
        self.typed(name, "integer", "integer", |v| v.parse().ok())
    }

    /// `name` as a float (an integer is taken too).
    pub fn f64(&self, name: &'p str) -> Result<Option<f64>, ParamError<'p>> {
        self.typed(name, "float", "float", |v| v.parse().ok())
    }

    /// `name` as a boolean.
    pub fn bool(&self, name: &'p str) -> Result<Option<bool>, ParamError<'p>> {
        self.typed(name, "boolean", "boolean", |v| Some(v == "true"))
    }

    /// `name` as a string.
    pub fn str(&self, name: &'p str) -> Result<Option<&'p str>, ParamError<'p>> {
        self.typed(name, "string", "string", |v| {
            v.strip_prefix('"').and_then(|t| t.strip_suffix('"'))
        })
    }

    /// Refuses any parameter not in `known`.
    pub fn only(&self, known: &[&str]) -> Result<(), ParamError<'p>> {
        for entry in self.raw() {
            let (name, _) = entry?;
            if !known.contains(&name) {
                return Err(ParamError {
                    name,
                    problem: ParamProblem::Unknown,
                });
            }
        }
        Ok(())
    }
}

/// How "not present" reaches the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NotPresentDelivery {
    /// Reused data abort plus the reason in the control block (RFCv2).
    DataAbort,
    /// Dedicated exception class with the token in ESR.ISS.
    DedicatedEc,
    /// An SDEI event, the token in the control block (Gavin Shan's v4).
    Sdei,
}

/// How "page ready" reaches the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReadyDelivery {
    /// Injected synchronous exception.
    Exception,
    /// PPI plus `APF_ACK`.
    Interrupt,
}

/// Who starts the fetch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Initiation {
    /// The VMM starts fetching when it sees the fault, then injects.
    Host,
    /// The VMM injects; the guest asks with `APF_PAGE_REQUEST`.
    Guest,
}

/// What the guest does while the page is fetched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Sleep {
    /// Idle the vCPU until ready.
    Halt,
    /// Run another task.
    Reschedule,
}

/// One decision. `Sync` means no async PF: the vCPU stalls until the page
/// is in (the baseline and the fallback).
///
/// There is no prefetch: how many neighbours a fault brings in is the
/// pager's read-ahead, a property of the far-memory system that every
/// variant compared here shares, not of how a fault is delivered; letting
/// each policy choose it would mix the two in every comparison. (ABI v2
/// had a prefetch count that the engine never honoured; v2 modules may
/// still return it and it is ignored, counted in the run's policy record.)
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Decision {
    /// Stall the vCPU.
    Sync,
    /// Deliver "not present" and "ready".
    Async {
        /// How "not present" is delivered.
        not_present: NotPresentDelivery,
        /// How "ready" is delivered.
        ready: ReadyDelivery,
        /// Who starts the fetch.
        initiation: Initiation,
        /// What the guest does meanwhile.
        sleep: Sleep,
    },
}

/// A per-fault policy, written once and run either natively or as a Wasm
/// module: the policy SDK exports an implementation through the ABI above,
/// and the host's Wasm runner implements it by calling those exports. One
/// value lives for one run; its state is whatever the implementation keeps.
pub trait Policy {
    /// Takes the config's `[policy] params`, once, before the first
    /// decision. The default takes none: any parameter is refused as
    /// unknown.
    fn configure<'p>(&mut self, params: &Params<'p>) -> Result<(), ParamError<'p>> {
        params.only(&[])
    }
    /// Decides how one fault is handled.
    fn decide(&mut self, fault: &FaultInfo) -> Decision;
    /// A fetch completed (every fault that waited for one, sync or async).
    fn on_complete(&mut self, done: &Completion) {
        let _ = done;
    }
    /// The run is over; no more calls follow.
    fn on_run_end(&mut self) {}
    /// What running the policy has cost so far (a policy the host runs
    /// natively reports nothing).
    fn usage(&self) -> PolicyUsage {
        PolicyUsage::default()
    }
    /// Writes what the policy logged during the run, one line each (the
    /// run's `policy.log`); a policy the host runs natively has no log.
    fn write_log(&self, out: &mut dyn core::fmt::Write) -> core::fmt::Result {
        let _ = out;
        Ok(())
    }
}

/// Failed calls into a policy by cause.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FailureCounts {
    /// The module trapped (a Rust panic, `unreachable`, out-of-bounds...).
    pub trap: u64,
    /// The call used up its fuel.
    pub out_of_fuel: u64,
    /// The module grew memory or a table beyond its limits.
    pub resource_limit: u64,
    /// `apf_decide` returned bits that are not a decision.
    pub malformed_decision: u64,
    /// Skipped: the policy was disabled.
    pub disabled: u64,
}

impl FailureCounts {
    /// All causes together.
    pub const fn total(&self) -> u64 {
        self.trap + self.out_of_fuel + self.resource_limit + self.malformed_decision + self.disabled
    }

    /// Each cause's name (as in the results) and count.
    pub const fn by_name(&self) -> [(&'static str, u64); 5] {
        [
            ("trap", self.trap),
            ("out_of_fuel", self.out_of_fuel),
            ("resource_limit", self.resource_limit),
            ("malformed_decision", self.malformed_decision),
            ("disabled", self.disabled),
        ]
    }
}

/// The cost of a policy over a run, for the results.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyUsage {
    /// Wasm fuel consumed by all calls.
    pub fuel_used: u64,
    /// Calls that trapped, ran out of fuel, hit a limit or returned a
    /// malformed decision, and those skipped once the policy was disabled
    /// (each decision among them answered by the fallback): the total of
    /// [`PolicyUsage::failures`].
    pub failed_calls: u64,
    /// The same calls by cause.
    pub failures: FailureCounts,
    /// The host disabled the policy after repeated failures.
    pub disabled: bool,
    /// Decisions of a version 2 module that asked for a prefetch, which
    /// was ignored.
    pub prefetch_ignored: u64,
}

/// Bit layout of the packed `i64` decision.
pub mod bits {
    /// Set: async; clear: sync (all other bits then ignored).
    pub const ASYNC: u64 = 1 << 0;
    /// Set: reschedule; clear: halt.
    pub const RESCHEDULE: u64 = 1 << 1;
    /// Set: guest-initiated; clear: host-initiated.
    pub const GUEST_INITIATED: u64 = 1 << 2;
    /// Set: ready as interrupt; clear: ready as exception.
    pub const READY_INTERRUPT: u64 = 1 << 3;
    /// Set: dedicated EC; clear: data abort (unless [`SDEI`]).
    pub const DEDICATED_EC: u64 = 1 << 4;
    /// Set: "not present" as an SDEI event (with [`DEDICATED_EC`] clear).
    pub const SDEI: u64 = 1 << 5;
    /// Every bit that has a meaning; a decision with any other bit set is
    /// malformed.
    pub const DEFINED: u64 =
        ASYNC | RESCHEDULE | GUEST_INITIATED | READY_INTERRUPT | DEDICATED_EC | SDEI;
}

/// What version 2 of the ABI had that version 3 does not.
pub mod v2 {
    /// The arguments of a version 2 `apf_decide` in order: `(vcpu, ipa, el,
    /// can_reschedule, runnable, outstanding, now_ns, est_fetch_ns)`.
    pub type DecideArgs = (i32, i64, i32, i32, i32, i32, i64, i64);
    /// Shift of the prefetch count field.
    pub const PREFETCH_SHIFT: u32 = 8;
    /// Mask of the prefetch count field (after shifting).
    pub const PREFETCH_MASK: u64 = 0x1f;
    /// Largest prefetch count a version 2 decision could ask for.
    pub const MAX_PREFETCH: u32 = 16;
}

/// Why a packed decision was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecisionError {
    /// Bits outside [`bits::DEFINED`] were set.
    UndefinedBits(u64),
    /// A version 2 prefetch count exceeds [`v2::MAX_PREFETCH`].
    PrefetchTooLarge(u32),
    /// Both [`bits::DEDICATED_EC`] and [`bits::SDEI`]: two "not present"
    /// deliveries at once.
    TwoNotPresentDeliveries,
}

impl core::fmt::Display for DecisionError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            DecisionError::UndefinedBits(b) => write!(f, "undefined decision bits {b:#x}"),
            DecisionError::PrefetchTooLarge(n) => {
                write!(f, "prefetch {n} exceeds the maximum {}", v2::MAX_PREFETCH)
            }
            DecisionError::TwoNotPresentDeliveries => {
                write!(f, "both the dedicated-EC and the SDEI bit are set")
            }
        }
    }
}

impl Decision {
    /// The built-in fallback: the `sync` baseline.
    pub const FALLBACK: Decision = Decision::Sync;

    /// Packs the decision into the ABI's `i64`.
    pub const fn pack(self) -> i64 {
        let v = match self {
            Decision::Sync => 0,
            Decision::Async {
                not_present,
                ready,
                initiation,
                sleep,
            } => {
                let mut v = bits::ASYNC;
                if matches!(sleep, Sleep::Reschedule) {
                    v |= bits::RESCHEDULE;
                }
                if matches!(initiation, Initiation::Guest) {
                    v |= bits::GUEST_INITIATED;
                }
                if matches!(ready, ReadyDelivery::Interrupt) {
                    v |= bits::READY_INTERRUPT;
                }
                match not_present {
                    NotPresentDelivery::DataAbort => {}
                    NotPresentDelivery::DedicatedEc => v |= bits::DEDICATED_EC,
                    NotPresentDelivery::Sdei => v |= bits::SDEI,
                }
                v
            }
        };
        v as i64
    }

    /// Unpacks and validates an `i64` returned by a version 3 policy.
    pub const fn unpack(raw: i64) -> Result<Decision, DecisionError> {
        let v = raw as u64;
        if v & !bits::DEFINED != 0 {
            return Err(DecisionError::UndefinedBits(v & !bits::DEFINED));
        }
        if v & bits::ASYNC == 0 {
            return Ok(Decision::Sync);
        }
        let not_present = match (v & bits::DEDICATED_EC != 0, v & bits::SDEI != 0) {
            (true, true) => return Err(DecisionError::TwoNotPresentDeliveries),
            (true, false) => NotPresentDelivery::DedicatedEc,
            (false, true) => NotPresentDelivery::Sdei,
            (false, false) => NotPresentDelivery::DataAbort,
        };
        Ok(Decision::Async {
            not_present,
            ready: if v & bits::READY_INTERRUPT != 0 {
                ReadyDelivery::Interrupt
            } else {
                ReadyDelivery::Exception
            },
            initiation: if v & bits::GUEST_INITIATED != 0 {
                Initiation::Guest
            } else {
                Initiation::Host
            },
            sleep: if v & bits::RESCHEDULE != 0 {
                Sleep::Reschedule
            } else {
                Sleep::Halt
            },
        })
    }

    /// Unpacks an `i64` returned by a version 2 policy: the decision and
    /// the prefetch count it asked for (ignored).
    pub const fn unpack_v2(raw: i64) -> Result<(Decision, u32), DecisionError> {
        let v = raw as u64;
        let prefetch_bits = v2::PREFETCH_MASK << v2::PREFETCH_SHIFT;
        let prefetch = ((v >> v2::PREFETCH_SHIFT) & v2::PREFETCH_MASK) as u32;
        if v & !(bits::DEFINED | prefetch_bits) != 0 {
            return Err(DecisionError::UndefinedBits(
                v & !(bits::DEFINED | prefetch_bits),
            ));
        }
        if prefetch > v2::MAX_PREFETCH {
            return Err(DecisionError::PrefetchTooLarge(prefetch));
        }
        match Decision::unpack((v & !prefetch_bits) as i64) {
            Ok(d) => Ok((d, prefetch)),
            Err(e) => Err(e),
        }
    }
}

// The record layouts are the contract: a change here must be deliberate.
const _: () = {
    assert!(record::fault::FETCHES_COMPLETED + 8 == record::fault::BYTES);
    assert!(record::completion::NOW_NS + 8 == record::completion::BYTES);
    assert!(record::fault::BYTES % 8 == 0 && record::completion::BYTES % 8 == 0);
};

#[cfg(test)]
mod tests {
    use super::*;

    const NPS: [NotPresentDelivery; 3] = [
        NotPresentDelivery::DataAbort,
        NotPresentDelivery::DedicatedEc,
        NotPresentDelivery::Sdei,
    ];

    fn every_decision() -> impl Iterator<Item = Decision> {
        let rds = [ReadyDelivery::Exception, ReadyDelivery::Interrupt];
        let ins = [Initiation::Host, Initiation::Guest];
        let sls = [Sleep::Halt, Sleep::Reschedule];
        core::iter::once(Decision::Sync).chain(NPS.into_iter().flat_map(move |not_present| {
            rds.into_iter().flat_map(move |ready| {
                ins.into_iter().flat_map(move |initiation| {
                    sls.into_iter().map(move |sleep| Decision::Async {
                        not_present,
                        ready,
                        initiation,
                        sleep,
                    })
                })
            })
        }))
    }

    #[test]
    fn every_decision_round_trips() {
        let mut n = 0;
        for d in every_decision() {
            assert_eq!(Decision::unpack(d.pack()), Ok(d));
            n += 1;
        }
        assert_eq!(n, 1 + 3 * 2 * 2 * 2);
    }

    #[test]
    fn a_v2_decision_with_prefetch_is_the_same_decision_and_its_count() {
        for d in every_decision() {
            for prefetch in [0u32, 1, 16] {
                let raw = d.pack() | ((prefetch as i64) << v2::PREFETCH_SHIFT);
                assert_eq!(Decision::unpack_v2(raw), Ok((d, prefetch)));
                if prefetch > 0 {
                    // Version 3 has no prefetch field.
                    assert!(Decision::unpack(raw).is_err());
                }
            }
        }
        assert_eq!(
            Decision::unpack_v2(17 << v2::PREFETCH_SHIFT),
            Err(DecisionError::PrefetchTooLarge(17))
        );
    }

    #[test]
    fn two_not_present_deliveries_are_malformed() {
        let v = (bits::ASYNC | bits::DEDICATED_EC | bits::SDEI) as i64;
        assert_eq!(
            Decision::unpack(v),
            Err(DecisionError::TwoNotPresentDeliveries)
        );
    }

    #[test]
    fn malformed_decisions_are_rejected() {
        assert_eq!(
            Decision::unpack(1 << 40),
            Err(DecisionError::UndefinedBits(1 << 40))
        );
        assert!(Decision::unpack(-1).is_err());
        assert!(Decision::unpack_v2(-1).is_err());
    }

    fn sample() -> FaultInfo {
        FaultInfo {
            vcpu: 3,
            ipa: 0xffff_0000_4000_1000,
            token: 0x1234_5003,
            access: AccessKind::Fetch,
            el: 1,
            can_reschedule: true,
            runnable: u32::MAX,
            outstanding: 64,
            now_ns: u64::MAX - 1,
            est_fetch_ns: 50_000,
            fetches_completed: 7,
        }
    }

    #[test]
    fn records_round_trip() {
        let f = sample();
        assert_eq!(FaultInfo::decode(&f.encode()), f);
        let c = Completion {
            vcpu: 2,
            asynchronous: true,
            token: 0x2002,
            ipa: 0x4000_3000,
            fetch_ns: 30_000,
            wait_ns: 41_000,
            now_ns: 1 << 40,
        };
        assert_eq!(Completion::decode(&c.encode()), c);
        assert_eq!(record::kind(&c.encode()), record::KIND_COMPLETION);
    }

    #[test]
    fn fields_a_record_does_not_carry_read_as_zero() {
        let f = sample();
        // A module built against a record that ends before `token`.
        let short = &f.encode()[..record::fault::TOKEN];
        let d = FaultInfo::decode(short);
        assert_eq!((d.vcpu, d.el, d.ipa), (f.vcpu, f.el, f.ipa));
        assert_eq!((d.token, d.est_fetch_ns), (0, 0));
        // A host that sent a smaller record than the module's buffer: the
        // header's size decides, not the buffer.
        let mut buf = [0xffu8; 128];
        buf[..record::fault::BYTES].copy_from_slice(&f.encode());
        buf[0..4].copy_from_slice(&(record::fault::ACCESS as u32).to_le_bytes());
        let d = FaultInfo::decode(&buf);
        assert_eq!(d.token, f.token);
        assert_eq!((d.runnable, d.now_ns), (0, 0));
        assert_eq!(FaultInfo::decode(&[1, 2, 3]), FaultInfo::default());
    }

    #[test]
    fn v2_arguments_carry_the_v2_facts() {
        let f = sample();
        assert_eq!(
            f.to_v2_args(),
            (3, 0xffff_0000_4000_1000u64 as i64, 1, 1, -1, 64, -2, 50_000)
        );
    }

    #[test]
    fn params_are_typed() {
        let p = Params::new("threshold_ns=50000\nratio=0.5\nverbose=true\nname=\"a b\"\nneg=-3\n");
        assert_eq!(p.u64("threshold_ns"), Ok(Some(50_000)));
        assert_eq!(p.f64("ratio"), Ok(Some(0.5)));
        assert_eq!(p.f64("threshold_ns"), Ok(Some(50_000.0)));
        assert_eq!(p.bool("verbose"), Ok(Some(true)));
        assert_eq!(p.str("name"), Ok(Some("a b")));
        assert_eq!(p.i64("neg"), Ok(Some(-3)));
        assert_eq!(p.u64("absent"), Ok(None));
        let e = p.u64("neg").unwrap_err();
        assert_eq!(
            e.problem,
            ParamProblem::WrongType {
                expected: "non-negative integer",
                found: "integer"
            }
        );
        let e = p
            .only(&["threshold_ns", "ratio", "verbose", "name"])
            .unwrap_err();
        assert_eq!((e.name, e.problem), ("neg", ParamProblem::Unknown));
        assert!(Params::EMPTY.only(&[]).is_ok());
        assert!(Params::new("junk").only(&[]).is_err());
    }

    #[test]
    fn param_values_round_trip_through_their_text() {
        extern crate alloc;
        use alloc::format;
        for v in [
            ParamValue::Int(-7),
            ParamValue::Float(1.0),
            ParamValue::Float(1e-9),
            ParamValue::Bool(false),
            ParamValue::Str("x y"),
        ] {
            let text = format!("{v}");
            assert_eq!(ParamValue::parse(&text), Some(v), "{text}");
        }
    }
}
