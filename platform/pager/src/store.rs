//! Backing stores: where non-resident pages live.
//!
//! A [`Store`] reads and writes whole 4 KiB guest pages by guest page frame.
//! Every store keeps written-back pages in an in-memory [`Overlay`], so a
//! page evicted dirty and fetched again comes back with what the guest
//! wrote; the underlying source (zeros, an image file, the synthetic
//! pattern) is never modified. Stores are `Sync`: the kvm page server reads
//! them from several threads.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use apflab_abi::memory_map::{PAGE_SHIFT, PAGE_SIZE, RAM_BASE};
use apflab_abi::pattern;

/// One guest page.
pub type Page = [u8; PAGE_SIZE as usize];

/// Why a store could not read or write a page.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Worth retrying (a timeout, a dropped connection).
    #[error("transient store error on guest page {pfn:#x}: {reason}")]
    Transient {
        /// Guest page frame.
        pfn: u64,
        /// What happened.
        #[source]
        reason: StoreFault,
    },
    /// Retrying will not help (bad sector, page outside the image).
    #[error("permanent store error on guest page {pfn:#x}: {reason}")]
    Permanent {
        /// Guest page frame.
        pfn: u64,
        /// What happened.
        #[source]
        reason: StoreFault,
    },
}

/// What happened to a store read ([`StoreError`]).
#[derive(Debug, thiserror::Error)]
pub enum StoreFault {
    /// The page is past the end of the image file.
    #[error("outside the image {0:?}")]
    OutsideImage(PathBuf),
    /// Reading the image file failed.
    #[error("reading {path:?} at offset {offset:#x}: {source}")]
    Read {
        /// The image.
        path: PathBuf,
        /// Byte offset of the page in it.
        offset: u64,
        /// The read's error.
        #[source]
        source: std::io::Error,
    },
    /// A page [`FaultInjectingStore`] was told can never be read.
    #[error("injected media error")]
    InjectedMediaError,
    /// A read [`FaultInjectingStore`] fails once (the n-th read).
    #[error("injected timeout (read #{0})")]
    InjectedTimeout(u64),
}

impl StoreError {
    /// Whether a retry may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Transient { .. })
    }
}

/// A source of guest pages.
pub trait Store: Send + Sync {
    /// Fills `out` with the current content of guest page `pfn`.
    fn read_page(&self, pfn: u64, out: &mut Page) -> Result<(), StoreError>;
    /// Stores `data` as the new content of `pfn` (an evicted dirty page).
    fn write_page(&self, pfn: u64, data: &Page) -> Result<(), StoreError>;
    /// Short description for logs and results (`synthetic(seed=7)`).
    fn describe(&self) -> String;
}

impl<S: Store + ?Sized> Store for Arc<S> {
    fn read_page(&self, pfn: u64, out: &mut Page) -> Result<(), StoreError> {
        (**self).read_page(pfn, out)
    }
    fn write_page(&self, pfn: u64, data: &Page) -> Result<(), StoreError> {
        (**self).write_page(pfn, data)
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
}

/// Written-back pages, each with its write-back version (1 after the first
/// write-back). Shared by all stores.
#[derive(Default)]
pub struct Overlay {
    pages: Mutex<HashMap<u64, (u32, Box<Page>)>>,
    writes: AtomicU64,
}

impl Overlay {
    /// Copies the written-back content of `pfn` into `out`; false if the
    /// page was never written back.
    pub fn read(&self, pfn: u64, out: &mut Page) -> bool {
        let pages = self.pages.lock().unwrap_or_else(|p| p.into_inner());
        match pages.get(&pfn) {
            Some((_, data)) => {
                out.copy_from_slice(&data[..]);
                true
            }
            None => false,
        }
    }

