//! Loading the guest kernel into guest RAM: an ELF (PT_LOAD segments at
//! their physical addresses, entry from the header), an arm64 Linux `Image`
//! (plain or gzip'd) placed as its header asks (see [`crate::arm64_image`]),
//! or, for anything else, a raw image at [`RAW_IMAGE_LOAD_ADDR`] like QEMU's
//! `-kernel`; then, for Linux, an initial RAM disk after the kernel and its
//! device tree.

use std::ops::Range;
use std::path::{Path, PathBuf};

use apflab_abi::memory_map::{DTB_ADDR, DTB_MAX_SIZE, PAGE_SIZE, RAM_BASE, RAW_IMAGE_LOAD_ADDR};
use goblin::elf::{Elf, header, program_header};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::arm64_image::{self, ImageError, ImageHeader};

/// The alignment of the base an arm64 Image is loaded at (booting.rst).
const IMAGE_BASE_ALIGN: u64 = 2 << 20;

/// Why a kernel could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read guest kernel {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Empty file.
    #[error("guest kernel {} is empty", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// ELF parse error.
    #[error("guest kernel {} is not a valid ELF file: {detail}", path.display())]
    BadElf {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        detail: String,
    },
    /// An ELF for another machine.
    #[error("guest kernel {} is an ELF for {machine}, expected a 64-bit little-endian aarch64 ELF", path.display())]
    NotAarch64 {
        /// The file.
        path: PathBuf,
        /// What it is for.
        machine: String,
    },
    /// A segment that does not fit in guest RAM or overlaps the device tree.
    #[error(
        "guest kernel {}: segment {index} at {start:#x}..{end:#x} {problem} (guest RAM is {ram_start:#x}..{ram_end:#x}, device tree at {dtb_start:#x}..{dtb_end:#x})",
        path.display()
    )]
    BadSegment {
        /// The file.
        path: PathBuf,
        /// Program header index (0 for a raw image).
        index: usize,
        /// First byte.
        start: u64,
        /// One past the last byte.
        end: u64,
        /// What is wrong.
        problem: &'static str,
        /// RAM range.
        ram_start: u64,
        /// RAM range end.
        ram_end: u64,
        /// DTB range.
        dtb_start: u64,
        /// DTB range end.
        dtb_end: u64,
    },
    /// No loadable segment at all.
    #[error("guest kernel {} has no PT_LOAD segment", path.display())]
    NoSegments {
        /// The file.
        path: PathBuf,
    },
    /// An arm64 Image (or gzip data) this machine cannot boot.
    #[error("guest kernel {} {source}", path.display())]
    BadImage {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        source: ImageError,
    },
    /// The initial RAM disk could not be read.
    #[error("cannot read initrd {}: {source}", path.display())]
    ReadInitrd {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The initial RAM disk does not fit in RAM after the kernel and its
    /// device tree.
    #[error(
        "initrd {} is {size} bytes; guest RAM has {room} bytes left after the kernel and its device tree (at {start:#x}): give the guest more memory",
        path.display()
    )]
    InitrdTooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// Room left.
        room: u64,
        /// Where it would start.
        start: u64,
    },
    /// The entry point is not in a loaded segment.
    #[error("guest kernel {}: entry point {entry:#x} is not inside any loaded segment", path.display())]
    BadEntry {
        /// The file.
        path: PathBuf,
        /// Entry point.
        entry: u64,
    },
}

/// Where the kernel went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadedKernel {
    /// Entry point (physical).
    pub entry: u64,
    /// Lowest loaded address.
    pub start: u64,
    /// One past the highest loaded address.
    pub end: u64,
    /// Where the device tree goes for this kernel.
    pub dtb_addr: u64,
    /// The physical ranges the image loads without write permission (an
    /// ELF's segments without PF_W: its code and constants). Empty for a
    /// raw image, which does not say.
    pub read_only: Vec<Range<u64>>,
    /// The first page after the kernel's footprint and its device tree's
    /// room: where an initrd may go.
    pub free_from: u64,
    /// The bootargs words the guest fetches after its boot
    /// ([`apflab_abi::boot_point::FN_WORKLOAD_ARGS`]) rather than from its
    /// device tree: a Linux Image's workload words, none for an ELF (set
    /// by [`crate::Vm::new`]).
    pub handed_over: String,
}

