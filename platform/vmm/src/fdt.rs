//! The flattened device tree handed to the guest in x0, mirroring the nodes
//! QEMU's `virt` board generates for the same devices, plus an `apflab`
//! node advertising the hypercall doorbell, the `/firmware/sdei` node of
//! the SDEI firmware and an `apflab-apf` node naming the "page ready" PPI.

use apflab_abi::memory_map::{
    APF_COMPATIBLE, APF_READY_PPI, DOORBELL_BASE, DOORBELL_SIZE, DTB_MAX_SIZE, GICD_BASE,
    GICD_SIZE, GICR_BASE, GICR_STRIDE, PTIMER_PPI, RAM_BASE, RTC_BASE, RTC_SIZE, RTC_SPI,
    UART_BASE, UART_SIZE, UART_SPI, VTIMER_PPI,
};
use vm_fdt::FdtWriter;

use apflab_hypervisor::arch::mpidr_of;

/// `compatible` of the apflab node (the doorbell page).
pub const APFLAB_COMPATIBLE: &str = apflab_abi::memory_map::DOORBELL_COMPATIBLE;

/// `compatible` of the `/firmware/sdei` node (the SDEI 1.0 binding).
pub const SDEI_COMPATIBLE: &str = "arm,sdei-1.0";

const PHANDLE_GIC: u32 = 1;
const PHANDLE_CLK: u32 = 2;
/// GIC binding: interrupt types and flags.
const GIC_SPI: u32 = 0;
const GIC_PPI: u32 = 1;
const IRQ_LEVEL_HIGH: u32 = 4;

/// The longest command line arm64 Linux takes whole: its
/// `COMMAND_LINE_SIZE` is 2048 bytes with the terminating NUL, and it cuts a
/// longer one short without a word.
pub const MAX_BOOTARGS_LEN: usize = 2047;

/// What `/chosen` tells the kernel besides where its console is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Chosen<'a> {
    /// The command line.
    pub bootargs: &'a str,
    /// Where the initial RAM disk was loaded (`linux,initrd-start` and
    /// `linux,initrd-end`).
    pub initrd: Option<std::ops::Range<u64>>,
}

/// Why the device tree could not be built.
#[derive(Debug, thiserror::Error)]
pub enum FdtError {
    /// vm-fdt refused (e.g. a string with a NUL in bootargs).
    #[error("cannot build the device tree: {0}")]
    Writer(#[from] vm_fdt::Error),
    /// A command line Linux would cut short.
    #[error(
        "bootargs are {len} bytes; the kernel takes at most {MAX_BOOTARGS_LEN} (arm64 COMMAND_LINE_SIZE) and would silently cut the rest"
    )]
    BootargsTooLong {
        /// Their length.
        len: usize,
    },
    /// Too big for the room reserved for it.
    #[error(
        "device tree is {size} bytes, more than the {max} reserved for it (bootargs too long?)"
    )]
    TooBig {
        /// Size.
        size: usize,
        /// Room.
        max: u64,
    },
}

