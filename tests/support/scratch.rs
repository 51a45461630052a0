//! A directory of its own under the system temp dir for one test, removed
//! on drop. Shared by the mirror tests through `#[path]` (each test file is
//! its own crate, so files may add inherent methods of their own).

use std::path::PathBuf;

/// A test's directory: `noderep-{kind}-{tag}-{pid}` under the temp dir.
pub struct Scratch(pub PathBuf);

impl Scratch {
    /// A fresh, empty directory (whatever an earlier run left is removed).
    pub fn new(kind: &str, tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("noderep-{kind}-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("temp dir");
        Self(p)
    }

    /// The path of `name` inside it.
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
