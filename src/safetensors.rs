//! What a `.safetensors` file is, from its header alone.
//!
//! The format is an 8-byte little-endian header length, a JSON object naming
//! every tensor (`dtype`, `shape`, `data_offsets`) plus an optional
//! `__metadata__` map of strings, then the raw tensor data. Reading only the
//! header costs a few hundred kilobytes however large the file is, so
//! `plasma show` and the `arch` check stay cheap on multi-gigabyte models.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Largest header accepted. Real headers are well under 1 MiB even for
/// SDXL (about 2,500 tensors); the reference implementation refuses over
/// 100 MB, and so do we, so a random file cannot make us allocate gigabytes.
pub const MAX_HEADER_BYTES: u64 = 100 * 1024 * 1024;

/// The model family a checkpoint's tensor names imply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Architecture {
    Sd15,
    Sd2,
    Sdxl,
    Flux,
    Lora,
    Vae,
    ControlNet,
    Unknown,
}

impl Architecture {
    /// The name used in specs (`arch "sdxl"`) and JSON output.
    pub fn spec_name(self) -> &'static str {
        match self {
            Architecture::Sd15 => "sd15",
            Architecture::Sd2 => "sd2",
            Architecture::Sdxl => "sdxl",
            Architecture::Flux => "flux",
            Architecture::Lora => "lora",
            Architecture::Vae => "vae",
            Architecture::ControlNet => "controlnet",
            Architecture::Unknown => "unknown",
        }
    }
}

impl fmt::Display for Architecture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Architecture::Sd15 => "SD 1.5",
            Architecture::Sd2 => "SD 2.x",
            Architecture::Sdxl => "SDXL",
            Architecture::Flux => "Flux",
            Architecture::Lora => "LoRA",
            Architecture::Vae => "VAE",
            Architecture::ControlNet => "ControlNet",
            Architecture::Unknown => "unknown",
        })
    }
}

/// An `arch` value in a spec that names no known family.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown architecture {0:?}: use one of sd15, sd2, sdxl, flux, lora, vae, controlnet")]
pub struct UnknownArchitecture(pub String);

impl FromStr for Architecture {
    type Err = UnknownArchitecture;
    /// Lenient about case and separators: `SD1.5`, `sd-1.5`, `sd15` agree.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let folded: String = text
            .chars()
            .filter(|c| !matches!(c, ' ' | '-' | '_' | '.'))
            .flat_map(char::to_lowercase)
            .collect();
        Ok(match folded.as_str() {
            "sd15" | "sd1" => Architecture::Sd15,
            "sd2" | "sd2x" | "sd21" | "sd20" => Architecture::Sd2,
            "sdxl" => Architecture::Sdxl,
            "flux" => Architecture::Flux,
            "lora" => Architecture::Lora,
            "vae" => Architecture::Vae,
            "controlnet" => Architecture::ControlNet,
            _ => return Err(UnknownArchitecture(text.to_string())),
        })
    }
}

/// What the header of a safetensors file says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SafetensorsInfo {
    /// Length of the JSON header in bytes.
    pub header_bytes: u64,
    pub tensor_count: usize,
    /// How many tensors have each dtype (`F16`, `F32`, `BF16`, ...).
    pub dtypes: BTreeMap<String, usize>,
    /// The free-form `__metadata__` map, empty when absent.
    pub metadata: BTreeMap<String, String>,
    pub architecture: Architecture,
    /// Where the last tensor's data ends, counted from the end of the header:
    /// a complete file is `8 + header_bytes + data_bytes` long.
    #[serde(default)]
    pub data_bytes: u64,
}

impl SafetensorsInfo {
    /// The dtype most tensors have: what a user means by "an fp16 model".
    pub fn main_dtype(&self) -> Option<&str> {
        self.dtypes
            .iter()
            .max_by_key(|(_, count)| **count)
            .map(|(dtype, _)| dtype.as_str())
    }
}

/// Why a file's header could not be read as safetensors.
#[derive(Debug, thiserror::Error)]
pub enum SafetensorsError {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{} is not a safetensors file: it has only {len} bytes, too few for a header",
        path.display()
    )]
    TooShort { path: PathBuf, len: u64 },
    #[error(
        "{} is not a safetensors file: its first 8 bytes announce a {header_bytes}-byte header, \
         more than the {MAX_HEADER_BYTES} allowed (is it a pickle .ckpt/.pt renamed?)",
        path.display()
    )]
    HeaderTooLarge { path: PathBuf, header_bytes: u64 },
    #[error(
        "{} is truncated: its header needs {needed} bytes but the file has {len}; download it again",
        path.display()
    )]
    Truncated {
        path: PathBuf,
        needed: u64,
        len: u64,
    },
    #[error("{} is not a safetensors file: its header is not valid JSON ({detail})", path.display())]
    InvalidJson { path: PathBuf, detail: String },
    #[error("{} is not a safetensors file: {detail}", path.display())]
    BadHeader { path: PathBuf, detail: String },
}