    /// Records `data` as `pfn`'s content and bumps its version.
    pub fn write(&self, pfn: u64, data: &Page) {
        let mut pages = self.pages.lock().unwrap_or_else(|p| p.into_inner());
        let entry = pages
            .entry(pfn)
            .or_insert_with(|| (0, Box::new([0; PAGE_SIZE as usize])));
        entry.0 += 1;
        entry.1.copy_from_slice(data);
        self.writes.fetch_add(1, Ordering::Relaxed);
    }

    /// Write-back version of `pfn` (0: never written back).
    pub fn version(&self, pfn: u64) -> u32 {
        let pages = self.pages.lock().unwrap_or_else(|p| p.into_inner());
        pages.get(&pfn).map_or(0, |(v, _)| *v)
    }

    /// Total write-backs.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }
}

/// Every page is zero until written back.
#[derive(Default)]
pub struct ZeroStore {
    overlay: Overlay,
}

impl ZeroStore {
    /// An empty zero store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Store for ZeroStore {
    fn read_page(&self, pfn: u64, out: &mut Page) -> Result<(), StoreError> {
        if !self.overlay.read(pfn, out) {
            out.fill(0);
        }
        Ok(())
    }
    fn write_page(&self, pfn: u64, data: &Page) -> Result<(), StoreError> {
        self.overlay.write(pfn, data);
        Ok(())
    }
    fn describe(&self) -> String {
        "zero".into()
    }
}

/// Pages of a raw guest memory image (post-copy migration, snapshot
/// restore): offset 0 is guest physical [`RAM_BASE`].
pub struct FileStore {
    file: File,
    path: PathBuf,
    len: u64,
    overlay: Overlay,
}

impl FileStore {
    /// Opens `path`; it must be a regular file (a FIFO or a device is
    /// refused before it is opened) at least `min_len` bytes long (all of
    /// guest RAM). Errors are the I/O error, or `InvalidData` for a short
    /// file. Pages are read one by one as they are needed, so the image may
    /// be of any size.
    pub fn open(path: &Path, min_len: u64) -> std::io::Result<Self> {
        let (file, len) = apflab_files::open_regular(path, u64::MAX, "a store image")?;
        if len < min_len {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("image is {len} bytes, shorter than guest RAM ({min_len} bytes)"),
            ));
        }
        Ok(FileStore {
            file,
            path: path.to_owned(),
            len,
            overlay: Overlay::default(),
        })
    }
}

impl Store for FileStore {
    fn read_page(&self, pfn: u64, out: &mut Page) -> Result<(), StoreError> {
        if self.overlay.read(pfn, out) {
            return Ok(());
        }
        let offset = (pfn << PAGE_SHIFT)
            .checked_sub(RAM_BASE)
            .filter(|o| o + PAGE_SIZE <= self.len)
            .ok_or_else(|| StoreError::Permanent {
                pfn,
                reason: StoreFault::OutsideImage(self.path.clone()),
            })?;
        self.file.read_exact_at(out, offset).map_err(|e| {
            let kind = e.kind();
            let reason = StoreFault::Read {
                path: self.path.clone(),
                offset,
                source: e,
            };
            // EINTR/EAGAIN-style errors may go away; anything else (EIO,
            // a file truncated under us) will not.
            if matches!(
                kind,
                std::io::ErrorKind::Interrupted
                    | std::io::ErrorKind::WouldBlock
                    | std::io::ErrorKind::TimedOut
            ) {
                StoreError::Transient { pfn, reason }
            } else {
                StoreError::Permanent { pfn, reason }
            }
        })
    }
    fn write_page(&self, pfn: u64, data: &Page) -> Result<(), StoreError> {
        self.overlay.write(pfn, data);
        Ok(())
    }
    fn describe(&self) -> String {
        format!("file({})", self.path.display())
    }
}

/// Pages whose content is [`pattern::fill_page`] of the seed, the page
/// frame and version 0, until written back.
pub struct SyntheticStore {
    seed: u64,
    overlay: Overlay,
}

