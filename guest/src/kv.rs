//! The kernel side of the `kv` workload: open-loop request arrivals on a
//! timer, the server's `request_wait` / `request_done` system calls, and
//! the request latencies.

use spin::mutex::SpinMutex;

use crate::uapi::{E_INVAL, NO_MORE_REQUESTS};
use crate::{arch, metrics, percpu, sched};

/// Wait key on which the `kv` server sleeps until the next arrival.
const KV_ARRIVAL_KEY: u64 = u64::from_le_bytes(*b"kv-arrvl");

/// Open-loop request arrivals: request `i` arrives at a fixed time whether
/// or not the server has finished request `i - 1`, so queueing shows up in
/// the latency.
struct Kv {
    cpu: usize,
    total: u64,
    handed_out: u64,
    interval_ticks: u64,
    /// xorshift64 state for inter-arrival times.
    rng: u64,
    /// Arrival time of the next request (set when the server first waits).
    next_arrival: Option<u64>,
    /// The requests being served (one per server task at most) and their
    /// arrival times.
    in_flight: [Option<(u64, u64)>; sched::MAX_TASKS],
}

impl Kv {
    /// Next inter-arrival time: uniform in [interval/2, 3*interval/2).
    fn draw(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.interval_ticks / 2 + self.rng % self.interval_ticks
    }
}

static KV: SpinMutex<Option<Kv>> = SpinMutex::new(None);

/// `request_wait` syscall: blocks until the next request has arrived.
pub fn request_wait() -> i64 {
    loop {
        let arrival = {
            let mut guard = KV.lock();
            let Some(kv) = guard.as_mut() else {
                return E_INVAL;
            };
            if kv.handed_out == kv.total {
                return NO_MORE_REQUESTS;
            }
            let now = arch::counter();
            let arrival = match kv.next_arrival {
                Some(a) => a,
                None => {
                    let a = now + kv.draw();
                    kv.next_arrival = Some(a);
                    a
                }
            };
            if arrival <= now {
                let Some(slot) = kv.in_flight.iter_mut().find(|s| s.is_none()) else {
                    // Every task serves one request at a time, and there are
                    // at most MAX_TASKS of them.
                    return E_INVAL;
                };
                let index = kv.handed_out;
                kv.handed_out += 1;
                *slot = Some((index, arrival));
                let next = arrival + kv.draw();
                kv.next_arrival = Some(next);
                return index as i64;
            }
            arrival
        };
        // The arrival is a timer event on this CPU that wakes the key.
        sched::set_cpu_deadline(Some(arrival));
        sched::block_current(sched::Wait::Key(KV_ARRIVAL_KEY));
    }
}

/// `request_done` syscall: records the latency of the request in flight.
pub fn request_done(index: u64) -> i64 {
    let mut guard = KV.lock();
    let Some(kv) = guard.as_mut() else {
        return E_INVAL;
    };
    match kv
        .in_flight
        .iter_mut()
        .find(|s| s.is_some_and(|(i, _)| i == index))
    {
        Some(slot) => {
            let (_, arrival) = slot.take().expect("found as Some");
            metrics::request_done(arch::ticks_to_ns(arch::counter() - arrival));
            0
        }
        None => E_INVAL,
    }
}

/// Called on every timer interrupt: wakes the `kv` server when its next
/// request is due.
pub fn on_timer(now: u64) {
    let due = KV.lock().as_ref().is_some_and(|kv| {
        kv.cpu == percpu::cpu_index() && kv.next_arrival.is_some_and(|a| a <= now)
    });
    if due {
        sched::wake_key(KV_ARRIVAL_KEY);
    }
}

/// Starts the arrivals for `total` requests, `interval_us` apart on
/// average, served on CPU `cpu` by one or more server tasks (each takes the
/// next request that has arrived when it asks).
pub fn start(cpu: usize, total: u64, interval_us: u64, seed: u64) {
    *KV.lock() = Some(Kv {
        cpu,
        total,
        handed_out: 0,
        interval_ticks: arch::ns_to_ticks(interval_us * 1000).max(2),
        rng: seed | 1,
        next_arrival: None,
        in_flight: [None; sched::MAX_TASKS],
    });
}
