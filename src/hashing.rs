//! SHA-256 digests of model files: parsing the forms users write, hashing
//! files fast, and the stat key the engine's hash cache is indexed by.
//!
//! Speed matters here because `plan --verify` re-hashes every model (tens of
//! gigabytes). `sha2` 0.10 picks the SHA-NI instructions at run time on x86-64
//! when the CPU has them (no feature flag needed); on aarch64 the hardware
//! path needs the crate's `asm` feature, which `Cargo.toml` turns on for that
//! target only. [`sha256_hardware_accelerated`] tells which path is in use.

use std::fmt;
use std::fs::{File, Metadata};
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

/// Read buffer for hashing: large enough that syscalls are a rounding error
/// next to the hashing itself, small enough to keep per-thread memory modest.
pub const HASH_BUFFER_BYTES: usize = 1 << 20;

/// A SHA-256 digest (32 bytes). Displays as lowercase hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256Digest([u8; 32]);

/// Why a string is not a SHA-256 digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestParseError {
    #[error("the sha256 is empty: write 64 hex characters or the sha256-<base64> form")]
    Empty,
    #[error("a sha256 in hex has 64 characters, this one has {len}: check it was copied whole")]
    WrongHexLength { len: usize },
    #[error(
        "the sha256 has a character that is not hex ({found:?} at position {position}): \
         write 64 characters 0-9/a-f, or the sha256-<base64> form"
    )]
    NotHex { found: char, position: usize },
    #[error(
        "the digest uses {algorithm}, but plasma checks sha256: write sha256-<base64> or 64 hex characters"
    )]
    UnsupportedAlgorithm { algorithm: String },
    #[error("the base64 part of the sha256-<base64> digest is not valid base64")]
    InvalidBase64,
    #[error(
        "the sha256-<base64> digest decodes to {len} bytes, a sha256 has 32: check it was copied whole"
    )]
    WrongBase64Length { len: usize },
}

impl Sha256Digest {
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Sha256Digest(bytes)
    }

    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lowercase hex, the form `plasma pin` writes.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The SRI / Nix form, `sha256-<base64>`.
    pub fn to_sri(&self) -> String {
        format!(
            "sha256-{}",
            base64::engine::general_purpose::STANDARD.encode(self.0)
        )
    }

    /// Digest of an in-memory byte string.
    pub fn of_bytes(data: &[u8]) -> Self {
        Sha256Digest(Sha256::digest(data).into())
    }

    /// Accepts 64 hex characters (either case) or `sha256-<base64>`
    /// (padded or not), surrounding whitespace ignored.
    pub fn parse(text: &str) -> Result<Self, DigestParseError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(DigestParseError::Empty);
        }
        if let Some((algorithm, encoded)) = text.split_once('-') {
            if !algorithm.eq_ignore_ascii_case("sha256") {
                return Err(DigestParseError::UnsupportedAlgorithm {
                    algorithm: algorithm.to_string(),
                });
            }
            return Self::parse_base64(encoded);
        }
        Self::parse_hex(text)
    }

    fn parse_hex(text: &str) -> Result<Self, DigestParseError> {
        if let Some((position, found)) = text.char_indices().find(|(_, c)| !c.is_ascii_hexdigit()) {
            return Err(DigestParseError::NotHex { found, position });
        }
        if text.len() != 64 {
            return Err(DigestParseError::WrongHexLength { len: text.len() });
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text, &mut bytes).expect("64 checked hex digits decode");
        Ok(Sha256Digest(bytes))
    }

    fn parse_base64(encoded: &str) -> Result<Self, DigestParseError> {
        // Nix writes the padding, some tools drop it; accept both.
        let unpadded = encoded.trim_end_matches('=');
        let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(unpadded)
            .map_err(|_| DigestParseError::InvalidBase64)?;
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|bytes: Vec<u8>| DigestParseError::WrongBase64Length { len: bytes.len() })?;
        Ok(Sha256Digest(bytes))
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256Digest({})", self.to_hex())
    }
}

impl FromStr for Sha256Digest {
    type Err = DigestParseError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

impl Serialize for Sha256Digest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Sha256Digest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Sha256Digest::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// True when SHA-256 runs on dedicated CPU instructions (SHA-NI on x86-64,
/// the SHA2 extension on aarch64), i.e. the path `sha2` takes at run time.
pub fn sha256_hardware_accelerated() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("sha")
            && std::arch::is_x86_feature_detected!("sse2")
            && std::arch::is_x86_feature_detected!("ssse3")
            && std::arch::is_x86_feature_detected!("sse4.1")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("sha2")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// A file could not be read for hashing.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {} to check its sha256: {source}", path.display())]
pub struct HashError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// SHA-256 of a file's contents, read once front to back.
pub fn hash_file(path: &Path) -> Result<Sha256Digest, HashError> {
    let wrap = |source| HashError {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(wrap)?;
    advise_sequential(&file);
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; HASH_BUFFER_BYTES];
    loop {
        match file.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buffer[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(wrap(e)),
        }
    }
    Ok(Sha256Digest(hasher.finalize().into()))
}

/// Tells the kernel we read front to back, so it reads ahead generously.
/// Purely a hint: failure changes nothing but speed.
fn advise_sequential(file: &File) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: the descriptor is open for the lifetime of `file`.
        unsafe {
            libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_SEQUENTIAL);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = file;
}

