//! API-format workflows: node id → `{"class_type", "inputs"}` (contract §2).
//!
//! What plasma does with one: refuses the UI format (what the browser's
//! "Save" writes) with how to export the API format, applies `set`
//! overrides, builds the standard txt2img graph (contract §7), lists the
//! model file names a graph loads, and changes the seed per run so that
//! ComfyUI's cache (which holds the previous prompt's nodes) cannot answer
//! a timed run without running it.

use serde_json::{Map, Value, json};

/// Node inputs that name a model file, and the ComfyUI models folder each
/// one lists (from `folder_paths` as the loaders use it).
pub const MODEL_INPUTS: &[(&str, &str)] = &[
    ("ckpt_name", "checkpoints"),
    ("lora_name", "loras"),
    ("vae_name", "vae"),
    ("control_net_name", "controlnet"),
];

/// Node inputs holding the sampler's seed (`KSampler`, `KSamplerAdvanced`).
const SEED_INPUTS: &[&str] = &["seed", "noise_seed"];

/// How to get an API-format file out of ComfyUI's browser UI.
pub const EXPORT_HELP: &str = "export the API format from ComfyUI: in the browser UI, open the \
     settings, turn on \"Enable Dev mode Options\", then use \"Save (API Format)\" \
     (newer front-ends: Workflow → Export (API)); the file maps node ids to \
     {\"class_type\", \"inputs\"}";

/// Why a workflow cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WorkflowError {
    #[error(
        "this is a workflow in ComfyUI's UI format (top-level `nodes` and `links`), which the API does not accept"
    )]
    UiFormat,
    #[error("not an API-format workflow: {0}")]
    Malformed(String),
    #[error("`set \"{path}\"`: {reason}")]
    BadOverride { path: String, reason: String },
    #[error(
        "no node has a `seed` or `noise_seed` input, so every timed run would be the same prompt and ComfyUI would answer from its cache without running"
    )]
    NoSeed,
}

/// Checks that `value` is an API-format graph (and not the UI format).
pub fn check(value: &Value) -> Result<(), WorkflowError> {
    let Some(map) = value.as_object() else {
        return Err(WorkflowError::Malformed(
            "the file is not a JSON object".into(),
        ));
    };
    if map.get("nodes").is_some_and(Value::is_array) && map.contains_key("links") {
        return Err(WorkflowError::UiFormat);
    }
    if map.is_empty() {
        return Err(WorkflowError::Malformed("it has no nodes".into()));
    }
    for (id, node) in map {
        if !node["class_type"].is_string() || !node["inputs"].is_object() {
            return Err(WorkflowError::Malformed(format!(
                "node `{id}` has no `class_type` string and `inputs` object"
            )));
        }
    }
    Ok(())
}

/// Applies `set "NODE.inputs.FIELD" VALUE`. The node must exist; so must
/// the field, unless the node has no such input yet (an optional input).
pub fn set(graph: &mut Value, path: &str, value: Value) -> Result<(), WorkflowError> {
    let bad = |reason: String| WorkflowError::BadOverride {
        path: path.to_string(),
        reason,
    };
    let parts: Vec<&str> = path.split('.').collect();
    let [node_id, "inputs", field] = parts.as_slice() else {
        return Err(bad(
            "expected `NODE.inputs.FIELD`, such as `3.inputs.steps`".into(),
        ));
    };
    let ids: Vec<String> = graph
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    let Some(node) = graph.get_mut(*node_id) else {
        return Err(bad(format!(
            "the workflow has no node `{node_id}` (its nodes: {})",
            ids.join(", ")
        )));
    };
    let Some(inputs) = node["inputs"].as_object_mut() else {
        return Err(bad(format!("node `{node_id}` has no inputs")));
    };
    if let Some(Value::Array(_)) = inputs.get(*field) {
        return Err(bad(format!(
            "`{field}` of node `{node_id}` is a link to another node, not a value"
        )));
    }
    inputs.insert(field.to_string(), value);
    Ok(())
}

