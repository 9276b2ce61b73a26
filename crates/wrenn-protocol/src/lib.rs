//! Wire contracts shared by Wrenn's components.
//!
//! - [`envd`]: envd's `process.Process` and `filesystem.Filesystem` Connect
//!   services, field-for-field compatible with E2B's envd, with generated
//!   message types (binary protobuf and proto3 JSON), server traits and
//!   clients (feature `client`).

/// Generated code for envd's protobuf packages `process` and `filesystem`.
#[allow(missing_docs, clippy::all)]
pub mod envd {
    connectrpc::include_generated!();
}

pub use connectrpc;
