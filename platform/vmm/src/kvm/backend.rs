//! The VM and vCPUs of the kvm backend, behind the backend traits of
//! [`apflab_hypervisor::backend`].
//!
//! What KVM does in the kernel: the GICv3 (distributor + redistributors,
//! vGIC), the architected timer, PSCI (CPU_ON for SMP bring-up,
//! SYSTEM_OFF/RESET come back as `KVM_EXIT_SYSTEM_EVENT`) and WFI. What
//! comes to the VMM: MMIO outside RAM (PL011, doorbell), apflab's
//! vendor-hypervisor HVCs (through the SMCCC filter on kernels that have it,
//! 6.4+), and guest accesses to withheld pages (`EFAULT`, located by
//! [`apflab_hypervisor::arch::fault_site`]).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use apflab_abi::addr::Gpa;
use apflab_abi::hypercall::APFLAB_FN_BASE;
use apflab_abi::memory_map::{APF_READY_PPI, GICD_BASE, GICR_BASE};
use apflab_abi::sdei;
use kvm_bindings::{
    KVM_ARM_IRQ_TYPE_PPI, KVM_ARM_IRQ_TYPE_SHIFT, KVM_ARM_IRQ_VCPU_SHIFT, KVM_ARM_VCPU_POWER_OFF,
    KVM_ARM_VCPU_PSCI_0_2, KVM_ARM_VM_SMCCC_CTRL, KVM_ARM_VM_SMCCC_FILTER,
    KVM_CAP_ARM_NISV_TO_USER, KVM_DEV_ARM_VGIC_CTRL_INIT, KVM_DEV_ARM_VGIC_GRP_ADDR,
    KVM_DEV_ARM_VGIC_GRP_CTRL, KVM_DEV_ARM_VGIC_GRP_NR_IRQS, KVM_EXIT_ARM_NISV, KVM_EXIT_UNKNOWN,
    KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN, KVM_VGIC_V3_ADDR_TYPE_DIST,
    KVM_VGIC_V3_ADDR_TYPE_REDIST, kvm_create_device, kvm_device_attr,
    kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V3, kvm_enable_cap, kvm_smccc_filter,
    kvm_smccc_filter_action_KVM_SMCCC_FILTER_FWD_TO_USER, kvm_userspace_memory_region,
    kvm_vcpu_init,
};
use kvm_ioctls::{DeviceFd, Kvm, VcpuExit, VcpuFd, VmFd};
use vm_memory::GuestMemoryMmap;

use super::error::KvmError;
use super::kick::{self, KickState, Kicker};
use super::memory::GuestRam;
use super::regs;
use apflab_hypervisor::arch::access::AccessError;
use apflab_hypervisor::arch::access::{AddrReg, RegisterSource};
use apflab_hypervisor::arch::fault_site::{FaultKind, LocateError, locate};
use apflab_hypervisor::arch::stage1::TranslationRegs;
use apflab_hypervisor::arch::{self, EntryKind, Reg, pstate};
use apflab_hypervisor::{
    Conduit, CrashReason, Hypervisor, HypervisorError, MmioWriteKind, NotResidentFault, PageAccess,
    Residency, SyncException, Vcpu, VmExit, VmOps,
};

/// Interrupt lines of the in-kernel GIC (the board's, as emu's).
const GIC_NR_IRQS: u32 = apflab_abi::memory_map::GIC_INTIDS;
/// Size of the SMCCC function-id range forwarded to the VMM: the whole
/// vendor-hypervisor range 0xC600_0000..=0xC600_FFFF.
const APFLAB_FN_RANGE: u32 = 0x1_0000;
/// Size of the SDEI 1.0 function-id range (0xC400_0020..=0xC400_003F).
const SDEI_FN_RANGE: u32 = 0x20;
/// How often a `KVM_RUN` → `EFAULT` whose pages all turn out resident is
/// retried before the run is failed (a page made resident concurrently
/// explains one; a stuck vCPU must not spin forever).
const MAX_UNEXPLAINED_EFAULTS: u32 = 3;