/// The built-in txt2img workflow's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Txt2Img {
    /// File name as ComfyUI lists it under `checkpoints` (with extension).
    pub checkpoint: String,
    pub vae: Option<String>,
    /// LoRA file name under `loras`, and its strength (model and clip).
    pub lora: Option<(String, f64)>,
    pub prompt: String,
    pub negative: String,
    pub width: u64,
    pub height: u64,
    pub steps: u64,
    pub sampler: String,
    pub scheduler: String,
    pub cfg: f64,
    pub seed: u64,
}

impl Txt2Img {
    /// The standard graph (contract §7, with the official example's ids):
    /// CheckpointLoaderSimple 4, optional LoraLoader 10 and VAELoader 11,
    /// CLIPTextEncode 6 and 7, EmptyLatentImage 5, KSampler 3, VAEDecode 8,
    /// SaveImage 9.
    pub fn graph(&self) -> Value {
        let (model, clip) = match &self.lora {
            Some(_) => (json!(["10", 0]), json!(["10", 1])),
            None => (json!(["4", 0]), json!(["4", 1])),
        };
        let vae = match &self.vae {
            Some(_) => json!(["11", 0]),
            None => json!(["4", 2]),
        };
        let mut graph = json!({
            "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": self.checkpoint}},
            "6": {"class_type": "CLIPTextEncode", "inputs": {"text": self.prompt, "clip": clip}},
            "7": {"class_type": "CLIPTextEncode", "inputs": {"text": self.negative, "clip": clip}},
            "5": {"class_type": "EmptyLatentImage",
                  "inputs": {"width": self.width, "height": self.height, "batch_size": 1}},
            "3": {"class_type": "KSampler", "inputs": {
                "model": model, "seed": self.seed, "steps": self.steps, "cfg": self.cfg,
                "sampler_name": self.sampler, "scheduler": self.scheduler, "denoise": 1.0,
                "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
            "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": vae}},
            "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "plasma-benchmark", "images": ["8", 0]}},
        });
        if let Some((lora, strength)) = &self.lora {
            graph["10"] = json!({"class_type": "LoraLoader", "inputs": {
                "model": ["4", 0], "clip": ["4", 1], "lora_name": lora,
                "strength_model": strength, "strength_clip": strength}});
        }
        if let Some(vae) = &self.vae {
            graph["11"] = json!({"class_type": "VAELoader", "inputs": {"vae_name": vae}});
        }
        graph
    }
}

/// One model file a graph loads.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ModelUse {
    pub node_id: String,
    pub class_type: String,
    /// `ckpt_name`, `lora_name`, …
    pub input: String,
    /// The models folder ComfyUI looks in (`checkpoints`, `loras`, …).
    pub folder: &'static str,
    /// The file name as written in the graph.
    pub name: String,
}

/// Every model file name the graph's literal inputs name, in node order.
pub fn model_uses(graph: &Value) -> Vec<ModelUse> {
    let mut uses = Vec::new();
    for (id, node) in graph.as_object().into_iter().flatten() {
        for (input, folder) in MODEL_INPUTS {
            if let Some(name) = node["inputs"][*input].as_str() {
                uses.push(ModelUse {
                    node_id: id.clone(),
                    class_type: node["class_type"].as_str().unwrap_or_default().to_string(),
                    input: input.to_string(),
                    folder,
                    name: name.to_string(),
                });
            }
        }
    }
    uses.sort();
    uses
}

/// The options ComfyUI offers for `class.input` in its `/object_info`
/// answer (`input.required|optional.<input>[0]`), when it is a list.
pub fn options<'a>(object_info: &'a Value, class: &str, input: &str) -> Option<Vec<&'a str>> {
    let inputs = &object_info[class]["input"];
    let spec = inputs["required"]
        .get(input)
        .or_else(|| inputs["optional"].get(input))?;
    spec[0]
        .as_array()
        .map(|list| list.iter().filter_map(Value::as_str).collect())
}

