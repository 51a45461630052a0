#![doc = include_str!("../README.md")]
#![cfg_attr(not(any(feature = "std", loom)), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

extern crate alloc;

#[cfg(feature = "std")]
pub mod cost;
#[cfg(feature = "std")]
pub mod mirror;
pub mod nr;
#[cfg(feature = "std")]
pub mod runq;
pub mod sync;
#[cfg(feature = "std")]
pub mod topology;

pub use nr::{Dispatch, ExecError, NodeReplicated, NrBuilder, NrError, ReplicaPolicy, ThreadToken};
