// The crate documentation is the README, so its quick starts are doctests.
// The link definitions written here come before the README's own and win
// (in Markdown the first definition of a label is the one used): on the
// docs page the API names become intra-doc links, and the documents under
// `docs/` point to their copy in the published package; on GitHub the
// README's own definitions apply.
//! [`Dispatch`]: crate::Dispatch
//! [`NodeReplicated`]: crate::NodeReplicated
//! [`ThreadToken`]: crate::ThreadToken
//! [`NrBuilder`]: crate::NrBuilder
//! [`ReplicaPolicy`]: crate::ReplicaPolicy
//! [architecture]: https://docs.rs/crate/noderep/latest/source/docs/ARCHITECTURE.md
//! [results]: https://docs.rs/crate/noderep/latest/source/docs/RESULTS.md
//! [migration]: https://docs.rs/crate/noderep/latest/source/docs/MIGRATION.md
//! [changelog]: https://docs.rs/crate/noderep/latest/source/CHANGELOG.md
#![doc = include_str!("../README.md")]
#![cfg_attr(not(any(feature = "std", loom)), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

extern crate alloc;

#[cfg(feature = "std")]
pub mod cost;
#[cfg(feature = "std")]
pub mod mirror;
mod mutants;
pub mod nr;
#[cfg(feature = "std")]
pub mod runq;
mod sync;
#[cfg(feature = "std")]
pub mod topology;

pub use nr::{Dispatch, ExecError, NodeReplicated, NrBuilder, NrError, ReplicaPolicy, ThreadToken};

/// The examples of `docs/MIGRATION.md`, run as doctests so that the guide
/// stays true (compiled only by `cargo test --doc`).
#[cfg(doctest)]
#[doc = include_str!("../docs/MIGRATION.md")]
pub struct MigrationGuide;
