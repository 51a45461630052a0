//! Mutants: deliberate protocol breaks that the loom models, the
//! linearizability suite and a few unit tests must catch, each switched on
//! by one line at its production site.
//!
//! A mutant is compiled in with `--cfg noderep_mutant="NAME"`, which
//! `build.rs` sets for this crate alone from the `NODEREP_MUTANT`
//! environment variable (so `scripts/loom-mutants.sh` rebuilds noderep, not
//! its dependencies, per mutant). At most one mutant is on in a build.
//!
//! # How it works
//!
//! A site names its mutant with one of two switches:
//!
//! * [`ordering!`]`("NAME", Production, Mutant)` is the production
//!   [`Ordering`](crate::sync::Ordering), or the weaker one the mutant uses:
//!   `flag.store(false, mutants::ordering!("x_relaxed", Release, Relaxed))`.
//! * [`skip!`]`("NAME")` is `true` when the mutant is on: the site skips (or
//!   replaces) the production step: `if !mutants::skip!("x") { step(); }`,
//!   `if !mutants::skip!("x") && must_wait { ... }`.
//!
//! Both expand to `cfg!(noderep_mutant = "NAME")`, a literal `false` in a
//! build without that mutant: `if false { mutant } else { production }` is
//! folded away before code generation (also at `opt-level = 0`, by MIR's
//! constant-condition pass), so the default build is the production code
//! alone. Unlike `#[cfg]` lines, the mutant's code is type-checked in every
//! build, so it cannot rot.
//!
//! Each switch also checks, at compile time, that `NAME` is in [`NAMES`]:
//! a misspelt switch is a compile error, and `build.rs` refuses a
//! `NODEREP_MUTANT` that is not in the list, so a misspelt mutant in a
//! script fails to build instead of silently testing production code.
//!
//! The five "blind store" mutants of `runq` replace a compare-and-swap by a
//! check and a separate store ([`check_then_store`]), the classic
//! check-then-act race; [`cas!`] switches one CAS site that way.
//!
//! # Trade-offs
//!
//! A mutant that replaces code (rather than an ordering or one step) keeps
//! its alternative in a short `if mutants::skip!(..) { .. }` block next to
//! the production code it replaces; the production code itself is never
//! duplicated. Mutants that move a step (`ctail_after_unlock`,
//! `wake_after_unlock`) have two sites: skipped here, done there.
//!
//! Which test catches which mutant: `loom-tests/README.md` (mutation table),
//! `scripts/loom-mutants.sh`, `scripts/lin_mutant.sh`,
//! `scripts/numa-vm-mutant.sh`, and the notes in [`NAMES`].

#[cfg(feature = "std")]
use crate::sync::{AtomicU64, Ordering};

/// Every mutant, by where its switch is. A switch naming anything else does
/// not compile; `build.rs` reads this list to check `NODEREP_MUTANT`.
pub(crate) const NAMES: &[&str] = &[
    // src/nr/log.rs; loom model 1 unless noted.
    "log_publish_relaxed",
    "log_no_lap_flip",
    "log_ltail_relaxed",
    "ctail_skipped", // model 2, scripts/lin_mutant.sh
    "line_ignored",  // unit test waiting_writers_keep_the_room_they_need
    // src/nr/rwlock.rs; loom model 3.
    "rwlock_no_reader_fence",
    "rwlock_no_writer_fence",
    "rwlock_no_recheck",
    "rwlock_unlock_relaxed",
    "rwlock_writer_unlock_relaxed",
    "rwlock_no_light_fence",
    "rwlock_no_heavy_fence",
    // src/nr/context.rs; loom models 4 and 7.
    "context_submit_relaxed",
    "context_finish_relaxed",
    "context_take_keeps_pending", // equivalent (loom-tests/README.md)
    "token_release_relaxed",
    // src/nr/replica.rs, combine.rs, mod.rs; loom models 2, 4 to 9.
    "read_skips_sync",
    "ctail_after_unlock",
    "combiner_unlock_relaxed",
    "no_combine_retry",
    "no_helping",
    "help_unlocked",
    "help_not_through", // tests/starvation.rs
    "no_parking",       // unit tests of nr/tests_multi.rs (parking)
    "register_no_note_slot",
    "poison_flag_skipped",
    "panic_not_forwarded",
    "exec_ignores_poison",
    "make_room_skips_own",
    "waiter_never_leaves",
    "wake_after_unlock",
    "park_keeps_ltail",
    "removed_not_checked",
    // src/nr/lanes/shard.rs; loom model 10.
    "lane_leaf_runs_ahead",
    // src/nr/lanes; scripts/lin_mutant.sh (lane campaigns).
    "lane_read_all_no_recheck",
    "lane_read_all_lane_by_lane",
    "lane_write_all_lane_by_lane",
    "lane_barrier_keeps_ctail",
    // src/nr/builder.rs; scripts/numa-vm-mutant.sh.
    "replicas_on_node0",
    // src/runq; loom models in loom-tests/tests/runq.rs.
    "renew_blind_store",
    "takeover_blind_store",
    "finalize_blind",
    "kill_check_then_store",
    "reclaim_blind_store",
    // src/runq; unit, property tests and the failover demo (docs/RESULTS.md).
    "watermark_ignored",
    "stamp_seq_only",
    "tombstone_ignored",
    "replica_last_arrival_wins",
    "standby_detaches",
    "adopt_finished",
];

