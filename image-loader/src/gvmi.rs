//! The GVMI reader: a squashfs image followed by a trailer that holds the image's
//! `ContainerConfig`:
//!
//! `[squashfs][crc32-IEEE of JSON, 4 bytes LE][JSON][JSON length, 8 ASCII decimal digits]`
//!
//! Every length is checked against the file before anything is read, and at most
//! [`MAX_CONFIG_LEN`] bytes of JSON are ever read.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::container_config::ContainerConfig;

/// Bytes in the fixed part of the trailer: the CRC before the JSON and the length after it.
pub const TRAILER_FIXED_LEN: u64 = 4 + 8;
/// Largest trailer JSON accepted. Real configs are a few KiB; this bounds what a hostile image
/// can make the host read and parse.
pub const MAX_CONFIG_LEN: u64 = 4 * 1024 * 1024;
/// Squashfs superblock size (version 4).
const SUPERBLOCK_LEN: u64 = 96;
/// `hsqs`, the squashfs magic as it appears on disk.
const SQUASHFS_MAGIC: [u8; 4] = *b"hsqs";

/// Why a file is not a usable GVMI image.
#[derive(Debug, thiserror::Error)]
pub enum GvmiError {
    /// The file could not be opened or read.
    #[error("cannot read image {path}: {source}")]
    Io {
        /// The image file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Smaller than the fixed trailer.
    #[error("not a GVMI image: {len} bytes is shorter than the 12-byte trailer")]
    TooShort {
        /// File length.
        len: u64,
    },
    /// The last 8 bytes are not decimal digits.
    #[error("not a GVMI image: the last 8 bytes {raw:?} are not an ASCII decimal length")]
    BadLength {
        /// The bytes, lossily decoded.
        raw: String,
    },
    /// The JSON length does not fit in the file.
    #[error("not a GVMI image: the trailer claims {json_len} bytes of JSON, but the file has only {len} bytes")]
    LengthTooLarge {
        /// The length the trailer claims.
        json_len: u64,
        /// File length.
        len: u64,
    },
    /// The JSON is larger than the runtime reads.
    #[error("GVMI trailer JSON of {json_len} bytes exceeds the limit of {MAX_CONFIG_LEN} bytes")]
    ConfigTooLarge {
        /// The length the trailer claims.
        json_len: u64,
    },
    /// The JSON does not match its checksum.
    #[error("GVMI trailer is corrupt: crc32 of the JSON is {actual:08x}, the trailer says {expected:08x}")]
    CrcMismatch {
        /// CRC stored in the trailer.
        expected: u32,
        /// CRC of the JSON as read.
        actual: u32,
    },
    /// The JSON is not a Docker `ContainerConfig`.
    #[error("GVMI trailer JSON is not a container config: {0}")]
    NotContainerConfig(#[source] serde_json::Error),
    /// The file does not start with a squashfs superblock.
    #[error("not a GVMI image: no squashfs magic at offset 0")]
    NotSquashfs,
    /// A squashfs other than version 4.
    #[error("unsupported squashfs version {major}.{minor} (4.0 is required)")]
    SquashfsVersion {
        /// Major version.
        major: u16,
        /// Minor version.
        minor: u16,
    },
    /// The squashfs claims bytes that belong to the trailer.
    #[error("corrupt GVMI image: the squashfs uses {bytes_used} bytes, but the trailer starts at byte {trailer_start}")]
    SquashfsOverlapsTrailer {
        /// `bytes_used` from the superblock.
        bytes_used: u64,
        /// Offset of the trailer's first byte.
        trailer_start: u64,
    },
}

/// A checked GVMI image.
#[derive(Debug, Clone, PartialEq)]
pub struct GvmiImage {
    /// The image's configuration from the trailer.
    pub config: ContainerConfig,
    /// Bytes used by the squashfs filesystem at the start of the file.
    pub squashfs_bytes: u64,
    /// Total file length.
    pub file_len: u64,
}

/// Opens and checks the GVMI image at `path`.
pub fn read_gvmi(path: &Path) -> Result<GvmiImage, GvmiError> {
    let io_err = |source| GvmiError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(io_err)?;
    let len = file.metadata().map_err(io_err)?.len();
    parse(&mut file, len).map_err(|e| match e {
        ParseError::Gvmi(e) => e,
        ParseError::Io(source) => io_err(source),
    })
}

/// Checks an in-memory GVMI image (tests and fuzzing use this; it never panics).
pub fn parse_gvmi_bytes(bytes: &[u8]) -> Result<GvmiImage, GvmiError> {
    parse(&mut io::Cursor::new(bytes), bytes.len() as u64).map_err(|e| match e {
        ParseError::Gvmi(e) => e,
        ParseError::Io(source) => GvmiError::Io {
            path: PathBuf::from("<memory>"),
            source,
        },
    })
}

enum ParseError {
    Gvmi(GvmiError),
    Io(io::Error),
}

impl From<GvmiError> for ParseError {
    fn from(e: GvmiError) -> Self {
        ParseError::Gvmi(e)
    }
}

impl From<io::Error> for ParseError {
    fn from(e: io::Error) -> Self {
        ParseError::Io(e)
    }
}

fn parse<R: Read + Seek>(r: &mut R, len: u64) -> Result<GvmiImage, ParseError> {
    if len < TRAILER_FIXED_LEN {
        return Err(GvmiError::TooShort { len }.into());
    }
    let mut digits = [0u8; 8];
    read_at(r, len - 8, &mut digits)?;
    if !digits.iter().all(u8::is_ascii_digit) {
        return Err(GvmiError::BadLength {
            raw: String::from_utf8_lossy(&digits).into_owned(),
        }
        .into());
    }
    let json_len = digits
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    let trailer_len = TRAILER_FIXED_LEN + json_len;
    if trailer_len > len {
        return Err(GvmiError::LengthTooLarge { json_len, len }.into());
    }
    if json_len > MAX_CONFIG_LEN {
        return Err(GvmiError::ConfigTooLarge { json_len }.into());
    }
    let trailer_start = len - trailer_len;
    // json_len <= MAX_CONFIG_LEN, so this allocation is bounded.
    let mut crc_and_json = vec![0u8; 4 + json_len as usize];
    read_at(r, trailer_start, &mut crc_and_json)?;
    let (crc_bytes, json) = crc_and_json.split_at(4);
    let expected = u32::from_le_bytes([crc_bytes[0], crc_bytes[1], crc_bytes[2], crc_bytes[3]]);
    let actual = crc32fast::hash(json);
    if expected != actual {
        return Err(GvmiError::CrcMismatch { expected, actual }.into());
    }
    let config = ContainerConfig::from_json(json).map_err(GvmiError::NotContainerConfig)?;

    if trailer_start < SUPERBLOCK_LEN {
        return Err(GvmiError::NotSquashfs.into());
    }
    let mut sb = [0u8; SUPERBLOCK_LEN as usize];
    read_at(r, 0, &mut sb)?;
    if sb[0..4] != SQUASHFS_MAGIC {
        return Err(GvmiError::NotSquashfs.into());
    }
    let major = u16::from_le_bytes([sb[28], sb[29]]);
    let minor = u16::from_le_bytes([sb[30], sb[31]]);
    if major != 4 {
        return Err(GvmiError::SquashfsVersion { major, minor }.into());
    }
    let mut used = [0u8; 8];
    used.copy_from_slice(&sb[40..48]);
    let bytes_used = u64::from_le_bytes(used);
    if bytes_used > trailer_start {
        return Err(GvmiError::SquashfsOverlapsTrailer {
            bytes_used,
            trailer_start,
        }
        .into());
    }
    Ok(GvmiImage {
        config,
        squashfs_bytes: bytes_used,
        file_len: len,
    })
}

fn read_at<R: Read + Seek>(r: &mut R, offset: u64, buf: &mut [u8]) -> io::Result<()> {
    r.seek(SeekFrom::Start(offset))?;
    r.read_exact(buf)
}