/// How the guest reaches the VMM with apflab hypercalls on this host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HypercallConduit {
    /// HVC, forwarded by the kernel's SMCCC filter.
    Hvc,
    /// The MMIO doorbell page (kernels before 6.4). The device tree must
    /// advertise it so the guest uses it.
    Doorbell,
}

fn ioctl_err(op: impl Into<String>, e: kvm_ioctls::Error) -> KvmError {
    KvmError::Ioctl {
        op: op.into(),
        errno: std::io::Error::from_raw_os_error(e.errno()),
    }
}

impl From<KvmError> for HypervisorError {
    fn from(e: KvmError) -> Self {
        HypervisorError::Engine {
            backend: "kvm",
            op: match &e {
                KvmError::Ioctl { op, .. } => op.clone(),
                KvmError::Unsupported(_) => "setup".into(),
                KvmError::Memory(_) => "guest memory".into(),
            },
            source: Box::new(e),
        }
    }
}

/// Raises and lowers PPIs on the in-kernel GIC. Clone it into any thread.
#[derive(Clone)]
pub struct KvmIrqLine {
    vm: Arc<VmFd>,
}

impl KvmIrqLine {
    /// Sets the level of PPI `intid` (16..32) of vCPU `vcpu`.
    pub fn set_ppi(&self, vcpu: u32, intid: u32, level: bool) -> Result<(), KvmError> {
        let irq = (KVM_ARM_IRQ_TYPE_PPI << KVM_ARM_IRQ_TYPE_SHIFT)
            | ((vcpu & 0xff) << KVM_ARM_IRQ_VCPU_SHIFT)
            | intid;
        self.vm.set_irq_line(irq, level).map_err(|e| {
            ioctl_err(
                format!("KVM_IRQ_LINE(vcpu {vcpu}, PPI {intid}, {level})"),
                e,
            )
        })
    }
}

/// Kicks one vCPU out of `KVM_RUN` (its `run()` returns
/// [`VmExit::SliceEnd`]). Clone it into any thread.
#[derive(Clone)]
pub struct KvmVcpuKicker(Kicker);

impl KvmVcpuKicker {
    /// Kicks the vCPU.
    pub fn kick(&self) -> Result<(), KvmError> {
        self.0.kick()
    }
}

/// An arm64 KVM VM: RAM, the in-kernel vGICv3 and the vCPU fds.
pub struct KvmHypervisor {
    // Field order is drop order: vCPUs and the GIC before the VM fd,
    // the VM (and so its memslot) before the RAM mapping.
    vcpus: Vec<Option<VcpuFd>>,
    _gic: DeviceFd,
    vm: Arc<VmFd>,
    _kvm: Kvm,
    ram: Arc<GuestRam>,
    conduit: HypercallConduit,
}

impl KvmHypervisor {
    /// Creates a VM with `vcpus` vCPUs (vCPU 0 runnable, the others
    /// powered off until PSCI CPU_ON) and `ram_size` bytes of RAM at
    /// `ram_base`.
    pub fn new(vcpus: u32, ram_base: u64, ram_size: u64) -> Result<Self, KvmError> {
        let kvm = Kvm::new().map_err(|e| ioctl_err("open(/dev/kvm)", e))?;
        let vm = kvm.create_vm().map_err(|e| ioctl_err("KVM_CREATE_VM", e))?;
        let ram = Arc::new(GuestRam::new(ram_base, ram_size)?);
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: ram_base,
            memory_size: ram_size,
            userspace_addr: ram.guest_view_addr(),
        };
        // SAFETY: the region is the guest view mapping owned by `ram`, which
        // outlives the VM fd (field order in KvmHypervisor).
        unsafe { vm.set_user_memory_region(region) }
            .map_err(|e| ioctl_err("KVM_SET_USER_MEMORY_REGION(guest RAM)", e))?;

        // Loads/stores without a valid syndrome outside RAM come back as
        // KVM_EXIT_ARM_NISV (reported as a guest crash) instead of ENOSYS.
        let nisv = kvm_enable_cap {
            cap: KVM_CAP_ARM_NISV_TO_USER,
            ..Default::default()
        };
        if let Err(e) = vm.enable_cap(&nisv) {
            tracing::debug!("KVM_CAP_ARM_NISV_TO_USER unavailable: {e}");
        }