/// Whether `name` is in [`NAMES`] (compile-time check of the switches).
pub(crate) const fn known(name: &str) -> bool {
    let mut i = 0;
    while i < NAMES.len() {
        if str_eq(NAMES[i], name) {
            return true;
        }
        i += 1;
    }
    false
}

const fn str_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// `true` when mutant `$name` is compiled in (the site then skips or
/// replaces its production step); a literal `false` otherwise.
macro_rules! skip {
    ($name:literal) => {{
        const {
            assert!(
                $crate::mutants::known($name),
                "not a mutant name: add it to mutants::NAMES"
            )
        };
        cfg!(noderep_mutant = $name)
    }};
}
pub(crate) use skip;

/// The production ordering `Ordering::$production`, or `Ordering::$mutant`
/// when mutant `$name` is compiled in (both named by their variant:
/// `ordering!("x_relaxed", Release, Relaxed)`).
macro_rules! ordering {
    ($name:literal, $production:ident, $mutant:ident) => {
        if $crate::mutants::skip!($name) {
            $crate::sync::Ordering::$mutant
        } else {
            $crate::sync::Ordering::$production
        }
    };
}
pub(crate) use ordering;

#[cfg(feature = "std")]
/// `$atomic.$method(current, new, success, failure)` (a compare-and-swap of
/// an `AtomicU64`), or when mutant `$name` is compiled in, the same
/// comparison and store done as two steps by [`check_then_store`].
macro_rules! cas {
    ($name:literal, $atomic:expr, $method:ident($current:expr, $new:expr, $success:expr, $failure:expr $(,)?)) => {{
        let atomic: &$crate::sync::AtomicU64 = $atomic;
        if $crate::mutants::skip!($name) {
            $crate::mutants::check_then_store(atomic, $current, $new)
        } else {
            atomic.$method($current, $new, $success, $failure)
        }
    }};
}
#[cfg(feature = "std")]
pub(crate) use cas;

#[cfg(feature = "std")]
/// MUTANTS ONLY: what a compare-and-swap of `atomic` from `current` to `new`
/// becomes when written as "check, then act": a load, a comparison, then a
/// plain store, so a competing write between the load and the store is
/// overwritten. Same result type as `compare_exchange`.
pub(crate) fn check_then_store(atomic: &AtomicU64, current: u64, new: u64) -> Result<u64, u64> {
    // Acquire: as the failure ordering of the CASes this stands in for;
    // pairs with the Release of the store below (or of their CASes).
    let seen = atomic.load(Ordering::Acquire);
    if seen != current {
        return Err(seen);
    }
    // Release: publishes like the CAS it replaces (minus the atomicity);
    // pairs with the Acquire above and with the Acquire loads of the word.
    atomic.store(new, Ordering::Release);
    Ok(seen)
}

#[cfg(all(test, not(loom), feature = "std"))]
mod tests {
    use super::*;
    use std::string::String;
    use std::vec::Vec;

