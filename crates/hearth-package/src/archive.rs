//! The upload format of `hearth push`: a plain (uncompressed) tar stream of a package
//! directory's contents, entry paths relative to the package root (`cog.yaml`,
//! `config.json`, `weights/part-1.safetensors`).
//!
//! [`unpack`] reads such a stream from an untrusted client into a staging directory. It accepts
//! only regular files and directories, under relative paths that stay inside the destination;
//! links, devices, FIFOs and sparse files are refused, as are entries and archives over the
//! configured limits. GNU long names and PAX `path` records are understood, read with a bounded
//! buffer: the `tar` crate's own handling would read such records whole into memory. Nothing is
//! written outside `dest`, and files are created fresh (never over an existing path).
//!
//! [`PackPlan`] writes the same format from a directory, streaming file contents.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};

use tar::{Archive, Builder, EntryType, HeaderMode};

/// Longest path accepted for an entry; real packages are far below it.
const MAX_PATH_BYTES: usize = 1024;
/// Largest GNU long-name or PAX record read; bounds memory per metadata entry.
const MAX_METADATA_BYTES: u64 = 64 << 10;
/// Directory nesting followed when packing, so a symlink loop cannot recurse forever.
const MAX_PACK_DEPTH: usize = 32;

/// What an upload may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchiveLimits {
    /// Bytes of the whole tar stream, headers included.
    pub max_archive_bytes: u64,
    /// Bytes of any one file.
    pub max_entry_bytes: u64,
    /// Entries of any kind.
    pub max_entries: usize,
}

impl Default for ArchiveLimits {
    fn default() -> Self {
        Self { max_archive_bytes: 64 << 30, max_entry_bytes: 64 << 30, max_entries: 10_000 }
    }
}

/// Why an archive was refused or could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// An entry that could write outside the package, or that is not a plain file or directory.
    #[error("entry `{entry}` refused: {why}")]
    Unsafe { entry: String, why: &'static str },
    #[error("entry `{entry}` is {size} bytes, over the limit of {limit} bytes per file")]
    EntryTooLarge { entry: String, size: u64, limit: u64 },
    #[error("the archive is over the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("the archive has more than {limit} entries")]
    TooManyEntries { limit: usize },
    /// Not a tar stream, or one that ends early.
    #[error("not a valid tar stream: {0}")]
    Malformed(String),
    /// Reading the upload or writing the staging directory failed.
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
}

impl ArchiveError {
    fn io(context: impl Into<String>, source: io::Error) -> Self {
        Self::Io { context: context.into(), source }
    }

    fn unsafe_entry(entry: &str, why: &'static str) -> Self {
        Self::Unsafe { entry: entry.to_owned(), why }
    }
}

/// What [`unpack`] wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Unpacked {
    pub files: usize,
    /// Bytes of file contents written.
    pub bytes: u64,
    /// Bytes of the tar stream read.
    pub archive_bytes: u64,
}

/// Reads a tar stream from `reader` into `dest` (an existing, empty directory), checking every
/// entry against `limits` before a byte of it is written.
pub fn unpack(
    reader: impl Read,
    dest: &Path,
    limits: &ArchiveLimits,
) -> Result<Unpacked, ArchiveError> {
    let mut counted =
        Counted { inner: reader, read: 0, limit: limits.max_archive_bytes, over: false };
    let result = unpack_entries(&mut counted, dest, limits);
    // A stream cut off by the size limit surfaces as a read error; name the real cause.
    if counted.over {
        return Err(ArchiveError::TooLarge { limit: limits.max_archive_bytes });
    }
    let mut unpacked = result?;
    unpacked.archive_bytes = counted.read;
    Ok(unpacked)
}

/// Names that earlier GNU long-name or PAX records gave the next entry.
#[derive(Default)]
struct PendingName {
    long_name: Option<Vec<u8>>,
    pax_path: Option<Vec<u8>>,
}

