//! `hf://` managed weights: `cog.yaml` entries of the form
//! `weights: [{name, target, source: {uri: hf://org/repo[@revision], include, exclude}}]` are
//! fetched from the Hugging Face Hub (or the endpoint `HF_ENDPOINT` names) into the local hub
//! cache, then placed at `target` inside the package, before [`crate::Package::load`] validates
//! it. `target` is Cog's container path: `/src` is the package root, so `/src` or `.` puts the
//! files beside `cog.yaml` and `/src/weights` (or `weights`) in a subdirectory.
//!
//! Downloads go through the `hf-hub` crate's tokio API, which writes each file to
//! `<blob>.sync.part` in chunks and records the bytes committed, so an interrupted download
//! resumes from its last whole chunk ([`HubOptions::chunk_bytes`]) on the next load. A revision
//! is resolved to its commit once; files are cached under that commit, and a daemon without
//! hub access loads a revision it fetched before from the cache alone. Files are hard-linked
//! from the cache into the package (copied where the two are on different filesystems).
//!
//! `hearth.yaml` adapters with `source: hf://org/repo[@revision]` are fetched the same way: their
//! `adapter_config.json` and `adapter_model.safetensors` are placed in the package's
//! [`crate::HF_ADAPTERS_DIR`]`/<name>`.
//!
//! Only built with the `hub` feature: the rest of this crate does no network I/O.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hf_hub::api::tokio::{Api, ApiBuilder, ApiError, ApiRepo};
use hf_hub::{Cache, Repo, RepoType};

use crate::archive::safe_relative_path;
use crate::cog::{CogConfig, WeightsEntry, COG_FILE};
use crate::error::PackageError;
use crate::settings::PackageSettings;

const SCHEME: &str = "hf://";
/// Cog's working directory in the container: the package root.
const COG_ROOT: &str = "/src";

/// Where and how to reach the hub.
#[derive(Debug, Clone)]
pub struct HubOptions {
    /// Base URL of the hub (`HF_ENDPOINT`, default `https://huggingface.co`).
    pub endpoint: Option<String>,
    /// Bearer token (`HF_TOKEN`, else the token file in `HF_HOME`).
    pub token: Option<String>,
    /// The hub cache (`HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`).
    pub cache_dir: Option<PathBuf>,
    /// Download chunk: the unit of resumption, and what one request holds in memory.
    pub chunk_bytes: usize,
}

impl HubOptions {
    /// The options the Hugging Face tools read from the environment.
    pub fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        Self {
            endpoint: var("HF_ENDPOINT"),
            token: var("HF_TOKEN"),
            cache_dir: var("HF_HUB_CACHE").map(PathBuf::from),
            chunk_bytes: 10_000_000,
        }
    }

    fn cache(&self) -> Cache {
        match &self.cache_dir {
            Some(dir) => Cache::new(dir.clone()),
            None => Cache::from_env(),
        }
    }

    fn api(&self) -> Result<Api, ApiError> {
        let cache = self.cache();
        let token = self.token.clone().or_else(|| cache.token());
        let mut builder = ApiBuilder::from_cache(cache)
            .with_token(token)
            .with_progress(false)
            .with_chunk_size(Some(self.chunk_bytes.max(1)));
        if let Some(endpoint) = &self.endpoint {
            builder = builder.with_endpoint(endpoint.trim_end_matches('/').to_owned());
        }
        builder.build()
    }
}

/// Download progress, per file.
#[derive(Debug, Clone, Copy)]
pub enum HubEvent<'a> {
    /// A download begins; `bytes` is the file's size.
    Start {
        file: &'a str,
        bytes: u64,
    },
    /// `bytes` more bytes are in (resumed bytes count at the start).
    Advance {
        file: &'a str,
        bytes: u64,
    },
    Finish {
        file: &'a str,
    },
}

