//! GGUF weights (llama.cpp's format): header parsing and validation. A package that ships one
//! `*.gguf` instead of safetensors is checked here (magic, version, every tensor's type and byte
//! range against the file's length) so that a truncated or corrupt file is refused at load with
//! the file named; the engine reads the tensors themselves. The metadata is kept: a GGUF alone
//! is a whole model, and `gguf_hf.rs` derives the package's configuration and tokenizer from it.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::error::PackageError;

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;

/// One tensor of a GGUF file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GgufTensor {
    /// ggml's name for the element type (`q8_0`, `q4_k`, `f32`, …).
    pub ggml_type: &'static str,
    /// Row-major, as PyTorch and safetensors write shapes (GGUF stores them reversed).
    pub shape: Vec<usize>,
    /// Byte range of the tensor's data within the file.
    pub range: Range<u64>,
}

/// A validated GGUF header.
#[derive(Debug, Clone)]
pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    /// `general.architecture` (`llama`, `qwen2`, …), when present.
    pub architecture: Option<String>,
    pub tensors: BTreeMap<String, GgufTensor>,
    /// Every metadata entry (`llama.block_count`, `tokenizer.ggml.tokens`, …).
    pub metadata: BTreeMap<String, MetaValue>,
}

/// A GGUF metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    Int(i64),
    Float(f64),
    Bool(bool),
    String(String),
    Array(Vec<MetaValue>),
}

impl MetaValue {
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Self::Int(v) => Some(*v),
            _ => None,
        }
    }
    pub fn as_float(&self) -> Option<f64> {
        match self {
            Self::Float(v) => Some(*v),
            Self::Int(v) => Some(*v as f64),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Self::Bool(b) => Some(*b),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            Self::Array(a) => Some(a),
            _ => None,
        }
    }
}

impl GgufFile {
    /// Bytes of tensor data.
    pub fn total_bytes(&self) -> u64 {
        self.tensors.values().map(|t| t.range.end - t.range.start).sum()
    }

    /// Reads and validates the header of the GGUF file `name` in `dir`.
    pub fn load(dir: &Path, name: &str) -> Result<Self, PackageError> {
        let path = dir.join(name);
        let bytes = std::fs::File::open(&path)
            // SAFETY: read-only mapping of a package file that Hearth never writes; see weights.rs.
            .and_then(|file| unsafe { memmap2::Mmap::map(&file) })
            .map_err(|e| PackageError::io(&path, e))?;
        let corrupt =
            |message: String| PackageError::CorruptGguf { file: name.to_string(), message };
        let header = parse(&bytes).map_err(corrupt)?;
        let file_len = bytes.len() as u64;
        let mut tensors = BTreeMap::new();
        let mut data_end = header.data_offset;
        for raw in header.tensors {
            let (ggml_type, block, type_size) = ggml_type(raw.ggml_type).ok_or_else(|| {
                corrupt(format!("tensor `{}` has unknown ggml type {}", raw.name, raw.ggml_type))
            })?;
            let elems = raw.dims.iter().try_fold(1u64, |n, &d| n.checked_mul(d));
            let elems =
                elems.ok_or_else(|| corrupt(format!("tensor `{}` is too large", raw.name)))?;
            if elems % block != 0 {
                return Err(corrupt(format!(
                    "tensor `{}` has {elems} elements, not a multiple of {ggml_type}'s block of {block}",
                    raw.name
                )));
            }
            let start = header.data_offset.checked_add(raw.offset);
            let range = start.and_then(|s| Some(s..s.checked_add(elems / block * type_size)?));
            let range =
                range.ok_or_else(|| corrupt(format!("tensor `{}`: bad offset", raw.name)))?;
            data_end = data_end.max(range.end);
            let shape = raw.dims.iter().rev().map(|&d| d as usize).collect();
            if tensors.insert(raw.name.clone(), GgufTensor { ggml_type, shape, range }).is_some() {
                return Err(corrupt(format!("tensor `{}` is listed twice", raw.name)));
            }
        }
        if data_end > file_len {
            return Err(PackageError::Truncated {
                file: name.to_string(),
                expected: data_end - header.data_offset,
                actual: file_len.saturating_sub(header.data_offset),
            });
        }
        Ok(Self {
            path,
            version: header.version,
            architecture: header.architecture,
            tensors,
            metadata: header.metadata,
        })
    }
}