/// Adds `offset` to every seed input (wrapping within ComfyUI's
/// [0, 2^64-1]), so run N's prompt differs from run N-1's.
pub fn vary_seed(graph: &Value, offset: u64) -> Result<Value, WorkflowError> {
    let mut out = graph.clone();
    let mut found = false;
    for node in out.as_object_mut().into_iter().flat_map(Map::values_mut) {
        let Some(inputs) = node["inputs"].as_object_mut() else {
            continue;
        };
        for key in SEED_INPUTS {
            if let Some(seed) = inputs.get(*key).and_then(Value::as_u64) {
                inputs.insert(key.to_string(), json!(seed.wrapping_add(offset)));
                found = true;
            }
        }
    }
    if found {
        Ok(out)
    } else {
        Err(WorkflowError::NoSeed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn txt2img() -> Txt2Img {
        Txt2Img {
            checkpoint: "anything-v5.safetensors".into(),
            vae: None,
            lora: None,
            prompt: "a cat".into(),
            negative: "blurry".into(),
            width: 512,
            height: 512,
            steps: 20,
            sampler: "euler_ancestral".into(),
            scheduler: "normal".into(),
            cfg: 7.0,
            seed: 42,
        }
    }

    #[test]
    fn the_standard_graph_wires_lora_and_vae_when_given() {
        let plain = txt2img().graph();
        check(&plain).unwrap();
        assert_eq!(plain["3"]["inputs"]["model"], json!(["4", 0]));
        assert_eq!(plain["8"]["inputs"]["vae"], json!(["4", 2]));
        let mut both = txt2img();
        both.lora = Some(("style.safetensors".into(), 0.8));
        both.vae = Some("vae.safetensors".into());
        let g = both.graph();
        assert_eq!(g["3"]["inputs"]["model"], json!(["10", 0]));
        assert_eq!(g["6"]["inputs"]["clip"], json!(["10", 1]));
        assert_eq!(g["8"]["inputs"]["vae"], json!(["11", 0]));
        assert_eq!(g["10"]["inputs"]["strength_clip"], json!(0.8));
        let names: Vec<_> = model_uses(&g).into_iter().map(|u| u.name).collect();
        assert_eq!(
            names,
            [
                "style.safetensors",
                "vae.safetensors",
                "anything-v5.safetensors"
            ]
        );
    }

    #[test]
    fn ui_format_is_recognised() {
        let ui = json!({"last_node_id": 9, "nodes": [{"id": 3, "type": "KSampler"}], "links": []});
        assert_eq!(check(&ui), Err(WorkflowError::UiFormat));
        assert!(matches!(
            check(&json!({"3": {"inputs": {}}})),
            Err(WorkflowError::Malformed(_))
        ));
    }

    #[test]
    fn overrides_reach_existing_nodes_and_refuse_links_and_unknown_nodes() {
        let mut g = txt2img().graph();
        set(&mut g, "3.inputs.steps", json!(4)).unwrap();
        assert_eq!(g["3"]["inputs"]["steps"], json!(4));
        let e = set(&mut g, "42.inputs.steps", json!(4)).unwrap_err();
        assert!(e.to_string().contains("no node `42`"), "{e}");
        let e = set(&mut g, "3.inputs.model", json!("x")).unwrap_err();
        assert!(e.to_string().contains("is a link"), "{e}");
        let e = set(&mut g, "3.steps", json!(4)).unwrap_err();
        assert!(e.to_string().contains("NODE.inputs.FIELD"), "{e}");
    }

    #[test]
    fn seeds_change_per_run_and_a_graph_without_one_is_refused() {
        let g = txt2img().graph();
        assert_eq!(vary_seed(&g, 3).unwrap()["3"]["inputs"]["seed"], json!(45));
        let mut max = g.clone();
        max["3"]["inputs"]["seed"] = json!(u64::MAX);
        assert_eq!(vary_seed(&max, 1).unwrap()["3"]["inputs"]["seed"], json!(0));
        let mut none = g;
        none["3"]["inputs"].as_object_mut().unwrap().remove("seed");
        assert_eq!(vary_seed(&none, 1), Err(WorkflowError::NoSeed));
    }

    #[test]
    fn options_come_from_required_or_optional_inputs() {
        let info = json!({"CheckpointLoaderSimple": {"input": {"required": {
            "ckpt_name": [["a.safetensors", "b.safetensors"], {"tooltip": "x"}]}}}});
        assert_eq!(
            options(&info, "CheckpointLoaderSimple", "ckpt_name").unwrap(),
            ["a.safetensors", "b.safetensors"]
        );
        assert!(options(&info, "LoraLoader", "lora_name").is_none());
    }
}
