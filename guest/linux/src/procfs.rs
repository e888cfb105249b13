//! The kernel's own counters, read from `/proc` before and after the
//! workload, for the report's `context_switches`, `timer_irqs`, `idle_ns`
//! and (with apflab's kernel) `apf_*`, and the memory available for the
//! working set.

use apflab_abi::linux::{APF_COUNTERS, APF_PROC_FILE};

/// Counters of `/proc/stat` and `/proc/interrupts` at one instant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Context switches on all CPUs (`ctxt` of `/proc/stat`).
    pub context_switches: u64,
    /// Idle time of all CPUs in clock ticks (`USER_HZ`; the `idle` column
    /// of the `cpu` line of `/proc/stat`).
    pub idle_ticks: u64,
    /// Interrupts of the architected timer on all CPUs (the
    /// `arch_timer` lines of `/proc/interrupts`).
    pub timer_irqs: u64,
}

/// A file of `/proc` without a line the init needs (or with one it cannot
/// read).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("no {line} line in {file}")]
pub struct MissingLine {
    /// The line's first word.
    pub line: &'static str,
    /// The file.
    pub file: &'static str,
}

/// Reads the counters from the text of `/proc/stat` and `/proc/interrupts`;
/// the error names what is missing.
pub fn counters(stat: &str, interrupts: &str) -> Result<Counters, MissingLine> {
    let missing = |line, file| MissingLine { line, file };
    let field = |name: &str| {
        stat.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .map(str::split_ascii_whitespace)
    };
    let context_switches = field("ctxt")
        .and_then(|mut f| f.next()?.parse().ok())
        .ok_or(missing("ctxt", "/proc/stat"))?;
    // cpu  user nice system idle ...
    let idle_ticks = field("cpu")
        .and_then(|mut f| f.nth(3)?.parse().ok())
        .ok_or(missing("cpu", "/proc/stat"))?;
    let timer_lines: Vec<&str> = interrupts
        .lines()
        .filter(|l| l.split_ascii_whitespace().last() == Some("arch_timer"))
        .collect();
    if timer_lines.is_empty() {
        return Err(missing("arch_timer", "/proc/interrupts"));
    }
    // " 11:  1234  5678  GICv3  27 Level  arch_timer": the per-CPU counts
    // follow the interrupt number, up to the first word that is not one.
    let timer_irqs = timer_lines
        .iter()
        .flat_map(|l| {
            l.split_ascii_whitespace()
                .skip(1)
                .map_while(|w| w.parse::<u64>().ok())
        })
        .sum();
    Ok(Counters {
        context_switches,
        idle_ticks,
        timer_irqs,
    })
}

/// `MemAvailable` of `/proc/meminfo`, in KiB.
pub fn mem_available_kib(meminfo: &str) -> Result<u64, MissingLine> {
    meminfo
        .lines()
        .find_map(|l| {
            let mut words = l.strip_prefix("MemAvailable:")?.split_ascii_whitespace();
            let kib = words.next()?.parse().ok()?;
            (words.next() == Some("kB")).then_some(kib)
        })
        .ok_or(MissingLine {
            line: "MemAvailable",
            file: "/proc/meminfo",
        })
}

/// The async PF client's counters (the lines of
/// [`apflab_abi::linux::APF_PROC_FILE`]), in the order of
/// [`apflab_abi::linux::APF_COUNTERS`]; the error names the first counter
/// missing or unreadable.
pub fn apf_counters(text: &str) -> Result<[u64; APF_COUNTERS.len()], MissingLine> {
    let mut values = [0; APF_COUNTERS.len()];
    for (value, name) in values.iter_mut().zip(APF_COUNTERS) {
        *value = text
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .ok_or(MissingLine {
                line: name,
                file: APF_PROC_FILE,
            })?;
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "cpu  10 0 25 9000 3 0 1 0 0 0\n\
                        cpu0 5 0 12 4500 1 0 1 0 0 0\n\
                        intr 4711 0 0\n\
                        ctxt 23456\n\
                        btime 0\n";
    const INTERRUPTS: &str = "           CPU0       CPU1       \n\
                              \x2011:       1234       5678     GICv3  27 Level     arch_timer\n\
                              \x2012:          0          0     GICv3  30 Level     kvm guest ptimer\n\
                              IPI0:        40         41       Rescheduling interrupts\n";

    #[test]
    fn counters_come_from_their_lines() {
        let c = counters(STAT, INTERRUPTS).unwrap();
        assert_eq!(
            c,
            Counters {
                context_switches: 23456,
                idle_ticks: 9000,
                timer_irqs: 1234 + 5678,
            }
        );
    }

    #[test]
    fn missing_counters_are_named() {
        assert_eq!(
            counters("cpu  1 2 3 4\n", INTERRUPTS)
                .unwrap_err()
                .to_string(),
            "no ctxt line in /proc/stat"
        );
        assert_eq!(
            counters(STAT, "  CPU0\n 3: 1 GICv3 33 Level uart-pl011\n")
                .unwrap_err()
                .to_string(),
            "no arch_timer line in /proc/interrupts"
        );
    }

    #[test]
    fn apf_counters_are_read_by_name() {
        let text = "not_present 7\nready 7\nparked 5\nhalts 2\nearly_ready 1\nenabled 4\n\
                    kernel_halts 0\nwake_alls 3\nhalted_ns 123456\n";
        assert_eq!(apf_counters(text), Ok([7, 7, 5, 2, 1, 4, 0, 3, 123456]));
        assert_eq!(
            apf_counters("not_present 7\n").unwrap_err().to_string(),
            format!("no ready line in {APF_PROC_FILE}")
        );
    }

    #[test]
    fn available_memory_is_read_in_kib() {
        let meminfo = "MemTotal:  500000 kB\nMemFree:  400000 kB\nMemAvailable:  450123 kB\n";
        assert_eq!(mem_available_kib(meminfo), Ok(450123));
        assert_eq!(
            mem_available_kib("MemTotal: 1 kB\n")
                .unwrap_err()
                .to_string(),
            "no MemAvailable line in /proc/meminfo"
        );
    }
}