/// Builds the device tree for `vcpus` CPUs, `ram_size` bytes of RAM and
/// what `chosen` says.
pub fn build(vcpus: u32, ram_size: u64, chosen: &Chosen<'_>) -> Result<Vec<u8>, FdtError> {
    if chosen.bootargs.len() > MAX_BOOTARGS_LEN {
        return Err(FdtError::BootargsTooLong {
            len: chosen.bootargs.len(),
        });
    }
    let mut w = FdtWriter::new()?;
    let root = w.begin_node("")?;
    w.property_string("compatible", "linux,dummy-virt")?;
    w.property_string("model", "apflab virt")?;
    w.property_u32("#address-cells", 2)?;
    w.property_u32("#size-cells", 2)?;
    w.property_u32("interrupt-parent", PHANDLE_GIC)?;

    let chosen_node = w.begin_node("chosen")?;
    w.property_string("bootargs", chosen.bootargs)?;
    w.property_string("stdout-path", &format!("/pl011@{UART_BASE:x}"))?;
    if let Some(initrd) = &chosen.initrd {
        w.property_u64("linux,initrd-start", initrd.start)?;
        w.property_u64("linux,initrd-end", initrd.end)?;
    }
    w.end_node(chosen_node)?;

    let memory = w.begin_node(&format!("memory@{RAM_BASE:x}"))?;
    w.property_string("device_type", "memory")?;
    w.property_array_u64("reg", &[RAM_BASE, ram_size])?;
    w.end_node(memory)?;

    let cpus = w.begin_node("cpus")?;
    w.property_u32("#address-cells", 1)?;
    w.property_u32("#size-cells", 0)?;
    for i in 0..vcpus {
        let cpu = w.begin_node(&format!("cpu@{i}"))?;
        w.property_string("device_type", "cpu")?;
        w.property_string("compatible", "arm,arm-v8")?;
        w.property_u32("reg", mpidr_of(i) as u32)?;
        w.property_string("enable-method", "psci")?;
        w.end_node(cpu)?;
    }
    w.end_node(cpus)?;

    let psci = w.begin_node("psci")?;
    w.property_string_list(
        "compatible",
        vec![
            "arm,psci-1.0".into(),
            "arm,psci-0.2".into(),
            "arm,psci".into(),
        ],
    )?;
    w.property_string("method", "hvc")?;
    w.property_u32("cpu_suspend", 0xc400_0001)?;
    w.property_u32("cpu_off", 0x8400_0002)?;
    w.property_u32("cpu_on", 0xc400_0003)?;
    w.end_node(psci)?;

    let gic = w.begin_node(&format!("intc@{GICD_BASE:x}"))?;
    w.property_string("compatible", "arm,gic-v3")?;
    w.property_u32("#interrupt-cells", 3)?;
    w.property_null("interrupt-controller")?;
    w.property_u32("#redistributor-regions", 1)?;
    w.property_array_u64(
        "reg",
        &[
            GICD_BASE,
            GICD_SIZE,
            GICR_BASE,
            GICR_STRIDE * u64::from(vcpus),
        ],
    )?;
    w.property_u32("#address-cells", 2)?;
    w.property_u32("#size-cells", 2)?;
    w.property_null("ranges")?;
    w.property_phandle(PHANDLE_GIC)?;
    // Maintenance interrupt, as QEMU lists it.
    w.property_array_u32("interrupts", &[GIC_PPI, 9, IRQ_LEVEL_HIGH])?;
    w.end_node(gic)?;

    let timer = w.begin_node("timer")?;
    w.property_string("compatible", "arm,armv8-timer")?;
    // Secure physical, non-secure physical, virtual, hypervisor PPIs
    // (INTID - 16).
    w.property_array_u32(
        "interrupts",
        &[
            GIC_PPI,
            13,
            IRQ_LEVEL_HIGH,
            GIC_PPI,
            PTIMER_PPI - 16,
            IRQ_LEVEL_HIGH,
            GIC_PPI,
            VTIMER_PPI - 16,
            IRQ_LEVEL_HIGH,
            GIC_PPI,
            10,
            IRQ_LEVEL_HIGH,
        ],
    )?;
    w.property_null("always-on")?;
    w.end_node(timer)?;

    let clk = w.begin_node("apb-pclk")?;
    w.property_string("compatible", "fixed-clock")?;
    w.property_u32("#clock-cells", 0)?;
    w.property_u32("clock-frequency", 24_000_000)?;
    w.property_string("clock-output-names", "clk24mhz")?;
    w.property_phandle(PHANDLE_CLK)?;
    w.end_node(clk)?;

    let uart = w.begin_node(&format!("pl011@{UART_BASE:x}"))?;
    w.property_string_list(
        "compatible",
        vec!["arm,pl011".into(), "arm,primecell".into()],
    )?;
    w.property_array_u64("reg", &[UART_BASE, UART_SIZE])?;
    w.property_array_u32("interrupts", &[GIC_SPI, UART_SPI, IRQ_LEVEL_HIGH])?;
    w.property_string_list("clock-names", vec!["uartclk".into(), "apb_pclk".into()])?;
    w.property_array_u32("clocks", &[PHANDLE_CLK, PHANDLE_CLK])?;
    w.end_node(uart)?;

    let rtc = w.begin_node(&format!("pl031@{RTC_BASE:x}"))?;
    w.property_string_list(
        "compatible",
        vec!["arm,pl031".into(), "arm,primecell".into()],
    )?;
    w.property_array_u64("reg", &[RTC_BASE, RTC_SIZE])?;
    w.property_array_u32("interrupts", &[GIC_SPI, RTC_SPI, IRQ_LEVEL_HIGH])?;
    w.property_string("clock-names", "apb_pclk")?;
    w.property_u32("clocks", PHANDLE_CLK)?;
    w.end_node(rtc)?;

    let apflab = w.begin_node(&format!("apflab@{DOORBELL_BASE:x}"))?;
    w.property_string("compatible", APFLAB_COMPATIBLE)?;
    w.property_array_u64("reg", &[DOORBELL_BASE, DOORBELL_SIZE])?;
    w.end_node(apflab)?;

    // Where Linux looks for SDEI (last, so the guest's walks for the nodes
    // above are unchanged).
    let firmware = w.begin_node("firmware")?;
    let sdei = w.begin_node("sdei")?;
    w.property_string("compatible", SDEI_COMPATIBLE)?;
    w.property_string("method", "hvc")?;
    w.end_node(sdei)?;
    w.end_node(firmware)?;

    // The "page ready" PPI, for a guest that maps its interrupts from the
    // device tree (apflab's Linux client). Last, for the same reason.
    let apf = w.begin_node("apflab-apf")?;
    w.property_string("compatible", APF_COMPATIBLE)?;
    w.property_array_u32("interrupts", &[GIC_PPI, APF_READY_PPI - 16, IRQ_LEVEL_HIGH])?;
    w.end_node(apf)?;

    w.end_node(root)?;
    let blob = w.finish()?;
    if blob.len() as u64 > DTB_MAX_SIZE {
        return Err(FdtError::TooBig {
            size: blob.len(),
            max: DTB_MAX_SIZE,
        });
    }
    Ok(blob)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_has_header_and_names_the_devices() {
        let chosen = Chosen {
            bootargs: "apflab.workload=cpu",
            initrd: None,
        };
        let blob = build(4, 256 << 20, &chosen).unwrap();
        assert_eq!(&blob[..4], &[0xd0, 0x0d, 0xfe, 0xed]);
        let text = String::from_utf8_lossy(&blob);
        for needle in [
            "arm,gic-v3",
            "arm,armv8-timer",
            "arm,pl011",
            "arm,pl031",
            "apflab.workload=cpu",
            APFLAB_COMPATIBLE,
            SDEI_COMPATIBLE,
            APF_COMPATIBLE,
            "cpu@3",
            "hvc",
        ] {
            assert!(text.contains(needle), "{needle}");
        }
        assert!(!text.contains("cpu@4"));
    }

    #[test]
    fn chosen_gives_the_command_line_the_console_and_the_initrd() {
        let chosen = Chosen {
            bootargs: "console=ttyAMA0 rdinit=/init",
            initrd: Some(0x4820_0000..0x4830_0123),
        };
        let blob = build(1, 512 << 20, &chosen).unwrap();
        let tree = fdt::Fdt::new(&blob).unwrap();
        let node = tree.find_node("/chosen").unwrap();
        assert_eq!(
            tree.chosen().bootargs(),
            Some("console=ttyAMA0 rdinit=/init")
        );
        assert_eq!(tree.chosen().stdout().unwrap().name, "pl011@9000000");
        let u64_of = |name| {
            let p = node.property(name).unwrap();
            u64::from_be_bytes(p.value.try_into().unwrap())
        };
        assert_eq!(u64_of("linux,initrd-start"), 0x4820_0000);
        assert_eq!(u64_of("linux,initrd-end"), 0x4830_0123);
        let without = build(1, 512 << 20, &Chosen::default()).unwrap();
        let tree = fdt::Fdt::new(&without).unwrap();
        assert!(
            tree.find_node("/chosen")
                .unwrap()
                .property("linux,initrd-start")
                .is_none()
        );
    }

    #[test]
    fn a_command_line_linux_would_cut_short_is_refused() {
        let long = "x".repeat(MAX_BOOTARGS_LEN + 1);
        let chosen = Chosen {
            bootargs: &long,
            initrd: None,
        };
        assert!(matches!(
            build(1, 512 << 20, &chosen),
            Err(FdtError::BootargsTooLong { len }) if len == MAX_BOOTARGS_LEN + 1
        ));
        let fits = "x".repeat(MAX_BOOTARGS_LEN);
        let chosen = Chosen {
            bootargs: &fits,
            initrd: None,
        };
        assert!(build(1, 512 << 20, &chosen).is_ok());
    }
}
