//! The arm64 Linux `Image` format: the 64-byte header every arm64 kernel
//! starts with (Documentation/arch/arm64/booting.rst, section 4), and the
//! gzip'd form distributions ship as `vmlinuz`.
//!
//! The header tells a boot loader where the kernel may sit (`text_offset`
//! from a 2 MiB-aligned base), how much memory it occupies from there
//! (`image_size`, which includes its BSS and early page tables: more than the
//! file), and its endianness and page size.

use std::io::Read;

/// Byte offset of the header's magic.
const MAGIC_OFFSET: usize = 0x38;
/// The magic, "ARM\x64".
pub const MAGIC: [u8; 4] = *b"ARM\x64";
/// Length of the header.
pub const HEADER_LEN: usize = 64;
/// The first bytes of a gzip member (RFC 1952).
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
/// `text_offset` of kernels older than 3.17, whose header has `image_size`
/// 0 (booting.rst: "assume 0x80000").
const LEGACY_TEXT_OFFSET: u64 = 0x8_0000;

/// The fields of the header a boot loader acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageHeader {
    /// Offset of the kernel from the 2 MiB-aligned base it is loaded at.
    pub text_offset: u64,
    /// Bytes the kernel occupies from its load address (0 before 3.17).
    pub image_size: u64,
    /// Bit 0: big-endian; bits 1-2: page size (0 unspecified, 1 4 KiB,
    /// 2 16 KiB, 3 64 KiB); bit 3: may be placed anywhere in RAM.
    pub flags: u64,
}

/// Why an image is not a kernel this machine can boot.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// gzip data that does not decompress.
    #[error("is gzip data that does not decompress: {0}")]
    BadGzip(#[source] std::io::Error),
    /// Decompressed, it would not fit in guest RAM.
    #[error("decompresses to more than the {limit} bytes of guest RAM")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// gzip data that is not an arm64 Image.
    #[error(
        "is gzip data whose content is not an arm64 Image (no \"ARM\\x64\" magic at offset 0x38)"
    )]
    NotAnImage,
    /// A big-endian kernel.
    #[error("is a big-endian arm64 kernel; this machine runs little-endian only")]
    BigEndian,
    /// A kernel for a granule the machine's walkers do not implement.
    #[error("is an arm64 kernel built for {0} KiB pages; this machine supports 4 KiB pages only")]
    PageSize(u64),
}

/// Two errors are equal when they are of the same kind and say the same
/// thing (a decompression error is compared by what it says).
impl PartialEq for ImageError {
    fn eq(&self, other: &Self) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
            && self.to_string() == other.to_string()
    }
}

impl Eq for ImageError {}

impl ImageHeader {
    /// The header of `bytes`, or `None` if they do not start with one.
    pub fn parse(bytes: &[u8]) -> Option<ImageHeader> {
        let header = bytes.get(..HEADER_LEN)?;
        if header[MAGIC_OFFSET..MAGIC_OFFSET + 4] != MAGIC {
            return None;
        }
        let word = |at: usize| {
            u64::from_le_bytes(
                header[at..at + 8]
                    .try_into()
                    .expect("8 bytes in the header"),
            )
        };
        let (text_offset, image_size) = match word(16) {
            0 => (LEGACY_TEXT_OFFSET, 0),
            size => (word(8), size),
        };
        Some(ImageHeader {
            text_offset,
            image_size,
            flags: word(24),
        })
    }

    /// Refuses what this machine cannot run: big-endian kernels and granules
    /// other than 4 KiB.
    pub fn check(&self) -> Result<(), ImageError> {
        if self.flags & 1 != 0 {
            return Err(ImageError::BigEndian);
        }
        match (self.flags >> 1) & 3 {
            0 | 1 => Ok(()),
            2 => Err(ImageError::PageSize(16)),
            _ => Err(ImageError::PageSize(64)),
        }
    }

    /// Bytes the kernel occupies from its load address, for a file of
    /// `file_len` bytes: `image_size`, or the file itself for a kernel
    /// whose header does not say.
    pub fn footprint(&self, file_len: u64) -> u64 {
        self.image_size.max(file_len)
    }
}

/// The header of the kernel file `path` and the length of the image it
/// holds (for a gzip'd one, the length its gzip trailer gives), reading only
/// the start of the file (and the trailer); `None` if it is no arm64 Image.
pub fn read_header(path: &std::path::Path) -> std::io::Result<Option<(ImageHeader, u64)>> {
    use std::io::{Seek, SeekFrom};
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    let mut head = Vec::with_capacity(HEADER_LEN);
    (&mut file).take(HEADER_LEN as u64).read_to_end(&mut head)?;
    if !head.starts_with(&GZIP_MAGIC) {
        return Ok(ImageHeader::parse(&head).map(|h| (h, len)));
    }
    file.seek(SeekFrom::Start(0))?;
    let mut image = Vec::with_capacity(HEADER_LEN);
    let decoded = flate2::read::GzDecoder::new(std::io::BufReader::new(&mut file))
        .take(HEADER_LEN as u64)
        .read_to_end(&mut image);
    let Some(header) = decoded.ok().and_then(|_| ImageHeader::parse(&image)) else {
        return Ok(None);
    };
    // ISIZE: the uncompressed length modulo 2^32 (kernels are far smaller).
    let mut isize = [0u8; 4];
    file.seek(SeekFrom::End(-4))?;
    file.read_exact(&mut isize)?;
    Ok(Some((header, u64::from(u32::from_le_bytes(isize)))))
}

