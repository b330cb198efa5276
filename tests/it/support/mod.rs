//! Fixtures shared by the integration tests: a sandbox that runs the built
//! binary, git repositories, Python wheels and indexes, and an HTTP server
//! that injects faults.

pub mod comfyfix;
pub mod gitfix;
pub mod httpfix;
pub mod pyfix;
pub mod realstack;
pub mod sandbox;
