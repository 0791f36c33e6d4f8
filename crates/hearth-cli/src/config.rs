//! `hearth.toml`: the daemon's settings. Unknown keys are refused and errors quote the key's path,
//! so a typo never silently falls back to a default.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub engine: EngineSection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// Address to listen on, e.g. "127.0.0.1:8080".
    pub addr: Option<String>,
    /// Directory of packages to serve.
    pub models: Option<PathBuf>,
    /// Model served at the Cog root routes when several are loaded.
    pub default_model: Option<String>,
    /// Seconds in-flight requests get to finish on shutdown before they are cancelled.
    pub shutdown_grace_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineSection {
    /// KV-cache memory per model, in MiB (a package's hearth.yaml `kv_cache_mb` wins).
    pub kv_cache_mb: Option<usize>,
    pub max_num_seqs: Option<usize>,
    pub max_batch_tokens: Option<usize>,
    pub max_prefill_chunk: Option<usize>,
    pub max_prefill_wait_steps: Option<u64>,
    pub max_waiting: Option<usize>,
    pub block_size: Option<usize>,
}

impl Config {
    /// Reads `path`, or `./hearth.toml` when no path is given and that file exists.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Config> {
        let path = match path {
            Some(p) => p.to_path_buf(),
            None if Path::new("hearth.toml").exists() => PathBuf::from("hearth.toml"),
            None => return Ok(Config::default()),
        };
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<Config> {
        // toml's error message names the offending key and shows its line.
        Ok(toml::from_str(text)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_refused_with_their_path() {
        let err = Config::parse("[engine]\nkv_cache_mib = 3\n").unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("kv_cache_mib"), "{msg}");
    }

    #[test]
    fn sections_parse() {
        let cfg = Config::parse("[server]\naddr = \"0.0.0.0:9000\"\n[engine]\nmax_num_seqs = 4\n")
            .unwrap();
        assert_eq!(cfg.server.addr.as_deref(), Some("0.0.0.0:9000"));
        assert_eq!(cfg.engine.max_num_seqs, Some(4));
    }
}
