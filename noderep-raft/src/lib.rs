//! # noderep-raft: a noderep structure replicated across hosts
//!
//! [`noderep`] makes a sequential structure `D` fast and linearizable on
//! one many-core machine: one replica per NUMA node, fed by one shared log.
//! This crate puts the same `D` on several hosts: the hosts agree on one
//! ordered log of writes through Raft ([`openraft`]), and each host applies
//! the committed writes to its own `NodeReplicated<D>`. A host's loss costs
//! nothing acknowledged as long as a majority of hosts is up.
//!
//! # How it works
//!
//! * [`Host`] runs one Raft engine, a log directory ([`FileLogStore`]) and a
//!   state machine ([`NrMachine`]: committed entries go through
//!   `execute_mut`; the response returns to the proposing client).
//! * Linearizable reads take a read index (leadership confirmed by a
//!   quorum, one round shared by all the reads waiting) and then read the
//!   caller's NUMA replica; bounded-staleness reads skip the round when the
//!   host was proven fresh recently enough and report the applied index.
//! * Snapshots are one replica's state as JSON; a lagging or new host
//!   installs one and rebuilds its replicas from it; the log is compacted
//!   after each snapshot.
//! * Elections are called by a watchdog of this crate rather than left to
//!   openraft's timer alone: as soon as the leader's lease has expired, and
//!   only after a pre-vote found a quorum that would vote for this host (so
//!   a candidate with a short log never bumps the term, and a host cut off
//!   from a live leader never deposes it). A killed leader is replaced
//!   within about the lease (the maximum election timeout) plus a
//!   heartbeat; see `election.rs`.
//! * Hosts talk TCP on loopback ([`network`]), or on private IPv4 addresses
//!   in network namespaces of the caller's own
//!   ([`HostConfig::private_network`]).
//!
//! # Trade-offs
//!
//! Every write pays a Raft round (a quorum's fsync and two network hops);
//! what this crate keeps from noderep is the cheap, NUMA-local read path and
//! the batching of writes into the log. [`PlainKv`] is the usual
//! `Mutex<HashMap>` state machine, kept for comparison.

mod client;
mod election;
mod error;
mod host;
mod log_store;
mod machine;
pub mod network;
mod sm_store;
mod types;

pub use client::Client;
pub use error::HostError;
pub use host::{Host, HostConfig, Stale};
pub use log_store::FileLogStore;
pub use machine::{KvMap, KvWrite, Machine, NrMachine, PlainKv, Replicated};
pub use openraft;
pub use types::{
    Command, HostId, HostStatus, ReadAnswer, ReadMode, Reply, TypeConfig, WriteFailure,
};
