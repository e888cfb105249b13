# The nested arm64 KVM machine that scripts/kvm-smoke and scripts/kvm-matrix
# run apflab's kvm backend in, sourced by both (not run on its own): the
# host packages, Debian's arm64 kernel and busybox, the static aarch64
# apflab with only the kvm backend, the skeleton of an initramfs around it,
# and the boot of a Debian arm64 kernel in qemu-system-aarch64 with nested
# virtualization, whose serial console brings the results back.
#
# Before sourcing, set `marker` (the prefix of the script's messages and of
# its console lines, e.g. KVM-SMOKE). Environment (both scripts):
#   CARGO_TARGET_DIR       where the cross build and the cache go [target/]
#   APFLAB_KVM_KERNEL_PKG  Debian arm64 kernel package
#                          [the one linux-image-6.12-arm64 depends on]
#   APFLAB_KVM_TIMEOUT     seconds before the nested VM is given up [600]
# shellcheck shell=bash

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
target_dir="${CARGO_TARGET_DIR:-$root/target}"
# Absolute, as cargo makes it: the artifacts' paths compiled into apflab
# start with it.
case "$target_dir" in /*) ;; *) target_dir="$root/$target_dir" ;; esac
# The cache is shared: the Debian packages and the cross build are the same
# for both scripts.
cache="$target_dir/kvm-smoke"
triple=aarch64-unknown-linux-musl
timeout_s="${APFLAB_KVM_TIMEOUT:-600}"
mkdir -p "$cache"
script_name="$(basename "$0")"

say() { echo "$script_name: $*" >&2; }
die() {
    say "FAILED: $*"
    exit 1
}

if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
apt_updated=
apt_update() {
    if [ -z "$apt_updated" ]; then
        $SUDO apt-get update -qq
        apt_updated=1
    fi
}

# Installs what is missing of qemu-system-aarch64, the aarch64 C compiler,
# cpio, jq, gzip and libclang.
nested_kvm_host_packages() {
    local need=()
    command -v qemu-system-aarch64 >/dev/null || need+=(qemu-system-arm)
    command -v aarch64-linux-gnu-gcc >/dev/null || need+=(gcc-aarch64-linux-gnu)
    command -v cpio >/dev/null || need+=(cpio)
    command -v jq >/dev/null || need+=(jq)
    command -v gzip >/dev/null || need+=(gzip)
    # bindgen (userfaultfd-sys) loads libclang; the aarch64 Linux headers
    # come with gcc-aarch64-linux-gnu.
    ls /usr/lib/llvm-*/lib/libclang.so* /usr/lib/llvm-*/lib/libclang-[0-9]*.so* >/dev/null 2>&1 ||
        need+=(libclang-dev)
    if ((${#need[@]})); then
        say "installing ${need[*]}"
        apt_update
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
    fi
}

# The arm64 kernel and busybox (Debian packages, extracted under the cache);
# sets `sysroot`, `vmlinuz` and `kernel_version`.
nested_kvm_sysroot() {
    local debs="$cache/debs" kpkg deb
    # One extracted tree per kernel package asked for, so switching back
    # and forth needs no download.
    sysroot="$cache/arm64${APFLAB_KVM_KERNEL_PKG:+-${APFLAB_KVM_KERNEL_PKG%:arm64}}"
    if ! ls "$sysroot"/boot/vmlinuz-* >/dev/null 2>&1 || [ ! -x "$sysroot/bin/busybox" ]; then
        if ! dpkg --print-foreign-architectures | grep -qx arm64; then
            $SUDO dpkg --add-architecture arm64
            apt_updated=
        fi
        apt_update
        kpkg="${APFLAB_KVM_KERNEL_PKG:-}"
        if [ -z "$kpkg" ]; then
            # 6.12 rather than bookworm's default 6.1: its SMCCC filter
            # forwards the guest's HVCs to the VMM.
            kpkg="$(apt-cache depends linux-image-6.12-arm64:arm64 |
                awk '/Depends: linux-image-6/ {print $2; exit}')"
            [ -n "$kpkg" ] || die "no linux-image-6.12-arm64:arm64 in the apt lists"
        fi
        kpkg="${kpkg%:arm64}"
        say "downloading $kpkg:arm64 and busybox-static:arm64"
        rm -rf "$debs" "$sysroot"
        mkdir -p "$debs" "$sysroot"
        # apt's download user must be able to write there, or apt warns.
        chown _apt "$debs" 2>/dev/null || true
        (cd "$debs" && apt-get download -qq "$kpkg:arm64" busybox-static:arm64)
        for deb in "$debs"/*.deb; do
            dpkg-deb -x "$deb" "$sysroot"
        done
        rm -rf "$debs"
    fi
    vmlinuz="$(ls "$sysroot"/boot/vmlinuz-* | head -n1)"
    kernel_version="${vmlinuz##*/vmlinuz-}"
    [ -x "$sysroot/bin/busybox" ] || die "busybox-static did not provide bin/busybox"
}

