//! What the config test binaries share.

use std::path::Path;

/// A temp folder holding `files`: each a path relative to it and the file's text.
pub fn tree<P: AsRef<Path>, T: AsRef<str>>(files: &[(P, T)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (rel, text) in files {
        let p = dir.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text.as_ref()).unwrap();
    }
    dir
}
