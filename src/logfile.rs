//! A resource's log file, `.plasma/logs/<address>.log`: what apply did and
//! the output of the programs it ran. A log that cannot be written never
//! fails an apply.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Mutex;

/// An open log: the file, and whether what is in it ends mid-line.
pub struct LogFile(Option<Mutex<(File, bool)>>);

impl LogFile {
    /// Opens the log for appending, creating its folder.
    pub fn open(path: &Path) -> LogFile {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path);
        LogFile(file.ok().map(|file| {
            // A killed program's last output (a progress bar redrawn with
            // `\r`) may end without a newline.
            let mut last = [b'\n'];
            let len = file.metadata().map_or(0, |m| m.len());
            if len > 0 {
                let _ = file.read_exact_at(&mut last, len - 1);
            }
            Mutex::new((file, last[0] != b'\n'))
        }))
    }

    /// One line, stamped with the time, starting on a line of its own.
    pub fn line(&self, text: &str) {
        let stamped = format!("{} {text}\n", crate::fsutil::now_rfc3339());
        if let Some(file) = &self.0
            && let Ok(mut file) = file.lock()
        {
            let (file, mid_line) = &mut *file;
            if std::mem::take(mid_line) {
                let _ = file.write_all(b"\n");
            }
            let _ = file.write_all(stamped.as_bytes());
        }
    }

    /// Text as it is (a program's output).
    pub fn write(&self, text: &str) {
        if let Some(file) = &self.0
            && let Ok(mut file) = file.lock()
        {
            let (file, mid_line) = &mut *file;
            let _ = file.write_all(text.as_bytes());
            if let Some(&last) = text.as_bytes().last() {
                *mid_line = last != b'\n';
            }
        }
    }
}

/// Appends `text` to the log at `path`.
pub fn append(path: &Path, text: &str) {
    LogFile::open(path).write(text);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_after_output_cut_mid_line_starts_a_line_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs/a.log");
        append(&path, "steps:  25%| 2/8\r");
        LogFile::open(&path).line("resumes at step 2");
        let log = LogFile::open(&path);
        log.write("out");
        log.line("done");
        log.line("again");
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.strip_suffix('\n').unwrap().split('\n').collect();
        assert_eq!(lines.len(), 5, "{text:?}");
        assert_eq!(lines[0], "steps:  25%| 2/8\r");
        assert!(lines[1].ends_with(" resumes at step 2"), "{text:?}");
        assert_eq!(lines[2], "out");
        assert!(lines[3].ends_with(" done") && lines[4].ends_with(" again"));
    }
}
