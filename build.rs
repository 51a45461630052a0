//! Compiles in one deliberate protocol break (a mutant, `src/mutants.rs`)
//! for the mutation checks: `NODEREP_MUTANT=name` becomes
//! `--cfg noderep_mutant="name"` for this crate only, so switching mutants
//! rebuilds noderep and the models, not every dependency (which a change of
//! `RUSTFLAGS` would). A name missing from `mutants::NAMES` is refused, so a
//! misspelt mutant cannot silently build the production code. Without the
//! variable this does nothing.

fn main() {
    println!("cargo:rerun-if-env-changed=NODEREP_MUTANT");
    println!("cargo:rerun-if-changed=src/mutants.rs");
    let Ok(mutant) = std::env::var("NODEREP_MUTANT") else {
        return;
    };
    if mutant.is_empty() {
        return;
    }
    let names = known_mutants();
    if !names.contains(&mutant) {
        panic!(
            "NODEREP_MUTANT={mutant} is not a mutant; the names are listed in \
             src/mutants.rs (NAMES): {}",
            names.join(", ")
        );
    }
    println!("cargo:rustc-cfg=noderep_mutant=\"{mutant}\"");
}

/// The quoted names of the `NAMES` list in `src/mutants.rs`, one per line.
fn known_mutants() -> Vec<String> {
    let text = std::fs::read_to_string("src/mutants.rs").expect("read src/mutants.rs");
    let list = text
        .split_once("const NAMES: &[&str] = &[")
        .and_then(|(_, rest)| rest.split_once("];"))
        .expect("src/mutants.rs defines `const NAMES: &[&str] = &[ ... ];`")
        .0;
    list.lines()
        .filter_map(|line| {
            let line = line.trim().strip_prefix('"')?;
            Some(line.split_once('"')?.0.to_string())
        })
        .collect()
}