/// `(name, block size in elements, bytes per block)` of the ggml types candle reads.
fn ggml_type(id: u32) -> Option<(&'static str, u64, u64)> {
    Some(match id {
        0 => ("f32", 1, 4),
        1 => ("f16", 1, 2),
        2 => ("q4_0", 32, 18),
        3 => ("q4_1", 32, 20),
        6 => ("q5_0", 32, 22),
        7 => ("q5_1", 32, 24),
        8 => ("q8_0", 32, 34),
        9 => ("q8_1", 32, 36),
        10 => ("q2_k", 256, 84),
        11 => ("q3_k", 256, 110),
        12 => ("q4_k", 256, 144),
        13 => ("q5_k", 256, 176),
        14 => ("q6_k", 256, 210),
        15 => ("q8_k", 256, 292),
        30 => ("bf16", 1, 2),
        _ => return None,
    })
}

struct RawTensor {
    name: String,
    dims: Vec<u64>,
    ggml_type: u32,
    offset: u64,
}

struct Header {
    version: u32,
    architecture: Option<String>,
    metadata: BTreeMap<String, MetaValue>,
    tensors: Vec<RawTensor>,
    data_offset: u64,
}

/// A bounds-checked little-endian reader.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: u64) -> Result<&'a [u8], String> {
        let n = usize::try_from(n).map_err(|_| "length overflows".to_string())?;
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or_else(|| "the file ends inside its header".to_string())?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap_or_default()))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap_or_default()))
    }
    fn string(&mut self) -> Result<String, String> {
        let len = self.u64()?;
        Ok(String::from_utf8_lossy(self.take(len)?).into_owned())
    }
    fn remaining(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }

    /// A metadata value of type `ty` (GGUF's numbering); arrays nest one level at most.
    fn value(&mut self, ty: u32, depth: u32) -> Result<MetaValue, String> {
        let size = match ty {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            10..=12 => 8,
            8 => return self.string().map(MetaValue::String),
            9 if depth == 0 => {
                let (elem, len) = (self.u32()?, self.u64()?);
                if len > self.remaining() {
                    return Err(format!("an array of {len} elements overruns the file"));
                }
                let items = (0..len).map(|_| self.value(elem, depth + 1));
                return items.collect::<Result<_, _>>().map(MetaValue::Array);
            }
            _ => return Err(format!("unknown metadata value type {ty}")),
        };
        let b = self.take(size)?;
        let array = |n: usize| {
            let mut out = [0u8; 8];
            out[..n].copy_from_slice(&b[..n]);
            out
        };
        Ok(match ty {
            0 => MetaValue::Int(b[0] as i64),
            1 => MetaValue::Int(b[0] as i8 as i64),
            2 => MetaValue::Int(u16::from_le_bytes([b[0], b[1]]) as i64),
            3 => MetaValue::Int(i16::from_le_bytes([b[0], b[1]]) as i64),
            4 => MetaValue::Int(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64),
            5 => MetaValue::Int(i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64),
            6 => MetaValue::Float(f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64),
            7 => MetaValue::Bool(b[0] != 0),
            // u64 values beyond i64 (none a model uses) wrap rather than fail the file.
            10 => MetaValue::Int(u64::from_le_bytes(array(8)) as i64),
            11 => MetaValue::Int(i64::from_le_bytes(array(8))),
            _ => MetaValue::Float(f64::from_le_bytes(array(8))),
        })
    }
}

