//! The kohya layer: what plasma knows about kohya-ss sd-scripts'
//! `train_network.py` (the contract in `shared/contracts/kohya-train-network.md`,
//! checked against sd-scripts 3e6935a): the dataset TOML it reads, the step
//! arithmetic it does, its command line, its log output and the checkpoint
//! files it writes. Nothing here runs the trainer; `resource::lora` does.

pub mod chart;
pub mod checkpoints;
pub mod command;
pub mod dataset;
pub mod log;
pub mod process;
pub mod resume;
pub mod steps;
