//! Safetensors weights, single-file or sharded, memory-mapped and never copied. Loading parses and
//! validates every header (offsets against file length, the shard index against the shards) so a
//! broken checkpoint fails here, before anything is placed on a device.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::{SafeTensorError, SafeTensors};
use serde::Deserialize;

use crate::error::{PackageError, TensorProblem};
use crate::gguf::GgufFile;

/// The element type of a stored tensor, as safetensors names it.
pub use safetensors::Dtype as TensorDtype;

pub(crate) const SINGLE_FILE: &str = "model.safetensors";
pub(crate) const INDEX_FILE: &str = "model.safetensors.index.json";

/// Tensors that checkpoints often carry but models recompute; never reported as unexpected.
const ALWAYS_ALLOWED_SUFFIXES: [&str; 1] = [".rotary_emb.inv_freq"];

/// Where one tensor lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub dtype: TensorDtype,
    pub shape: Vec<usize>,
    /// Index into [`Weights::files`].
    pub file: usize,
    /// Byte range of the tensor's data within its file.
    pub range: Range<usize>,
}

/// All weight files of a package, memory-mapped, with their parsed headers.
pub struct Weights {
    files: Vec<PathBuf>,
    maps: Vec<Mmap>,
    tensors: BTreeMap<String, TensorInfo>,
    /// A GGUF package's one weight file; its tensors are not in `tensors` (their types are
    /// ggml's, not safetensors').
    gguf: Option<GgufFile>,
}

impl std::fmt::Debug for Weights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Weights")
            .field("files", &self.files)
            .field("tensors", &self.tensors.len())
            .field("gguf", &self.gguf.as_ref().map(|g| g.tensors.len()))
            .finish()
    }
}

/// `model.safetensors.index.json`; only `weight_map` matters.
#[derive(Deserialize)]
struct ShardIndex {
    weight_map: BTreeMap<String, String>,
}

/// One mapped file and the tensors its header lists.
struct Shard {
    map: Mmap,
    tensors: Vec<(String, TensorDtype, Vec<usize>, Range<usize>)>,
}

impl Weights {
    /// Maps `model.safetensors`, or the shards named by `model.safetensors.index.json`.
    pub fn load(dir: &Path) -> Result<Self, PackageError> {
        if dir.join(INDEX_FILE).is_file() {
            Self::load_sharded(dir)
        } else if dir.join(SINGLE_FILE).is_file() {
            let shard = open_shard(dir, SINGLE_FILE)?;
            let mut weights = Self::empty();
            weights.add_shard(SINGLE_FILE, dir.join(SINGLE_FILE), shard)?;
            Ok(weights)
        } else if let Some(name) = find_gguf(dir)? {
            Ok(Self::from_gguf(GgufFile::load(dir, &name)?))
        } else {
            Err(PackageError::MissingFile {
                file: SINGLE_FILE.to_string(),
                why: "a package needs model.safetensors, shards listed in \
                      model.safetensors.index.json, or one .gguf file",
            })
        }
    }

    /// The weights of one GGUF file.
    pub fn from_gguf(gguf: GgufFile) -> Self {
        Self { files: vec![gguf.path.clone()], gguf: Some(gguf), ..Self::empty() }
    }

