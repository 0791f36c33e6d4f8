//! The `hearth` command's own behaviour (this test also makes `cargo test --workspace` build the
//! binary that the end-to-end tests in the repository's `tests/` start).

use std::path::Path;
use std::process::Command;

fn hearth() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hearth"))
}

#[test]
fn synth_writes_the_committed_example_package_byte_for_byte() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("tiny-llama");
    let status =
        hearth().args(["synth", "--preset", "tiny-llama", "--out"]).arg(&dir).status().unwrap();
    assert!(status.success());
    let committed = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/tiny-llama");
    let mut names: Vec<_> =
        std::fs::read_dir(&committed).unwrap().map(|e| e.unwrap().file_name()).collect();
    names.sort();
    for name in names {
        let a = std::fs::read(committed.join(&name)).unwrap();
        let b =
            std::fs::read(dir.join(&name)).unwrap_or_else(|e| panic!("{name:?} not written: {e}"));
        assert!(a == b, "{name:?} differs from the committed example");
    }
}

#[test]
fn serve_refuses_a_missing_models_directory_clearly() {
    let output = hearth().args(["serve", "--models", "/definitely/not/here"]).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("/definitely/not/here"), "{stderr}");
}

#[test]
fn unknown_synth_preset_is_refused() {
    let output = hearth().args(["synth", "--preset", "gpt-9", "--out", "/tmp/x"]).output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("gpt-9"));
}