    /// Every `.rs` file under `dir`, as (path, text).
    fn sources(dir: &std::path::Path, out: &mut Vec<(String, String)>) {
        for entry in std::fs::read_dir(dir).expect("read src") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).expect("read source");
                out.push((path.display().to_string(), text));
            }
        }
    }

    #[test]
    fn no_mutant_is_on_in_a_normal_build() {
        // The test build sets no `noderep_mutant` cfg (unless one was asked
        // for with NODEREP_MUTANT), so every switch is the production value.
        if option_env!("NODEREP_MUTANT").is_some_and(|m| !m.is_empty()) {
            return;
        }
        assert!(!skip!("ctail_skipped"));
        assert_eq!(
            ordering!("log_publish_relaxed", Release, Relaxed),
            Ordering::Release
        );
    }

    #[test]
    fn the_name_list_has_no_duplicates_and_knows_only_its_names() {
        for (i, a) in NAMES.iter().enumerate() {
            assert!(known(a), "{a}");
            assert!(!NAMES[i + 1..].contains(a), "{a} is listed twice");
        }
        assert!(!known("ctail_skippe"));
        assert!(!known("ctail_skipped_"));
        assert!(!known(""));
    }

    /// Every listed mutant has a switch in the sources, and every mutant
    /// that a script or the loom table asks for is listed, so neither list
    /// rots.
    /// The text of `script` between `open` and the next `close`: the table
    /// a mutation script runs.
    fn script_table(root: &std::path::Path, script: &str, open: &str, close: &str) -> String {
        let text = std::fs::read_to_string(root.join(script)).expect("script");
        let (_, rest) = text
            .split_once(open)
            .unwrap_or_else(|| panic!("no table in {script}"));
        let (table, _) = rest
            .split_once(close)
            .unwrap_or_else(|| panic!("unterminated table in {script}"));
        table.into()
    }

    #[test]
    fn every_listed_mutant_has_a_switch_and_every_scripted_one_is_listed() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut files = Vec::new();
        sources(&root.join("src"), &mut files);
        let code: String = files
            .iter()
            .filter(|(path, _)| !path.ends_with("mutants.rs"))
            .map(|(_, text)| text.as_str())
            .collect();
        for name in NAMES {
            let quoted = std::format!("\"{name}\"");
            let switched = ["skip!(", "ordering!(", "cas!("].iter().any(|m| {
                code.match_indices(m).any(|(at, _)| {
                    code[at..]
                        .trim_start_matches(m)
                        .trim_start()
                        .starts_with(&quoted)
                })
            });
            assert!(switched, "mutant {name} is listed but no switch names it");
        }
        let table = script_table(root, "scripts/loom-mutants.sh", "TABLE=\"", "\"");
        let mut pairs = 0;
        for line in table.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            if let [_model, mutant] = words[..] {
                assert!(
                    known(mutant),
                    "loom-mutants.sh names {mutant}, not in NAMES"
                );
                pairs += 1;
            }
        }
        assert_eq!(pairs, 35, "pairs in the loom mutation table");
        // scripts/lin_mutant.sh: rows `mutant campaign scale` of its table.
        let table = script_table(root, "scripts/lin_mutant.sh", "<<'TABLE'\n", "\nTABLE");
        let mut lin_mutants = Vec::new();
        for line in table.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            let [mutant, _campaign, _scale] = words[..] else {
                panic!("lin_mutant.sh row {line:?} is not `mutant campaign scale`");
            };
            assert!(known(mutant), "lin_mutant.sh names {mutant}, not in NAMES");
            lin_mutants.push(mutant);
        }
        lin_mutants.dedup();
        assert_eq!(
            lin_mutants,
            [
                "ctail_skipped",
                "lane_read_all_no_recheck",
                "lane_read_all_lane_by_lane",
                "lane_write_all_lane_by_lane",
                "lane_barrier_keeps_ctail",
            ],
            "mutants of the lin_mutant.sh table"
        );
        let script = "scripts/numa-vm-mutant.sh";
        let name = "replicas_on_node0";
        let text = std::fs::read_to_string(root.join(script)).expect("script");
        assert!(
            text.contains(&std::format!("NODEREP_MUTANT={name}")),
            "{script}"
        );
        assert!(known(name), "{name}");
    }

    #[test]
    fn check_then_store_answers_like_a_compare_exchange() {
        let word = AtomicU64::new(5);
        assert_eq!(check_then_store(&word, 4, 9), Err(5));
        assert_eq!(
            word.load(Ordering::Relaxed),
            5,
            "a failed check stores nothing"
        );
        assert_eq!(check_then_store(&word, 5, 9), Ok(5));
        assert_eq!(word.load(Ordering::Relaxed), 9);
        assert_eq!(
            word.compare_exchange(9, 1, Ordering::AcqRel, Ordering::Acquire),
            Ok(9)
        );
    }
}
