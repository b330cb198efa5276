//! Fixtures shared by the integration tests: a sandbox that runs the built
//! binary, git repositories, Python wheels and indexes, and an HTTP server
//! that injects faults.

pub mod comfyfix;
pub mod gitfix;
pub mod httpfix;
pub mod pyfix;
pub mod realstack;
pub mod sandbox;

/// A loopback port nobody listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The sha256 of `bytes`, hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}
