//! ComfyUI's HTTP and WebSocket API, as the `benchmark` kind drives it.
//!
//! [`client`] speaks the protocol (`/prompt`, `/ws`, `/history`,
//! `/interrupt`, `/system_stats`, `/object_info`, `/view`); [`workflow`]
//! handles API-format graphs (the built-in txt2img graph, `set` overrides,
//! the model names a graph uses, the seed that makes each run differ).
//!
//! The source of every fact here is `shared/contracts/comfyui-api.md`, in
//! particular its last section on what the pinned v0.3.27 does on the wire.

pub mod client;
pub mod workflow;

pub use client::{Client, ComfyError, ImageRef, RunOutcome, StepProgress, SystemStats};
