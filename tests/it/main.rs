//! plasma's integration tests: one binary (as cargo and uv keep theirs), one
//! module per area, and the fixtures they share under `support/`.

mod support;

mod benchmark_kind;
mod cli_hints;
mod comfyui_client;
mod comfyui_real;
mod custom_node_kind;
mod diagnostics;
mod download_layer;
mod engine_cli;
mod git_layer;
mod interrupts;
mod lock;
mod lora_kind;
mod lora_real;
mod model_kind;
mod plans_and_state;
mod platform;
mod python_layer;
mod repo_kind;
mod service_kind;
mod spec_fuzz;
mod venv_kind;
