//! The machine every backend shares: the wiring of the devices, the
//! firmware (PSCI, SDEI) and apflab's own hypercalls, each behind a lock of
//! its own. Backends reach it through [`VmOps`] (MMIO and system registers,
//! possibly inline in the middle of an instruction) and through
//! [`Machine::hypercall`] (HVC/SMC exits), which routes a call to the
//! service that owns it; what a call does to vCPUs (start one, stop one,
//! power off) comes back as [`Effect`]s that the backend's vCPU loop
//! applies.
//!
//! Everything arriving from the guest is hostile input: addresses and
//! lengths are checked, oversized requests are refused with SMCCC error
//! codes, and nothing here panics on guest values.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use apflab_abi::boot_point;
use apflab_abi::hypercall as hc;
use apflab_abi::memory_map::{
    DOORBELL_BASE, DOORBELL_SIZE, GICD_BASE, GICD_SIZE, GICR_BASE, GICR_STRIDE, RTC_BASE, RTC_SIZE,
    UART_BASE, UART_SIZE, UART_SPI, VIRTIO_MMIO_BASE, VIRTIO_MMIO_SIZE, VIRTIO_MMIO_STRIDE,
};
use apflab_abi::report::GuestReport;
use apflab_abi::sdei as sdei_abi;
use serde::{Deserialize, Serialize};
use vm_memory::GuestMemoryMmap;

use crate::devices::doorbell::{DoorbellBank, DoorbellWrite};
use crate::devices::gic::Gic;
use crate::devices::interrupts::{Interrupts, SysregWrite};
use crate::devices::pl011::Pl011;
use crate::devices::pl031::Pl031;
use crate::devices::timer::CpuTimers;
use crate::devices::virtio_mmio;
use crate::effect::Answer;
pub use crate::effect::Effect;
use crate::exit_counts::ExitCounts;
use crate::guest_calls::GuestCalls;
use crate::outcome::GuestTimeline;
use crate::psci::Psci;
use crate::sdei;
use apflab_hypervisor::arch::SysRegId;
use apflab_hypervisor::{EngineCall, is_engine_call};
use apflab_hypervisor::{HypervisorError, MmioWriteKind, Vcpu, VmOps};

/// A saved machine state of another number of vCPUs than this machine's
/// ([`Machine::restore_state`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the machine state is not one of {vcpus} vCPUs")]
pub struct StateMismatch {
    /// This machine's vCPUs.
    pub vcpus: u32,
}

/// Who answers a hypercall.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    /// The machine did: x0..x3 for the caller.
    Answered([u64; 4]),
    /// The fault engine must ([`crate::FaultHook::on_hypercall`]).
    Engine(EngineCall),
}

/// The interrupt state a vCPU's slice starts from ([`Machine::slice_start`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SliceStart {
    /// The INTID the GIC signals to the vCPU, if any.
    pub signalled_irq: Option<u32>,
    /// Next virtual time at which one of its timers fires, if armed.
    pub timer_deadline: Option<u64>,
}

/// The doorbell banks, and the engine call made through each, waiting for
/// the vCPU loop to hand it to the fault engine (its result goes back into
/// the bank).
struct Doorbells {
    banks: Vec<DoorbellBank>,
    engine_calls: Vec<Option<EngineCall>>,
}

/// What hypercalls leave for the vCPU loops to act on.
#[derive(Default)]
struct Queued {
    effects: Vec<Effect>,
    /// The guest made the [`boot_point::FN_BOOT_DONE`] call since the run
    /// loop last looked.
    boot_done: bool,
    /// ... and another call after it, before the loop looked: the machine
    /// at the boot point is gone.
    boot_overrun: bool,
}

impl Queued {
    /// A call other than the boot point's arrived.
    fn call_made(&mut self) {
        self.boot_overrun |= self.boot_done;
    }
}

/// The devices and the machine's own bookkeeping, as a snapshot saves them
/// besides the firmware's and the guest calls' state (see
/// [`MachineState`]).
#[derive(Clone, Serialize, Deserialize)]
struct State {
    uart: Pl011,
    rtc: Pl031,
    gic: Gic,
    timers: Vec<CpuTimers>,
    doorbell: Vec<DoorbellBank>,
    #[serde(with = "crate::snapshot::abi_serde::engine_calls")]
    doorbell_engine_calls: Vec<Option<EngineCall>>,
    effects: Vec<Effect>,
    wake_hints: Vec<Option<u64>>,
    /// Saved as the map it wraps (`serde(transparent)`).
    exits: ExitCounts,
    boot_done: bool,
    boot_overrun: bool,
}

