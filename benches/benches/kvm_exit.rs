//! Guest MMIO exit round trips on arm64 KVM: through apflab's kvm vCPU
//! (`KvmVcpu::run`, which completes each access through the device's
//! `VmOps`) against a minimal kvm-ioctls loop running the same guest code.
//! One round trip is a load and a store to a device register: `run`
//! completes the load inside and returns after the store, which the device
//! answers as a doorbell call would. The goal is a ratio of at most 1.1.
//!
//! `cargo bench -p apflab-benches --bench kvm_exit` on an aarch64 Linux
//! host with /dev/kvm (also inside the nested VM of scripts/kvm-smoke with
//! APFLAB_KVM_BENCH=1). Anywhere else it says why it skips and exits 0.
//! It prints which kind of host it ran on: nested software emulation
//! inflates exits about a hundredfold, so only ratios carry over.

#[cfg(all(target_arch = "aarch64", target_os = "linux"))]
mod aarch64 {
    use std::hint::black_box;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use apflab_abi::memory_map::RAM_BASE;
    use apflab_abi::memory_map::{GICD_BASE, GICR_BASE};
    use apflab_hypervisor::arch::{Reg, SysRegId, pstate};
    use apflab_hypervisor::{Hypervisor, MmioWriteKind, Vcpu, VmExit, VmOps};
    use apflab_vmm::kvm::KvmHypervisor;
    use criterion::Criterion;
    use kvm_bindings::{
        KVM_ARM_VCPU_PSCI_0_2, KVM_DEV_ARM_VGIC_CTRL_INIT, KVM_DEV_ARM_VGIC_GRP_ADDR,
        KVM_DEV_ARM_VGIC_GRP_CTRL, KVM_REG_ARM_CORE, KVM_REG_ARM64, KVM_REG_SIZE_U64,
        KVM_VGIC_V3_ADDR_TYPE_DIST, KVM_VGIC_V3_ADDR_TYPE_REDIST, kvm_create_device,
        kvm_device_attr, kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V3, kvm_userspace_memory_region,
        kvm_vcpu_init,
    };
    use kvm_ioctls::{DeviceFd, Kvm, VcpuExit, VcpuFd, VmFd};

    /// Outside RAM and the GIC: every access is an MMIO exit.
    const MMIO_ADDR: u64 = 0x0a00_0000;
    const RAM_SIZE: u64 = 2 << 20;
    /// `movz x0, #0x0a00, lsl #16; 1: ldr w1, [x0]; str w1, [x0]; b 1b`.
    const GUEST_CODE: [u32; 4] = [0xd2a1_4000, 0xb940_0001, 0xb900_0001, 0x17ff_fffe];

    /// A device that answers every read with a constant, as cheap as the
    /// minimal loop's answer, and every write as a doorbell call (so that
    /// `run` returns).
    struct ConstDevice;

    impl VmOps for ConstDevice {
        fn decodes(&self, _: u64) -> bool {
            true
        }
        fn mmio_read(&self, _: u32, _: u64, data: &mut [u8], _: u64) {
            data.fill(0x5a);
        }
        fn mmio_write(&self, _: u32, _: u64, _: &[u8], _: u64) -> MmioWriteKind {
            MmioWriteKind::Hypercall
        }
        fn set_irq_line(&self, _: u32, _: u32, _: bool) {}
        fn sysreg_read(&self, _: u32, _: SysRegId, _: u64) -> Option<u64> {
            None
        }
        fn sysreg_write(&self, _: u32, _: SysRegId, _: u64, _: u64) -> bool {
            false
        }
    }