/// Loads `path` into `mem` (RAM of `ram_size` bytes at RAM_BASE). The file
/// must be a regular file no larger than guest RAM (checked before it is
/// read: a larger one cannot fit).
pub fn load_kernel(
    path: &Path,
    mem: &GuestMemoryMmap,
    ram_size: u64,
) -> Result<LoadedKernel, LoadError> {
    let bytes = apflab_files::read_regular(path, ram_size, "guest RAM").map_err(|source| {
        LoadError::Read {
            path: path.to_owned(),
            source,
        }
    })?;
    load_image(path, &bytes, mem, ram_size)
}

/// Loads the image `bytes` as [`load_kernel`] loads the file's contents;
/// `path` only names it in errors.
pub fn load_image(
    path: &Path,
    bytes: &[u8],
    mem: &GuestMemoryMmap,
    ram_size: u64,
) -> Result<LoadedKernel, LoadError> {
    if bytes.is_empty() {
        return Err(LoadError::Empty {
            path: path.to_owned(),
        });
    }
    if bytes.starts_with(b"\x7fELF") {
        return load_elf(path, bytes, mem, ram_size);
    }
    let bad_image = |source| LoadError::BadImage {
        path: path.to_owned(),
        source,
    };
    let unzipped = arm64_image::gunzip_if_compressed(bytes, ram_size).map_err(bad_image)?;
    let bytes = unzipped.as_deref().unwrap_or(bytes);
    match ImageHeader::parse(bytes) {
        Some(header) => {
            header.check().map_err(bad_image)?;
            load_linux(path, &header, bytes, mem, ram_size)
        }
        None => load_raw(path, bytes, mem, ram_size),
    }
}

/// Loads the initial RAM disk `path` at the first page `kernel` leaves free
/// and returns where it went.
pub fn load_initrd(
    path: &Path,
    mem: &GuestMemoryMmap,
    ram_size: u64,
    kernel: &LoadedKernel,
) -> Result<Range<u64>, LoadError> {
    let start = kernel.free_from;
    let room = (RAM_BASE + ram_size).saturating_sub(start);
    let too_large = |size| LoadError::InitrdTooLarge {
        path: path.to_owned(),
        size,
        room,
        start,
    };
    let size = apflab_files::check_regular(path, u64::MAX, "its size").map_err(|source| {
        LoadError::ReadInitrd {
            path: path.to_owned(),
            source,
        }
    })?;
    if size > room {
        return Err(too_large(size));
    }
    let bytes = apflab_files::read_regular(path, room, "the RAM left after the kernel").map_err(
        |source| LoadError::ReadInitrd {
            path: path.to_owned(),
            source,
        },
    )?;
    // In RAM (checked above), so this write cannot fail.
    mem.write_slice(&bytes, GuestAddress(start))
        .map_err(|_| too_large(bytes.len() as u64))?;
    Ok(start..start + bytes.len() as u64)
}

/// Where an arm64 Image and what follows it go in RAM: the Image at
/// `text_offset` from the start of RAM, its device tree at the next 2 MiB
/// boundary after its footprint, and an initrd after the device tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinuxLayout {
    /// Load address and entry point.
    pub start: u64,
    /// One past the kernel's footprint.
    pub end: u64,
    /// The device tree.
    pub dtb_addr: u64,
    /// The first page after the device tree's room: the initrd's place.
    pub free_from: u64,
}

impl LinuxLayout {
    /// The layout of a kernel with `header` in a file of `file_len` bytes.
    pub fn of(header: &ImageHeader, file_len: u64) -> LinuxLayout {
        // Saturating: the header's fields are the file's to choose, and a
        // layout past the end of the address space is refused as outside RAM.
        let start = RAM_BASE
            .next_multiple_of(IMAGE_BASE_ALIGN)
            .saturating_add(header.text_offset);
        let end = start.saturating_add(header.footprint(file_len));
        let dtb_addr = end
            .checked_next_multiple_of(IMAGE_BASE_ALIGN)
            .unwrap_or(u64::MAX);
        LinuxLayout {
            start,
            end,
            dtb_addr,
            free_from: dtb_addr.saturating_add(DTB_MAX_SIZE),
        }
    }
}

