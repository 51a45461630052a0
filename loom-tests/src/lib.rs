//! Loom models of noderep's concurrent protocols live in `tests/`.
//!
//! They only do something when built with `RUSTFLAGS="--cfg loom"`; see
//! `scripts/loom.sh` and this crate's README for the models and the
//! mutations each of them catches.