impl SyntheticStore {
    /// A synthetic store with pattern seed `seed`.
    pub fn new(seed: u64) -> Self {
        SyntheticStore {
            seed,
            overlay: Overlay::default(),
        }
    }

    /// Write-back version of `pfn` (0 until its first write-back).
    pub fn version(&self, pfn: u64) -> u32 {
        self.overlay.version(pfn)
    }

    /// The pattern content of `pfn` at `version`, as the guest computes it.
    pub fn pattern(seed: u64, pfn: u64, version: u32, out: &mut Page) {
        let mut words = [0u64; pattern::WORDS_PER_PAGE];
        pattern::fill_page(seed, pfn, version, &mut words);
        let (chunks, _) = out.as_chunks_mut::<8>();
        for (chunk, w) in chunks.iter_mut().zip(words) {
            // The guest is little-endian arm64 and reads these as u64.
            *chunk = w.to_le_bytes();
        }
    }
}

impl Store for SyntheticStore {
    fn read_page(&self, pfn: u64, out: &mut Page) -> Result<(), StoreError> {
        if !self.overlay.read(pfn, out) {
            Self::pattern(self.seed, pfn, 0, out);
        }
        Ok(())
    }
    fn write_page(&self, pfn: u64, data: &Page) -> Result<(), StoreError> {
        self.overlay.write(pfn, data);
        Ok(())
    }
    fn describe(&self) -> String {
        format!("synthetic(seed={})", self.seed)
    }
}

/// Wraps a store and makes chosen reads fail, to exercise retries and
/// error reporting: every `transient_every`-th read fails transiently,
/// reads of the listed frames always fail permanently, and (if asked)
/// every `corrupt_every`-th read returns a silently corrupted page.
pub struct FaultInjectingStore<S> {
    inner: S,
    transient_every: u64,
    permanent: Vec<u64>,
    corrupt_every: u64,
    reads: AtomicU64,
}

impl<S: Store> FaultInjectingStore<S> {
    /// `transient_every == 0` disables transient failures.
    pub fn new(inner: S, transient_every: u64, permanent: Vec<u64>) -> Self {
        FaultInjectingStore {
            inner,
            transient_every,
            permanent,
            corrupt_every: 0,
            reads: AtomicU64::new(0),
        }
    }

    /// Also flips the first word of every `n`-th page read (0: never).
    pub fn corrupting_every(self, n: u64) -> Self {
        FaultInjectingStore {
            corrupt_every: n,
            ..self
        }
    }
}

