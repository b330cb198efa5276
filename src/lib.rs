//! plasma: a declarative environment reconciler for local AI image generation.
//!
//! The engine is one pass, one module per step: [`spec`] (load), [`graph`]
//! (resolve), [`lint`], [`engine`] (observe and diff), [`render`], [`apply`]
//! and [`state`]. Resource kinds live under [`resource`], one file each.

pub mod apply;
pub mod child;
pub mod cli;
pub mod comfyui;
pub mod diagnostic;
pub mod download;
pub mod drift;
pub mod engine;
pub mod filekind;
pub mod format;
pub mod fsutil;
pub mod git;
pub mod graph;
pub mod hashcache;
pub mod hashing;
pub mod kohya;
pub mod lint;
pub mod lock;
pub mod lockfile;
pub mod logfile;
pub mod pin;
pub mod plan;
pub mod platform;
pub mod python;
pub mod redact;
pub mod render;
pub mod resource;
pub mod safetensors;
pub mod schema;
pub mod service;
pub mod size;
pub mod spec;
pub mod state;
pub mod yaml;
