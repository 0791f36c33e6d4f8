//! Where pushed packages live on disk. Everything the admin API writes goes under
//! `<models>/.hearth-staging/` first (a hidden directory, so package discovery skips it, on the
//! same filesystem as the models, so the final move is a rename):
//!
//! - `.hearth-staging/<id>/<name>/`: an upload being received and validated;
//! - `.hearth-staging/replaced-<id>/<name>/`: a package taken out of service, being deleted;
//! - `.hearth-staging/adapters-replaced-<id>/<base>/[<adapter>/]`: pushed LoRA adapters taken
//!   out of service (one, or a removed base's all), being deleted.
//!
//! A package becomes visible at `<models>/<name>` only by a rename, after it was validated and
//! loaded, so a failed or interrupted push leaves nothing there. A staging directory is removed
//! when its [`Staging`] drops, and [`clean_staging`] removes leftovers of a daemon that died.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::adapters::ADAPTERS_DIR;
use super::AdminError;

pub(crate) const STAGING_DIR: &str = ".hearth-staging";
const REPLACED_PREFIX: &str = "replaced-";
const ADAPTERS_REPLACED_PREFIX: &str = "adapters-replaced-";

/// An upload's staging directory; removed, with whatever is in it, when dropped.
pub(crate) struct Staging {
    root: PathBuf,
    package: PathBuf,
}

impl Staging {
    /// `<models>/.hearth-staging/<id>/<name>`: the last component is the package's name, so a
    /// package that names itself after its directory validates under the name it was pushed as.
    pub(crate) fn create(models_dir: &Path, name: &str) -> Result<Staging, AdminError> {
        let root = models_dir.join(STAGING_DIR).join(uuid::Uuid::new_v4().simple().to_string());
        let package = root.join(name);
        fs::create_dir_all(&package).map_err(|e| internal(&package, "creating", e))?;
        Ok(Staging { root, package })
    }

    pub(crate) fn package_dir(&self) -> &Path {
        &self.package
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        remove_all(&self.root);
    }
}

/// A package taken out of service, deleted when this drops (call sites drop it on a blocking
/// thread: a large package takes a while).
pub(crate) struct Trash(PathBuf);

impl Trash {
    /// The directory to move what is to be deleted into.
    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Trash {
    fn drop(&mut self) {
        remove_all(&self.0);
    }
}

fn remove_all(path: &Path) {
    match fs::remove_dir_all(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "could not remove a staging directory")
        }
    }
}

fn internal(path: &Path, doing: &str, err: io::Error) -> AdminError {
    AdminError::Internal(format!("{doing} {}: {err}", path.display()))
}

/// Moves the staged package to `<models>/<name>`, setting aside every package directory that
/// served `name` before. On failure the old package is put back.
pub(crate) fn install(
    staging: Staging,
    models_dir: &Path,
    name: &str,
) -> Result<Trash, AdminError> {
    let target = models_dir.join(name);
    if target.exists() {
        let holder = package_name(&target);
        if holder != name {
            return Err(AdminError::Conflict(format!(
                "{} already holds package `{holder}`; remove it or push under another name",
                target.display()
            )));
        }
    }
    let trash = new_trash(models_dir)?;
    let previous = trash.0.join(name);
    let had_previous = target.exists();
    if had_previous {
        fs::rename(&target, &previous).map_err(|e| internal(&target, "setting aside", e))?;
    }
    if let Err(err) = fs::rename(staging.package_dir(), &target) {
        if had_previous {
            if let Err(back) = fs::rename(&previous, &target) {
                tracing::error!(path = %target.display(), error = %back, "could not put the previous package back");
            }
        }
        return Err(internal(&target, "installing", err));
    }
    // Other directories that called themselves `name` would clash with it at the next start.
    for (i, other) in
        dirs_serving(models_dir, name).into_iter().filter(|d| *d != target).enumerate()
    {
        if let Err(err) = fs::rename(&other, trash.0.join(format!("{name}.{i}"))) {
            tracing::warn!(path = %other.display(), error = %err, "could not set aside an older package of the same name");
        }
    }
    Ok(trash)
}