/// The whole state of a [`Machine`], as a snapshot saves it
/// ([`Machine::save_state`], [`Machine::restore_state`]).
#[derive(Serialize, Deserialize)]
pub struct MachineState {
    state: State,
    psci: Psci,
    sdei: sdei::Firmware,
    guest_calls: GuestCalls,
}

/// The devices and firmware services of one VM, each behind a lock of its
/// own (a vCPU reaching one does not hold up another reaching another);
/// no method holds two at once.
pub struct Machine {
    uart: Mutex<Pl011>,
    rtc: Mutex<Pl031>,
    /// The GIC and the timers that drive its lines.
    interrupts: Mutex<Interrupts>,
    doorbells: Mutex<Doorbells>,
    /// Which vCPUs are on.
    psci: Mutex<Psci>,
    /// Delivering an event writes vCPU registers, which on kvm are ioctls
    /// that need not hold up the devices.
    sdei: Mutex<sdei::Firmware>,
    /// What the guest reported, and the workload's words it is handed.
    guest_calls: Mutex<GuestCalls>,
    queued: Mutex<Queued>,
    exits: Mutex<ExitCounts>,
    memory: GuestMemoryMmap,
    vcpus: u32,
}

/// Locks `mutex`. A panic while holding one is a VMM bug; the state is
/// still consistent enough to report, so it is recovered.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Machine {
    /// A machine with `vcpus` CPUs (CPU 0 on, the others off) over guest
    /// RAM `memory`; `echo_console` copies UART output to stdout.
    pub fn new(vcpus: u32, memory: GuestMemoryMmap, echo_console: bool) -> Self {
        let n = vcpus as usize;
        Machine {
            uart: Mutex::new(Pl011::new(echo_console)),
            rtc: Mutex::new(Pl031::default()),
            interrupts: Mutex::new(Interrupts::new(vcpus)),
            doorbells: Mutex::new(Doorbells {
                banks: vec![DoorbellBank::default(); n],
                engine_calls: vec![None; n],
            }),
            psci: Mutex::new(Psci::new(vcpus)),
            sdei: Mutex::new(sdei::Firmware::new(vcpus)),
            guest_calls: Mutex::new(GuestCalls::default()),
            queued: Mutex::new(Queued::default()),
            exits: Mutex::new(ExitCounts::default()),
            memory,
            vcpus,
        }
    }

    fn lock_sdei(&self) -> MutexGuard<'_, sdei::Firmware> {
        lock(&self.sdei)
    }

    fn lock_interrupts(&self) -> MutexGuard<'_, Interrupts> {
        lock(&self.interrupts)
    }

    /// Carries out what the SDEI firmware has for `vcpu` (see
    /// [`sdei::deliver`]); both run loops call it as every hypercall
    /// returns, whether the machine or the fault engine answered it. Each
    /// handler entry is counted as an `sdei_dispatch` exit; returns how many
    /// there were.
    pub fn deliver_sdei<V: Vcpu + ?Sized>(&self, vcpu: &mut V) -> Result<u32, HypervisorError> {
        let entered = sdei::deliver(&mut self.lock_sdei(), vcpu)?;
        if entered > 0 {
            lock(&self.exits).add("sdei_dispatch", u64::from(entered));
        }
        Ok(entered)
    }

    /// Signals the SDEI event on `vcpu` (delivered by the next
    /// [`Machine::deliver_sdei`] the rules allow): [`sdei_abi::SUCCESS`],
    /// or [`sdei_abi::DENIED`] when the guest registered no handler there.
    pub fn signal_sdei(&self, vcpu: u32) -> i64 {
        self.lock_sdei().signal(vcpu)
    }

    /// Whether the guest announced the end of its boot
    /// ([`boot_point::FN_BOOT_DONE`]) since the last call.
    pub fn take_boot_done(&self) -> bool {
        std::mem::take(&mut lock(&self.queued).boot_done)
    }

    /// Whether the guest made another call after
    /// [`boot_point::FN_BOOT_DONE`] before the run loop took the boot point
    /// (a snapshot there would miss it).
    pub fn take_boot_overrun(&self) -> bool {
        std::mem::take(&mut lock(&self.queued).boot_overrun)
    }

    /// Sets the bootargs words [`boot_point::FN_WORKLOAD_ARGS`] hands
    /// over (see [`crate::loader::LoadedKernel::handed_over`]).
    pub fn set_workload_args(&self, words: &str) {
        lock(&self.guest_calls).set_workload_args(words);
    }

    /// A copy of the whole machine, for a snapshot (taken while no vCPU
    /// runs).
    pub fn save_state(&self) -> MachineState {
        let interrupts = self.lock_interrupts().clone();
        let (doorbell, doorbell_engine_calls) = {
            let d = lock(&self.doorbells);
            (d.banks.clone(), d.engine_calls.clone())
        };
        let (effects, boot_done, boot_overrun) = {
            let q = lock(&self.queued);
            (q.effects.clone(), q.boot_done, q.boot_overrun)
        };
        MachineState {
            state: State {
                uart: lock(&self.uart).clone(),
                rtc: lock(&self.rtc).clone(),
                gic: interrupts.gic,
                timers: interrupts.timers,
                doorbell,
                doorbell_engine_calls,
                effects,
                wake_hints: interrupts.wake_hints,
                exits: lock(&self.exits).clone(),
                boot_done,
                boot_overrun,
            },
            psci: lock(&self.psci).clone(),
            sdei: self.lock_sdei().clone(),
            guest_calls: lock(&self.guest_calls).clone(),
        }
    }

    /// Puts the machine in the state `saved` (from [`Machine::save_state`]
    /// of a machine with as many vCPUs); the console echo stays this
    /// machine's.
    pub fn restore_state(&self, saved: MachineState) -> Result<(), StateMismatch> {
        let n = self.vcpus as usize;
        let st = saved.state;
        if [
            st.timers.len(),
            st.doorbell.len(),
            st.doorbell_engine_calls.len(),
            saved.psci.vcpus(),
            st.wake_hints.len(),
            st.gic.cpus() as usize,
            saved.sdei.pes(),
        ]
        .iter()
        .any(|&len| len != n)
        {
            return Err(StateMismatch { vcpus: self.vcpus });
        }
        {
            let mut uart = lock(&self.uart);
            let echo = uart.echo();
            *uart = st.uart;
            uart.set_echo(echo);
        }
        *lock(&self.rtc) = st.rtc;
        *self.lock_interrupts() = Interrupts {
            gic: st.gic,
            timers: st.timers,
            wake_hints: st.wake_hints,
        };
        *lock(&self.doorbells) = Doorbells {
            banks: st.doorbell,
            engine_calls: st.doorbell_engine_calls,
        };
        *lock(&self.queued) = Queued {
            effects: st.effects,
            boot_done: st.boot_done,
            boot_overrun: st.boot_overrun,
        };
        *lock(&self.exits) = st.exits;
        *lock(&self.psci) = saved.psci;
        *self.lock_sdei() = saved.sdei;
        lock(&self.guest_calls).restore(saved.guest_calls);
        Ok(())
    }

    /// Counts one exit of kind `name`.
    pub fn count_exit(&self, name: &str) {
        lock(&self.exits).count(name);
    }

    /// The guest's signs of life so far, for the watchdog: every exit
    /// counted except those that are no work of the guest's (WFI, the emu
    /// slice ends, the kvm loop's kicks to look at a vCPU, the emu's kicks
    /// that deliver "page ready" to a running vCPU).
    pub fn activity(&self) -> u64 {
        lock(&self.exits).activity()
    }

    /// Exits counted so far, by kind.
    pub fn exits(&self) -> BTreeMap<String, u64> {
        lock(&self.exits).by_kind().clone()
    }

    /// Interrupts acknowledged by the guest, by INTID.
    pub fn interrupts(&self) -> BTreeMap<u32, u64> {
        self.lock_interrupts().gic.acknowledged().clone()
    }

    /// The console output so far.
    pub fn console(&self) -> String {
        lock(&self.uart).console_text()
    }

    /// The guest's report, if it sent a valid one: by the `REPORT` call,
    /// or, from a guest that cannot make it (Linux user space has no HVC),
    /// as the last valid report line on its console.
    pub fn report(&self) -> Option<GuestReport> {
        let reported = lock(&self.guest_calls).report();
        reported.or_else(|| report_from_console(&self.console()))
    }

    /// Task completion times (virtual ns) by task id.
    pub fn task_done_ns(&self) -> BTreeMap<u64, u64> {
        lock(&self.guest_calls).task_done_ns().clone()
    }

    /// Takes the guest's timeline log received so far.
    pub fn take_timeline(&self) -> GuestTimeline {
        lock(&self.guest_calls).take_timeline()
    }

    /// Takes the effects queued by hypercalls since the last call.
    pub fn take_effects(&self) -> Vec<Effect> {
        std::mem::take(&mut lock(&self.queued).effects)
    }

    /// Brings the interrupt lines of `vcpu` (its virtual timer) and the
    /// UART's up to date at `now_ns`.
    pub fn update_lines(&self, vcpu: u32, now_ns: u64) {
        drop(self.interrupts_at(vcpu, now_ns));
    }

    /// The interrupts, with the lines of `vcpu` (its virtual timer) and the
    /// UART's brought up to date at `now_ns`.
    fn interrupts_at(&self, vcpu: u32, now_ns: u64) -> MutexGuard<'_, Interrupts> {
        let uart = lock(&self.uart).irq_level();
        let mut irq = self.lock_interrupts();
        irq.update_timer_lines(vcpu, now_ns);
        irq.gic.set_level(0, 32 + UART_SPI, uart);
        irq
    }

    /// What a slice of `vcpu` starting at `now_ns` needs, under one look at
    /// the interrupts: drops its wake-up hint (the earliest virtual time at
    /// which another vCPU sent it an interrupt since it last ran: it runs
    /// now), brings its lines up to date ([`Machine::update_lines`]), and
    /// returns the INTID signalled to it ([`Machine::signalled_irq`]) and
    /// when its next timer fires ([`Machine::next_deadline`]). The emu loop
    /// calls it once per slice, tens of thousands of times a second.
    pub fn slice_start(&self, vcpu: u32, now_ns: u64) -> SliceStart {
        let mut irq = self.interrupts_at(vcpu, now_ns);
        if let Some(hint) = irq.wake_hints.get_mut(vcpu as usize) {
            *hint = None;
        }
        SliceStart {
            signalled_irq: irq.gic.signalled(vcpu),
            timer_deadline: irq.timer_deadline(vcpu, now_ns),
        }
    }

    /// Next virtual time at which one of `vcpu`'s timers fires, if armed.
    pub fn next_deadline(&self, vcpu: u32, now_ns: u64) -> Option<u64> {
        self.lock_interrupts().timer_deadline(vcpu, now_ns)
    }

    /// The INTID the GIC signals to `vcpu` now, if any.
    pub fn signalled_irq(&self, vcpu: u32) -> Option<u32> {
        self.lock_interrupts().gic.signalled(vcpu)
    }

    /// Records that an interrupt was sent to `vcpu` at `at_ns` from outside
    /// it (another vCPU, the fault engine): a halted `vcpu` wakes no
    /// earlier.
    pub fn interrupt_sent(&self, vcpu: u32, at_ns: u64) {
        self.lock_interrupts().hint_wake(vcpu, at_ns);
    }

    /// Reads the wake-up hint of `vcpu` without clearing it.
    pub fn wake_hint(&self, vcpu: u32) -> Option<u64> {
        self.lock_interrupts()
            .wake_hints
            .get(vcpu as usize)
            .copied()
            .flatten()
    }

    /// Routes a hypercall from `vcpu` at `now_ns`: the fault engine's calls
    /// ([`is_engine_call`]) are counted and handed back for the vCPU loop to
    /// pass on; the machine answers every other one ([`Machine::hypercall`]).
    pub fn dispatch(&self, vcpu: u32, function: u32, args: [u64; 5], now_ns: u64) -> Call {
        if is_engine_call(function) {
            lock(&self.queued).call_made();
            self.count_exit("hypercall");
            return Call::Engine(EngineCall { function, args });
        }
        Call::Answered(self.hypercall(vcpu, function, args, now_ns))
    }

    /// The engine call `vcpu` made through the doorbell, if one waits.
    pub fn take_doorbell_engine_call(&self, vcpu: u32) -> Option<EngineCall> {
        lock(&self.doorbells)
            .engine_calls
            .get_mut(vcpu as usize)
            .and_then(Option::take)
    }

    /// Stores the results of a doorbell call in `vcpu`'s bank, where the
    /// guest reads them.
    pub fn set_doorbell_results(&self, vcpu: u32, regs: [u64; 4]) {
        if let Some(bank) = lock(&self.doorbells).banks.get_mut(vcpu as usize) {
            bank.set_results([regs[0], regs[1]]);
        }
    }

    /// Handles a hypercall the machine answers, from `vcpu` at `now_ns`;
    /// returns x0..x3 for the caller. Effects on vCPUs are queued (see
    /// [`Machine::take_effects`]).
    pub fn hypercall(&self, vcpu: u32, function: u32, args: [u64; 5], now_ns: u64) -> [u64; 4] {
        {
            let mut q = lock(&self.queued);
            q.call_made();
            if function == boot_point::FN_BOOT_DONE {
                // A mark for the VMM, not a request of the machine's: no
                // exit counted, nothing for the guest to see (see
                // `boot_point`).
                q.boot_done = true;
                return [hc::SMCCC_SUCCESS as u64, 0, 0, 0];
            }
        }
        let kind = if sdei_abi::is_sdei_call(function) {
            "sdei"
        } else if Psci::owns(function) {
            "psci"
        } else {
            "hypercall"
        };
        self.count_exit(kind);
        if sdei_abi::is_sdei_call(function) || function == sdei_abi::FN_APFLAB_SIGNAL {
            return [self.lock_sdei().call(vcpu, function, args), 0, 0, 0];
        }
        let answer = if Psci::owns(function) {
            lock(&self.psci).call(vcpu, function, args, &self.memory)
        } else {
            lock(&self.guest_calls).call(vcpu, function, args, now_ns, &self.memory)
        };
        match answer {
            Some(Answer { regs, effect }) => {
                lock(&self.queued).effects.extend(effect);
                regs
            }
            None => {
                self.count_exit("hypercall_unsupported");
                [hc::SMCCC_NOT_SUPPORTED as u64, 0, 0, 0]
            }
        }
    }

    /// An MMIO write with its kind (see [`MmioWriteKind`]).
    pub fn mmio_write_kind(&self, vcpu: u32, addr: u64, data: &[u8], now_ns: u64) -> MmioWriteKind {
        let value = le_value(data);
        let len = data.len();
        self.count_exit("mmio");
        let Some(w) = device_at(self.vcpus, addr) else {
            self.count_exit("mmio_unhandled");
            return MmioWriteKind::Plain;
        };
        let offset = addr - w.base;
        match w.device {
            Device::Uart => lock(&self.uart).write(offset, value as u32),
            Device::GicDistributor => self.lock_interrupts().gic.dist_write(offset, len, value),
            Device::GicRedistributors => {
                self.lock_interrupts().gic.redist_write(offset, len, value);
            }
            Device::Rtc => lock(&self.rtc).write(offset, value as u32, now_ns),
            // An empty transport ignores writes.
            Device::VirtioMmio => {}
            Device::Doorbell => return self.doorbell_write(vcpu, offset, len, value, now_ns),
        }
        MmioWriteKind::Plain
    }

    /// A write to `vcpu`'s doorbell bank; a write of the function register
    /// makes the call.
    fn doorbell_write(
        &self,
        vcpu: u32,
        offset: u64,
        len: usize,
        value: u64,
        now_ns: u64,
    ) -> MmioWriteKind {
        let call = match lock(&self.doorbells).banks.get_mut(vcpu as usize) {
            Some(bank) => bank.write(offset, len, value),
            None => DoorbellWrite::Stored,
        };
        let DoorbellWrite::Call { function, args } = call else {
            return MmioWriteKind::Plain;
        };
        if sdei_abi::is_sdei_call(function) || function == sdei_abi::FN_APFLAB_SIGNAL {
            // SDEI's conduit is HVC (the device tree says so): its calls
            // change the caller's registers, which a doorbell store cannot.
            self.count_exit("hypercall_unsupported");
            self.set_doorbell_results(vcpu, [hc::SMCCC_NOT_SUPPORTED as u64, 0, 0, 0]);
            return MmioWriteKind::Hypercall;
        }
        match self.dispatch(vcpu, function, args, now_ns) {
            Call::Answered(r) => self.set_doorbell_results(vcpu, r),
            Call::Engine(c) => {
                if let Some(slot) = lock(&self.doorbells).engine_calls.get_mut(vcpu as usize) {
                    *slot = Some(c);
                }
            }
        }
        MmioWriteKind::Hypercall
    }
}

