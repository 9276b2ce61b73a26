//! Wrenn's host agent: owns the sandboxes on one host.
//!
//! - [`runtime`]: the [`runtime::Runtime`] trait and its implementations
//!   (the namespace runtime first), which know nothing of HTTP;
//! - [`templates`]: the on-disk template store and the `base` builder;
//! - [`agent`]: timeouts, metadata and the reaper over a runtime;
//! - [`envd`]: clients for the envd inside each sandbox;
//! - [`service`]: `hostagent.v1.HostAgentService` over the agent;
//! - [`server`]: the authenticated HTTP server around it.

pub mod agent;
pub mod envd;
pub mod proxy;
pub mod registration;
pub mod runtime;
pub mod server;
pub mod service;
pub mod templates;
