//! The dataset TOML plasma writes for `--dataset_config` (contract §2), and
//! the checks it makes on the folders before a run: image counts, captions,
//! the trigger token leading each caption.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// Image endings the trainer globs (either case), directly inside `image_dir`.
pub const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "webp", "bmp"];

/// `resolution` in the TOML: `512` or `[w, h]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Resolution {
    Square(u32),
    Rect([u32; 2]),
}

impl Resolution {
    /// Width and height in pixels.
    pub fn size(self) -> (u32, u32) {
        match self {
            Resolution::Square(s) => (s, s),
            Resolution::Rect([w, h]) => (w, h),
        }
    }
}

/// One `[[datasets]]` block.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Dataset {
    pub resolution: Resolution,
    pub batch_size: u32,
    pub enable_bucket: bool,
    pub subsets: Vec<Subset>,
}

/// One `[[datasets.subsets]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Subset {
    pub image_dir: PathBuf,
    pub num_repeats: u32,
    pub caption_extension: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_tokens: Option<u32>,
    pub shuffle_caption: bool,
    pub flip_aug: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class_tokens: Option<String>,
    pub is_reg: bool,
}

#[derive(Serialize)]
struct Document<'a> {
    datasets: [&'a Dataset; 1],
}

impl Dataset {
    /// The TOML text for `--dataset_config`: every value on the subset or
    /// dataset itself, so nothing falls back to a CLI default unseen.
    pub fn to_toml(&self) -> String {
        let header = "# Written by plasma for train_network.py --dataset_config.\n";
        let body = toml::to_string(&Document { datasets: [self] })
            .expect("a dataset always serialises to TOML");
        format!("{header}{body}")
    }
}

impl Subset {
    /// The caption extension with its leading dot, as the trainer adds it.
    pub fn caption_extension(&self) -> String {
        if self.caption_extension.starts_with('.') {
            self.caption_extension.clone()
        } else {
            format!(".{}", self.caption_extension)
        }
    }
}

/// What a subset's folder holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubsetScan {
    /// Image file names, sorted.
    pub images: Vec<String>,
    /// Images without a caption file.
    pub missing_captions: Vec<String>,
    /// Caption files (names) whose first token is not the trigger.
    pub untriggered: Vec<String>,
}

/// Whether a file name is an image the trainer would use.
pub fn is_image(name: &str) -> bool {
    Path::new(name)
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// The first comma-separated token of a caption, as `keep_tokens` counts them.
pub fn first_token(caption: &str) -> &str {
    caption.split(',').next().unwrap_or_default().trim()
}

/// Scans a subset's folder; `None` when it does not exist. `trigger` is
/// the token each caption must start with (checked when given).
pub fn scan(subset: &Subset, trigger: Option<&str>) -> io::Result<Option<SubsetScan>> {
    let entries = match std::fs::read_dir(&subset.image_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut scan = SubsetScan::default();
    let extension = subset.caption_extension();
    let mut firsts: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !is_image(&name) || !entry.file_type()?.is_file() {
            continue;
        }
        let stem = Path::new(&name)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let caption_name = format!("{stem}{extension}");
        match std::fs::read_to_string(subset.image_dir.join(&caption_name)) {
            Ok(text) => firsts
                .entry(first_token(&text).to_string())
                .or_default()
                .push(caption_name),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                scan.missing_captions.push(name.clone())
            }
            Err(e) => return Err(e),
        }
        scan.images.push(name);
    }
    scan.images.sort();
    scan.missing_captions.sort();
    if subset.keep_tokens.unwrap_or(0) > 0 && !subset.is_reg {
        // Without a declared trigger, the token most captions lead with is taken.
        let expected = trigger.map(str::to_string).or_else(|| {
            firsts
                .iter()
                .max_by_key(|(_, names)| names.len())
                .map(|(token, _)| token.clone())
        });
        if let Some(expected) = expected {
            for (token, names) in &firsts {
                if *token != expected {
                    scan.untriggered.extend(names.iter().cloned());
                }
            }
        }
        scan.untriggered.sort();
    }
    Ok(Some(scan))
}

/// A folder prefix `N_` that the trainer would use in folder mode and
/// ignores under a dataset TOML (contract §3): the `N`.
pub fn ignored_prefix(image_dir: &Path) -> Option<u32> {
    let name = image_dir.file_name()?.to_str()?;
    let (number, rest) = name.split_once('_')?;
    if rest.is_empty() {
        return None;
    }
    number.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subset(dir: &Path) -> Subset {
        Subset {
            image_dir: dir.to_path_buf(),
            num_repeats: 10,
            caption_extension: "txt".into(),
            keep_tokens: Some(1),
            shuffle_caption: true,
            flip_aug: false,
            class_tokens: None,
            is_reg: false,
        }
    }

    #[test]
    fn toml_has_the_contract_keys_and_reads_back() {
        let dataset = Dataset {
            resolution: Resolution::Square(512),
            batch_size: 1,
            enable_bucket: true,
            subsets: vec![subset(Path::new("/d/10_spyke")), {
                let mut reg = subset(Path::new("/d/reg"));
                reg.is_reg = true;
                reg.num_repeats = 1;
                reg.keep_tokens = None;
                reg
            }],
        };
        let text = dataset.to_toml();
        let value: toml::Value = toml::from_str(&text).unwrap();
        let block = &value["datasets"][0];
        assert_eq!(block["resolution"].as_integer(), Some(512));
        assert_eq!(block["batch_size"].as_integer(), Some(1));
        let subsets = block["subsets"].as_array().unwrap();
        assert_eq!(subsets[0]["image_dir"].as_str(), Some("/d/10_spyke"));
        assert_eq!(subsets[0]["num_repeats"].as_integer(), Some(10));
        assert_eq!(subsets[0]["keep_tokens"].as_integer(), Some(1));
        assert_eq!(subsets[1]["is_reg"].as_bool(), Some(true));
        assert!(subsets[1].get("keep_tokens").is_none());
    }

    #[test]
    fn scan_counts_images_and_finds_missing_and_untriggered_captions() {
        let dir = tempfile::tempdir().unwrap();
        for (name, caption) in [
            ("a.png", Some("spyke, 1boy")),
            ("b.JPG", Some("spyke,red hair")),
            ("c.webp", None),
            ("d.png", Some("1boy, spyke")),
        ] {
            std::fs::write(dir.path().join(name), b"img").unwrap();
            if let Some(text) = caption {
                let stem = name.split('.').next().unwrap();
                std::fs::write(dir.path().join(format!("{stem}.txt")), text).unwrap();
            }
        }
        std::fs::write(dir.path().join("notes.md"), "x").unwrap();
        let scan = scan(&subset(dir.path()), None).unwrap().unwrap();
        assert_eq!(scan.images, ["a.png", "b.JPG", "c.webp", "d.png"]);
        assert_eq!(scan.missing_captions, ["c.webp"]);
        assert_eq!(scan.untriggered, ["d.txt"]);
        let declared = super::scan(&subset(dir.path()), Some("1boy"))
            .unwrap()
            .unwrap();
        assert_eq!(declared.untriggered, ["a.txt", "b.txt"]);
        assert_eq!(
            super::scan(&subset(&dir.path().join("none")), None).unwrap(),
            None
        );
    }

    #[test]
    fn prefixes_are_recognised() {
        assert_eq!(ignored_prefix(Path::new("/x/10_spyke_plasma_v1")), Some(10));
        assert_eq!(ignored_prefix(Path::new("/x/spyke")), None);
        assert_eq!(ignored_prefix(Path::new("/x/v1_spyke")), None);
    }
}