/// A device of the board's address map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    /// The PL011 UART.
    Uart,
    /// The GICv3 distributor.
    GicDistributor,
    /// The GICv3 redistributors, one frame pair per vCPU.
    GicRedistributors,
    /// apflab's hypercall doorbell.
    Doorbell,
    /// The PL031 RTC.
    Rtc,
    /// The (empty) virtio-mmio transports.
    VirtioMmio,
}

impl Device {
    /// Its name, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Device::Uart => "pl011",
            Device::GicDistributor => "gic distributor",
            Device::GicRedistributors => "gic redistributors",
            Device::Doorbell => "doorbell",
            Device::Rtc => "pl031",
            Device::VirtioMmio => "virtio-mmio",
        }
    }

    /// Whether a write to it can make an interrupt deliverable at once.
    pub fn is_interrupt_controller(self) -> bool {
        matches!(self, Device::GicDistributor | Device::GicRedistributors)
    }
}

/// One window of the board's address map that a device answers in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceWindow {
    /// The device.
    pub device: Device,
    /// First address.
    pub base: u64,
    /// Size in bytes.
    pub size: u64,
}

/// The windows of a board with `vcpus` vCPUs where a device answers; an
/// access anywhere else outside RAM is a decode error on the bus, which the
/// guest takes as a synchronous external abort.
pub fn device_windows(vcpus: u32) -> [DeviceWindow; 6] {
    let w = |device, base, size| DeviceWindow { device, base, size };
    [
        w(Device::Uart, UART_BASE, UART_SIZE),
        w(Device::GicDistributor, GICD_BASE, GICD_SIZE),
        w(
            Device::GicRedistributors,
            GICR_BASE,
            GICR_STRIDE * u64::from(vcpus),
        ),
        w(Device::Doorbell, DOORBELL_BASE, DOORBELL_SIZE),
        w(Device::Rtc, RTC_BASE, RTC_SIZE),
        w(Device::VirtioMmio, VIRTIO_MMIO_BASE, VIRTIO_MMIO_SIZE),
    ]
}