        let conduit = Self::forward_apflab_hvcs(&vm);
        tracing::info!(?conduit, "kvm: apflab hypercall conduit");

        let mut fds = Vec::with_capacity(vcpus as usize);
        for i in 0..vcpus {
            let fd = vm
                .create_vcpu(i as u64)
                .map_err(|e| ioctl_err(format!("KVM_CREATE_VCPU({i})"), e))?;
            let mut init = kvm_vcpu_init::default();
            vm.get_preferred_target(&mut init)
                .map_err(|e| ioctl_err("KVM_ARM_PREFERRED_TARGET", e))?;
            init.features[0] |= 1 << KVM_ARM_VCPU_PSCI_0_2;
            if i > 0 {
                init.features[0] |= 1 << KVM_ARM_VCPU_POWER_OFF;
            }
            fd.vcpu_init(&init)
                .map_err(|e| ioctl_err(format!("KVM_ARM_VCPU_INIT({i})"), e))?;
            fds.push(Some(fd));
        }
        let gic = Self::create_gic(&vm)?;
        Ok(KvmHypervisor {
            vcpus: fds,
            _gic: gic,
            vm: Arc::new(vm),
            _kvm: kvm,
            ram,
            conduit,
        })
    }

    /// Asks the kernel to forward the `count` SMCCC function ids from
    /// `base` to userspace (KVM's SMCCC filter).
    fn forward_to_user(vm: &VmFd, base: u32, count: u32) -> Result<(), kvm_ioctls::Error> {
        let filter = kvm_smccc_filter {
            base,
            nr_functions: count,
            action: kvm_smccc_filter_action_KVM_SMCCC_FILTER_FWD_TO_USER as u8,
            pad: [0; 15],
        };
        let attr = kvm_device_attr {
            group: KVM_ARM_VM_SMCCC_CTRL,
            attr: KVM_ARM_VM_SMCCC_FILTER as u64,
            addr: &filter as *const kvm_smccc_filter as u64,
            flags: 0,
        };
        vm.set_device_attr(&attr)
    }

    /// Asks the kernel to forward apflab's function ids to userspace.
    fn forward_apflab_hvcs(vm: &VmFd) -> HypercallConduit {
        match Self::forward_to_user(vm, APFLAB_FN_BASE, APFLAB_FN_RANGE) {
            Ok(()) => {
                Self::forward_sdei(vm);
                HypercallConduit::Hvc
            }
            Err(e) => {
                tracing::info!("kvm: no SMCCC filter ({e}); hypercalls go through the doorbell");
                HypercallConduit::Doorbell
            }
        }
    }

    /// Asks the kernel to forward the SDEI range too (the machine's SDEI
    /// firmware answers it). Without it KVM answers SDEI calls itself with
    /// NOT_SUPPORTED, which the guest takes as "no SDEI".
    fn forward_sdei(vm: &VmFd) {
        if let Err(e) = Self::forward_to_user(vm, sdei::FN_BASE, SDEI_FN_RANGE) {
            tracing::info!("kvm: SDEI calls not forwarded ({e}); the guest sees no SDEI");
        }
    }

    /// Creates and initialises the in-kernel GICv3 at the `virt` addresses
    /// the abi crate names. Must run after every vCPU is created.
    fn create_gic(vm: &VmFd) -> Result<DeviceFd, KvmError> {
        let mut dev = kvm_create_device {
            type_: kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V3,
            fd: 0,
            flags: 0,
        };
        let gic = vm
            .create_device(&mut dev)
            .map_err(|_| KvmError::Unsupported("an in-kernel GICv3 (KVM_CREATE_DEVICE)".into()))?;
        let set = |group: u32, attr: u64, value: Option<&u64>, what: &str| {
            let a = kvm_device_attr {
                group,
                attr,
                addr: value.map_or(0, |v| v as *const u64 as u64),
                flags: 0,
            };
            gic.set_device_attr(&a)
                .map_err(|e| ioctl_err(format!("KVM_SET_DEVICE_ATTR(vGICv3 {what})"), e))
        };
        set(
            KVM_DEV_ARM_VGIC_GRP_ADDR,
            KVM_VGIC_V3_ADDR_TYPE_DIST as u64,
            Some(&GICD_BASE),
            "distributor address",
        )?;
        set(
            KVM_DEV_ARM_VGIC_GRP_ADDR,
            KVM_VGIC_V3_ADDR_TYPE_REDIST as u64,
            Some(&GICR_BASE),
            "redistributor address",
        )?;
        let nr_irqs = GIC_NR_IRQS as u64;
        // NR_IRQS takes a pointer to a u32.
        let nr = kvm_device_attr {
            group: KVM_DEV_ARM_VGIC_GRP_NR_IRQS,
            attr: 0,
            addr: &(nr_irqs as u32) as *const u32 as u64,
            flags: 0,
        };
        gic.set_device_attr(&nr)
            .map_err(|e| ioctl_err("KVM_SET_DEVICE_ATTR(vGICv3 NR_IRQS)", e))?;
        set(
            KVM_DEV_ARM_VGIC_GRP_CTRL,
            KVM_DEV_ARM_VGIC_CTRL_INIT as u64,
            None,
            "CTRL_INIT",
        )?;
        Ok(gic)
    }

    /// How apflab hypercalls reach the VMM on this host (the device tree
    /// must tell the guest).
    pub fn conduit(&self) -> HypercallConduit {
        self.conduit
    }

    /// A handle to raise and lower PPIs.
    pub fn irq_line(&self) -> KvmIrqLine {
        KvmIrqLine {
            vm: Arc::clone(&self.vm),
        }
    }

    /// Guest RAM (shareable with the pager's thread).
    pub fn ram(&self) -> Arc<GuestRam> {
        Arc::clone(&self.ram)
    }
}

