//! The snapshot file: [`MAGIC`], the format number (u32, little-endian),
//! then one gzip stream holding the boot's [`Identity`] (JSON), the machine
//! state (JSON), and guest RAM as its non-zero pages: (page index, u64
//! little-endian; the page's bytes), in address order, ended by the index
//! [`END`]. gzip's CRC catches a damaged file.
//!
//! A file is written next to its place and renamed there once whole, so a
//! run that fails half-way leaves no snapshot to resume from.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

use apflab_abi::memory_map::PAGE_SIZE;
use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use serde::Serialize;
use serde::de::DeserializeOwned;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::{Damage, FORMAT, Identity, SnapshotError, differences};

/// The first bytes of every snapshot.
const MAGIC: &[u8; 8] = b"APFLSNAP";
/// The page index that ends the RAM section.
const END: u64 = u64::MAX;
/// The largest JSON section a snapshot may hold (a machine state with a
/// full console and timeline is far smaller).
const MAX_SECTION: u64 = 1 << 30;
const PAGE: usize = PAGE_SIZE as usize;

/// Guest RAM (one region) as a byte slice.
///
/// # Safety
///
/// Nothing else may read or write guest RAM while the slice lives (guest
/// memory is shared, written through `&GuestMemoryMmap` by design; here
/// the run loop is between two slices, on the thread the engines run on).
#[allow(clippy::mut_from_ref)]
unsafe fn ram(memory: &GuestMemoryMmap) -> Result<&mut [u8], RamUnreachable> {
    let region = memory.iter().next().ok_or(RamUnreachable::NoRam)?;
    let base = region.start_addr();
    let len = region.len() as usize;
    let host = memory.get_host_address(GuestAddress(base.0))?;
    // SAFETY: `host` starts the region's `len` mapped bytes, which live as
    // long as `memory`; nothing else touches them meanwhile (this
    // function's contract).
    Ok(unsafe { std::slice::from_raw_parts_mut(host, len) })
}