    fn guest_code_bytes() -> Vec<u8> {
        GUEST_CODE.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    /// apflab's vCPU, ready to run the guest loop.
    struct Apflab {
        _hv: KvmHypervisor,
        vcpu: apflab_vmm::kvm::KvmVcpu,
    }

    impl Apflab {
        fn new() -> Apflab {
            use vm_memory::{Bytes, GuestAddress};
            let mut hv = KvmHypervisor::new(1, RAM_BASE, RAM_SIZE).expect("kvm VM");
            hv.memory()
                .write_slice(&guest_code_bytes(), GuestAddress(RAM_BASE))
                .expect("guest code");
            let mut vcpu = hv.create_vcpu(0, Arc::new(ConstDevice)).expect("vCPU");
            vcpu.set_reg(Reg::Pstate, pstate::EL1H_MASKED).unwrap();
            vcpu.set_reg(Reg::Pc, RAM_BASE).unwrap();
            Apflab { _hv: hv, vcpu }
        }

        /// One load and one store exit, as the kvm vCPU thread runs them.
        fn round_trip(&mut self) {
            match self.vcpu.run().expect("KVM_RUN") {
                VmExit::SliceEnd => {}
                other => panic!("unexpected exit {other:?}"),
            }
        }
    }

    /// The smallest loop kvm-ioctls allows.
    struct Minimal {
        _kvm: Kvm,
        _gic: DeviceFd,
        _vm: VmFd,
        vcpu: VcpuFd,
        _ram: vm_memory::GuestMemoryMmap,
    }

    impl Minimal {
        fn new() -> Minimal {
            use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
            let kvm = Kvm::new().expect("/dev/kvm");
            let vm = kvm.create_vm().expect("KVM_CREATE_VM");
            let ram = vm_memory::GuestMemoryMmap::<()>::from_ranges(&[(
                GuestAddress(RAM_BASE),
                RAM_SIZE as usize,
            )])
            .unwrap();
            ram.write_slice(&guest_code_bytes(), GuestAddress(RAM_BASE))
                .unwrap();
            let host = ram.get_host_address(GuestAddress(RAM_BASE)).unwrap() as u64;
            let region = kvm_userspace_memory_region {
                slot: 0,
                flags: 0,
                guest_phys_addr: RAM_BASE,
                memory_size: RAM_SIZE,
                userspace_addr: host,
            };
            // SAFETY: the region is `ram`, which lives as long as the VM.
            unsafe { vm.set_user_memory_region(region) }.expect("memslot");
            let vcpu = vm.create_vcpu(0).expect("vCPU");
            let mut init = kvm_vcpu_init::default();
            vm.get_preferred_target(&mut init).unwrap();
            init.features[0] |= 1 << KVM_ARM_VCPU_PSCI_0_2;
            vcpu.vcpu_init(&init).unwrap();
            // The same in-kernel GICv3 as apflab's VM: its state is synced
            // on every entry and exit, which is the VM's cost, not the VMM's.
            let mut dev = kvm_create_device {
                type_: kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V3,
                fd: 0,
                flags: 0,
            };
            let gic = vm.create_device(&mut dev).expect("vGICv3");
            let attr = |group: u32, attr: u64, addr: u64| kvm_device_attr {
                group,
                attr,
                addr,
                flags: 0,
            };
            for (kind, base) in [
                (KVM_VGIC_V3_ADDR_TYPE_DIST, GICD_BASE),
                (KVM_VGIC_V3_ADDR_TYPE_REDIST, GICR_BASE),
            ] {
                let a = attr(
                    KVM_DEV_ARM_VGIC_GRP_ADDR,
                    u64::from(kind),
                    &raw const base as u64,
                );
                gic.set_device_attr(&a).expect("vGICv3 address");
            }
            let a = attr(
                KVM_DEV_ARM_VGIC_GRP_CTRL,
                u64::from(KVM_DEV_ARM_VGIC_CTRL_INIT),
                0,
            );
            gic.set_device_attr(&a).expect("vGICv3 init");
            let core = |off: usize| {
                KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_CORE as u64 | (off / 4) as u64
            };
            // user_pt_regs: x0..x30, sp, pc, pstate.
            vcpu.set_one_reg(core(32 * 8), &RAM_BASE.to_le_bytes())
                .unwrap();
            vcpu.set_one_reg(core(33 * 8), &pstate::EL1H_MASKED.to_le_bytes())
                .unwrap();
            Minimal {
                _kvm: kvm,
                _gic: gic,
                _vm: vm,
                vcpu,
                _ram: ram,
            }
        }

        fn round_trip(&mut self) {
            match self.vcpu.run().expect("KVM_RUN") {
                VcpuExit::MmioRead(addr, data) => {
                    debug_assert_eq!(addr, MMIO_ADDR);
                    data.fill(0x5a);
                }
                other => panic!("unexpected exit {other:?}"),
            }
            match self.vcpu.run().expect("KVM_RUN") {
                VcpuExit::MmioWrite(addr, _) => debug_assert_eq!(addr, MMIO_ADDR),
                other => panic!("unexpected exit {other:?}"),
            }
        }
    }

    /// Mean time per round trip over `n` of them.
    fn mean(n: u32, mut f: impl FnMut()) -> Duration {
        let t = Instant::now();
        for _ in 0..n {
            f();
        }
        t.elapsed() / n
    }

    fn host_kind() -> String {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let dt_model = std::fs::read_to_string("/proc/device-tree/model").unwrap_or_default();
        let model = dt_model.trim_end_matches('\0').trim();
        let implementer = cpuinfo
            .lines()
            .find(|l| l.starts_with("CPU implementer"))
            .and_then(|l| l.split(':').nth(1))
            .map_or("?", str::trim)
            .to_string();
        // QEMU's `virt` board is what the nested setup boots.
        let nested = model.contains("QEMU") || model.contains("virt");
        format!(
            "{} (board {:?}, CPU implementer {implementer})",
            if nested {
                "nested arm64 guest under QEMU: exits are ~100x slower than on hardware"
            } else {
                "aarch64 host"
            },
            if model.is_empty() { "?" } else { model },
        )
    }

    pub fn run() {
        if let Err(e) = Kvm::new() {
            println!("kvm_exit: skipped: /dev/kvm cannot be opened ({e})");
            return;
        }
        println!("kvm_exit: running on {}", host_kind());
        let mut apflab = Apflab::new();
        let mut minimal = Minimal::new();
        // First exits settle the vCPUs (first entry, stage-2 faults on the
        // code page).
        for _ in 0..10 {
            apflab.round_trip();
            minimal.round_trip();
        }

        let mut c = Criterion::default()
            .configure_from_args()
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(3));
        let mut g = c.benchmark_group("mmio_exit_round_trip");
        g.bench_function("apflab_vcpu", |b| b.iter(|| apflab.round_trip()));
        g.bench_function("minimal_kvm_ioctls", |b| b.iter(|| minimal.round_trip()));
        g.finish();

        // Interleaved blocks, so drift in the host affects both alike.
        const BLOCKS: u32 = 10;
        let (mut a, mut m) = (Duration::ZERO, Duration::ZERO);
        for _ in 0..BLOCKS {
            a += mean(500, || apflab.round_trip());
            m += mean(500, || minimal.round_trip());
        }
        let ratio = a.as_secs_f64() / m.as_secs_f64();
        println!(
            "kvm_exit: apflab {:.2} us, minimal {:.2} us per MMIO load + store round trip: ratio \
             {ratio:.3} (goal <= 1.1)",
            a.as_secs_f64() * 1e6 / f64::from(BLOCKS),
            m.as_secs_f64() * 1e6 / f64::from(BLOCKS),
        );
        black_box(ratio);
    }
}

fn main() {
    #[cfg(all(target_arch = "aarch64", target_os = "linux"))]
    aarch64::run();
    #[cfg(not(all(target_arch = "aarch64", target_os = "linux")))]
    println!(
        "kvm_exit: skipped: needs an aarch64 Linux host with /dev/kvm; this is {} {}",
        std::env::consts::ARCH,
        std::env::consts::OS
    );
}