# The environment of every cargo command that builds for the nested VM.
nested_kvm_cross_env() {
    export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=rust-lld
    export CC_aarch64_unknown_linux_musl=aarch64-linux-gnu-gcc
    export BINDGEN_EXTRA_CLANG_ARGS_aarch64_unknown_linux_musl="--sysroot=/usr/aarch64-linux-gnu -I/usr/aarch64-linux-gnu/include"
}

# The static aarch64 apflab with only the kvm backend; sets `apflab_bin`,
# `guest_elf` (the built-in guest, at the path compiled into apflab_bin) and
# `policy_wasm_dir` (the example policies, likewise).
nested_kvm_build_apflab() {
    local artifacts="$target_dir/$triple/apflab-artifacts"
    nested_kvm_cross_env
    CARGO_TARGET_DIR="$target_dir" cargo build --quiet --release -p apflab \
        --target "$triple" --no-default-features --features kvm
    apflab_bin="$target_dir/$triple/release/apflab"
    guest_elf="$artifacts/guest/aarch64-unknown-none-softfloat/release/apflab-guest"
    policy_wasm_dir="$artifacts/policies/wasm32-unknown-unknown/release"
    [ -x "$apflab_bin" ] || die "$apflab_bin was not built"
    [ -f "$guest_elf" ] || die "the guest ELF is not at $guest_elf"
    [ -f "$policy_wasm_dir/paolo.wasm" ] || die "the example policies are not in $policy_wasm_dir"
}

# A fresh initramfs tree in DIR: busybox, the mount points, and apflab in
# /smoke (the working folder of the init).
nested_kvm_initramfs() {
    local dir="$1"
    rm -rf "$dir"
    mkdir -p "$dir"/{bin,dev,proc,sys,tmp,smoke}
    cp "$sysroot/bin/busybox" "$dir/bin/busybox"
    cp "$apflab_bin" "$dir/smoke/apflab"
    # Keep the image small: the debug info is of no use inside.
    aarch64-linux-gnu-strip "$dir/smoke/apflab" 2>/dev/null || true
}

# The first lines of every /init: the busybox applets, /dev, /proc, /sys,
# a console that carries only the script's lines, and whether the kernel
# has a /dev/kvm; then it works in /smoke.
nested_kvm_init_prelude() {
    cat <<EOF
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t devtmpfs dev /dev
mount -t proc proc /proc
mount -t sysfs sys /sys
# Kernel messages must not interleave with the results on the console.
echo 1 >/proc/sys/kernel/printk
echo "$marker kernel \$(uname -r) cpus \$(nproc)"
[ -c /dev/kvm ] && echo "$marker /dev/kvm present" || echo "$marker /dev/kvm missing"
cd /smoke
EOF
}

# Packs the initramfs tree DIR (whose /init is in place) and boots it on 2
# vCPUs with nested virtualization until it powers off; sets `console`
# (the cache's NAME.log [console.log], as written; CRs removed:
# $console.txt), `qemu_rc` and `boot_s`. Gives up after APFLAB_KVM_TIMEOUT
# seconds.
nested_kvm_boot() {
    local dir="$1" initrd="$cache/initramfs.cpio.gz"
    chmod +x "$dir/init"
    (cd "$dir" && find . | cpio -o -H newc --quiet | gzip -1) >"$initrd"
    console="$cache/${2:-console}.log"
    say "booting $kernel_version under qemu-system-aarch64 (nested KVM, timeout ${timeout_s}s)"
    local started=$SECONDS
    set +e
    timeout --foreground "$timeout_s" qemu-system-aarch64 \
        -machine virt,virtualization=on,gic-version=3 -cpu max -smp 2 -m 1024 \
        -nographic -no-reboot \
        -kernel "$vmlinuz" -initrd "$initrd" \
        -append "console=ttyAMA0 rdinit=/init quiet" </dev/null >"$console" 2>&1
    qemu_rc=$?
    set -e
    boot_s=$((SECONDS - started))
    tr -d '\r' <"$console" >"$console.txt"
    [ "$qemu_rc" -ne 124 ] || die "the nested VM did not power off within ${timeout_s}s (console: $console.txt)"
    grep "^$marker " "$console.txt" >&2 || true
}

# The console lines between NAME-BEGIN and NAME-END.
section() {
    sed -n "/^$1-BEGIN/,/^$1-END/p" "$console.txt" | sed '1d;$d'
}