fn unpack_entries(
    reader: impl Read,
    dest: &Path,
    limits: &ArchiveLimits,
) -> Result<Unpacked, ArchiveError> {
    let mut archive = Archive::new(reader);
    // Raw entries: long names and PAX records come to us, so we read them with a bound.
    let entries = archive.entries().map_err(malformed)?.raw(true);
    let mut pending = PendingName::default();
    let mut unpacked = Unpacked::default();
    for (count, entry) in entries.enumerate() {
        if count >= limits.max_entries {
            return Err(ArchiveError::TooManyEntries { limit: limits.max_entries });
        }
        let mut entry = entry.map_err(malformed)?;
        let kind = entry.header().entry_type();
        if read_metadata(&mut entry, kind, &mut pending)? {
            continue;
        }
        let raw_name = pending.pax_path.take().or(pending.long_name.take());
        let raw_name = raw_name.unwrap_or_else(|| entry.header().path_bytes().into_owned());
        let name = String::from_utf8_lossy(&raw_name).into_owned();
        // `tar -C DIR -cf - .` starts with the root itself, `./`: nothing to create.
        if kind == EntryType::Directory && matches!(name.as_str(), "." | "./") {
            continue;
        }
        let relative = safe_relative_path(&name)?;
        match kind {
            EntryType::Directory => create_dir(dest, &relative, &name)?,
            EntryType::Regular => {
                let size = entry.header().entry_size().map_err(malformed)?;
                if size > limits.max_entry_bytes {
                    return Err(ArchiveError::EntryTooLarge {
                        entry: name,
                        size,
                        limit: limits.max_entry_bytes,
                    });
                }
                write_file(&mut entry, dest, &relative, &name, size)?;
                unpacked.files += 1;
                unpacked.bytes += size;
            }
            other => return Err(ArchiveError::unsafe_entry(&name, refusal(other))),
        }
    }
    if pending.long_name.is_some() || pending.pax_path.is_some() {
        return Err(ArchiveError::Malformed("a long-name record describes no entry".into()));
    }
    Ok(unpacked)
}

/// Consumes GNU long-name and PAX records into `pending`; true when `entry` was one.
fn read_metadata(
    entry: &mut tar::Entry<'_, impl Read>,
    kind: EntryType,
    pending: &mut PendingName,
) -> Result<bool, ArchiveError> {
    let is_metadata =
        matches!(kind, EntryType::GNULongName | EntryType::XHeader | EntryType::XGlobalHeader);
    if !is_metadata {
        return Ok(false);
    }
    let size = entry.header().entry_size().map_err(malformed)?;
    if size > MAX_METADATA_BYTES {
        return Err(ArchiveError::EntryTooLarge {
            entry: "(tar metadata record)".into(),
            size,
            limit: MAX_METADATA_BYTES,
        });
    }
    let mut data = Vec::with_capacity(size as usize);
    entry.read_to_end(&mut data).map_err(malformed)?;
    match kind {
        EntryType::GNULongName => {
            // The record holds the name NUL-terminated.
            let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
            data.truncate(end);
            pending.long_name = Some(data);
        }
        EntryType::XHeader => pending.pax_path = pax_path(&data)?,
        // Global records set defaults (times, owners) that unpacking ignores anyway.
        _ => {}
    }
    Ok(true)
}

/// The `path` of a PAX record. A `size` record is refused: it would make the entry's extent
/// differ from its header, and raw reading follows the header.
fn pax_path(data: &[u8]) -> Result<Option<Vec<u8>>, ArchiveError> {
    let mut path = None;
    for extension in tar::PaxExtensions::new(data) {
        let extension = extension.map_err(malformed)?;
        match extension.key_bytes() {
            b"path" => path = Some(extension.value_bytes().to_vec()),
            b"size" => {
                return Err(ArchiveError::Malformed(
                    "PAX `size` records are not supported; write GNU tar (as `hearth push` does)"
                        .into(),
                ))
            }
            _ => {}
        }
    }
    Ok(path)
}

fn refusal(kind: EntryType) -> &'static str {
    match kind {
        EntryType::Symlink => "symbolic links are not allowed",
        EntryType::Link | EntryType::GNULongLink => "hard links are not allowed",
        EntryType::Char | EntryType::Block => "device files are not allowed",
        EntryType::Fifo => "FIFOs are not allowed",
        EntryType::GNUSparse => "sparse files are not allowed",
        _ => "only regular files and directories are allowed",
    }
}

/// The entry's path as components under the destination, or why it cannot be one.
pub fn safe_relative_path(name: &str) -> Result<PathBuf, ArchiveError> {
    if name.len() > MAX_PATH_BYTES {
        return Err(ArchiveError::unsafe_entry(name, "the path is too long"));
    }
    if name.contains('\\') || name.contains('\0') {
        return Err(ArchiveError::unsafe_entry(name, "the path has a backslash or NUL"));
    }
    let mut relative = PathBuf::new();
    for component in Path::new(name).components() {
        match component {
            Component::Normal(part) => relative.push(part),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(ArchiveError::unsafe_entry(
                    name,
                    "`..` would leave the package directory",
                ))
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(ArchiveError::unsafe_entry(name, "absolute paths are not allowed"))
            }
        }
    }
    if relative.as_os_str().is_empty() {
        return Err(ArchiveError::unsafe_entry(name, "the path is empty"));
    }
    Ok(relative)
}