/// Hashes many files on up to `jobs` threads (at least one). Results come
/// back in the order of `paths`, one per path; one unreadable file does not
/// stop the others.
pub fn hash_files_parallel(paths: &[PathBuf], jobs: usize) -> Vec<Result<Sha256Digest, HashError>> {
    let jobs = jobs.clamp(1, paths.len().max(1));
    let next = AtomicUsize::new(0);
    let results: Vec<Mutex<Option<Result<Sha256Digest, HashError>>>> =
        paths.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| {
                loop {
                    // Work stealing by index: big and small files even out.
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    let Some(path) = paths.get(index) else { break };
                    let result = hash_file(path);
                    *results[index].lock().expect("no panics while holding") = Some(result);
                }
            });
        }
    });
    results
        .into_iter()
        .map(|slot| {
            slot.into_inner()
                .expect("no panics while holding")
                .expect("every index was taken by a worker")
        })
        .collect()
}

/// What identifies a file's contents without reading them: if none of these
/// changed, the engine trusts the digest it cached for the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FileKey {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    /// Modification time in nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
}

impl FileKey {
    /// Reads the key with one `stat` (following symlinks, as a reader would).
    pub fn of(path: &Path) -> io::Result<FileKey> {
        Ok(FileKey::from_metadata(&std::fs::metadata(path)?))
    }

    pub fn from_metadata(metadata: &Metadata) -> FileKey {
        FileKey {
            dev: metadata.dev(),
            ino: metadata.ino(),
            size: metadata.size(),
            // i64 nanoseconds last until the year 2262.
            mtime_ns: metadata.mtime() * 1_000_000_000 + metadata.mtime_nsec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ABC: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    #[test]
    fn parses_hex_in_either_case_and_displays_lowercase() {
        let lower = Sha256Digest::parse(ABC).unwrap();
        let upper = Sha256Digest::parse(&ABC.to_uppercase()).unwrap();
        assert_eq!(lower, upper);
        assert_eq!(lower.to_string(), ABC);
        assert_eq!(lower, Sha256Digest::of_bytes(b"abc"));
    }

    #[test]
    fn parses_sri_with_and_without_padding() {
        let sri = "sha256-ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0=";
        let digest = Sha256Digest::parse(sri).unwrap();
        assert_eq!(digest.to_string(), ABC);
        assert_eq!(digest.to_sri(), sri);
        assert_eq!(
            Sha256Digest::parse(sri.trim_end_matches('=')).unwrap(),
            digest
        );
    }

    #[test]
    fn parse_errors_say_what_is_wrong() {
        let short = Sha256Digest::parse(&ABC[..60]).unwrap_err();
        assert_eq!(short, DigestParseError::WrongHexLength { len: 60 });
        assert!(short.to_string().contains("64 characters, this one has 60"));

        let not_hex = Sha256Digest::parse(&format!("{}zz", &ABC[..62])).unwrap_err();
        assert!(
            not_hex.to_string().contains("'z' at position 62"),
            "{not_hex}"
        );

        let md5 = Sha256Digest::parse("md5-1B2M2Y8AsgTpgAmY7PhCfg==").unwrap_err();
        assert!(md5.to_string().contains("uses md5"), "{md5}");

        let bad64 = Sha256Digest::parse("sha256-!!!").unwrap_err();
        assert_eq!(bad64, DigestParseError::InvalidBase64);

        let wrong_len = Sha256Digest::parse("sha256-YWJj").unwrap_err();
        assert!(wrong_len.to_string().contains("3 bytes"), "{wrong_len}");

        assert_eq!(
            Sha256Digest::parse("  ").unwrap_err(),
            DigestParseError::Empty
        );
    }

    #[test]
    fn serde_round_trips_as_hex_and_rejects_garbage() {
        let digest = Sha256Digest::parse(ABC).unwrap();
        let json = serde_json::to_string(&digest).unwrap();
        assert_eq!(json, format!("\"{ABC}\""));
        assert_eq!(serde_json::from_str::<Sha256Digest>(&json).unwrap(), digest);
        assert!(serde_json::from_str::<Sha256Digest>("\"abc\"").is_err());
    }

    #[test]
    fn file_key_changes_with_mtime_and_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"one").unwrap();
        let first = FileKey::of(&path).unwrap();
        assert_eq!(first.size, 3);
        assert_eq!(first, FileKey::of(&path).unwrap());

        let file = File::options().write(true).open(&path).unwrap();
        let later = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::new(1_000_000, 7);
        file.set_modified(later).unwrap();
        let touched = FileKey::of(&path).unwrap();
        assert_eq!(touched.mtime_ns, 1_000_000 * 1_000_000_000 + 7);
        assert_eq!((touched.dev, touched.ino), (first.dev, first.ino));
        assert_ne!(touched, first);
    }
}
