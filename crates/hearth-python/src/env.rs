//! Package environments: the Python interpreter and packages a Cog predictor runs with.
//!
//! `cog.yaml`'s `build.python_version` picks an interpreter already on the machine (Hearth does
//! not download Pythons); `build.python_packages` and `build.python_requirements` are installed
//! into a virtual environment with `uv` when it is on the `PATH`, else with `pip`, together with
//! Cog's own SDK ([`COG_SDK`]). Environments live in a cache keyed by everything that goes into
//! them, so a restart or a second push of the same package reuses the first build. A build
//! happens in a scratch directory that is renamed into place only when it is complete: a failed
//! or interrupted build leaves nothing that a later start would mistake for an environment.
//!
//! `build.system_packages` are not installed: the package loads only when they are all present
//! (checked with `dpkg-query`), otherwise it is refused with their names.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use hearth_package::CogConfig;
use sha2::{Digest, Sha256};

/// The one place the pin is written, so that both constants below say the same.
macro_rules! cog_sdk_version {
    () => {
        "0.23.1"
    };
}

/// The version of Cog's Python SDK installed into every environment. Pinned: the worker uses
/// its predictor inspection (`cog._inspector`), whose shape is not a public API.
pub const COG_SDK_VERSION: &str = cog_sdk_version!();
/// The SDK as the installer names it.
pub const COG_SDK: &str = concat!("cog==", cog_sdk_version!());

/// A bump invalidates every cached environment (a change in how they are built).
const LAYOUT_VERSION: &str = "hearth-python-env-1";

/// Lines of an installer's output kept in an error.
const ERROR_TAIL_LINES: usize = 20;

#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    #[error(
        "cog.yaml asks for Python {version}, and no such interpreter is on this machine \
         (looked for {searched}); install it, or change build.python_version"
    )]
    NoInterpreter { version: String, searched: String },
    #[error(
        "cog.yaml's build.system_packages are missing on this machine: {}; install them \
         (Hearth does not run apt), or serve the package from its container image",
        .0.join(", ")
    )]
    MissingSystemPackages(Vec<String>),
    #[error("cog.yaml's build.python_requirements names `{path}`, which cannot be read: {source}")]
    Requirements { path: String, source: std::io::Error },
    #[error("{step} failed:\n{tail}")]
    Install { step: String, tail: String },
    #[error("could not {action}: {source}")]
    Io { action: String, source: std::io::Error },
}

fn io_error(action: impl Into<String>) -> impl FnOnce(std::io::Error) -> EnvError {
    let action = action.into();
    move |source| EnvError::Io { action, source }
}

/// A ready environment.
#[derive(Debug, Clone)]
pub struct PythonEnv {
    pub dir: PathBuf,
    /// The environment's interpreter.
    pub python: PathBuf,
    /// The interpreter's full version, `3.11.7`.
    pub version: String,
}

/// What goes into an environment; its hash names the cache entry.
#[derive(Debug)]
struct EnvSpec {
    interpreter: PathBuf,
    version: String,
    packages: Vec<String>,
    requirements: Option<(PathBuf, String)>,
}

impl EnvSpec {
    fn key(&self) -> String {
        let mut hash = Sha256::new();
        for part in [LAYOUT_VERSION, COG_SDK, &self.version, &self.interpreter.to_string_lossy()] {
            hash.update(part.as_bytes());
            hash.update([0]);
        }
        let mut packages = self.packages.clone();
        packages.sort();
        for package in &packages {
            hash.update(package.as_bytes());
            hash.update([0]);
        }
        if let Some((_, contents)) = &self.requirements {
            hash.update(contents.as_bytes());
        }
        let digest = hash.finalize();
        digest.iter().take(10).map(|b| format!("{b:02x}")).collect()
    }
}

/// What installs packages into an environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Installer {
    /// `uv` when it is on the `PATH`, else pip.
    Auto,
    Pip,
}