impl SafetensorsError {
    /// What is wrong with the file, without its path: the message with the
    /// leading "PATH is not a safetensors file: " (or "PATH ") removed.
    pub fn reason(&self) -> String {
        let message = self.to_string();
        let path = match self {
            SafetensorsError::Io { path, .. }
            | SafetensorsError::TooShort { path, .. }
            | SafetensorsError::HeaderTooLarge { path, .. }
            | SafetensorsError::Truncated { path, .. }
            | SafetensorsError::InvalidJson { path, .. }
            | SafetensorsError::BadHeader { path, .. } => path.display().to_string(),
        };
        let rest = message.strip_prefix(&path).unwrap_or(&message).trim_start();
        rest.strip_prefix("is not a safetensors file: ")
            .unwrap_or(rest)
            .to_string()
    }
}

/// Reads the header of the safetensors file at `path` (and nothing else).
pub fn read_header(path: &Path) -> Result<SafetensorsInfo, SafetensorsError> {
    let io_error = |source| SafetensorsError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(io_error)?;
    let len = file.metadata().map_err(io_error)?.len();
    if len < 8 {
        return Err(SafetensorsError::TooShort {
            path: path.to_path_buf(),
            len,
        });
    }
    let mut prefix = [0u8; 8];
    file.read_exact(&mut prefix).map_err(io_error)?;
    let header_bytes = u64::from_le_bytes(prefix);
    if header_bytes > MAX_HEADER_BYTES {
        return Err(SafetensorsError::HeaderTooLarge {
            path: path.to_path_buf(),
            header_bytes,
        });
    }
    if 8 + header_bytes > len {
        return Err(SafetensorsError::Truncated {
            path: path.to_path_buf(),
            needed: 8 + header_bytes,
            len,
        });
    }
    let mut json = vec![0u8; header_bytes as usize];
    file.read_exact(&mut json).map_err(io_error)?;
    parse_header_json(&json, header_bytes).map_err(|error| match error {
        HeaderProblem::Json(detail) => SafetensorsError::InvalidJson {
            path: path.to_path_buf(),
            detail,
        },
        HeaderProblem::Shape(detail) => SafetensorsError::BadHeader {
            path: path.to_path_buf(),
            detail,
        },
    })
}

enum HeaderProblem {
    Json(String),
    Shape(String),
}

fn parse_header_json(json: &[u8], header_bytes: u64) -> Result<SafetensorsInfo, HeaderProblem> {
    let value: serde_json::Value =
        serde_json::from_slice(json).map_err(|e| HeaderProblem::Json(e.to_string()))?;
    let serde_json::Value::Object(entries) = value else {
        return Err(HeaderProblem::Shape(
            "its header is not a JSON object".into(),
        ));
    };
    let mut dtypes = BTreeMap::new();
    let mut metadata = BTreeMap::new();
    let mut names = Vec::with_capacity(entries.len());
    let mut data_bytes = 0u64;
    for (name, entry) in &entries {
        if name == "__metadata__" {
            let serde_json::Value::Object(map) = entry else {
                return Err(HeaderProblem::Shape("__metadata__ is not an object".into()));
            };
            for (key, value) in map {
                // The format says strings; tools that wrote numbers still
                // deserve to have them shown.
                let text = match value {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                metadata.insert(key.clone(), text);
            }
            continue;
        }
        let dtype = entry
            .get("dtype")
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| HeaderProblem::Shape(format!("tensor {name:?} has no dtype")))?;
        *dtypes.entry(dtype.to_string()).or_insert(0) += 1;
        let end = entry
            .get("data_offsets")
            .and_then(|offsets| offsets.get(1))
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0);
        data_bytes = data_bytes.max(end);
        names.push((name.as_str(), entry.get("shape")));
    }
    Ok(SafetensorsInfo {
        header_bytes,
        tensor_count: names.len(),
        dtypes,
        metadata,
        architecture: infer_architecture_with_shapes(&names),
        data_bytes,
    })
}