/// Takes `dir` out of the models directory; the returned [`Trash`] deletes it.
pub(crate) fn discard(models_dir: &Path, dir: &Path) -> Result<Trash, AdminError> {
    let trash = new_trash(models_dir)?;
    let name = dir.file_name().map(|n| n.to_owned()).unwrap_or_else(|| "package".into());
    fs::rename(dir, trash.0.join(name)).map_err(|e| internal(dir, "removing", e))?;
    Ok(trash)
}

pub(crate) fn new_trash(models_dir: &Path) -> Result<Trash, AdminError> {
    trash_with_prefix(models_dir, REPLACED_PREFIX)
}

/// Trash for pushed adapters, laid out as the adapter store is (`<base>/<adapter>`), so that a
/// daemon that died before deleting it puts its contents back where they were.
pub(crate) fn new_adapter_trash(models_dir: &Path) -> Result<Trash, AdminError> {
    trash_with_prefix(models_dir, ADAPTERS_REPLACED_PREFIX)
}

fn trash_with_prefix(models_dir: &Path, prefix: &str) -> Result<Trash, AdminError> {
    let id = uuid::Uuid::new_v4().simple();
    let path = models_dir.join(STAGING_DIR).join(format!("{prefix}{id}"));
    fs::create_dir_all(&path).map_err(|e| internal(&path, "creating", e))?;
    Ok(Trash(path))
}

/// The package directories under `models_dir` served as `name`.
pub(crate) fn dirs_serving(models_dir: &Path, name: &str) -> Vec<PathBuf> {
    let dirs = hearth_package::discover(models_dir).unwrap_or_default();
    dirs.into_iter().filter(|dir| package_name(dir) == name).collect()
}

/// The name a directory's package is served (or listed as failed) under: its own name, or the
/// directory's name when that cannot be read, as start-up loading does.
fn package_name(dir: &Path) -> String {
    hearth_package::read_name(dir).unwrap_or_else(|_| {
        dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    })
}

/// Removes what a previous daemon left in the staging area: unfinished uploads are deleted; a
/// package set aside by a push that died before its replacement was in place is put back.
/// Whatever else is there (a stray file, an entry that cannot be removed) is logged and left:
/// a leftover must never stop the daemon from starting. Only an unreadable staging directory is
/// an error.
pub fn clean_staging(models_dir: &Path) -> io::Result<()> {
    let staging = models_dir.join(STAGING_DIR);
    let entries = match fs::read_dir(&staging) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if is_dir && name.starts_with(REPLACED_PREFIX) {
            restore_orphans(&path, models_dir);
        } else if is_dir && name.starts_with(ADAPTERS_REPLACED_PREFIX) {
            restore_orphaned_adapters(&path, models_dir);
        }
        tracing::info!(path = %path.display(), "removing a staging leftover");
        let removed = if is_dir { fs::remove_dir_all(&path) } else { fs::remove_file(&path) };
        if let Err(e) = removed {
            tracing::warn!(path = %path.display(), error = %e, "could not remove a staging leftover; leaving it");
        }
    }
    Ok(())
}

fn restore_orphans(trash: &Path, models_dir: &Path) {
    let Ok(entries) = fs::read_dir(trash) else { return };
    for entry in entries.flatten() {
        let target = models_dir.join(entry.file_name());
        if entry.path().is_dir() && !target.exists() {
            match fs::rename(entry.path(), &target) {
                Ok(()) => {
                    tracing::warn!(package = %target.display(), "restored a package an interrupted push had set aside")
                }
                Err(e) => {
                    tracing::error!(package = %target.display(), error = %e, "could not restore a set-aside package")
                }
            }
        }
    }
}