impl Hypervisor for KvmHypervisor {
    type Vcpu = KvmVcpu;

    fn memory(&self) -> &GuestMemoryMmap {
        self.ram.memory()
    }

    fn create_vcpu(&mut self, index: u32, ops: Arc<dyn VmOps>) -> Result<KvmVcpu, HypervisorError> {
        let fd = self
            .vcpus
            .get_mut(index as usize)
            .and_then(Option::take)
            .ok_or(HypervisorError::NoSuchVcpu(index))?;
        kick::install_handler()?;
        Ok(KvmVcpu {
            index,
            fd,
            ops,
            ram: Arc::clone(&self.ram),
            irq: self.irq_line(),
            kick: Arc::new(KickState::default()),
            bound: false,
            origin: Instant::now(),
            settle_pending: false,
            unexplained_efaults: 0,
        })
    }
}

impl Residency for KvmHypervisor {
    fn set_resident(&mut self, gpa: Gpa, resident: bool) -> Result<(), HypervisorError> {
        Ok(self.ram.set_resident(gpa.0, resident)?)
    }

    fn is_resident(&self, gpa: Gpa) -> bool {
        self.ram.is_resident(gpa.0)
    }

    fn guest_memory(&self) -> &GuestMemoryMmap {
        self.ram.memory()
    }
}

/// One arm64 KVM vCPU. Runs on one host thread at a time.
pub struct KvmVcpu {
    index: u32,
    fd: VcpuFd,
    /// Where MMIO exits are completed, inside [`Vcpu::run`].
    ops: Arc<dyn VmOps>,
    ram: Arc<GuestRam>,
    irq: KvmIrqLine,
    kick: Arc<KickState>,
    /// This thread's kick signal reaches this vCPU.
    bound: bool,
    /// Time zero of the run (device accesses are timed from it).
    origin: Instant,
    /// The last exit was MMIO: KVM completes it (PC += 4, load result) on
    /// the next entry, so register writes must wait until that happened.
    settle_pending: bool,
    unexplained_efaults: u32,
}

impl KvmVcpu {
    /// A handle that kicks this vCPU from another thread.
    pub fn kicker(&self) -> KvmVcpuKicker {
        KvmVcpuKicker(Kicker {
            state: Arc::clone(&self.kick),
        })
    }

    /// Sets time zero of the run, from which device accesses are timed.
    pub fn set_clock_origin(&mut self, origin: Instant) {
        self.origin = origin;
    }

