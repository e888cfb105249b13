//! [`Vm`]: builds the machine from a [`VmConfig`] and runs it to the end on
//! the backend the config names (the run loops are `emu::run` and
//! `kvm::run`).
//!
//! ```no_run
//! use apflab_vmm::{GuestExit, NoFarMemory, Vm, VmConfig};
//!
//! # fn config() -> VmConfig { unimplemented!() }
//! let vm = Vm::new(config())?;
//! let outcome = vm.run(&mut NoFarMemory)?;
//! assert_eq!(outcome.exit, GuestExit::PowerOff);
//! println!("{}", outcome.console);
//! # Ok::<(), apflab_vmm::VmError>(())
//! ```

use std::sync::Arc;

use apflab_abi::boot_point;
use apflab_abi::memory_map::{DTB_MAX_SIZE, RAM_BASE};
use tracing::info;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::config::{BackendKind, ConfigError, VmConfig};
use crate::error::VmError;
use crate::fdt;
use crate::loader::{self, LoadedKernel};
use crate::outcome::RunOutcome;
use crate::snapshot::SnapshotRequest;
use apflab_hypervisor::FaultHook;
use apflab_hypervisor::HypervisorError;
use apflab_hypervisor::PageServer;

/// A VM ready to run.
pub struct Vm {
    // Read only by the run loops, which a build without a backend for this
    // host does not have.
    #[cfg_attr(
        not(any(
            feature = "emu",
            all(target_arch = "aarch64", target_os = "linux", feature = "kvm")
        )),
        allow(dead_code)
    )]
    config: VmConfig,
    memory: GuestMemoryMmap,
    kernel: LoadedKernel,
    /// The device tree written at [`LoadedKernel::dtb_addr`].
    #[cfg_attr(not(feature = "emu"), allow(dead_code))]
    dtb: Vec<u8>,
    page_server: Option<Arc<dyn PageServer>>,
    snapshot: Option<SnapshotRequest>,
    /// The kvm VM (its RAM is `memory`), when the backend is kvm.
    #[cfg(all(target_arch = "aarch64", target_os = "linux", feature = "kvm"))]
    kvm: Option<crate::kvm::KvmHypervisor>,
}

impl Vm {
    /// Checks `config`, allocates guest RAM, loads the kernel and writes the
    /// device tree.
    pub fn new(config: VmConfig) -> Result<Vm, VmError> {
        config.validate()?;
        if config.backend == BackendKind::Kvm
            && let Some(why) = crate::kvm::unavailable_reason()
        {
            return Err(VmError::KvmUnavailable(why));
        }
        let ram_size = config.memory_mib << 20;
        #[cfg(all(target_arch = "aarch64", target_os = "linux", feature = "kvm"))]
        let kvm = match config.backend {
            BackendKind::Kvm => Some(
                crate::kvm::KvmHypervisor::new(config.vcpus, RAM_BASE, ram_size)
                    .map_err(|e| VmError::Hypervisor(e.into()))?,
            ),
            BackendKind::Emu => None,
        };
        #[cfg(all(target_arch = "aarch64", target_os = "linux", feature = "kvm"))]
        let memory = match &kvm {
            Some(hv) => apflab_hypervisor::Hypervisor::memory(hv).clone(),
            None => new_ram(&config, ram_size)?,
        };
        #[cfg(not(all(target_arch = "aarch64", target_os = "linux", feature = "kvm")))]
        let memory = new_ram(&config, ram_size)?;
        let mut kernel = loader::load_kernel(&config.kernel, &memory, ram_size)?;
        // A Linux kernel keeps the command line it booted with, so the
        // workload's words are handed over after the boot instead (see
        // `boot_point`); apflab's kernel reads its device tree again then.
        let bootargs = if matches!(crate::arm64_image::read_header(&config.kernel), Ok(Some(_))) {
            kernel.handed_over = boot_point::after_boot_words(&config.bootargs)
                .collect::<Vec<_>>()
                .join(" ");
            boot_point::boot_words(&config.bootargs)
                .chain([boot_point::HANDOVER_WORD])
                .collect::<Vec<_>>()
                .join(" ")
        } else {
            config.bootargs.clone()
        };
        let initrd = config
            .initrd
            .as_deref()
            .map(|path| loader::load_initrd(path, &memory, ram_size, &kernel))
            .transpose()?;
        let chosen = fdt::Chosen {
            bootargs: &bootargs,
            initrd,
        };
        let dtb = fdt::build(config.vcpus, ram_size, &chosen)?;
        if kernel.dtb_addr + DTB_MAX_SIZE > RAM_BASE + ram_size {
            return Err(ConfigError::MemoryTooSmall {
                requested: config.memory_mib,
                minimum: crate::config::MIN_MEMORY_MIB,
            }
            .into());
        }
        memory
            .write_slice(&dtb, GuestAddress(kernel.dtb_addr))
            .map_err(|_| HypervisorError::OutsideRam(kernel.dtb_addr))?;
        info!(
            entry = format_args!("{:#x}", kernel.entry),
            dtb = format_args!("{:#x}", kernel.dtb_addr),
            "kernel loaded"
        );
        Ok(Vm {
            config,
            memory,
            kernel,
            dtb,
            page_server: None,
            snapshot: None,
            #[cfg(all(target_arch = "aarch64", target_os = "linux", feature = "kvm"))]
            kvm,
        })
    }