/// Receives [`HubEvent`]s; called from download tasks.
pub type HubProgress = Arc<dyn Fn(HubEvent<'_>) + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error(transparent)]
    Package(#[from] PackageError),
    #[error("cog.yaml: `weights[{index}].source.uri` `{uri}`: {why}")]
    BadUri { index: usize, uri: String, why: &'static str },
    #[error("hearth.yaml: adapter `{name}`: source `{uri}`: expected hf://org/repo or hf://org/repo@revision")]
    BadAdapterSource { name: String, uri: String },
    #[error("cog.yaml: `weights[{index}].target` `{target}`: {why}")]
    BadTarget { index: usize, target: String, why: String },
    #[error("{uri}: {message}")]
    Hub { uri: String, message: String },
    #[error("{uri}: no file in the repository matches `include`/`exclude`")]
    NoFiles { uri: String },
    #[error("placing {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
}

/// What [`fetch_weights`] put in place.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fetched {
    pub files: usize,
    pub bytes: u64,
}

/// An `hf://org/repo[@revision]` source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HfSource {
    pub repo: String,
    pub revision: String,
}

impl HfSource {
    /// Parses `hf://org/repo[@revision]`; the revision defaults to `main`.
    pub fn parse(uri: &str) -> Option<HfSource> {
        let rest = uri.strip_prefix(SCHEME)?;
        let (repo, revision) = match rest.split_once('@') {
            Some((repo, revision)) => (repo, revision),
            None => (rest, "main"),
        };
        let parts: Vec<&str> = repo.split('/').collect();
        let valid_part = |p: &&str| {
            !p.is_empty()
                && *p != "."
                && *p != ".."
                && p.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        };
        let well_formed = (1..=2).contains(&parts.len()) && parts.iter().all(valid_part);
        let revision_ok =
            !revision.is_empty() && !revision.contains("..") && !revision.starts_with('/');
        (well_formed && revision_ok)
            .then(|| HfSource { repo: repo.to_owned(), revision: revision.to_owned() })
    }

    fn label(&self) -> String {
        format!("{SCHEME}{}@{}", self.repo, self.revision)
    }
}

/// One `hf://` entry of `cog.yaml`, checked.
struct HfEntry {
    package: PathBuf,
    source: HfSource,
    target: PathBuf,
    include: Vec<String>,
    exclude: Vec<String>,
}

/// The `hf://` entries of the package in `dir`: `cog.yaml` weights, then `hearth.yaml`
/// adapters. Empty when it has none (or no cog.yaml, which [`crate::Package::load`] reports).
fn hf_entries(dir: &Path) -> Result<Vec<HfEntry>, HubError> {
    if !dir.join(COG_FILE).is_file() {
        return Ok(Vec::new());
    }
    let cog = CogConfig::load(dir)?;
    let mut entries = Vec::new();
    for (index, entry) in cog.weights.iter().enumerate() {
        if entry.source.uri.starts_with(SCHEME) {
            entries.push(check_entry(dir, index, entry)?);
        }
    }
    for adapter in PackageSettings::load(dir)?.adapters {
        let Some(uri) = &adapter.source else { continue };
        let source = HfSource::parse(uri).ok_or_else(|| HubError::BadAdapterSource {
            name: adapter.name.clone(),
            uri: uri.clone(),
        })?;
        entries.push(HfEntry {
            package: dir.to_path_buf(),
            source,
            target: adapter.dir_in(dir),
            include: ADAPTER_FILES.map(str::to_owned).to_vec(),
            exclude: Vec::new(),
        });
    }
    Ok(entries)
}

/// What a PEFT adapter repository holds that serving needs (it often holds a README, a
/// tokenizer and training state as well).
const ADAPTER_FILES: [&str; 2] = ["adapter_config.json", "adapter_model.safetensors"];

