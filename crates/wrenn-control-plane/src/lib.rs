//! Wrenn's control plane: the REST API, identity, persistence and the
//! scheduling of sandboxes onto host agents. Stateless: everything lives in
//! the [`store::Store`], so several can share one database.

pub mod error;
pub mod ids;
pub mod store;