/// Puts back pushed adapters an interrupted replacement or removal had set aside, where nothing
/// has taken their place.
fn restore_orphaned_adapters(trash: &Path, models_dir: &Path) {
    let Ok(bases) = fs::read_dir(trash) else { return };
    for base in bases.flatten().filter(|e| e.path().is_dir()) {
        let Ok(adapters) = fs::read_dir(base.path()) else { continue };
        let store = models_dir.join(ADAPTERS_DIR).join(base.file_name());
        for adapter in adapters.flatten().filter(|e| e.path().is_dir()) {
            let target = store.join(adapter.file_name());
            if target.exists() {
                continue;
            }
            let moved =
                fs::create_dir_all(&store).and_then(|()| fs::rename(adapter.path(), &target));
            match moved {
                Ok(()) => {
                    tracing::warn!(adapter = %target.display(), "restored an adapter an interrupted push or removal had set aside")
                }
                Err(e) => {
                    tracing::error!(adapter = %target.display(), error = %e, "could not restore a set-aside adapter")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn package(dir: &Path, yaml: &str) {
        fs::create_dir_all(dir).unwrap();
        fs::write(dir.join("cog.yaml"), "predict: p.py:P\n").unwrap();
        fs::write(dir.join("hearth.yaml"), yaml).unwrap();
    }

    #[test]
    fn install_replaces_the_previous_package_and_drops_nothing_else() {
        let models = tempfile::tempdir().unwrap();
        package(&models.path().join("m"), "{}\n");
        fs::write(models.path().join("m/old"), "1").unwrap();
        package(&models.path().join("alias"), "name: m\n");
        package(&models.path().join("other"), "{}\n");

        let staging = Staging::create(models.path(), "m").unwrap();
        package(staging.package_dir(), "{}\n");
        let trash = install(staging, models.path(), "m").unwrap();
        assert!(
            models.path().join("m/cog.yaml").is_file() && !models.path().join("m/old").exists()
        );
        assert!(!models.path().join("alias").exists() && models.path().join("other").exists());
        drop(trash);
        let left: Vec<_> = fs::read_dir(models.path().join(STAGING_DIR)).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn a_directory_holding_another_package_is_not_replaced() {
        let models = tempfile::tempdir().unwrap();
        package(&models.path().join("m"), "name: other\n");
        let staging = Staging::create(models.path(), "m").unwrap();
        let err = install(staging, models.path(), "m").err().unwrap();
        assert!(err.to_string().contains("already holds package `other`"), "{err}");
        assert!(models.path().join("m/hearth.yaml").is_file());
    }

    #[test]
    fn cleaning_deletes_uploads_and_restores_orphaned_packages() {
        let models = tempfile::tempdir().unwrap();
        let staging = models.path().join(STAGING_DIR);
        fs::create_dir_all(staging.join("abc/m")).unwrap();
        package(&staging.join("replaced-1/orphan"), "{}\n");
        package(&staging.join("replaced-2/kept"), "{}\n");
        package(&models.path().join("kept"), "{}\n");
        // What a push under a name like `..` once unpacked straight into the staging area.
        fs::write(staging.join("cog.yaml"), "predict: p.py:P\n").unwrap();
        std::os::unix::fs::symlink("/nonexistent", staging.join("dangling")).unwrap();
        // Pushed adapters set aside: one whose place is free goes back, one replaced stays out.
        fs::create_dir_all(staging.join("adapters-replaced-1/m/lost")).unwrap();
        fs::write(staging.join("adapters-replaced-1/m/lost/adapter_config.json"), "{}").unwrap();
        fs::create_dir_all(staging.join("adapters-replaced-1/m/newer")).unwrap();
        fs::create_dir_all(models.path().join(ADAPTERS_DIR).join("m/newer")).unwrap();
        clean_staging(models.path()).unwrap();
        assert!(models.path().join("orphan/cog.yaml").is_file());
        assert_eq!(fs::read_dir(&staging).unwrap().count(), 0);
        let store = models.path().join(ADAPTERS_DIR).join("m");
        assert!(store.join("lost/adapter_config.json").is_file());
        assert!(!models.path().join("lost").exists() && !models.path().join("m").exists());
    }
}