fn create_dir(dest: &Path, relative: &Path, name: &str) -> Result<(), ArchiveError> {
    let path = dest.join(relative);
    fs::create_dir_all(&path)
        .map_err(|e| ArchiveError::io(format!("creating directory `{name}`"), e))
}

fn write_file(
    entry: &mut impl Read,
    dest: &Path,
    relative: &Path,
    name: &str,
    size: u64,
) -> Result<(), ArchiveError> {
    let path = dest.join(relative);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)
            .map_err(|e| ArchiveError::io(format!("creating the directory of `{name}`"), e))?;
    }
    // `create_new`: a second entry of the same name is refused instead of replacing the first.
    let mut file = match File::options().write(true).create_new(true).open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return Err(ArchiveError::unsafe_entry(name, "the path appears twice in the archive"))
        }
        Err(e) => return Err(ArchiveError::io(format!("creating `{name}`"), e)),
    };
    let copied = io::copy(&mut entry.take(size), &mut file)
        .map_err(|e| ArchiveError::io(format!("writing `{name}`"), e))?;
    if copied != size {
        return Err(ArchiveError::Malformed(format!("the stream ends inside `{name}`")));
    }
    // The install that follows is a rename; the data must be on disk before it is visible.
    file.sync_all().map_err(|e| ArchiveError::io(format!("syncing `{name}`"), e))
}

fn malformed(err: io::Error) -> ArchiveError {
    ArchiveError::Malformed(err.to_string())
}

/// A reader that counts bytes and stops at `limit`.
struct Counted<R> {
    inner: R,
    read: u64,
    limit: u64,
    over: bool,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if self.read > self.limit {
            self.over = true;
            return Err(io::Error::other("archive over the size limit"));
        }
        Ok(n)
    }
}

/// The files of a package directory, ready to be written as an upload archive.
#[derive(Debug, Clone)]
pub struct PackPlan {
    /// (path inside the archive, path on disk, size), sorted by archive path.
    files: Vec<(String, PathBuf, u64)>,
}

impl PackPlan {
    /// Lists the regular files under `dir`, following symlinks (a package may link into a
    /// download cache) and leaving out `.git`.
    pub fn new(dir: &Path) -> Result<Self, ArchiveError> {
        let mut files = Vec::new();
        collect(dir, "", 0, &mut files)?;
        files.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Self { files })
    }

    pub fn num_files(&self) -> usize {
        self.files.len()
    }

    /// The size of the archive [`PackPlan::write`] produces, give or take long-name records.
    pub fn archive_bytes(&self) -> u64 {
        let entries: u64 =
            self.files.iter().map(|(_, _, size)| 512 + size.div_ceil(512) * 512).sum();
        entries + 1024
    }

    /// Writes the archive to `writer`, file by file, and returns the writer.
    pub fn write<W: Write>(&self, writer: W) -> Result<W, ArchiveError> {
        let mut builder = Builder::new(writer);
        // Times and owners of the client machine mean nothing to the daemon.
        builder.mode(HeaderMode::Deterministic);
        for (name, path, _) in &self.files {
            let mut file = File::open(path)
                .map_err(|e| ArchiveError::io(format!("opening {}", path.display()), e))?;
            builder
                .append_file(name, &mut file)
                .map_err(|e| ArchiveError::io(format!("adding {}", path.display()), e))?;
        }
        builder.into_inner().map_err(|e| ArchiveError::io("finishing the archive", e))
    }
}

fn collect(
    dir: &Path,
    prefix: &str,
    depth: usize,
    out: &mut Vec<(String, PathBuf, u64)>,
) -> Result<(), ArchiveError> {
    if depth > MAX_PACK_DEPTH {
        return Err(ArchiveError::io(
            format!("reading {}", dir.display()),
            io::Error::other("directories nest too deep (a symlink loop?)"),
        ));
    }
    let read_err = |e| ArchiveError::io(format!("reading {}", dir.display()), e);
    for entry in fs::read_dir(dir).map_err(read_err)? {
        let entry = entry.map_err(read_err)?;
        let file_name = entry.file_name();
        let Some(file_name) = file_name.to_str() else {
            return Err(ArchiveError::unsafe_entry(
                &entry.path().display().to_string(),
                "the name is not UTF-8",
            ));
        };
        if file_name == ".git" {
            continue;
        }
        let name = format!("{prefix}{file_name}");
        let path = entry.path();
        let metadata = fs::metadata(&path)
            .map_err(|e| ArchiveError::io(format!("reading {}", path.display()), e))?;
        if metadata.is_dir() {
            collect(&path, &format!("{name}/"), depth + 1, out)?;
        } else if metadata.is_file() {
            out.push((name, path, metadata.len()));
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "archive_tests.rs"]
mod tests;