    /// The GGUF file of a GGUF package; `None` for safetensors weights.
    pub fn gguf(&self) -> Option<&GgufFile> {
        self.gguf.as_ref()
    }

    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.get(name)
    }

    /// Tensor names in sorted order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// The raw little-endian bytes of a tensor, straight from the mapping.
    pub fn data(&self, name: &str) -> Option<&[u8]> {
        let info = self.tensors.get(name)?;
        self.maps.get(info.file)?.get(info.range.clone())
    }

    /// Bytes of tensor data across all files.
    pub fn total_bytes(&self) -> u64 {
        let gguf = self.gguf.as_ref().map_or(0, GgufFile::total_bytes);
        gguf + self.tensors.values().map(|t| (t.range.end - t.range.start) as u64).sum::<u64>()
    }

    /// Checks that exactly the `expected` tensors exist, with the expected shapes. Rotary
    /// `inv_freq` buffers that some checkpoints carry are tolerated.
    pub fn check(&self, expected: &[(String, Vec<usize>)]) -> Result<(), PackageError> {
        self.check_allowing(expected, &[])
    }

    /// Like [`Weights::check`], also tolerating extra tensors whose names start with one of
    /// `allowed_extra_prefixes`.
    pub fn check_allowing(
        &self,
        expected: &[(String, Vec<usize>)],
        allowed_extra_prefixes: &[&str],
    ) -> Result<(), PackageError> {
        let mut problems = Vec::new();
        for (name, shape) in expected {
            match self.tensors.get(name) {
                None => problems.push(TensorProblem::Missing { name: name.clone() }),
                Some(info) if &info.shape != shape => problems.push(TensorProblem::Shape {
                    name: name.clone(),
                    actual: info.shape.clone(),
                    expected: shape.clone(),
                }),
                Some(_) => {}
            }
        }
        let wanted: BTreeSet<&str> = expected.iter().map(|(name, _)| name.as_str()).collect();
        let allowed = |name: &str| {
            ALWAYS_ALLOWED_SUFFIXES.iter().any(|suffix| name.ends_with(suffix))
                || allowed_extra_prefixes.iter().any(|prefix| name.starts_with(prefix))
        };
        for name in self.names().filter(|name| !wanted.contains(name) && !allowed(name)) {
            problems.push(TensorProblem::Unexpected { name: name.to_string() });
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(PackageError::TensorMismatch { problems })
        }
    }

    fn empty() -> Self {
        Self { files: Vec::new(), maps: Vec::new(), tensors: BTreeMap::new(), gguf: None }
    }

    fn load_sharded(dir: &Path) -> Result<Self, PackageError> {
        let index = read_index(dir)?;
        // Sorted and de-duplicated, so file indices do not depend on the index's key order.
        let shard_names: BTreeSet<&str> = index.weight_map.values().map(String::as_str).collect();
        for name in &shard_names {
            check_shard_name(dir, name)?;
        }
        let mut weights = Self::empty();
        for name in &shard_names {
            let shard = open_shard(dir, name)?;
            weights.add_shard(name, dir.join(name), shard)?;
        }
        weights.check_index(&index)?;
        Ok(weights)
    }

    fn add_shard(&mut self, name: &str, path: PathBuf, shard: Shard) -> Result<(), PackageError> {
        let file = self.files.len();
        for (tensor, dtype, shape, range) in shard.tensors {
            if let Some(existing) = self.tensors.get(&tensor) {
                return Err(PackageError::ShardIndex {
                    message: format!(
                        "tensor `{tensor}` is stored twice, in `{}` and in `{name}`",
                        file_name(&self.files[existing.file])
                    ),
                });
            }
            self.tensors.insert(tensor, TensorInfo { dtype, shape, file, range });
        }
        self.files.push(path);
        self.maps.push(shard.map);
        Ok(())
    }

    /// The index must describe the shards exactly: every tensor where it says, and no tensor
    /// that it does not list (a loader trusting the index would silently skip it).
    fn check_index(&self, index: &ShardIndex) -> Result<(), PackageError> {
        let shard_of: HashMap<&str, usize> =
            (0..self.files.len()).map(|i| (file_name(&self.files[i]), i)).collect();
        for (tensor, shard) in &index.weight_map {
            let listed = shard_of.get(shard.as_str()).copied();
            match self.tensors.get(tensor) {
                Some(info) if Some(info.file) == listed => {}
                Some(info) => {
                    return Err(PackageError::ShardIndex {
                        message: format!(
                            "lists tensor `{tensor}` in `{shard}`, but it is in `{}`",
                            file_name(&self.files[info.file])
                        ),
                    })
                }
                None => {
                    return Err(PackageError::ShardIndex {
                        message: format!("lists tensor `{tensor}` in `{shard}`, which lacks it"),
                    })
                }
            }
        }
        if let Some((tensor, info)) =
            self.tensors.iter().find(|(name, _)| !index.weight_map.contains_key(*name))
        {
            return Err(PackageError::ShardIndex {
                message: format!(
                    "does not list tensor `{tensor}`, stored in `{}`",
                    file_name(&self.files[info.file])
                ),
            });
        }
        Ok(())
    }
}