/// The window `addr` falls in, if a device answers there.
fn device_at(vcpus: u32, addr: u64) -> Option<DeviceWindow> {
    device_windows(vcpus)
        .into_iter()
        .find(|w| in_window(addr, w.base, w.size))
}

fn in_window(addr: u64, base: u64, size: u64) -> bool {
    addr >= base && addr - base < size
}

/// Little-endian value of up to 8 bytes.
fn le_value(data: &[u8]) -> u64 {
    data.iter()
        .take(8)
        .enumerate()
        .fold(0, |acc, (i, b)| acc | u64::from(*b) << (8 * i))
}

impl VmOps for Machine {
    fn decodes(&self, addr: u64) -> bool {
        device_at(self.vcpus, addr).is_some()
    }

    fn mmio_read(&self, vcpu: u32, addr: u64, data: &mut [u8], now_ns: u64) {
        self.count_exit("mmio");
        let len = data.len();
        let value = match device_at(self.vcpus, addr) {
            Some(w) => {
                let offset = addr - w.base;
                match w.device {
                    Device::Uart => u64::from(lock(&self.uart).read(offset)),
                    Device::GicDistributor => self.lock_interrupts().gic.dist_read(offset),
                    Device::GicRedistributors => self.lock_interrupts().gic.redist_read(offset),
                    Device::Rtc => u64::from(lock(&self.rtc).read(offset, now_ns)),
                    Device::VirtioMmio => {
                        u64::from(virtio_mmio::read_empty(offset % VIRTIO_MMIO_STRIDE))
                    }
                    Device::Doorbell => lock(&self.doorbells)
                        .banks
                        .get(vcpu as usize)
                        .map_or(0, |b| b.read(offset, len)),
                }
            }
            None => {
                self.count_exit("mmio_unhandled");
                0
            }
        };
        for (i, b) in data.iter_mut().enumerate() {
            *b = (value >> (8 * i)) as u8;
        }
    }