    fn get(&self, id: u64, name: &str) -> Result<u64, KvmError> {
        let mut buf = [0u8; 8];
        self.fd
            .get_one_reg(id, &mut buf)
            .map_err(|e| ioctl_err(format!("KVM_GET_ONE_REG({name})"), e))?;
        Ok(u64::from_le_bytes(buf))
    }

    fn set(&self, id: u64, name: &str, value: u64) -> Result<(), KvmError> {
        self.fd
            .set_one_reg(id, &value.to_le_bytes())
            .map(|_| ())
            .map_err(|e| ioctl_err(format!("KVM_SET_ONE_REG({name})"), e))
    }

    /// Lets KVM finish a pending MMIO exit (advance PC, write the loaded
    /// value) without running guest code: `immediate_exit` makes `KVM_RUN`
    /// return `EINTR` right after completing it. Otherwise KVM would apply
    /// the PC increment on top of registers we are about to write.
    fn settle(&mut self) -> Result<(), KvmError> {
        if !self.settle_pending {
            return Ok(());
        }
        self.fd.set_kvm_immediate_exit(1);
        let r = self.fd.run().map(|_| ()).map_err(|e| e.errno());
        self.fd.set_kvm_immediate_exit(0);
        self.settle_pending = false;
        match r {
            Ok(()) | Err(libc::EINTR) => Ok(()),
            Err(errno) => Err(KvmError::Ioctl {
                op: "KVM_RUN(complete MMIO, immediate_exit)".into(),
                errno: std::io::Error::from_raw_os_error(errno),
            }),
        }
    }

    /// The guest's access in the MMIO exit just taken went where no device
    /// answers: instead of completing it, KVM enters the synchronous
    /// external abort the bus gives (ESR data abort, DFSC 0x10; FAR the
    /// address; ELR the access), as emu and QEMU's TCG do.
    fn raise_external_abort(&mut self) -> Result<(), KvmError> {
        // Not an MMIO exit any more: the next KVM_RUN must not complete
        // the access (load a value, step PC past it).
        self.fd.get_kvm_run().exit_reason = KVM_EXIT_UNKNOWN;
        let mut events = self
            .fd
            .get_vcpu_events()
            .map_err(|e| ioctl_err("KVM_GET_VCPU_EVENTS", e))?;
        events.exception.ext_dabt_pending = 1;
        self.fd
            .set_vcpu_events(&events)
            .map_err(|e| ioctl_err("KVM_SET_VCPU_EVENTS(ext_dabt_pending)", e))
    }

    fn bind(&mut self) {
        if !self.bound {
            kick::bind_current_thread(self.fd.get_kvm_run());
            // SAFETY: pthread_self has no preconditions.
            let me = unsafe { libc::pthread_self() };
            self.kick.thread.store(me as u64, Ordering::SeqCst);
            self.bound = true;
        }
    }

    /// Reads x1..x5 for a forwarded HVC.
    fn hypercall_args(&self) -> Result<[u64; 5], KvmError> {
        let mut args = [0u64; 5];
        for (i, a) in args.iter_mut().enumerate() {
            *a = self.get(regs::x(i as u8 + 1), "hypercall argument")?;
        }
        Ok(args)
    }

    fn translation_regs(&self) -> Result<TranslationRegs, KvmError> {
        Ok(TranslationRegs {
            sctlr: self.get(regs::SCTLR_EL1, "SCTLR_EL1")?,
            tcr: self.get(regs::TCR_EL1, "TCR_EL1")?,
            ttbr0: self.get(regs::TTBR0_EL1, "TTBR0_EL1")?,
            ttbr1: self.get(regs::TTBR1_EL1, "TTBR1_EL1")?,
        })
    }