/// The package's `.gguf` file, when it has exactly one; two are ambiguous.
pub(crate) fn find_gguf(dir: &Path) -> Result<Option<String>, PackageError> {
    let entries = std::fs::read_dir(dir).map_err(|e| PackageError::io(dir, e))?;
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| PackageError::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".gguf") && entry.path().is_file() {
            found.push(name);
        }
    }
    found.sort();
    match found.len() {
        0 | 1 => Ok(found.pop()),
        _ => Err(PackageError::CorruptGguf {
            file: found.join(", "),
            message: "a package holds at most one .gguf file".to_string(),
        }),
    }
}

fn file_name(path: &Path) -> &str {
    path.file_name().and_then(|n| n.to_str()).unwrap_or_default()
}

fn read_index(dir: &Path) -> Result<ShardIndex, PackageError> {
    let path = dir.join(INDEX_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| PackageError::io(&path, e))?;
    let index: ShardIndex =
        serde_json::from_str(&text).map_err(|e| PackageError::parse(INDEX_FILE, e))?;
    if index.weight_map.is_empty() {
        return Err(PackageError::ShardIndex { message: "weight_map is empty".to_string() });
    }
    Ok(index)
}

/// Shards must be plain files beside the index: a name with a path in it could reach outside the
/// package directory.
fn check_shard_name(dir: &Path, name: &str) -> Result<(), PackageError> {
    let plain = !name.is_empty() && Path::new(name).file_name() == Some(name.as_ref());
    if !plain || !name.ends_with(".safetensors") {
        return Err(PackageError::ShardIndex {
            message: format!("shard name `{name}` must be a .safetensors file name, with no path"),
        });
    }
    if !dir.join(name).is_file() {
        return Err(PackageError::ShardIndex {
            message: format!("names `{name}`, which does not exist"),
        });
    }
    Ok(())
}

fn open_shard(dir: &Path, name: &str) -> Result<Shard, PackageError> {
    let path = dir.join(name);
    let file = File::open(&path).map_err(|e| PackageError::io(&path, e))?;
    // SAFETY: the mapping is read-only and Hearth never writes weight files. Another process
    // truncating a file while it is served is outside what any mmap-based loader can guard
    // against; candle and the Hugging Face loaders make the same trade for zero-copy loading.
    let map = unsafe { Mmap::map(&file) }.map_err(|e| PackageError::io(&path, e))?;
    let (header_len, metadata) = match SafeTensors::read_metadata(&map) {
        Ok(parsed) => parsed,
        Err(SafeTensorError::MetadataIncompleteBuffer) => return Err(size_error(name, &map)),
        Err(e) => {
            return Err(PackageError::CorruptSafetensors {
                file: name.to_string(),
                message: e.to_string(),
            })
        }
    };
    // Offsets in the header are relative to the end of the 8-byte length and the header itself.
    let base = 8 + header_len;
    let tensors = metadata
        .tensors()
        .into_iter()
        .map(|(tensor, info)| {
            let (start, end) = info.data_offsets;
            (tensor, info.dtype, info.shape.clone(), base + start..base + end)
        })
        .collect();
    Ok(Shard { map, tensors })
}

/// The header parsed but does not account for the file's length: say by how much.
fn size_error(name: &str, bytes: &[u8]) -> PackageError {
    let corrupt =
        |message: String| PackageError::CorruptSafetensors { file: name.to_string(), message };
    let header_len = bytes
        .get(..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_le_bytes)
        .and_then(|n| usize::try_from(n).ok());
    let Some(header) = header_len.and_then(|n| bytes.get(8..n.checked_add(8)?)) else {
        return corrupt("the file ends inside its header".to_string());
    };
    let metadata = match serde_json::from_slice::<safetensors::tensor::Metadata>(header) {
        Ok(metadata) => metadata,
        Err(e) => return corrupt(e.to_string()),
    };
    let expected = metadata.data_len() as u64;
    let actual = (bytes.len() - 8 - header.len()) as u64;
    if actual < expected {
        PackageError::Truncated { file: name.to_string(), expected, actual }
    } else {
        corrupt(format!("{} bytes follow the last tensor's data", actual - expected))
    }
}
