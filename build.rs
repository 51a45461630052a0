//! Compiles in one deliberate protocol break for the mutation checks of the
//! loom models (`scripts/loom-mutants.sh`): `NODEREP_MUTANT=name` becomes
//! `--cfg noderep_mutant="name"` for this crate only, so switching mutants
//! rebuilds noderep and the models, not every dependency (which a change of
//! `RUSTFLAGS` would). Without the variable this does nothing.

fn main() {
    println!("cargo:rerun-if-env-changed=NODEREP_MUTANT");
    if let Ok(mutant) = std::env::var("NODEREP_MUTANT") {
        if !mutant.is_empty() {
            println!("cargo:rustc-cfg=noderep_mutant=\"{mutant}\"");
        }
    }
}
