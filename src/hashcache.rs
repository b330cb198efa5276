//! File digests remembered by file identity, so a converged plan reads no
//! file contents: a digest is trusted while the file's (device, inode, size,
//! mtime) are unchanged.
//!
//! The cache lives in `.plasma/hash-cache.json`, apart from the state: any
//! command that hashes a file (plan and drift too) records the digest, so
//! touching a file costs exactly one re-hash however many plans follow. It is
//! only a cache: written atomically, last writer wins, and a lost or corrupt
//! file only means hashing again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::fsutil;
use crate::hashing::{FileKey, Sha256Digest};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    key: FileKey,
    sha256: Sha256Digest,
}

#[derive(Debug, Default)]
pub struct HashCache {
    file: Option<PathBuf>,
    entries: Mutex<BTreeMap<PathBuf, Entry>>,
    dirty: Mutex<bool>,
}

impl HashCache {
    /// Loads the cache file; a missing or unreadable one starts empty.
    pub fn load(file: &Path) -> HashCache {
        let entries = std::fs::read(file)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        HashCache {
            file: Some(file.to_path_buf()),
            entries: Mutex::new(entries),
            dirty: Mutex::new(false),
        }
    }

    /// An empty cache that is never saved.
    pub fn in_memory() -> HashCache {
        HashCache::default()
    }

    /// The cached digest of `path`, if its identity is still `key`.
    pub fn get(&self, path: &Path, key: &FileKey) -> Option<Sha256Digest> {
        let entries = self.entries.lock().expect("cache lock");
        entries
            .get(path)
            .filter(|e| e.key == *key)
            .map(|e| e.sha256)
    }

    pub fn put(&self, path: &Path, key: FileKey, sha256: Sha256Digest) {
        let mut entries = self.entries.lock().expect("cache lock");
        entries.insert(path.to_path_buf(), Entry { key, sha256 });
        *self.dirty.lock().expect("cache lock") = true;
    }

    pub fn forget(&self, path: &Path) {
        if self
            .entries
            .lock()
            .expect("cache lock")
            .remove(path)
            .is_some()
        {
            *self.dirty.lock().expect("cache lock") = true;
        }
    }

    /// Writes the cache if anything changed. Failure is not an error: the
    /// cache only saves work.
    pub fn save(&self) {
        let Some(file) = &self.file else { return };
        let mut dirty = self.dirty.lock().expect("cache lock");
        if !*dirty {
            return;
        }
        let entries = self.entries.lock().expect("cache lock");
        let text = serde_json::to_vec_pretty(&*entries).expect("cache serialises");
        if fsutil::write_atomic(file, &text, None).is_ok() {
            *dirty = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_survive_a_save_and_expire_with_the_file_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cache.json");
        let cache = HashCache::load(&file);
        let key = FileKey {
            dev: 1,
            ino: 2,
            size: 3,
            mtime_ns: 4,
        };
        let digest = Sha256Digest::of_bytes(b"abc");
        cache.put(Path::new("/m/a"), key, digest);
        cache.save();
        let again = HashCache::load(&file);
        assert_eq!(again.get(Path::new("/m/a"), &key), Some(digest));
        let touched = FileKey { mtime_ns: 5, ..key };
        assert_eq!(again.get(Path::new("/m/a"), &touched), None);
    }

    #[test]
    fn a_corrupt_cache_file_starts_empty() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cache.json");
        std::fs::write(&file, "not json").unwrap();
        let cache = HashCache::load(&file);
        let key = FileKey {
            dev: 1,
            ino: 2,
            size: 3,
            mtime_ns: 4,
        };
        assert_eq!(cache.get(Path::new("/m/a"), &key), None);
    }
}
