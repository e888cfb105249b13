#![no_std]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    loop {}
}
#[unsafe(no_mangle)]
pub extern "C" fn apf_abi_version() -> i32 {
    apflab_abi::policy::POLICY_ABI_VERSION
}
