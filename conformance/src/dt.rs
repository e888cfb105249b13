//! Just enough of a flattened device tree reader: the `reg` of each CPU
//! node and whether some node is compatible with a string.

use core::ptr::read_volatile;

const MAGIC: u32 = 0xd00d_feed;
const BEGIN_NODE: u32 = 1;
const END_NODE: u32 = 2;
const PROP: u32 = 3;
const NOP: u32 = 4;
const END: u32 = 9;

/// A device tree blob in memory.
pub struct Tree {
    base: u64,
    structs: u64,
    strings: u64,
    size: u64,
}

fn be32(addr: u64) -> u32 {
    // SAFETY: callers stay inside the blob, whose size the header gives.
    u32::from_be(unsafe { read_volatile(addr as *const u32) })
}

fn cstr_eq(addr: u64, s: &[u8]) -> bool {
    for (i, &c) in s.iter().enumerate() {
        // SAFETY: strings in the blob are NUL-terminated; a mismatch or
        // the NUL stops the loop.
        if unsafe { read_volatile((addr + i as u64) as *const u8) } != c {
            return false;
        }
    }
    // SAFETY: as above.
    unsafe { read_volatile((addr + s.len() as u64) as *const u8) == 0 }
}

fn starts_with(addr: u64, s: &[u8]) -> bool {
    // SAFETY: as in cstr_eq.
    s.iter()
        .enumerate()
        .all(|(i, &c)| unsafe { read_volatile((addr + i as u64) as *const u8) } == c)
}

impl Tree {
    /// The tree at `addr`, if one is there.
    pub fn at(addr: u64) -> Option<Tree> {
        if addr == 0 || !addr.is_multiple_of(8) || be32(addr) != MAGIC {
            return None;
        }
        Some(Tree {
            base: addr,
            size: u64::from(be32(addr + 4)),
            structs: addr + u64::from(be32(addr + 8)),
            strings: addr + u64::from(be32(addr + 12)),
        })
    }

    /// Calls `f(depth, node name, property name, value, length)` for every
    /// property.
    fn walk(&self, mut f: impl FnMut(usize, u64, u64, u64, u32)) {
        let end = self.base + self.size;
        let mut p = self.structs;
        let mut depth = 0usize;
        let mut names = [0u64; 8];
        while p + 4 <= end {
            let token = be32(p);
            p += 4;
            match token {
                BEGIN_NODE => {
                    if depth < names.len() {
                        names[depth] = p;
                    }
                    depth += 1;
                    let mut len = 0;
                    // SAFETY: inside the blob.
                    while unsafe { read_volatile((p + len) as *const u8) } != 0 {
                        len += 1;
                    }
                    p = (p + len + 1 + 3) & !3;
                }
                END_NODE => depth = depth.saturating_sub(1),
                PROP => {
                    let len = be32(p);
                    let name = self.strings + u64::from(be32(p + 4));
                    let value = p + 8;
                    let node = names[depth.clamp(1, names.len()) - 1];
                    f(depth, node, name, value, len);
                    p = (value + u64::from(len) + 3) & !3;
                }
                NOP => {}
                END => break,
                _ => break,
            }
        }
    }

    /// `reg` of each `cpu@` node under `/cpus`, in tree order (unused
    /// slots are `u64::MAX`).
    pub fn cpu_regs(&self) -> [u64; 8] {
        let mut regs = [u64::MAX; 8];
        let mut n = 0;
        self.walk(|depth, node, name, value, len| {
            if depth == 3 && starts_with(node, b"cpu@") && cstr_eq(name, b"reg") && n < regs.len() {
                regs[n] = match len {
                    4 => u64::from(be32(value)),
                    8 => (u64::from(be32(value)) << 32) | u64::from(be32(value + 4)),
                    _ => return,
                };
                n += 1;
            }
        });
        regs
    }

    /// Whether some node's `compatible` list holds `compat`.
    pub fn has_compatible(&self, compat: &str) -> bool {
        let mut found = false;
        self.walk(|_, _, name, value, len| {
            if !cstr_eq(name, b"compatible") {
                return;
            }
            let mut s = value;
            while s < value + u64::from(len) {
                if cstr_eq(s, compat.as_bytes()) {
                    found = true;
                }
                // SAFETY: inside the property's value.
                while s < value + u64::from(len) && unsafe { read_volatile(s as *const u8) } != 0 {
                    s += 1;
                }
                s += 1;
            }
        });
        found
    }
}
