//! The PL011 console (arm-pl011-uart), shared by all CPUs behind a spin
//! lock, plus `print!`/`println!` macros and a fixed-size text buffer.

use apflab_abi::memory_map::UART_BASE;
use arm_pl011_uart::{PL011Registers, Uart, UniqueMmioPointer};
use core::fmt::{self, Write};
use core::ptr::NonNull;
use spin::mutex::SpinMutex;

/// The UART driver; `None` until [`init`].
struct Console(Option<Uart<'static>>);

// SAFETY: the UART registers are plain MMIO reachable from every CPU; all
// access goes through the SpinMutex below, so only one CPU drives the
// device at a time.
unsafe impl Send for Console {}

static CONSOLE: SpinMutex<Console> = SpinMutex::new(Console(None));

/// Makes a driver for the PL011 at [`UART_BASE`].
///
/// # Safety
///
/// The caller must make sure no other driver instance is used at the same
/// time (the console lock, or the panic path which runs alone).
unsafe fn make_uart() -> Uart<'static> {
    let regs = NonNull::new(UART_BASE as *mut PL011Registers).expect("UART_BASE is not null");
    // SAFETY: UART_BASE is the PL011 of the `virt` machine, mapped as device
    // memory by both the initial and the final page tables; uniqueness is
    // the caller's promise.
    Uart::new(unsafe { UniqueMmioPointer::new(regs) })
}

/// Creates the console driver. QEMU and apflab's PL011 need no baud-rate
/// programming, so the device is used as the firmware left it.
pub fn init() {
    // SAFETY: this is the only driver instance outside the panic path; it is
    // stored behind the console lock.
    CONSOLE.lock().0 = Some(unsafe { make_uart() });
}

/// Writes formatted text to the console (used by the macros).
pub fn print_fmt(args: fmt::Arguments) {
    let mut console = CONSOLE.lock();
    if let Some(uart) = console.0.as_mut() {
        let _ = uart.write_fmt(args);
    }
}

/// Writes raw bytes to the console (the `write` syscall); non-UTF-8 bytes
/// are written as they are.
pub fn write_bytes(bytes: &[u8]) {
    let mut console = CONSOLE.lock();
    if let Some(uart) = console.0.as_mut() {
        for &b in bytes {
            while uart.is_tx_fifo_full() {}
            uart.write_word(b);
        }
    }
}

/// Prints from the panic handler without taking the console lock (another
/// CPU, or the panicking code itself, may hold it).
pub fn emergency_print(args: fmt::Arguments) {
    // SAFETY: the panic path runs with IRQs masked and ends in SYSTEM_OFF;
    // interleaving with a concurrent holder of the console lock can at worst
    // mix characters on the wire.
    let mut uart = unsafe { make_uart() };
    let _ = uart.write_fmt(args);
}

/// `println!` to the console.
macro_rules! println {
    ($($arg:tt)*) => { $crate::console::print_fmt(format_args!("{}\n", format_args!($($arg)*))) };
}

pub(crate) use println;

/// A `fmt::Write` sink into a fixed array; text beyond its capacity is
/// dropped (at a character boundary).
pub struct FixedBuf<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> FixedBuf<N> {
    /// An empty buffer.
    pub const fn new() -> Self {
        FixedBuf {
            buf: [0; N],
            len: 0,
        }
    }

    /// The text written so far.
    pub fn as_str(&self) -> &str {
        // Only whole `&str` pieces cut at char boundaries are ever copied in.
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }

    /// The bytes written so far.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl<const N: usize> Write for FixedBuf<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = N - self.len;
        let mut take = s.len().min(room);
        while !s.is_char_boundary(take) {
            take -= 1;
        }
        self.buf[self.len..self.len + take].copy_from_slice(&s.as_bytes()[..take]);
        self.len += take;
        Ok(())
    }
}
