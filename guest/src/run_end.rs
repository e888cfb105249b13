//! The end of the run, after the last task: async PF off, the report
//! printed and handed to the host, power off.

use apflab_abi::report::{CONSOLE_PREFIX, ConsoleDetail};

use crate::{apf, config, console, hypercall, metrics, sched, timeline};

/// How this kernel ends a run (the scheduler's [`sched::RunEnd`]).
pub struct Shutdown;

impl sched::RunEnd for Shutdown {
    /// After the last task: print and hand over the report, power off.
    fn finish(cpus_online: u32, tasks_completed: u32) -> ! {
        apf::disable_cpu();
        timeline::hand_over_all();
        let config = config::get();
        let report = metrics::build_report(config, cpus_online, tasks_completed);
        let mut line = console::FixedBuf::<4096>::new();
        let _ = report.write_console_line(&mut line, ConsoleDetail::Summary);
        console::println!("{}", line.as_str());
        debug_assert!(line.as_str().starts_with(CONSOLE_PREFIX));
        // NOT_SUPPORTED on plain QEMU: the console line is the report there.
        let _ = hypercall::report(report.as_bytes());
        hypercall::system_off()
    }
}