fn parse(bytes: &[u8]) -> Result<Header, String> {
    let mut r = Reader { bytes, pos: 0 };
    if r.take(4).ok() != Some(MAGIC.as_slice()) {
        return Err("not a GGUF file (bad magic)".to_string());
    }
    let version = r.u32()?;
    if !(2..=3).contains(&version) {
        return Err(format!("GGUF version {version} is not supported (2 and 3 are)"));
    }
    let (num_tensors, num_kv) = (r.u64()?, r.u64()?);
    // Each entry takes at least 8 bytes; counts beyond that are corrupt, not huge.
    if num_tensors.saturating_add(num_kv).saturating_mul(8) > r.remaining() {
        return Err(format!("header claims {num_tensors} tensors and {num_kv} metadata entries"));
    }
    let (mut architecture, mut alignment) = (None, DEFAULT_ALIGNMENT);
    let mut metadata = BTreeMap::new();
    for _ in 0..num_kv {
        let key = r.string()?;
        let ty = r.u32()?;
        let value = r.value(ty, 0)?;
        match (key.as_str(), &value) {
            ("general.architecture", MetaValue::String(s)) => architecture = Some(s.clone()),
            ("general.alignment", MetaValue::Int(a)) if *a > 0 => alignment = *a as u64,
            ("general.alignment", _) => return Err("bad `general.alignment`".to_string()),
            _ => {}
        }
        metadata.insert(key, value);
    }
    let mut tensors = Vec::with_capacity(num_tensors as usize);
    for _ in 0..num_tensors {
        let name = r.string()?;
        let num_dims = r.u32()?;
        if num_dims > 4 {
            return Err(format!("tensor `{name}` has {num_dims} dimensions (at most 4)"));
        }
        let dims = (0..num_dims).map(|_| r.u64()).collect::<Result<Vec<_>, _>>()?;
        let (ggml_type, offset) = (r.u32()?, r.u64()?);
        if offset % alignment != 0 {
            return Err(format!("tensor `{name}` is not aligned to {alignment} bytes"));
        }
        tensors.push(RawTensor { name, dims, ggml_type, offset });
    }
    let data_offset = (r.pos as u64).div_ceil(alignment) * alignment;
    Ok(Header { version, architecture, metadata, tensors, data_offset })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A version-3 GGUF with one metadata entry and one 2×32 q8_0 tensor.
    fn tiny_gguf() -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(b"GGUF");
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&1u64.to_le_bytes());
        b.extend_from_slice(&1u64.to_le_bytes());
        let string = |b: &mut Vec<u8>, s: &str| {
            b.extend_from_slice(&(s.len() as u64).to_le_bytes());
            b.extend_from_slice(s.as_bytes());
        };
        string(&mut b, "general.architecture");
        b.extend_from_slice(&8u32.to_le_bytes());
        string(&mut b, "llama");
        string(&mut b, "output.weight");
        b.extend_from_slice(&2u32.to_le_bytes());
        b.extend_from_slice(&32u64.to_le_bytes());
        b.extend_from_slice(&2u64.to_le_bytes());
        b.extend_from_slice(&8u32.to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes());
        b.resize(b.len().div_ceil(32) * 32, 0);
        b.extend_from_slice(&[0u8; 2 * 34]);
        b
    }

    fn load(bytes: &[u8]) -> Result<GgufFile, PackageError> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("model.gguf"), bytes).unwrap();
        GgufFile::load(dir.path(), "model.gguf")
    }

    #[test]
    fn reads_a_valid_header() {
        let gguf = load(&tiny_gguf()).unwrap();
        assert_eq!(gguf.architecture.as_deref(), Some("llama"));
        let t = &gguf.tensors["output.weight"];
        assert_eq!((t.ggml_type, t.shape.clone()), ("q8_0", vec![2, 32]));
        assert_eq!(gguf.total_bytes(), 68);
    }

    #[test]
    fn truncated_and_corrupt_files_are_refused() {
        let bytes = tiny_gguf();
        let cut = load(&bytes[..bytes.len() - 10]).unwrap_err().to_string();
        assert_eq!(cut, "model.gguf is truncated: header says 68 bytes of data, file has 58");
        let header_cut = load(&bytes[..40]).unwrap_err().to_string();
        assert!(header_cut.contains("ends inside its header"), "{header_cut}");
        let mut bad = bytes.clone();
        bad[0] = b'X';
        assert!(load(&bad).unwrap_err().to_string().contains("bad magic"));
    }
}