/// Why guest RAM cannot be had as one byte slice.
#[derive(Debug, thiserror::Error)]
pub enum RamUnreachable {
    /// The VM has no memory region.
    #[error("the VM has no RAM")]
    NoRam,
    /// Its region has no host mapping.
    #[error(transparent)]
    Unmapped(#[from] vm_memory::GuestMemoryError),
}

/// Why a snapshot file could not be written ([`SnapshotError::Write`]).
#[derive(Debug, thiserror::Error)]
pub enum WriteFailure {
    /// The file next to its place could not be created.
    #[error("cannot create it: {0}")]
    Create(#[source] std::io::Error),
    /// Writing, compressing or syncing it failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A JSON section could not be encoded.
    #[error(transparent)]
    Encode(#[from] serde_json::Error),
    /// Guest RAM could not be read.
    #[error(transparent)]
    Ram(#[from] RamUnreachable),
}

/// Writes the snapshot of a boot with `identity`: `state`, then `memory`.
pub(crate) fn write(
    path: &Path,
    identity: &Identity,
    state: &impl Serialize,
    memory: &GuestMemoryMmap,
) -> Result<(), SnapshotError> {
    let shown = path.display().to_string();
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    let partial = std::path::PathBuf::from(partial);
    let written = (|| -> Result<(), WriteFailure> {
        let file = File::create(&partial).map_err(WriteFailure::Create)?;
        let mut out = BufWriter::new(file);
        out.write_all(MAGIC)?;
        out.write_all(&FORMAT.to_le_bytes())?;
        let mut gz = GzEncoder::new(out, Compression::fast());
        for section in [serde_json::to_vec(identity)?, serde_json::to_vec(state)?] {
            gz.write_all(&(section.len() as u64).to_le_bytes())?;
            gz.write_all(&section)?;
        }
        // SAFETY: the run loop is between two slices and waits for this.
        let ram = unsafe { ram(memory) }?;
        for (i, page) in ram.as_chunks::<PAGE>().0.iter().enumerate() {
            if page.iter().all(|&b| b == 0) {
                continue;
            }
            gz.write_all(&(i as u64).to_le_bytes())?;
            gz.write_all(page)?;
        }
        gz.write_all(&END.to_le_bytes())?;
        let out = gz.finish()?;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        Ok(file.sync_all()?)
    })();
    if let Err(source) = written {
        let _ = std::fs::remove_file(&partial);
        return Err(SnapshotError::Write {
            path: shown,
            source,
        });
    }
    std::fs::rename(&partial, path).map_err(|source| {
        let _ = std::fs::remove_file(&partial);
        SnapshotError::Rename {
            path: shown,
            partial,
            source,
        }
    })
}

/// Reads the snapshot at `path` into `memory` (every page: those it does
/// not hold are zeroed) and returns its machine state, if the snapshot's
/// identity is `ours`.
pub(crate) fn read<T: DeserializeOwned>(
    path: &Path,
    ours: &Identity,
    memory: &GuestMemoryMmap,
) -> Result<T, SnapshotError> {
    let shown = path.display().to_string();
    let bad = |what: Damage| SnapshotError::Unreadable {
        path: shown.clone(),
        what,
    };
    let file = File::open(path).map_err(|source| SnapshotError::Io {
        path: shown.clone(),
        what: "cannot open it",
        source,
    })?;
    let mut input = BufReader::new(file);
    let mut head = [0u8; 12];
    input
        .read_exact(&mut head)
        .map_err(|_| bad(Damage::TooShort))?;
    if &head[..8] != MAGIC {
        return Err(bad(Damage::NoHeader));
    }
    let format = u32::from_le_bytes([head[8], head[9], head[10], head[11]]);
    if format != FORMAT {
        return Err(SnapshotError::Mismatch {
            path: shown,
            differences: vec![format!(
                "the file's format is {format} and this apflab reads format {FORMAT}"
            )],
        });
    }
    let mut gz = GzDecoder::new(input);
    let damaged = |e: std::io::Error| bad(Damage::Stream(e));
    let section = |gz: &mut GzDecoder<BufReader<File>>| -> Result<Vec<u8>, SnapshotError> {
        let mut len = [0u8; 8];
        gz.read_exact(&mut len).map_err(damaged)?;
        let len = u64::from_le_bytes(len);
        if len > MAX_SECTION {
            return Err(bad(Damage::SectionLength(len)));
        }
        let mut bytes = vec![0u8; len as usize];
        gz.read_exact(&mut bytes).map_err(damaged)?;
        Ok(bytes)
    };
    let theirs: Identity =
        serde_json::from_slice(&section(&mut gz)?).map_err(|e| bad(Damage::Identity(e)))?;
    let differences = differences(&theirs, ours);
    if !differences.is_empty() {
        return Err(SnapshotError::Mismatch {
            path: shown,
            differences,
        });
    }
    let state: T =
        serde_json::from_slice(&section(&mut gz)?).map_err(|e| bad(Damage::MachineState(e)))?;
    // SAFETY: no vCPU has run yet; the run loop waits for this.
    let ram = unsafe { ram(memory) }.map_err(|e| bad(e.into()))?;
    let pages = (ram.len() / PAGE) as u64;
    let mut next = 0u64;
    loop {
        let mut index = [0u8; 8];
        gz.read_exact(&mut index).map_err(damaged)?;
        let index = u64::from_le_bytes(index);
        let upto = if index == END { pages } else { index };
        if upto < next || upto > pages || (index != END && index >= pages) {
            return Err(bad(Damage::PageIndex(index)));
        }
        // The pages between hold zeros in the snapshot.
        for p in next..upto {
            let page = &mut ram[p as usize * PAGE..][..PAGE];
            if page.iter().any(|&b| b != 0) {
                page.fill(0);
            }
        }
        if index == END {
            break;
        }
        gz.read_exact(&mut ram[index as usize * PAGE..][..PAGE])
            .map_err(damaged)?;
        next = index + 1;
    }
    // The end of the stream checks its CRC; nothing may follow.
    let mut rest = Vec::new();
    gz.read_to_end(&mut rest).map_err(damaged)?;
    if !rest.is_empty() {
        return Err(bad(Damage::TrailingData));
    }
    Ok(state)
}
