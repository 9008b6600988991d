//! `python-test`: builds the Python package's wheel with pip (maturin,
//! fetched by pip as the build backend), installs it into a venv and runs
//! the pytest suite on the default adapter.
//!
//! The venv sees Debian's NumPy, pytest and PyTorch (CPU), so the autograd
//! tests run without a multi-gigabyte download; ml_dtypes comes from PyPI,
//! pinned below 0.5 (0.5 needs NumPy 2, Debian 12 ships 1.24).

use std::path::Path;
use std::process::Command;

use crate::{apt_install, root, run};

const PACKAGES: &[&str] = &[
    "python3-venv",
    "python3-pip",
    "python3-numpy",
    "python3-pytest",
    "python3-torch",
];

pub fn test(args: &[String]) -> Result<(), String> {
    if let Some(a) = args.first() {
        return Err(format!("python-test takes no arguments, got `{a}`"));
    }
    apt_install(PACKAGES)?;
    let root = root();
    let venv = root.join("target").join("python-venv");
    let python = venv.join("bin").join("python");
    if !python.exists() {
        run(Command::new("/usr/bin/python3")
            .args(["-m", "venv", "--system-site-packages"])
            .arg(&venv))?;
    }
    let pip = |args: &[&str]| {
        run(Command::new(&python)
            .args(["-m", "pip", "--disable-pip-version-check", "-q"])
            .args(args)
            .current_dir(&root))
    };
    pip(&["install", "ml_dtypes>=0.2,<0.5"])?;
    // The wheel a user can install offline: built by pip, as `pip install .` would.
    let wheels = root.join("target").join("wheels");
    let _ = std::fs::remove_dir_all(&wheels);
    pip(&["wheel", ".", "--no-deps", "-w", "target/wheels"])?;
    let wheel = only_wheel(&wheels)?;
    pip(&["install", "--no-deps", "--force-reinstall", wheel.as_str()])?;
    eprintln!("xtask: wheel {wheel}");
    // From the tests' folder, so `import lightning_wgpu` finds the
    // installed wheel and not the sources.
    run(Command::new(&python)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "."])
        .current_dir(root.join("python").join("tests"))
        .env("NODEVICE_SELECT", "1"))
}

fn only_wheel(dir: &Path) -> Result<String, String> {
    let found: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| format!("{dir:?}: {e}"))?
        .filter_map(|e| e.ok())
        .map(|e| e.path().to_string_lossy().into_owned())
        .filter(|p| p.ends_with(".whl"))
        .collect();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        other => Err(format!("expected one wheel in {dir:?}, found {other:?}")),
    }
}
