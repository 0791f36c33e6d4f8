//! The committed example package must be exactly what the generator writes today, so that the
//! engine's reference fixtures (computed from those weights) stay valid. If this fails after a
//! deliberate generator change, regenerate with
//! `cargo run -p hearth-package --example write_package -- tiny-llama models/tiny-llama`
//! and regenerate the fixtures that depend on it.

use std::path::{Path, PathBuf};

use hearth_package::synth::{write_llama_package, SynthSpec};
use hearth_package::Package;

fn committed() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/tiny-llama")
}

fn file_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn committed_tiny_llama_matches_the_generator() {
    let tmp = tempfile::TempDir::new().unwrap();
    let fresh = tmp.path().join("tiny-llama");
    write_llama_package(&SynthSpec::tiny_llama(), &fresh, &mut |_, _| {}).unwrap();
    assert_eq!(file_names(&committed()), file_names(&fresh));
    for name in file_names(&fresh) {
        let committed_bytes = std::fs::read(committed().join(&name)).unwrap();
        let fresh_bytes = std::fs::read(fresh.join(&name)).unwrap();
        assert!(
            committed_bytes == fresh_bytes,
            "models/tiny-llama/{name} differs from the generator"
        );
    }
}

#[test]
fn committed_tiny_llama_loads() {
    let package = Package::load(&committed()).unwrap();
    assert_eq!(package.name, "tiny-llama");
    package.weights.check(&SynthSpec::tiny_llama().tensor_shapes()).unwrap();
}