/// Prepares (or finds in `cache_dir`) the environment of the package in `package_dir`.
/// `progress` hears each step, for a person waiting on a load or a push.
pub fn prepare(
    package_dir: &Path,
    cog: &CogConfig,
    cache_dir: &Path,
    progress: &dyn Fn(&str),
) -> Result<PythonEnv, EnvError> {
    prepare_with(package_dir, cog, cache_dir, Installer::Auto, progress)
}

/// [`prepare`], choosing the installer.
pub fn prepare_with(
    package_dir: &Path,
    cog: &CogConfig,
    cache_dir: &Path,
    installer: Installer,
    progress: &dyn Fn(&str),
) -> Result<PythonEnv, EnvError> {
    // A worker runs in its package's directory, where a relative path would point elsewhere.
    let cache_dir = &std::path::absolute(cache_dir)
        .map_err(io_error(format!("resolve {}", cache_dir.display())))?;
    check_system_packages(&cog.build.system_packages)?;
    let (interpreter, version) = find_interpreter(cog.build.python_version.as_deref())?;
    let requirements = match &cog.build.python_requirements {
        Some(file) => {
            let path = package_dir.join(file);
            let contents = std::fs::read_to_string(&path)
                .map_err(|source| EnvError::Requirements { path: file.clone(), source })?;
            Some((path, contents))
        }
        None => None,
    };
    let spec =
        EnvSpec { interpreter, version, packages: cog.build.python_packages.clone(), requirements };
    let dir = cache_dir.join(format!("py{}-{}", spec.version, spec.key()));
    let env =
        PythonEnv { python: dir.join("bin").join("python"), dir, version: spec.version.clone() };
    if env.python.is_file() {
        progress(&format!("Python {} environment found in the cache", env.version));
        return Ok(env);
    }
    build(&spec, &env.dir, installer, progress)?;
    Ok(env)
}

/// Builds into a scratch directory beside `dir`, then renames it into place.
fn build(
    spec: &EnvSpec,
    dir: &Path,
    installer: Installer,
    progress: &dyn Fn(&str),
) -> Result<(), EnvError> {
    let parent = dir.parent().unwrap_or(dir);
    std::fs::create_dir_all(parent).map_err(io_error(format!("create {}", parent.display())))?;
    let scratch = tempfile::Builder::new()
        .prefix(".building-")
        .tempdir_in(parent)
        .map_err(io_error(format!("create a directory in {}", parent.display())))?;
    let venv = scratch.path().join("env");
    let uv = match installer {
        Installer::Auto => find_on_path("uv"),
        Installer::Pip => None,
    };
    progress(&format!(
        "building a Python {} environment with {}",
        spec.version,
        if uv.is_some() { "uv" } else { "pip" }
    ));
    let python = venv.join("bin").join("python");
    let mut packages = vec![COG_SDK.to_owned()];
    packages.extend(spec.packages.iter().cloned());
    let mut install_args: Vec<String> = packages;
    if let Some((path, _)) = &spec.requirements {
        install_args.push("-r".into());
        install_args.push(path.to_string_lossy().into_owned());
    }
    match &uv {
        Some(uv) => {
            let mut create = Command::new(uv);
            create.arg("venv").arg("--quiet").arg("--python").arg(&spec.interpreter).arg(&venv);
            run("creating the virtual environment (uv venv)", &mut create, progress)?;
            progress(&format!("installing {}", install_args.join(" ")));
            let mut install = Command::new(uv);
            install.args(["pip", "install", "--python"]).arg(&python).args(&install_args);
            run("installing the Python packages (uv pip install)", &mut install, progress)?;
        }
        None => {
            let mut create = Command::new(&spec.interpreter);
            create.args(["-m", "venv"]).arg(&venv);
            run("creating the virtual environment (python -m venv)", &mut create, progress)?;
            progress(&format!("installing {}", install_args.join(" ")));
            let mut install = Command::new(&python);
            install
                .args(["-m", "pip", "install", "--disable-pip-version-check", "--no-input"])
                .args(["--progress-bar", "off"])
                .args(&install_args);
            run("installing the Python packages (pip install)", &mut install, progress)?;
        }
    }
    match std::fs::rename(&venv, dir) {
        Ok(()) => {}
        // Another build of the same environment finished first; theirs is as good as ours.
        Err(_) if dir.join("bin").join("python").is_file() => {}
        Err(e) => return Err(io_error(format!("move the environment to {}", dir.display()))(e)),
    }
    progress("Python environment ready");
    Ok(())
}

