//! plasma: a declarative environment reconciler for local AI image generation.

pub mod download;
pub mod git;
pub mod hashing;
pub mod python;
pub mod safetensors;