    fn mmio_write(&self, vcpu: u32, addr: u64, data: &[u8], now_ns: u64) -> MmioWriteKind {
        self.mmio_write_kind(vcpu, addr, data, now_ns)
    }

    fn sysreg_read(&self, vcpu: u32, reg: SysRegId, now_ns: u64) -> Option<u64> {
        self.lock_interrupts().sysreg_read(vcpu, reg, now_ns)
    }

    fn set_irq_line(&self, vcpu: u32, intid: u32, level: bool) {
        self.lock_interrupts().gic.set_level(vcpu, intid, level);
    }

    fn sysreg_write(&self, vcpu: u32, reg: SysRegId, value: u64, now_ns: u64) -> bool {
        let written = self
            .lock_interrupts()
            .sysreg_write(vcpu, reg, value, now_ns);
        if written == SysregWrite::SentSgi {
            self.count_exit("sysreg");
        }
        written != SysregWrite::NotOurs
    }
}

fn report_from_console(console: &str) -> Option<GuestReport> {
    console
        .lines()
        .rev()
        .filter(|l| {
            l.trim_start()
                .starts_with(apflab_abi::report::CONSOLE_PREFIX)
        })
        .find_map(GuestReport::parse_console_line)
}

#[cfg(test)]
mod tests {
    use super::*;
    use apflab_abi::hypercall::doorbell as db_layout;
    use apflab_abi::memory_map::RAM_BASE;
    use apflab_abi::trace::{TRACE_BATCH, TraceKind, TraceRecord};
    use vm_memory::{Bytes, GuestAddress};

