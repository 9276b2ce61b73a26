//! Wire contracts shared by Wrenn's components.
//!
//! - [`envd`]: envd's `process.Process` and `filesystem.Filesystem` Connect
//!   services, field-for-field compatible with E2B's envd, with generated
//!   message types (binary protobuf and proto3 JSON), server traits and
//!   clients (feature `client`).
//! - [`hostagent`]: `hostagent.v1.HostAgentService`, what the control plane
//!   calls on each host.

#[allow(missing_docs, clippy::all)]
mod generated {
    connectrpc::include_generated!();
}

/// envd's protobuf packages `process` and `filesystem`.
pub mod envd {
    pub use crate::generated::{filesystem, process};
}

/// The host agent's API, `hostagent.v1.HostAgentService`.
pub mod hostagent {
    pub use crate::generated::hostagent::v1;
}

pub use connectrpc;