fn check_entry(dir: &Path, index: usize, entry: &WeightsEntry) -> Result<HfEntry, HubError> {
    let uri = &entry.source.uri;
    let source = HfSource::parse(uri).ok_or_else(|| HubError::BadUri {
        index,
        uri: uri.clone(),
        why: "expected hf://org/repo or hf://org/repo@revision",
    })?;
    let target = resolve_target(dir, &entry.target).map_err(|why| HubError::BadTarget {
        index,
        target: entry.target.clone(),
        why,
    })?;
    Ok(HfEntry {
        package: dir.to_path_buf(),
        source,
        target,
        include: entry.source.include.clone(),
        exclude: entry.source.exclude.clone(),
    })
}

/// Where a Cog `target` lies in the package: `/src/...` and relative paths resolve under
/// `dir`; anything else would put files outside the package and is refused.
pub fn resolve_target(dir: &Path, target: &str) -> Result<PathBuf, String> {
    let relative = if target == COG_ROOT || target == "." {
        return Ok(dir.to_path_buf());
    } else if let Some(rest) = target.strip_prefix(COG_ROOT).and_then(|r| r.strip_prefix('/')) {
        rest
    } else if target.starts_with('/') {
        return Err(format!("must be inside the package: `{COG_ROOT}/...` or a relative path"));
    } else {
        target
    };
    let relative = safe_relative_path(relative.trim_end_matches('/')).map_err(|e| e.to_string())?;
    Ok(dir.join(relative))
}

/// Fetches every `hf://` weights entry of the package in `dir` and places its files. A package
/// without such entries costs one read of `cog.yaml`.
pub async fn fetch_weights(
    dir: &Path,
    options: &HubOptions,
    progress: Option<HubProgress>,
) -> Result<Fetched, HubError> {
    let entries = hf_entries(dir)?;
    fetch_entries(&entries, options, progress).await
}

/// [`fetch_weights`] for synchronous callers (package loading runs on a blocking thread). Must
/// not be called from inside an async task.
pub fn fetch_weights_blocking(
    dir: &Path,
    options: &HubOptions,
    progress: Option<HubProgress>,
) -> Result<Fetched, HubError> {
    let entries = hf_entries(dir)?;
    if entries.is_empty() {
        return Ok(Fetched::default());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| HubError::Io { path: dir.to_path_buf(), source })?;
    runtime.block_on(fetch_entries(&entries, options, progress))
}

async fn fetch_entries(
    entries: &[HfEntry],
    options: &HubOptions,
    progress: Option<HubProgress>,
) -> Result<Fetched, HubError> {
    let mut total = Fetched::default();
    if entries.is_empty() {
        return Ok(total);
    }
    let api =
        options.api().map_err(|e| HubError::Hub { uri: SCHEME.into(), message: e.to_string() })?;
    for entry in entries {
        let fetched = fetch_entry(&api, &options.cache(), entry, progress.clone()).await?;
        total.files += fetched.files;
        total.bytes += fetched.bytes;
    }
    Ok(total)
}

async fn fetch_entry(
    api: &Api,
    cache: &Cache,
    entry: &HfEntry,
    progress: Option<HubProgress>,
) -> Result<Fetched, HubError> {
    let uri = entry.source.label();
    let hub_err = |message: String| HubError::Hub { uri: uri.clone(), message };
    let (commit, files) = list_files(api, cache, &entry.source).await.map_err(hub_err)?;
    let files: Vec<String> =
        files.into_iter().filter(|f| selected(f, &entry.include, &entry.exclude)).collect();
    if files.is_empty() {
        return Err(HubError::NoFiles { uri });
    }
    // Pinned to the commit, so every file comes from the same one even if the branch moves.
    let pinned = Repo::with_revision(entry.source.repo.clone(), RepoType::Model, commit.clone());
    let repo = api.repo(pinned.clone());
    let mut fetched = Fetched::default();
    for file in &files {
        let destination =
            entry.target.join(safe_relative_path(file).map_err(|e| hub_err(e.to_string()))?);
        if is_package_manifest(&entry.package, &destination) {
            // The package's own cog.yaml / hearth.yaml say where its weights come from; a
            // repository's copies must not replace them.
            tracing::warn!(source = %uri, file, "not replacing the package's manifest with the hub's");
            continue;
        }
        let cached = match cache.repo(pinned.clone()).get(file) {
            Some(path) => path,
            None => download(&repo, file, progress.clone())
                .await
                .map_err(|e| hub_err(format!("{file}: {e}")))?,
        };
        fetched.bytes += place(&cached, &destination)?;
        fetched.files += 1;
    }
    tracing::info!(source = %uri, commit = %commit, files = fetched.files, bytes = fetched.bytes, "hf weights in place");
    Ok(fetched)
}