/// Runs one build command, passing each line it prints to `progress` as it comes (an install
/// takes minutes, and its own lines are the best account of where it is). A failure keeps the
/// last lines for the error.
fn run(step: &str, command: &mut Command, progress: &dyn Fn(&str)) -> Result<(), EnvError> {
    tracing::debug!(?command, "{step}");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io_error(format!("start {:?}", command.get_program())))?;
    let (lines, received) = std::sync::mpsc::channel::<String>();
    let readers = [
        child.stdout.take().map(|out| forward_lines(out, lines.clone())),
        child.stderr.take().map(|err| forward_lines(err, lines)),
    ];
    let mut tail = std::collections::VecDeque::with_capacity(ERROR_TAIL_LINES);
    for line in received {
        progress(&line);
        if tail.len() == ERROR_TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line);
    }
    for reader in readers.into_iter().flatten() {
        let _ = reader.join();
    }
    let status = child.wait().map_err(io_error(format!("wait for {:?}", command.get_program())))?;
    if status.success() {
        return Ok(());
    }
    let tail = Vec::from(tail).join("\n");
    Err(EnvError::Install { step: format!("{step} ({status})"), tail })
}

/// Sends each non-blank line `from` prints, trimmed, until it closes. Lines are read as bytes
/// and decoded leniently: an installer printing something that is not UTF-8 must not have its
/// pipe closed under it (it would die of SIGPIPE, with nothing useful to say).
fn forward_lines(
    from: impl std::io::Read + Send + 'static,
    to: std::sync::mpsc::Sender<String>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        use std::io::BufRead;
        let mut reader = std::io::BufReader::new(from);
        let mut line = Vec::new();
        while matches!(reader.read_until(b'\n', &mut line), Ok(n) if n > 0) {
            let text = String::from_utf8_lossy(&line);
            let text = text.trim();
            if !text.is_empty() {
                // The receiver is gone only when the build was abandoned; keep draining.
                let _ = to.send(text.to_owned());
            }
            line.clear();
        }
    })
}

/// An interpreter for `version` (`3.11`, or `3.11.7`): `python3.11` on the `PATH`, then
/// pyenv's versions, then the usual system places. Each candidate is asked its version, since
/// a pyenv shim answers to a name whose version it does not have.
fn find_interpreter(version: Option<&str>) -> Result<(PathBuf, String), EnvError> {
    let version = version.map(str::trim).filter(|v| !v.is_empty());
    let short = version.map(|v| v.split('.').take(2).collect::<Vec<_>>().join("."));
    let mut candidates: Vec<PathBuf> = Vec::new();
    match &short {
        Some(short) => {
            let name = format!("python{short}");
            candidates.extend(find_on_path(&name));
            candidates.extend(pyenv_versions(short).into_iter().map(|d| d.join("bin").join(&name)));
            for dir in ["/usr/local/bin", "/usr/bin"] {
                candidates.push(Path::new(dir).join(&name));
            }
        }
        None => candidates.extend(find_on_path("python3")),
    }
    for candidate in &candidates {
        if let Some(found) = interpreter_version(candidate) {
            if version
                .is_none_or(|wanted| found == wanted || found.starts_with(&format!("{wanted}.")))
            {
                return Ok((candidate.clone(), found));
            }
        }
    }
    let searched: Vec<String> = candidates.iter().map(|c| c.display().to_string()).collect();
    Err(EnvError::NoInterpreter {
        version: version.unwrap_or("3").to_owned(),
        searched: if searched.is_empty() { "the PATH".into() } else { searched.join(", ") },
    })
}