    /// Turns an `EFAULT` from `KVM_RUN` into the withheld page's exit.
    fn not_resident_exit(&mut self) -> Result<Option<VmExit>, KvmError> {
        let pc = self.get(regs::PC, "PC")?;
        let tregs = self.translation_regs()?;
        let ram = Arc::clone(&self.ram);
        let ps = self.get(regs::PSTATE, "PSTATE")?;
        let mut src = VcpuRegs {
            vcpu: self,
            pstate: Some(ps),
        };
        match locate(pc, &tregs, &mut src, ram.as_ref()) {
            Ok(site) => {
                self.unexplained_efaults = 0;
                tracing::trace!(vcpu = self.index, ?site, "kvm: not-resident fault");
                let access = if site.kind == FaultKind::InstructionFetch {
                    PageAccess::Fetch
                } else if site.write {
                    PageAccess::Write
                } else {
                    PageAccess::Read
                };
                Ok(Some(VmExit::NotResident(NotResidentFault::new(
                    Gpa(site.ipa_page),
                    access,
                    pc,
                    site.va,
                    ps,
                ))))
            }
            // The page was made resident between the fault and now: by
            // another vCPU's fetch of it, say. An instruction that accesses
            // no memory, on a page `locate` found resident, can only have
            // faulted on its own fetch, which is that case too.
            Err(
                LocateError::AllResident { .. }
                | LocateError::Access {
                    source: AccessError::NotMemoryAccess { .. },
                    ..
                },
            ) if self.unexplained_efaults < MAX_UNEXPLAINED_EFAULTS => {
                self.unexplained_efaults += 1;
                Ok(None)
            }
            Err(e) => Ok(Some(VmExit::Crash {
                pc,
                addr: None,
                reason: CrashReason::FaultNotLocated(Arc::new(e)),
            })),
        }
    }
}

/// Register reads for the fault locator, straight from the vCPU.
struct VcpuRegs<'a> {
    vcpu: &'a KvmVcpu,
    pstate: Option<u64>,
}

impl RegisterSource for VcpuRegs<'_> {
    type Error = KvmError;

    fn read(&mut self, reg: AddrReg) -> Result<u64, KvmError> {
        match reg {
            AddrReg::X(n) => self.vcpu.get(regs::x(n), "address register"),
            AddrReg::Sp => {
                let pstate = match self.pstate {
                    Some(p) => p,
                    None => *self.pstate.insert(self.vcpu.get(regs::PSTATE, "PSTATE")?),
                };
                let (id, name) = regs::current_sp(pstate);
                self.vcpu.get(id, name)
            }
        }
    }
}

impl Vcpu for KvmVcpu {
    fn index(&self) -> u32 {
        self.index
    }