fn is_package_manifest(package: &Path, destination: &Path) -> bool {
    [COG_FILE, "hearth.yaml"].iter().any(|name| destination == package.join(name))
}

/// The revision's commit and file list: from the hub, or from the cache when the hub cannot be
/// reached and this revision was fetched before.
async fn list_files(
    api: &Api,
    cache: &Cache,
    source: &HfSource,
) -> Result<(String, Vec<String>), String> {
    let named = Repo::with_revision(source.repo.clone(), RepoType::Model, source.revision.clone());
    match api.repo(named.clone()).info().await {
        Ok(info) => {
            // Remembered for offline start-ups: revision -> commit.
            if let Err(err) = cache.repo(named).create_ref(&info.sha) {
                tracing::warn!(error = %err, "could not record the revision in the hub cache");
            }
            Ok((info.sha, info.siblings.into_iter().map(|s| s.rfilename).collect()))
        }
        Err(ApiError::RequestError(err)) if err.is_connect() || err.is_timeout() => {
            let cached = cached_listing(cache, source)
                .ok_or_else(|| format!("the hub is unreachable ({err}) and nothing is cached"))?;
            tracing::warn!(source = %source.label(), error = %err, "hub unreachable; using the cached snapshot");
            Ok(cached)
        }
        Err(err) => Err(err.to_string()),
    }
}

fn cached_listing(cache: &Cache, source: &HfSource) -> Option<(String, Vec<String>)> {
    let folder = Repo::with_revision(source.repo.clone(), RepoType::Model, source.revision.clone())
        .folder_name();
    let root = cache.path().join(folder);
    let commit =
        fs::read_to_string(root.join("refs").join(&source.revision)).ok()?.trim().to_owned();
    let snapshot = root.join("snapshots").join(&commit);
    let mut files = Vec::new();
    walk(&snapshot, "", &mut files);
    (!files.is_empty()).then_some((commit, files))
}

fn walk(dir: &Path, prefix: &str, out: &mut Vec<String>) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = format!("{prefix}{}", entry.file_name().to_string_lossy());
        if entry.path().is_dir() {
            walk(&entry.path(), &format!("{name}/"), out);
        } else {
            out.push(name);
        }
    }
}

async fn download(
    repo: &ApiRepo,
    file: &str,
    progress: Option<HubProgress>,
) -> Result<PathBuf, ApiError> {
    tracing::info!(file, "downloading from the hub");
    match progress {
        Some(callback) => {
            repo.download_with_progress(file, Reporter { file: file.to_owned(), callback }).await
        }
        None => repo.download_with_progress(file, ()).await,
    }
}

/// Adapts hf-hub's progress trait to [`HubProgress`].
#[derive(Clone)]
struct Reporter {
    file: String,
    callback: HubProgress,
}

impl hf_hub::api::tokio::Progress for Reporter {
    async fn init(&mut self, size: usize, _filename: &str) {
        (self.callback)(HubEvent::Start { file: &self.file, bytes: size as u64 });
    }

    async fn update(&mut self, size: usize) {
        (self.callback)(HubEvent::Advance { file: &self.file, bytes: size as u64 });
    }

    async fn finish(&mut self) {
        (self.callback)(HubEvent::Finish { file: &self.file });
    }
}