impl<S: Store> Store for FaultInjectingStore<S> {
    fn read_page(&self, pfn: u64, out: &mut Page) -> Result<(), StoreError> {
        if self.permanent.contains(&pfn) {
            return Err(StoreError::Permanent {
                pfn,
                reason: StoreFault::InjectedMediaError,
            });
        }
        let n = self.reads.fetch_add(1, Ordering::Relaxed) + 1;
        if self.transient_every != 0 && n.is_multiple_of(self.transient_every) {
            return Err(StoreError::Transient {
                pfn,
                reason: StoreFault::InjectedTimeout(n),
            });
        }
        self.inner.read_page(pfn, out)?;
        if self.corrupt_every != 0 && n.is_multiple_of(self.corrupt_every) {
            for b in &mut out[..8] {
                *b = !*b;
            }
        }
        Ok(())
    }
    fn write_page(&self, pfn: u64, data: &Page) -> Result<(), StoreError> {
        self.inner.write_page(pfn, data)
    }
    fn describe(&self) -> String {
        format!("fault-injecting({})", self.inner.describe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const PFN: u64 = (RAM_BASE >> PAGE_SHIFT) + 0x2345;

    #[test]
    fn synthetic_pages_are_the_abi_pattern() {
        let store = SyntheticStore::new(42);
        let mut page = [0u8; 4096];
        store.read_page(PFN, &mut page).unwrap();
        for (i, chunk) in page.as_chunks::<8>().0.iter().enumerate() {
            let w = u64::from_le_bytes(*chunk);
            assert_eq!(w, pattern::synthetic_word(42, PFN, 0, i), "word {i}");
        }
        assert_eq!(store.version(PFN), 0);
    }

    #[test]
    fn write_back_is_returned_and_bumps_the_version() {
        let store = SyntheticStore::new(1);
        let mut written = [0u8; 4096];
        SyntheticStore::pattern(1, PFN, 1, &mut written);
        store.write_page(PFN, &written).unwrap();
        assert_eq!(store.version(PFN), 1);
        let mut back = [0u8; 4096];
        store.read_page(PFN, &mut back).unwrap();
        assert_eq!(back, written);
        store.read_page(PFN + 1, &mut back).unwrap();
        let mut other = [0u8; 4096];
        SyntheticStore::pattern(1, PFN + 1, 0, &mut other);
        assert_eq!(back, other, "neighbours keep version 0");
        store.write_page(PFN, &[7; 4096]).unwrap();
        assert_eq!(store.version(PFN), 2);
    }

    #[test]
    fn zero_store_reads_zero_then_what_was_written() {
        let store = ZeroStore::new();
        let mut page = [9u8; 4096];
        store.read_page(PFN, &mut page).unwrap();
        assert!(page.iter().all(|&b| b == 0));
        store.write_page(PFN, &[5; 4096]).unwrap();
        store.read_page(PFN, &mut page).unwrap();
        assert!(page.iter().all(|&b| b == 5));
    }

    #[test]
    fn file_store_preads_the_image() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let mut image = vec![0u8; 4 * 4096];
        for (i, b) in image.iter_mut().enumerate() {
            *b = (i / 4096) as u8 + 1;
        }
        f.write_all(&image).unwrap();
        let store = FileStore::open(f.path(), 4 * 4096).unwrap();
        let base = RAM_BASE >> PAGE_SHIFT;
        let mut page = [0u8; 4096];
        store.read_page(base + 2, &mut page).unwrap();
        assert!(page.iter().all(|&b| b == 3));
        let e = store.read_page(base + 4, &mut page).unwrap_err();
        assert!(!e.is_transient());
        assert!(e.to_string().contains(&format!("{:#x}", base + 4)), "{e}");
        store.write_page(base + 2, &[0xAA; 4096]).unwrap();
        store.read_page(base + 2, &mut page).unwrap();
        assert!(page.iter().all(|&b| b == 0xAA));
        let short = FileStore::open(f.path(), 5 * 4096).err().unwrap();
        assert!(
            short.to_string().contains("shorter than guest RAM"),
            "{short}"
        );
    }

    #[test]
    fn fault_injection_follows_its_schedule() {
        let store = FaultInjectingStore::new(ZeroStore::new(), 3, vec![PFN]);
        let mut page = [0u8; 4096];
        assert!(
            store
                .read_page(PFN, &mut page)
                .is_err_and(|e| !e.is_transient())
        );
        assert!(store.read_page(PFN + 1, &mut page).is_ok());
        assert!(store.read_page(PFN + 1, &mut page).is_ok());
        assert!(
            store
                .read_page(PFN + 1, &mut page)
                .is_err_and(|e| e.is_transient())
        );
        assert!(store.read_page(PFN + 1, &mut page).is_ok());
    }

    #[test]
    fn a_corrupting_store_flips_the_first_word_of_every_nth_page_silently() {
        let store = FaultInjectingStore::new(ZeroStore::new(), 0, vec![]).corrupting_every(2);
        let mut page = [0u8; 4096];
        store.read_page(PFN, &mut page).unwrap();
        assert_eq!(page, [0u8; 4096]);
        store.read_page(PFN, &mut page).unwrap();
        assert_eq!(page[..8], [0xff; 8]);
        assert!(page[8..].iter().all(|&b| b == 0));
    }
}
