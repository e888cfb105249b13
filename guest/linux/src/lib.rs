//! The init of apflab's Linux guest: the logic that does not depend on
//! running as PID 1 of an aarch64 Linux, so that its tests run on the host.
//!
//! The binary (`src/main.rs`) mounts `/proc` and `/dev`, reads
//! `/proc/cmdline` with [`bootargs`], runs the workload in threads with
//! [`memory`], [`cpu`] and [`kv`], reads the kernel's counters with
//! [`procfs`], prints the report with [`console_report`] and powers off.

pub mod bootargs;
pub mod cpu;
pub mod kv;
pub mod memory;
pub mod procfs;

use apflab_abi::report::{ConsoleDetail, GuestReport};

/// The bytes written to the console for `report`: a newline (the kernel's
/// last line may lack one), the report's whole line (the console is the
/// init's only channel to the host), a newline. The init writes
/// them with one `write(2)` so no kernel message lands inside the line.
pub fn console_report(report: &GuestReport) -> Vec<u8> {
    let mut line = String::from("\n");
    report
        .write_console_line(&mut line, ConsoleDetail::Full)
        .expect("writing to a String cannot fail");
    line.push('\n');
    line.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use apflab_abi::boot::WORKLOAD_MIXED;

    #[test]
    fn console_report_is_one_parsable_line() {
        let mut r = GuestReport::new(WORKLOAD_MIXED);
        r.cpu_ops = 12;
        r.task_done_ns[1] = 5;
        let bytes = console_report(&r);
        let text = std::str::from_utf8(&bytes).unwrap();
        assert!(text.starts_with('\n') && text.ends_with('\n'));
        assert_eq!(text.trim().lines().count(), 1);
        assert_eq!(GuestReport::parse_console_line(text), Some(r));
    }
}