    /// Plugs in a server of non-resident pages that works inside the host
    /// kernel's fault path (kvm only; the run fails on emu).
    pub fn set_page_server(&mut self, server: Arc<dyn PageServer>) {
        self.page_server = Some(server);
    }

    /// Saves the machine at the end of the guest's boot, or starts from
    /// such a snapshot instead of booting (emu only; see
    /// [`crate::snapshot`]).
    pub fn set_snapshot(&mut self, request: SnapshotRequest) {
        self.snapshot = Some(request);
    }

    /// Guest RAM (e.g. for a pager to prepare page contents).
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    /// Where the kernel was loaded.
    pub fn kernel(&self) -> &LoadedKernel {
        &self.kernel
    }

    /// Runs the guest until it powers off, resets, panics, crashes or runs
    /// out of virtual time. `hook` is told of every not-resident fault and
    /// async-PF hypercall ([`crate::NoFarMemory`] for a run without far
    /// memory); on kvm it lives on the calling (control) thread.
    pub fn run(self, hook: &mut dyn FaultHook) -> Result<RunOutcome, VmError> {
        if self.snapshot.is_some() && self.config.backend == BackendKind::Kvm {
            return Err(VmError::BackendUnavailable {
                backend: "kvm",
                why: "snapshots need the emu backend (the kvm one cannot count \
                      instructions, so its runs are not repeatable)",
            });
        }
        #[cfg(all(target_arch = "aarch64", target_os = "linux", feature = "kvm"))]
        let mut vm = self;
        #[cfg(all(target_arch = "aarch64", target_os = "linux", feature = "kvm"))]
        if let Some(hv) = vm.kvm.take() {
            return crate::kvm::run::run(&vm.config, hv, vm.kernel, hook, vm.page_server);
        }
        #[cfg(not(all(target_arch = "aarch64", target_os = "linux", feature = "kvm")))]
        let vm = self;
        if vm.page_server.is_some() {
            return Err(VmError::BackendUnavailable {
                backend: "emu",
                why: "pages served in the host kernel's fault path need the kvm backend; \
                      use fault_path = \"vmm\" on emu",
            });
        }
        vm.run_emu(hook)
    }

    #[cfg(feature = "emu")]
    fn run_emu(self, hook: &mut dyn FaultHook) -> Result<RunOutcome, VmError> {
        use crate::emu::EmuVm;
        use crate::machine::Machine;
        use apflab_hypervisor::Hypervisor;

        let n = self.config.vcpus;
        let machine = Arc::new(Machine::new(
            n,
            self.memory.clone(),
            self.config.echo_console,
        ));
        machine.set_workload_args(&self.kernel.handed_over);
        let mut hv = EmuVm::new(self.memory.clone(), n, self.config.cost);
        let vcpus = (0..n)
            .map(|i| hv.create_vcpu(i, machine.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        let residency = hv.residency();
        let mut run = crate::emu::run::EmuRun::new(
            self.config,
            self.kernel,
            machine,
            vcpus,
            residency,
            hook,
            self.memory,
            self.dtb,
        );
        if let Some(request) = self.snapshot {
            run.set_snapshot(request)?;
        }
        run.run()
    }

    #[cfg(not(feature = "emu"))]
    fn run_emu(self, _hook: &mut dyn FaultHook) -> Result<RunOutcome, VmError> {
        Err(VmError::BackendUnavailable {
            backend: "emu",
            why: "this apflab was built without the `emu` feature; use --backend kvm",
        })
    }
}

/// Anonymous guest RAM for the emu backend.
fn new_ram(config: &VmConfig, ram_size: u64) -> Result<GuestMemoryMmap, VmError> {
    let ram = GuestMemoryMmap::from_ranges(&[(GuestAddress(RAM_BASE), ram_size as usize)])
        .map_err(|e| VmError::Allocate {
            mib: config.memory_mib,
            detail: e.to_string(),
        })?;
    // Transparent huge pages, as QEMU asks for its guest RAM: a guest that
    // sweeps its memory otherwise evicts the host TLB's entries, those of
    // the engine's own code with them, at every page (the sieve of
    // benches/qemu-ratio ran 1.17x QEMU's time without, 1.03x with). Only
    // the host's mapping changes; what the guest sees does not. Advice the
    // host ignores or refuses costs nothing but the speed.
    #[cfg(target_os = "linux")]
    for region in vm_memory::GuestMemoryBackend::iter(&ram) {
        // SAFETY: advice on a mapping this function made and owns.
        let _ = unsafe {
            libc::madvise(
                region.as_ptr().cast(),
                vm_memory::GuestMemoryRegion::len(region) as usize,
                libc::MADV_HUGEPAGE,
            )
        };
    }
    Ok(ram)
}