fn interpreter_version(python: &Path) -> Option<String> {
    let output = Command::new(python)
        .args(["-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    output.status.success().then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

fn pyenv_versions(short: &str) -> Vec<PathBuf> {
    let root = std::env::var_os("PYENV_ROOT")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".pyenv")));
    let Some(versions) = root.map(|r| r.join("versions")) else { return Vec::new() };
    let Ok(entries) = std::fs::read_dir(&versions) else { return Vec::new() };
    let mut found: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n == short || n.strip_prefix(short).is_some_and(|rest| rest.starts_with('.'))
            })
        })
        .collect();
    found.sort();
    found.reverse(); // newest patch release first
    found
}

pub(crate) fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| p.is_file())
}

fn check_system_packages(packages: &[String]) -> Result<(), EnvError> {
    if packages.is_empty() {
        return Ok(());
    }
    let Some(dpkg) = find_on_path("dpkg-query") else {
        tracing::warn!(?packages, "no dpkg-query here; cannot check build.system_packages");
        return Ok(());
    };
    let missing: Vec<String> = packages
        .iter()
        .filter(|package| {
            let output = Command::new(&dpkg)
                .args(["-W", "-f=${Status}"])
                .arg(package.as_str())
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .output();
            !output.is_ok_and(|o| {
                o.status.success()
                    && String::from_utf8_lossy(&o.stdout).contains("install ok installed")
            })
        })
        .cloned()
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(EnvError::MissingSystemPackages(missing))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_installer_printing_bytes_that_are_not_utf8_is_read_to_its_end() {
        let steps = std::cell::RefCell::new(Vec::<String>::new());
        let mut command = Command::new("sh");
        // Enough output after the bad line that a reader that stopped there would leave the
        // writer blocked or killed by SIGPIPE.
        command.args(["-c", "printf 'bad \\377\\376 bytes\\n'; seq 1 20000; echo done >&2"]);
        run("printing", &mut command, &|line| steps.borrow_mut().push(line.to_owned()))
            .expect("the command runs to its end");
        let steps = steps.into_inner();
        assert!(steps[0].starts_with("bad "), "{:?}", &steps[..3]);
        assert!(steps.iter().any(|s| s == "20000") && steps.iter().any(|s| s == "done"));
    }

    #[test]
    fn a_missing_python_version_names_what_was_searched() {
        let err = find_interpreter(Some("2.1")).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("Python 2.1"), "{message}");
        assert!(message.contains("python2.1"), "{message}");
    }

    #[test]
    fn the_cache_key_follows_every_input() {
        let spec = |packages: &[&str], req: Option<&str>| EnvSpec {
            interpreter: "/usr/bin/python3.11".into(),
            version: "3.11.7".into(),
            packages: packages.iter().map(|s| s.to_string()).collect(),
            requirements: req.map(|r| (PathBuf::from("requirements.txt"), r.to_owned())),
        };
        let base = spec(&["pillow==11.0.0", "numpy"], None).key();
        assert_eq!(base, spec(&["numpy", "pillow==11.0.0"], None).key(), "order does not matter");
        assert_ne!(base, spec(&["pillow==11.0.0"], None).key());
        assert_ne!(base, spec(&["pillow==11.0.0", "numpy"], Some("six")).key());
    }

    #[test]
    fn missing_system_packages_are_named() {
        if find_on_path("dpkg-query").is_none() {
            return; // not a Debian-like machine: nothing to check against
        }
        let err = check_system_packages(&["hearth-no-such-package".into()]).unwrap_err();
        assert!(err.to_string().contains("hearth-no-such-package"), "{err}");
    }
}
