//! The host-side cost on emu of telling the guest "not present", each way
//! the protocol offers, on a real software vCPU (unicorn):
//!
//! - `data_abort` and `dedicated_ec`: the exception entry the backend builds
//!   (`Vcpu::inject_exception`);
//! - `sdei`: the SDEI firmware's signal and dispatch (interrupted context
//!   saved, handler entered), then the handler's
//!   `EVENT_COMPLETE_AND_RESUME`: its answer in x0..x3 and the resume into
//!   the IRQ vector with the interrupted context restored.
//!
//! Each iteration first puts the vCPU back in an EL0 task at the faulting
//! instruction. The engine's own work (policy call, token, control block)
//! is the same for all three and is in the `apf` bench; the extra guest
//! exit SDEI costs (the completing HVC) is in the `emu` bench.

use std::hint::black_box;
use std::sync::Arc;

use apflab_abi::addr::Gpa;
use apflab_abi::apf::Token;
use apflab_abi::memory_map::RAM_BASE;
use apflab_abi::policy::NotPresentDelivery;
use apflab_abi::sdei as abi;
use apflab_apf::not_present;
use apflab_hypervisor::arch::{Reg, pstate};
use apflab_hypervisor::{Hypervisor, NotResidentFault, PageAccess, Vcpu};
use apflab_vmm::CostModel;
use apflab_vmm::emu::{EmuVcpu, EmuVm};
use apflab_vmm::machine::Machine;
use apflab_vmm::sdei::{Firmware, deliver};
use criterion::{Criterion, criterion_group, criterion_main};
use vm_memory::{GuestAddress, GuestMemoryMmap};

const VBAR: u64 = RAM_BASE + 0x800;
const HANDLER: u64 = RAM_BASE + 0x2000;
/// "IRQ from a lower exception level, AArch64".
const LOWER_EL_IRQ: u64 = 0x480;
const TASK_PC: u64 = 0x10_0000_1000;

/// A vCPU with what it needs kept alive (its engine maps this RAM).
struct Cpu {
    vcpu: EmuVcpu,
    _vm: EmuVm,
    _machine: Arc<Machine>,
}

fn cpu() -> Cpu {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(RAM_BASE), 16 << 20)]).expect("RAM");
    let machine = Arc::new(Machine::new(1, mem.clone(), false));
    let mut vm = EmuVm::new(mem, 1, CostModel::default());
    let mut vcpu = vm.create_vcpu(0, machine.clone()).expect("vCPU");
    vcpu.set_reg(Reg::VbarEl1, VBAR).expect("VBAR_EL1");
    Cpu {
        vcpu,
        _vm: vm,
        _machine: machine,
    }
}

/// Back in the task, at the faulting instruction.
fn at_el0(v: &mut EmuVcpu) {
    v.set_reg(Reg::Pstate, pstate::EL0T).expect("PSTATE");
    v.set_reg(Reg::Pc, TASK_PC).expect("PC");
}

fn fault() -> NotResidentFault {
    NotResidentFault::new(
        Gpa(RAM_BASE + (40 << 20)),
        PageAccess::Read,
        TASK_PC,
        0x10_0000_0000,
        pstate::EL0T,
    )
}

fn exceptions(c: &mut Criterion) {
    let mut g = c.benchmark_group("not_present_delivery");
    for (name, delivery) in [
        ("data_abort", NotPresentDelivery::DataAbort),
        ("dedicated_ec", NotPresentDelivery::DedicatedEc),
    ] {
        let mut cpu = cpu();
        let exc = not_present::exception(delivery, Token::new(0, 1), &fault());
        g.bench_function(name, |b| {
            b.iter(|| {
                at_el0(&mut cpu.vcpu);
                cpu.vcpu.inject_exception(black_box(exc)).expect("entry");
            })
        });
    }
    let mut cpu = cpu();
    let mut fw = Firmware::new(1);
    let ev = u64::from(abi::EVENT_APF);
    for (f, args) in [
        (abi::FN_EVENT_REGISTER, [ev, HANDLER, 2, 0, 0]),
        (abi::FN_EVENT_ENABLE, [ev, 0, 0, 0, 0]),
        (abi::FN_PE_UNMASK, [0; 5]),
    ] {
        assert_eq!(fw.call(0, f, args), 0, "SDEI set-up");
    }
    let resume = [VBAR + LOWER_EL_IRQ, 0, 0, 0, 0];
    g.bench_function("sdei", |b| {
        b.iter(|| {
            let v = &mut cpu.vcpu;
            at_el0(v);
            fw.signal(0);
            assert_eq!(deliver(&mut fw, v).expect("dispatch"), 1);
            let x0 = fw.call(0, abi::FN_EVENT_COMPLETE_AND_RESUME, black_box(resume));
            for (n, x) in [x0, 0, 0, 0].into_iter().enumerate() {
                v.set_reg(Reg::X(n as u8), x).expect("x0..x3");
            }
            deliver(&mut fw, v).expect("resume");
        })
    });
    assert_eq!(cpu.vcpu.get_reg(Reg::Pc).expect("PC"), VBAR + LOWER_EL_IRQ);
    assert_eq!(cpu.vcpu.get_reg(Reg::ElrEl1).expect("ELR"), TASK_PC);
    g.finish();
}

criterion_group!(benches, exceptions);
criterion_main!(benches);
