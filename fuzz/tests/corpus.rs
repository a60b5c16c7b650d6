//! Every input kept in `fuzz/corpus/<target>/` goes through its target: the crashes fuzzing
//! found stay fixed, and each target keeps working on the inputs that reach deep into it.

use std::path::Path;

#[test]
fn the_corpus_passes_through_every_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for (name, target) in fuzz_targets::TARGETS {
        let dir = root.join(name);
        let files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .flatten()
            .collect();
        assert!(!files.is_empty(), "{name} has no corpus");
        for f in files {
            target(&std::fs::read(f.path()).unwrap());
        }
    }
}
