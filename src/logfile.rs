//! A resource's log file, `.plasma/logs/<address>.log`: what apply did and
//! the output of the programs it ran. A log that cannot be written never
//! fails an apply.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

pub struct LogFile(Option<Mutex<File>>);

impl LogFile {
    /// Opens the log for appending, creating its folder.
    pub fn open(path: &Path) -> LogFile {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let file = OpenOptions::new().create(true).append(true).open(path);
        LogFile(file.ok().map(Mutex::new))
    }

    /// One line, stamped with the time.
    pub fn line(&self, text: &str) {
        self.write(&format!("{} {text}\n", crate::fsutil::now_rfc3339()));
    }

    /// Text as it is (a program's output).
    pub fn write(&self, text: &str) {
        if let Some(file) = &self.0
            && let Ok(mut file) = file.lock()
        {
            let _ = file.write_all(text.as_bytes());
        }
    }
}

/// Appends `text` to the log at `path`.
pub fn append(path: &Path, text: &str) {
    LogFile::open(path).write(text);
}