    fn run(&mut self) -> Result<VmExit, HypervisorError> {
        self.bind();
        loop {
            if self.kick.pending.swap(false, Ordering::SeqCst) {
                return Ok(VmExit::SliceEnd);
            }
            self.settle_pending = false;
            let exit = match self.fd.run() {
                // KVM completes the access (the loaded value, PC += 4) on
                // the next entry; register writes before it must settle it.
                Ok(VcpuExit::MmioRead(addr, _) | VcpuExit::MmioWrite(addr, _))
                    if !self.ops.decodes(addr) =>
                {
                    self.raise_external_abort()?;
                    continue;
                }
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    self.settle_pending = true;
                    let now = self.origin.elapsed().as_nanos() as u64;
                    self.ops.mmio_read(self.index, addr, data, now);
                    continue;
                }
                Ok(VcpuExit::MmioWrite(addr, data)) => {
                    self.settle_pending = true;
                    let now = self.origin.elapsed().as_nanos() as u64;
                    match self.ops.mmio_write(self.index, addr, data, now) {
                        MmioWriteKind::Plain => continue,
                        // A doorbell call: its effects and any engine call
                        // wait in the machine for the vCPU loop.
                        MmioWriteKind::Hypercall => VmExit::SliceEnd,
                    }
                }
                Ok(VcpuExit::Hypercall(h)) => {
                    let function = h.nr as u32;
                    VmExit::Hypercall {
                        function,
                        args: self.hypercall_args()?,
                        conduit: Conduit::Hvc,
                    }
                }
                Ok(VcpuExit::SystemEvent(kind, _)) => match kind {
                    KVM_SYSTEM_EVENT_SHUTDOWN => VmExit::SystemEvent { reset: false },
                    KVM_SYSTEM_EVENT_RESET => VmExit::SystemEvent { reset: true },
                    other => VmExit::Crash {
                        pc: self.get(regs::PC, "PC")?,
                        addr: None,
                        reason: CrashReason::SystemEvent(other),
                    },
                },
                Ok(VcpuExit::Intr) => continue,
                Ok(VcpuExit::Unsupported(KVM_EXIT_ARM_NISV)) => {
                    // SAFETY: exit_reason is KVM_EXIT_ARM_NISV, so arm_nisv
                    // is the active member of the union.
                    let nisv = unsafe { self.fd.get_kvm_run().__bindgen_anon_1.arm_nisv };
                    VmExit::Crash {
                        pc: self.get(regs::PC, "PC")?,
                        addr: Some(nisv.fault_ipa),
                        reason: CrashReason::AccessWithoutSyndrome {
                            ipa: nisv.fault_ipa,
                            esr_iss: nisv.esr_iss,
                        },
                    }
                }
                Ok(other) => {
                    let reason = CrashReason::UnexpectedKvmExit(format!("{other:?}"));
                    VmExit::Crash {
                        pc: self.get(regs::PC, "PC")?,
                        addr: None,
                        reason,
                    }
                }
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    self.fd.set_kvm_immediate_exit(0);
                    continue;
                }
                Err(e) if e.errno() == libc::EFAULT => match self.not_resident_exit()? {
                    Some(exit) => exit,
                    None => continue,
                },
                Err(e) => return Err(ioctl_err(format!("KVM_RUN(vcpu {})", self.index), e).into()),
            };
            return Ok(exit);
        }
    }

    fn get_reg(&self, reg: Reg) -> Result<u64, HypervisorError> {
        let (id, name) = match reg {
            Reg::Sp => regs::current_sp(self.get(regs::PSTATE, "PSTATE")?),
            other => regs::id_of(other).ok_or_else(|| HypervisorError::NoSuchRegister {
                backend: "kvm",
                op: format!("get {other:?}"),
            })?,
        };
        Ok(self.get(id, name)?)
    }

    fn set_reg(&mut self, reg: Reg, value: u64) -> Result<(), HypervisorError> {
        self.settle()?;
        let (id, name) = match reg {
            Reg::Sp => regs::current_sp(self.get(regs::PSTATE, "PSTATE")?),
            other => regs::id_of(other).ok_or_else(|| HypervisorError::NoSuchRegister {
                backend: "kvm",
                op: format!("set {other:?}"),
            })?,
        };
        Ok(self.set(id, name, value)?)
    }

    fn inject_exception(&mut self, exc: SyncException) -> Result<(), HypervisorError> {
        self.settle()?;
        let pstate = self.get(regs::PSTATE, "PSTATE")?;
        let vbar = self.get(regs::VBAR_EL1, "VBAR_EL1")?;
        let vector = vbar + arch::vector_offset(pstate, EntryKind::Sync);
        self.set(regs::ESR_EL1, "ESR_EL1", exc.esr)?;
        self.set(regs::FAR_EL1, "FAR_EL1", exc.far)?;
        self.set(regs::ELR_EL1, "ELR_EL1", exc.return_pc)?;
        self.set(regs::SPSR_EL1, "SPSR_EL1", pstate)?;
        self.set(regs::PSTATE, "PSTATE", pstate::EL1H_MASKED)?;
        self.set(regs::PC, "PC", vector)?;
        Ok(())
    }

    /// Sets this vCPU's "page ready" PPI on the in-kernel GIC, which
    /// delivers it when the guest unmasks (level semantics: nothing is lost
    /// while the guest has it masked).
    fn set_ready_line(&mut self, level: bool) -> Result<(), HypervisorError> {
        Ok(self.irq.set_ppi(self.index, APF_READY_PPI, level)?)
    }
}

impl Drop for KvmVcpu {
    fn drop(&mut self) {
        if self.bound {
            // SAFETY: pthread_self has no preconditions.
            let me = unsafe { libc::pthread_self() } as u64;
            if self.kick.thread.swap(0, Ordering::SeqCst) == me {
                kick::unbind_current_thread();
            }
        }
    }
}