    fn machine(vcpus: u32) -> Machine {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(RAM_BASE), 1 << 20)]).unwrap();
        Machine::new(vcpus, mem, false)
    }

    #[test]
    fn psci_cpu_on_checks_target_state_and_entry() {
        let m = machine(2);
        let on =
            |mpidr, entry| m.hypercall(0, hc::PSCI_CPU_ON, [mpidr, entry, 7, 0, 0], 0)[0] as i64;
        assert_eq!(on(5, RAM_BASE), hc::SMCCC_INVALID_PARAMETERS);
        assert_eq!(on(0, RAM_BASE), hc::PSCI_ALREADY_ON);
        assert_eq!(on(1, 0x10), -9, "entry outside RAM");
        assert_eq!(on(1, RAM_BASE + 0x100), hc::SMCCC_SUCCESS);
        assert_eq!(on(1, RAM_BASE + 0x100), hc::PSCI_ALREADY_ON);
        assert_eq!(
            m.take_effects(),
            vec![Effect::CpuOn {
                target: 1,
                entry: RAM_BASE + 0x100,
                context_id: 7
            }]
        );
    }

    #[test]
    fn hostile_hypercalls_are_refused_not_fatal() {
        let m = machine(1);
        let r = m.hypercall(
            0,
            hc::FN_REPORT,
            [u64::MAX - 3, GuestReport::SIZE as u64, 0, 0, 0],
            0,
        );
        assert_eq!(r[0] as i64, hc::SMCCC_INVALID_PARAMETERS);
        let r = m.hypercall(0, hc::FN_REPORT, [RAM_BASE, 1 << 40, 0, 0, 0], 0);
        assert_eq!(r[0] as i64, hc::SMCCC_INVALID_PARAMETERS);
        // Zeroed memory is not a report (bad magic).
        let r = m.hypercall(
            0,
            hc::FN_REPORT,
            [RAM_BASE, GuestReport::SIZE as u64, 0, 0, 0],
            0,
        );
        assert_eq!(r[0] as i64, hc::SMCCC_INVALID_PARAMETERS);
        let r = m.hypercall(0, 0xC600_00FF, [0; 5], 0);
        assert_eq!(r[0] as i64, hc::SMCCC_NOT_SUPPORTED);
        assert_eq!(m.exits().get("hypercall_unsupported"), Some(&1));
        m.hypercall(0, hc::FN_PANIC, [u64::MAX, u64::MAX, 0, 0, 0], 0);
        assert!(
            matches!(&m.take_effects()[..], [Effect::Panic(msg)] if msg.contains("outside guest RAM"))
        );
    }

    #[test]
    fn timeline_batches_are_kept_per_vcpu_and_bad_ones_refused_whole() {
        let m = machine(2);
        let put = |at: u64, r: TraceRecord| {
            let mut b = Vec::new();
            b.extend(r.ticks.to_le_bytes());
            b.extend(r.kind.to_le_bytes());
            b.extend(r.task.to_le_bytes());
            b.extend(r.arg.to_le_bytes());
            m.memory.write_slice(&b, GuestAddress(at)).unwrap();
        };
        let a = TraceRecord::new(10, TraceKind::Switch, 3, 0);
        let b = TraceRecord::new(11, TraceKind::BlockedOnKey, 3, 0x55);
        put(RAM_BASE, a);
        put(RAM_BASE + 24, b);
        let trace = |vcpu, args| m.hypercall(vcpu, hc::FN_TRACE, args, 0)[0] as i64;
        assert_eq!(trace(1, [RAM_BASE, 2, 5, 0, 0]), hc::SMCCC_SUCCESS);
        // Too long, outside RAM, or holding a record of no kind: refused.
        let too_many = TRACE_BATCH as u64 + 1;
        assert_eq!(
            trace(0, [RAM_BASE, too_many, 0, 0, 0]),
            hc::SMCCC_INVALID_PARAMETERS
        );
        assert_eq!(
            trace(0, [u64::MAX - 8, 1, 0, 0, 0]),
            hc::SMCCC_INVALID_PARAMETERS
        );
        assert_eq!(
            trace(0, [RAM_BASE, 3, 0, 0, 0]),
            hc::SMCCC_INVALID_PARAMETERS
        );
        let t = m.take_timeline();
        assert_eq!(t.records, vec![(1, a), (1, b)]);
        assert_eq!(t.dropped, 5);
    }

    #[test]
    fn valid_report_and_panic_message_are_read_from_guest_memory() {
        let m = machine(1);
        let mut rep = GuestReport::new(1);
        rep.cpu_ops = 1234;
        m.memory
            .write_slice(rep.as_bytes(), GuestAddress(RAM_BASE + 0x1000))
            .unwrap();
        let r = m.hypercall(
            0,
            hc::FN_REPORT,
            [RAM_BASE + 0x1000, GuestReport::SIZE as u64, 0, 0, 0],
            0,
        );
        assert_eq!(r[0], 0);
        assert_eq!(m.report().unwrap().cpu_ops, 1234);
        let long = vec![b'x'; 5000];
        m.memory
            .write_slice(&long, GuestAddress(RAM_BASE + 0x2000))
            .unwrap();
        m.hypercall(0, hc::FN_PANIC, [RAM_BASE + 0x2000, 5000, 0, 0, 0], 0);
        match &m.take_effects()[..] {
            [Effect::Panic(msg)] => assert_eq!(msg.len(), hc::PANIC_MSG_MAX as usize),
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn doorbell_call_returns_results_in_the_callers_bank() {
        let m = machine(2);
        let w = |vcpu, off: u64, v: u64| {
            m.mmio_write_kind(vcpu, DOORBELL_BASE + off, &v.to_le_bytes(), 0)
        };
        assert_eq!(w(1, db_layout::ARGS[0], 0), MmioWriteKind::Plain);
        assert_eq!(
            w(1, db_layout::FUNCTION, u64::from(hc::PSCI_FEATURES)),
            MmioWriteKind::Hypercall
        );
        let mut out = [0u8; 8];
        m.mmio_read(1, DOORBELL_BASE + db_layout::RESULT0, &mut out, 0);
        // PSCI_FEATURES(0 = PSCI_VERSION?) -> 0 is not a PSCI id: NOT_SUPPORTED.
        assert_eq!(u64::from_le_bytes(out) as i64, hc::SMCCC_NOT_SUPPORTED);
        w(1, db_layout::ARGS[0], u64::from(hc::PSCI_CPU_ON));
        w(1, db_layout::FUNCTION, u64::from(hc::PSCI_FEATURES));
        m.mmio_read(1, DOORBELL_BASE + db_layout::RESULT0, &mut out, 0);
        assert_eq!(u64::from_le_bytes(out), 0);
        // vCPU 0's bank is untouched.
        m.mmio_read(0, DOORBELL_BASE + db_layout::RESULT0, &mut out, 0);
        assert_eq!(u64::from_le_bytes(out), 0);
        m.mmio_read(0, DOORBELL_BASE + db_layout::ARGS[0], &mut out, 0);
        assert_eq!(u64::from_le_bytes(out), 0);
        // SDEI is HVC only: through the doorbell it is not supported, and
        // nothing is registered.
        let ev = u64::from(sdei_abi::EVENT_APF);
        w(1, db_layout::ARGS[0], ev);
        w(
            1,
            db_layout::FUNCTION,
            u64::from(sdei_abi::FN_EVENT_REGISTER),
        );
        m.mmio_read(1, DOORBELL_BASE + db_layout::RESULT0, &mut out, 0);
        assert_eq!(u64::from_le_bytes(out) as i64, hc::SMCCC_NOT_SUPPORTED);
        let status = m.hypercall(1, sdei_abi::FN_EVENT_STATUS, [ev, 0, 0, 0, 0], 0);
        assert_eq!(status[0], 0);
    }

    #[test]
    fn a_report_printed_on_the_console_stands_in_for_the_call() {
        let mut r = GuestReport::new(apflab_abi::boot::WORKLOAD_KV);
        r.requests = 77;
        r.latency_fine[1780] = 77;
        let mut line = String::new();
        r.write_console_line(&mut line, apflab_abi::report::ConsoleDetail::Full)
            .unwrap();
        let console =
            format!("[    1.0] boot\r\n{line}\r\nAPFLAB-REPORT torn\r\n[    2.0] reboot\r\n");
        assert_eq!(report_from_console(&console), Some(r));
        assert_eq!(report_from_console("no report here\n"), None);
        assert_eq!(report_from_console("APFLAB-REPORT version=1\n"), None);
    }
}
