//! Prints the C header of the ABI for the Linux guest's async PF client
//! (see `apflab_abi::c_header`).

fn main() {
    let mut text = String::new();
    apflab_abi::c_header::write(&mut text).expect("writing to a String cannot fail");
    print!("{text}");
}