/// `bytes` as a kernel image: unchanged unless it is gzip'd, in which case
/// its decompressed content, which must be an arm64 Image of at most `limit`
/// bytes (a decompression bomb stops at the limit).
pub fn gunzip_if_compressed(bytes: &[u8], limit: u64) -> Result<Option<Vec<u8>>, ImageError> {
    if !bytes.starts_with(&GZIP_MAGIC) {
        return Ok(None);
    }
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .take(limit.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(ImageError::BadGzip)?;
    if out.len() as u64 > limit {
        return Err(ImageError::TooLarge { limit });
    }
    if ImageHeader::parse(&out).is_none() {
        return Err(ImageError::NotAnImage);
    }
    Ok(Some(out))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    /// A header with the given fields (and a branch as its first word, as a
    /// real kernel has).
    pub(crate) fn header(text_offset: u64, image_size: u64, flags: u64) -> Vec<u8> {
        let mut b = vec![0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&0x1400_0010u32.to_le_bytes());
        b[8..16].copy_from_slice(&text_offset.to_le_bytes());
        b[16..24].copy_from_slice(&image_size.to_le_bytes());
        b[24..32].copy_from_slice(&flags.to_le_bytes());
        b[MAGIC_OFFSET..MAGIC_OFFSET + 4].copy_from_slice(&MAGIC);
        b
    }

    #[test]
    fn the_header_of_a_debian_kernel_is_read() {
        // The values of Debian's 6.12 arm64 vmlinuz: text_offset 0,
        // image_size 0x2b40000, 4 KiB pages, placement anywhere.
        let h = ImageHeader::parse(&header(0, 0x2b4_0000, 0xa)).unwrap();
        assert_eq!(
            h,
            ImageHeader {
                text_offset: 0,
                image_size: 0x2b4_0000,
                flags: 0xa
            }
        );
        assert_eq!(h.check(), Ok(()));
        assert_eq!(h.footprint(0x2a3_b9c0), 0x2b4_0000);
    }

    #[test]
    fn a_kernel_before_3_17_gets_the_legacy_text_offset() {
        let h = ImageHeader::parse(&header(0x1234, 0, 0)).unwrap();
        assert_eq!((h.text_offset, h.image_size), (0x8_0000, 0));
        assert_eq!(h.footprint(4096), 4096);
    }

    #[test]
    fn no_magic_is_no_header() {
        let mut b = header(0, 4096, 2);
        b[MAGIC_OFFSET] = b'X';
        assert_eq!(ImageHeader::parse(&b), None);
        assert_eq!(ImageHeader::parse(&b[..32]), None);
    }

    #[test]
    fn big_endian_and_large_granule_kernels_are_refused() {
        let check = |flags| ImageHeader::parse(&header(0, 4096, flags)).unwrap().check();
        assert_eq!(check(1), Err(ImageError::BigEndian));
        assert_eq!(check(2 << 1), Err(ImageError::PageSize(16)));
        assert_eq!(check(3 << 1), Err(ImageError::PageSize(64)));
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn a_gzipd_image_is_decompressed_and_other_gzip_data_refused() {
        let image = header(0, 8192, 2);
        assert_eq!(gunzip_if_compressed(&image, 1 << 20), Ok(None));
        assert_eq!(
            gunzip_if_compressed(&gzip(&image), 1 << 20),
            Ok(Some(image.clone()))
        );
        assert_eq!(
            gunzip_if_compressed(&gzip(b"not a kernel"), 1 << 20),
            Err(ImageError::NotAnImage)
        );
        assert_eq!(
            gunzip_if_compressed(&gzip(&image), 10),
            Err(ImageError::TooLarge { limit: 10 })
        );
        assert!(matches!(
            gunzip_if_compressed(&[0x1f, 0x8b, 8, 0, 1, 2], 1 << 20),
            Err(ImageError::BadGzip(_))
        ));
    }

    #[test]
    fn the_header_of_a_file_is_read_plain_or_gzipd() {
        let image = {
            let mut b = header(0, 0x30_0000, 0xa);
            b.resize(0x2000, 7);
            b
        };
        let plain = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(plain.path(), &image).unwrap();
        let (h, len) = read_header(plain.path()).unwrap().unwrap();
        assert_eq!((h.image_size, len), (0x30_0000, 0x2000));
        let gz = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(gz.path(), gzip(&image)).unwrap();
        let (h, len) = read_header(gz.path()).unwrap().unwrap();
        assert_eq!((h.image_size, len), (0x30_0000, 0x2000));
        std::fs::write(gz.path(), gzip(b"not a kernel")).unwrap();
        assert_eq!(read_header(gz.path()).unwrap(), None);
        std::fs::write(plain.path(), b"\x7fELF").unwrap();
        assert_eq!(read_header(plain.path()).unwrap(), None);
    }
}
