//! Helpers shared by the integration tests: a linearizability checker
//! ([`lincheck`]) and a recorder of concurrent histories ([`history`]).

pub mod history;
pub mod lincheck;