/// Loads an arm64 Image as booting.rst asks: at `text_offset` from a 2 MiB
/// aligned base as low in RAM as possible (the start of RAM), with its
/// whole `image_size` in RAM; the device tree goes at the next 2 MiB
/// boundary after that footprint, so the kernel's BSS and early page tables
/// never overwrite it.
fn load_linux(
    path: &Path,
    header: &ImageHeader,
    bytes: &[u8],
    mem: &GuestMemoryMmap,
    ram_size: u64,
) -> Result<LoadedKernel, LoadError> {
    let checker = Checker {
        path,
        ram_end: RAM_BASE + ram_size,
        dtb: None,
    };
    let LinuxLayout {
        start,
        end,
        dtb_addr,
        free_from,
    } = LinuxLayout::of(header, bytes.len() as u64);
    checker.check(0, start, end - start)?;
    mem.write_slice(bytes, GuestAddress(start))
        .map_err(|e| LoadError::BadElf {
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
    checker.check_dtb_after(start..end, dtb_addr)?;
    Ok(LoadedKernel {
        entry: start,
        start,
        end,
        dtb_addr,
        read_only: Vec::new(),
        free_from,
        handed_over: String::new(),
    })
}

struct Checker<'a> {
    path: &'a Path,
    ram_end: u64,
    dtb: Option<(u64, u64)>,
}

impl Checker<'_> {
    /// Checks that the device tree's room at `dtb_addr`, after the image
    /// at `image`, is in RAM.
    fn check_dtb_after(&self, image: Range<u64>, dtb_addr: u64) -> Result<(), LoadError> {
        self.check(0, dtb_addr, DTB_MAX_SIZE)
            .map_err(|_| LoadError::BadSegment {
                path: self.path.to_owned(),
                index: 0,
                start: image.start,
                end: image.end,
                problem: "leaves no room for the device tree after it",
                ram_start: RAM_BASE,
                ram_end: self.ram_end,
                dtb_start: dtb_addr,
                dtb_end: dtb_addr + DTB_MAX_SIZE,
            })
    }

    fn check(&self, index: usize, start: u64, len: u64) -> Result<(), LoadError> {
        let end = start.checked_add(len);
        let (dtb_start, dtb_end) = self.dtb.unwrap_or((0, 0));
        let err = |end: u64, problem| LoadError::BadSegment {
            path: self.path.to_owned(),
            index,
            start,
            end,
            problem,
            ram_start: RAM_BASE,
            ram_end: self.ram_end,
            dtb_start,
            dtb_end,
        };
        let Some(end) = end else {
            return Err(err(u64::MAX, "wraps around the address space"));
        };
        if start < RAM_BASE || end > self.ram_end {
            return Err(err(end, "lies outside guest RAM"));
        }
        if self.dtb.is_some() && start < dtb_end && dtb_start < end {
            return Err(err(end, "overlaps the device tree's room"));
        }
        Ok(())
    }
}

/// What of an ELF lies past the end of `bytes`, if anything: the header
/// or the program or section header table it points to. (The parser only
/// says "bad offset N".)
fn truncation(bytes: &[u8]) -> Option<String> {
    let len = bytes.len() as u64;
    let size = header::header64::SIZEOF_EHDR as u64;
    if len < size {
        return Some(format!(
            "truncated: an ELF64 header is {size} bytes, the file has {len}"
        ));
    }
    let h = Elf::parse_header(bytes).ok()?;
    for (what, offset, count, entry) in [
        ("program header table", h.e_phoff, h.e_phnum, h.e_phentsize),
        ("section header table", h.e_shoff, h.e_shnum, h.e_shentsize),
    ] {
        let end = u64::from(count)
            .checked_mul(u64::from(entry))
            .and_then(|n| n.checked_add(offset));
        if count > 0 && end.is_none_or(|end| end > len) {
            return Some(format!(
                "truncated: its {what} ({count} entries of {entry} bytes at offset {offset}) \
                 ends past the end of the file, which has {len} bytes"
            ));
        }
    }
    None
}

