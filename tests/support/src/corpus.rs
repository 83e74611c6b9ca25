//! Replays a committed fuzz corpus (`<crate>/fuzz/corpus/<target>/`)
//! through the entry points the cargo-fuzz targets call, so plain `cargo
//! test` (stable, no libFuzzer) checks that every input that once found new
//! code, or a crash, still passes.

use std::path::Path;

/// A fuzz target's entry point.
pub type Target = fn(&[u8]);

/// Corpus files per target at most: the committed corpora are small.
pub const FILES_PER_TARGET_MAX: usize = 1_000;

/// The files of `<crate_dir>/fuzz/corpus/<target>/`, sorted by name, as
/// (file name, bytes); `crate_dir` is the calling crate's
/// `env!("CARGO_MANIFEST_DIR")`. Panics if the directory is missing or
/// empty, or holds more than [`FILES_PER_TARGET_MAX`] files.
pub fn read(crate_dir: &str, target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(crate_dir).join("fuzz/corpus").join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{}: no corpus", dir.display());
    assert!(
        files.len() <= FILES_PER_TARGET_MAX,
        "{}: corpus too large",
        dir.display()
    );
    files
        .into_iter()
        .map(|f| {
            let name = f.file_name().unwrap().to_string_lossy().into_owned();
            let data = std::fs::read(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            (name, data)
        })
        .collect()
}

/// Runs every file of each target's corpus ([`read`]) through the target;
/// panics naming the first file whose run panics.
pub fn replay(crate_dir: &str, targets: &[(&str, Target)]) {
    for &(name, target) in targets {
        for (file, data) in read(crate_dir, name) {
            let outcome = std::panic::catch_unwind(|| target(&data));
            assert!(outcome.is_ok(), "{name}: {file} panics");
        }
    }
}