/// Puts the cached file at `destination` (hard link, else copy), through a temporary name so a
/// reader never sees half a file. Returns its size.
fn place(cached: &Path, destination: &Path) -> Result<u64, HubError> {
    let io_err = |source| HubError::Io { path: destination.to_path_buf(), source };
    // The cache's snapshot entries are symlinks to blobs; link the blob itself.
    let blob = fs::canonicalize(cached).map_err(io_err)?;
    let size = fs::metadata(&blob).map_err(io_err)?.len();
    if same_file(&blob, destination) {
        return Ok(size);
    }
    if let Some(parent) = destination.parent() {
        fs::create_dir_all(parent).map_err(io_err)?;
    }
    let mut temporary = destination.as_os_str().to_owned();
    temporary.push(".hf-partial");
    let temporary = PathBuf::from(temporary);
    let _ = fs::remove_file(&temporary);
    if fs::hard_link(&blob, &temporary).is_err() {
        fs::copy(&blob, &temporary).map_err(io_err)?;
    }
    fs::rename(&temporary, destination).map_err(io_err)?;
    Ok(size)
}

#[cfg(unix)]
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (fs::metadata(a), fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn same_file(_: &Path, _: &Path) -> bool {
    false
}

/// Whether `file` passes Cog's `include`/`exclude` patterns (shell-style; `*` crosses `/`, as
/// in Python's `fnmatch` that the Hugging Face tools use). No `include` means everything.
fn selected(file: &str, include: &[String], exclude: &[String]) -> bool {
    let included =
        include.is_empty() || include.iter().any(|p| glob(p.as_bytes(), file.as_bytes()));
    included && !exclude.iter().any(|p| glob(p.as_bytes(), file.as_bytes()))
}

/// Wildcard matching that backtracks only to the last `*`, so it stays linear-ish on
/// hostile names.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if pattern.get(p) == Some(&b'*') {
            star = Some((p, t));
            p += 1;
        } else if pattern.get(p).is_some_and(|&c| c == b'?' || c == text[t]) {
            p += 1;
            t += 1;
        } else if let Some((star_p, star_t)) = star {
            // Let the last `*` swallow one more character and retry from there.
            p = star_p + 1;
            t = star_t + 1;
            star = Some((star_p, star_t + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_parse_with_an_optional_revision() {
        let source = HfSource::parse("hf://org/model").unwrap();
        assert_eq!((source.repo.as_str(), source.revision.as_str()), ("org/model", "main"));
        let pinned = HfSource::parse("hf://org/model@refs/pr/1").unwrap();
        assert_eq!(pinned.revision, "refs/pr/1");
        for bad in
            ["hf://", "hf://a/b/c", "hf://../x", "hf://org/model@", "hf://org/m@../x", "s3://a/b"]
        {
            assert_eq!(HfSource::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn targets_resolve_inside_the_package() {
        let dir = Path::new("/pkg");
        assert_eq!(resolve_target(dir, "/src").unwrap(), dir);
        assert_eq!(resolve_target(dir, "/src/weights/").unwrap(), dir.join("weights"));
        assert_eq!(resolve_target(dir, "weights").unwrap(), dir.join("weights"));
        assert!(resolve_target(dir, "/weights").unwrap_err().contains("inside the package"));
        assert!(resolve_target(dir, "/src/../etc").unwrap_err().contains("`..`"));
        assert!(resolve_target(dir, "/srcx").is_err());
    }

    #[test]
    fn include_and_exclude_select_files() {
        let include = vec!["*.safetensors".to_owned(), "*.json".to_owned()];
        let exclude = vec!["*fp16*".to_owned()];
        assert!(selected("model.safetensors", &include, &exclude));
        assert!(selected("sub/tokenizer.json", &include, &exclude));
        assert!(!selected("model.fp16.safetensors", &include, &exclude));
        assert!(!selected("README.md", &include, &exclude));
        assert!(selected("README.md", &[], &[]));
        assert!(glob(b"model-?????-of-*.safetensors", b"model-00001-of-00002.safetensors"));
    }
}