/// The architecture tensor names imply (see the module notes for the rules).
pub fn infer_architecture<'a>(names: impl IntoIterator<Item = &'a str>) -> Architecture {
    let names: Vec<(&str, Option<&serde_json::Value>)> =
        names.into_iter().map(|name| (name, None)).collect();
    infer_architecture_with_shapes(&names)
}

/// Order matters: a LoRA for Flux names `double_blocks`, a ControlNet holds
/// a UNet copy, and full checkpoints also contain a VAE (`first_stage_model`),
/// so the more specific families are tested first.
fn infer_architecture_with_shapes(names: &[(&str, Option<&serde_json::Value>)]) -> Architecture {
    let any = |test: &dyn Fn(&str) -> bool| names.iter().any(|(name, _)| test(name));
    if names.is_empty() {
        return Architecture::Unknown;
    }
    if any(&|n| {
        ["lora_up", "lora_down", "lora_A", "lora_B"]
            .iter()
            .any(|marker| n.contains(marker))
    }) {
        return Architecture::Lora;
    }
    if any(&|n| n.starts_with("control_model.") || n.contains("input_hint_block")) {
        return Architecture::ControlNet;
    }
    if any(&|n| n.starts_with("conditioner.embedders.1")) {
        return Architecture::Sdxl;
    }
    if any(&|n| n.contains("double_blocks.") || n.contains("single_blocks.")) {
        return Architecture::Flux;
    }
    if any(&|n| n.starts_with("cond_stage_model.model.")) {
        return Architecture::Sd2;
    }
    if any(&|n| n.starts_with("cond_stage_model.transformer.")) {
        return Architecture::Sd15;
    }
    if any(&|n| n.starts_with("model.diffusion_model.")) {
        // A UNet without its text encoder: the cross-attention width is the
        // text encoder's context size (768 CLIP-L, 1024 OpenCLIP, 2048 SDXL).
        return match cross_attention_context(names) {
            Some(768) => Architecture::Sd15,
            Some(1024) => Architecture::Sd2,
            Some(2048) => Architecture::Sdxl,
            _ => Architecture::Unknown,
        };
    }
    // A standalone VAE also carries the (post_)quant_conv layers between the
    // halves (vae-ft-mse-840000 does), which are still VAE-only.
    let vae_part = |n: &str| {
        ["encoder.", "decoder.", "quant_conv.", "post_quant_conv."]
            .iter()
            .any(|prefix| n.starts_with(prefix))
    };
    if names.iter().all(|(name, _)| vae_part(name))
        && any(&|n| n.starts_with("encoder.") || n.starts_with("decoder."))
    {
        return Architecture::Vae;
    }
    Architecture::Unknown
}

/// The second dimension of a cross-attention key projection, when shapes are known.
fn cross_attention_context(names: &[(&str, Option<&serde_json::Value>)]) -> Option<u64> {
    names.iter().find_map(|(name, shape)| {
        if !(name.starts_with("model.diffusion_model.") && name.ends_with("attn2.to_k.weight")) {
            return None;
        }
        (*shape)?.as_array()?.get(1)?.as_u64()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn architecture_names_parse_leniently() {
        assert_eq!("SD1.5".parse::<Architecture>().unwrap(), Architecture::Sd15);
        assert_eq!("sd-2.x".parse::<Architecture>().unwrap(), Architecture::Sd2);
        assert_eq!(
            "ControlNet".parse::<Architecture>().unwrap(),
            Architecture::ControlNet
        );
        let err = "sd3".parse::<Architecture>().unwrap_err();
        assert!(err.to_string().contains("use one of sd15"), "{err}");
        for arch in [Architecture::Sd15, Architecture::Sdxl, Architecture::Vae] {
            assert_eq!(arch.spec_name().parse::<Architecture>().unwrap(), arch);
        }
    }

    #[test]
    fn lora_wins_over_the_base_model_it_targets() {
        let names = [
            "lora_unet_double_blocks_0_img_attn_proj.lora_up.weight",
            "lora_unet_double_blocks_0_img_attn_proj.lora_down.weight",
        ];
        assert_eq!(infer_architecture(names), Architecture::Lora);
    }

    #[test]
    fn vae_needs_only_vae_keys() {
        assert_eq!(
            infer_architecture(["encoder.conv_in.weight", "post_quant_conv.weight"]),
            Architecture::Vae
        );
        assert_eq!(
            infer_architecture(["encoder.conv_in.weight", "something.else"]),
            Architecture::Unknown
        );
        assert_eq!(
            infer_architecture(["quant_conv.weight"]),
            Architecture::Unknown
        );
        assert_eq!(infer_architecture([]), Architecture::Unknown);
    }
}