fn load_elf(
    path: &Path,
    bytes: &[u8],
    mem: &GuestMemoryMmap,
    ram_size: u64,
) -> Result<LoadedKernel, LoadError> {
    let elf = Elf::parse(bytes).map_err(|e| LoadError::BadElf {
        path: path.to_owned(),
        detail: truncation(bytes).unwrap_or_else(|| format!("malformed: {e}")),
    })?;
    if elf.header.e_machine != header::EM_AARCH64 || !elf.is_64 || !elf.little_endian {
        return Err(LoadError::NotAarch64 {
            path: path.to_owned(),
            machine: format!(
                "{} ({}-bit, {})",
                header::machine_to_str(elf.header.e_machine),
                if elf.is_64 { 64 } else { 32 },
                if elf.little_endian {
                    "little-endian"
                } else {
                    "big-endian"
                }
            ),
        });
    }
    let checker = Checker {
        path,
        ram_end: RAM_BASE + ram_size,
        dtb: Some((DTB_ADDR, DTB_ADDR + DTB_MAX_SIZE)),
    };
    let (mut lo, mut hi) = (u64::MAX, 0u64);
    let mut entry_ok = false;
    let mut read_only = Vec::new();
    for (index, ph) in elf.program_headers.iter().enumerate() {
        if ph.p_type != program_header::PT_LOAD || ph.p_memsz == 0 {
            continue;
        }
        checker.check(index, ph.p_paddr, ph.p_memsz)?;
        let file_range = ph.file_range();
        let data = bytes
            .get(file_range.clone())
            .ok_or_else(|| LoadError::BadElf {
                path: path.to_owned(),
                detail: format!(
                    "segment {index} file range {file_range:?} is past the end of the file"
                ),
            })?;
        if ph.p_filesz > ph.p_memsz {
            return Err(LoadError::BadElf {
                path: path.to_owned(),
                detail: format!("segment {index} has p_filesz > p_memsz"),
            });
        }
        // In RAM (checked above), so these writes cannot fail.
        let write = |buf: &[u8], at: u64| {
            mem.write_slice(buf, GuestAddress(at))
                .map_err(|e| LoadError::BadElf {
                    path: path.to_owned(),
                    detail: format!("segment {index}: {e}"),
                })
        };
        write(data, ph.p_paddr)?;
        let bss = (ph.p_memsz - ph.p_filesz) as usize;
        if bss > 0 {
            write(&vec![0u8; bss], ph.p_paddr + ph.p_filesz)?;
        }
        // The entry is a virtual address; with identity-mapped boot code
        // it equals the physical one. Translate through the segment.
        if holds_vaddr(ph, elf.entry) {
            entry_ok = true;
        }
        lo = lo.min(ph.p_paddr);
        hi = hi.max(ph.p_paddr + ph.p_memsz);
        if ph.p_flags & program_header::PF_W == 0 {
            read_only.push(ph.p_paddr..ph.p_paddr + ph.p_memsz);
        }
    }
    if hi == 0 {
        return Err(LoadError::NoSegments {
            path: path.to_owned(),
        });
    }
    // Physical entry: the segment holding the virtual entry, relocated to
    // its physical address.
    let entry = elf
        .program_headers
        .iter()
        .find(|ph| ph.p_type == program_header::PT_LOAD && holds_vaddr(ph, elf.entry))
        .map(|ph| elf.entry - ph.p_vaddr + ph.p_paddr);
    match entry {
        Some(entry) if entry_ok => Ok(LoadedKernel {
            entry,
            start: lo,
            end: hi,
            dtb_addr: DTB_ADDR,
            read_only,
            free_from: hi.max(DTB_ADDR + DTB_MAX_SIZE).next_multiple_of(PAGE_SIZE),
            handed_over: String::new(),
        }),
        _ => Err(LoadError::BadEntry {
            path: path.to_owned(),
            entry: elf.entry,
        }),
    }
}

/// Whether segment `ph` covers virtual address `va`. The header's
/// `p_vaddr` is the image's to choose: `p_vaddr + p_memsz` may wrap.
fn holds_vaddr(ph: &program_header::ProgramHeader, va: u64) -> bool {
    va.checked_sub(ph.p_vaddr)
        .is_some_and(|offset| offset < ph.p_memsz)
}

