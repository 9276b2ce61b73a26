//! `filesystem.Filesystem`: entries, directory listings, moves, removal and
//! inotify-based watching.

pub mod entry;
pub mod metadata;
pub mod service;
pub mod watch;