fn load_raw(
    path: &Path,
    bytes: &[u8],
    mem: &GuestMemoryMmap,
    ram_size: u64,
) -> Result<LoadedKernel, LoadError> {
    let start = RAW_IMAGE_LOAD_ADDR;
    let len = bytes.len() as u64;
    let checker = Checker {
        path,
        ram_end: RAM_BASE + ram_size,
        dtb: None,
    };
    checker.check(0, start, len)?;
    mem.write_slice(bytes, GuestAddress(start))
        .map_err(|e| LoadError::BadElf {
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
    // The raw image sits where the ELF kernels' device tree goes; put the
    // device tree after it, 2 MiB aligned (x0 tells the guest where).
    let dtb_addr = (start + len).next_multiple_of(2 << 20);
    checker.check_dtb_after(start..start + len, dtb_addr)?;
    Ok(LoadedKernel {
        entry: start,
        start,
        end: start + len,
        dtb_addr,
        read_only: Vec::new(),
        free_from: dtb_addr + DTB_MAX_SIZE,
        handed_over: String::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const RAM: u64 = 8 << 20;
    const LOAD: u64 = RAM_BASE + DTB_MAX_SIZE;

    fn ram() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(RAM_BASE), RAM as usize)]).unwrap()
    }

    /// An aarch64 ELF with one PT_LOAD of 16 bytes (memsz one page more)
    /// at physical `paddr`, virtual `vaddr`, and entry `entry`.
    fn elf(paddr: u64, vaddr: u64, entry: u64) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(b"\x7fELF\x02\x01\x01\0");
        b.extend_from_slice(&[0; 8]);
        for half in [2u16, header::EM_AARCH64] {
            b.extend_from_slice(&half.to_le_bytes());
        }
        b.extend_from_slice(&1u32.to_le_bytes());
        for word in [entry, 64, 0] {
            b.extend_from_slice(&word.to_le_bytes());
        }
        b.extend_from_slice(&0u32.to_le_bytes());
        for half in [64u16, 56, 1, 0, 0, 0] {
            b.extend_from_slice(&half.to_le_bytes());
        }
        b.extend_from_slice(&program_header::PT_LOAD.to_le_bytes());
        b.extend_from_slice(&5u32.to_le_bytes());
        for word in [120, vaddr, paddr, 16, 16 + 4096, 4096] {
            b.extend_from_slice(&word.to_le_bytes());
        }
        b.extend_from_slice(&[0x7f, 0x20, 0x03, 0xd5, 0xff, 0xff, 0xff, 0x17]);
        b.extend_from_slice(&[0; 8]);
        b
    }

    #[test]
    fn an_elf_loads_at_its_physical_address_with_its_entry_translated() {
        let k = load_image(
            Path::new("k"),
            &elf(LOAD, 0xffff_0000_0000_0000, 0xffff_0000_0000_0004),
            &ram(),
            RAM,
        )
        .unwrap();
        assert_eq!(
            (k.start, k.end, k.entry),
            (LOAD, LOAD + 16 + 4096, LOAD + 4)
        );
        // Its one segment is R+X: the whole of it is read-only.
        assert_eq!(k.read_only, vec![LOAD..LOAD + 16 + 4096]);
    }

    /// Found by the `image` fuzz target: a segment whose virtual range ends
    /// past 2^64 made the entry check overflow (a panic in a debug build;
    /// a wrapped comparison, so a refused entry, in a release one). Only
    /// the entry is translated through virtual addresses, so the segment
    /// loads at its physical address like any other.
    #[test]
    fn a_segment_whose_virtual_range_wraps_loads_by_its_physical_address() {
        let top = 0xffff_ffff_ffff_f000;
        let k = load_image(Path::new("k"), &elf(LOAD, top, top + 4), &ram(), RAM).unwrap();
        assert_eq!((k.start, k.entry), (LOAD, LOAD + 4));
        let past = load_image(Path::new("k"), &elf(LOAD, top, 0x10), &ram(), RAM);
        assert!(
            matches!(past, Err(LoadError::BadEntry { entry: 0x10, .. })),
            "{past:?}"
        );
    }

    /// An arm64 Image of `len` bytes whose header says `image_size`.
    fn image(image_size: u64, len: usize) -> Vec<u8> {
        let mut b = crate::arm64_image::tests::header(0, image_size, 0xa);
        b.resize(len, 0xaa);
        b
    }

    #[test]
    fn an_image_loads_at_the_start_of_ram_with_the_device_tree_after_its_footprint() {
        let mem = ram();
        let k = load_image(Path::new("Image"), &image(0x30_0000, 0x1000), &mem, RAM).unwrap();
        assert_eq!(
            (k.entry, k.start, k.end),
            (RAM_BASE, RAM_BASE, RAM_BASE + 0x30_0000)
        );
        // The next 2 MiB boundary after the 3 MiB footprint (BSS included),
        // not after the 4 KiB file.
        assert_eq!(k.dtb_addr, RAM_BASE + (4 << 20));
        assert_eq!(k.free_from, k.dtb_addr + DTB_MAX_SIZE);
        let mut first = [0u8; 4];
        mem.read_slice(&mut first, GuestAddress(RAM_BASE)).unwrap();
        assert_eq!(u32::from_le_bytes(first), 0x1400_0010);
    }

    #[test]
    fn a_gzipd_image_loads_as_the_image_it_holds() {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&image(0x10_0000, 0x2000)).unwrap();
        let k = load_image(Path::new("vmlinuz"), &e.finish().unwrap(), &ram(), RAM).unwrap();
        assert_eq!((k.start, k.end), (RAM_BASE, RAM_BASE + 0x10_0000));
    }

    #[test]
    fn an_image_whose_footprint_or_device_tree_does_not_fit_is_refused() {
        let err = load_image(Path::new("Image"), &image(RAM + 1, 0x1000), &ram(), RAM);
        assert!(
            matches!(
                err,
                Err(LoadError::BadSegment {
                    problem: "lies outside guest RAM",
                    ..
                })
            ),
            "{err:?}"
        );
        let err = load_image(
            Path::new("Image"),
            &image(RAM - 0x1000, 0x1000),
            &ram(),
            RAM,
        );
        assert!(
            matches!(err, Err(LoadError::BadSegment { problem, .. }) if problem.contains("device tree")),
            "{err:?}"
        );
        let big_endian = crate::arm64_image::tests::header(0, 0x1000, 1);
        let err = load_image(Path::new("Image"), &big_endian, &ram(), RAM).unwrap_err();
        assert!(err.to_string().contains("big-endian"), "{err}");
    }

    #[test]
    fn an_initrd_goes_after_the_device_tree_or_is_refused_when_it_does_not_fit() {
        use std::io::Write;
        let mem = ram();
        let k = load_image(Path::new("Image"), &image(0x10_0000, 0x1000), &mem, RAM).unwrap();
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(b"070701 cpio").unwrap();
        let at = load_initrd(f.path(), &mem, RAM, &k).unwrap();
        assert_eq!(at, k.free_from..k.free_from + 11);
        let mut back = [0u8; 11];
        mem.read_slice(&mut back, GuestAddress(at.start)).unwrap();
        assert_eq!(&back, b"070701 cpio");

        let room = RAM_BASE + RAM - k.free_from;
        f.write_all(&vec![0u8; room as usize]).unwrap();
        let err = load_initrd(f.path(), &mem, RAM, &k).unwrap_err();
        assert!(
            matches!(err, LoadError::InitrdTooLarge { room: r, .. } if r == room),
            "{err}"
        );
        assert!(
            err.to_string().contains("give the guest more memory"),
            "{err}"
        );
    }

    #[test]
    fn an_image_whose_header_points_past_the_address_space_is_refused() {
        let mut b = crate::arm64_image::tests::header(u64::MAX - 0x1000, u64::MAX, 0xa);
        b.resize(4096, 0);
        let err = load_image(Path::new("Image"), &b, &ram(), RAM);
        assert!(matches!(err, Err(LoadError::BadSegment { .. })), "{err:?}");
    }
}
