//! Project tasks: `cargo xtask <task>`.
//!
//! - `setup`: installs the system packages the tests need (Mesa's software
//!   Vulkan and OpenGL drivers), only those missing, so it is safe to rerun.
//! - `test`:  setup, then formatting, clippy with warnings denied, every test
//!   (the burn op's and the MPI transport's included; the forward, backward
//!   and property suites once more with shader bounds checks on), a short
//!   training run of the burn example, the sequence-parallel example under
//!   `mpirun -np 1..4`, `python-test` and `web-test`. Installs OpenMPI.
//! - `run`:   setup, then the main job: `cargo run --release` on the default adapter.
//! - `python-test`: builds the Python wheel with pip, installs it in a venv
//!   (target/python-venv) and runs the pytest suite.
//! - `web-test`: builds the browser demo (`web/`) and runs it in headless
//!   Chromium; fails unless the page reports PASS. Saves docs/web-demo.png.
//! - `web-serve [--port N]`: builds the browser demo and serves it on
//!   127.0.0.1 until Ctrl-C.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

mod python;
mod web;

/// The repository root (xtask/ is one level below it).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask has a parent directory")
        .to_path_buf()
}

/// The burn op and the MPI transport are built and tested with the rest.
const FEATURES: &str = "lightning-wgpu/burn,lightning-wgpu/mpi,lightning-wgpu-cli/mpi";

/// Debian packages of the `mpi` feature: OpenMPI, and libclang for rsmpi's
/// bindings to it.
const MPI_PACKAGES: &[&str] = &["openmpi-bin", "libopenmpi-dev", "libclang-dev"];

/// Debian packages: lavapipe (Vulkan) and llvmpipe through EGL (wgpu's GL back end).
const GPU_PACKAGES: &[&str] = &[
    "mesa-vulkan-drivers",
    "libvulkan1",
    "libegl1",
    "libegl-mesa0",
    "libgl1-mesa-dri",
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("setup") => setup(),
        Some("test") => setup()
            .and_then(|()| test(&args[1..]))
            .and_then(|()| python::test(&[]))
            .and_then(|()| web::test(&[])),
        Some("run") => setup().and_then(|()| cargo(&["run", "--release", "--"], &args[1..])),
        Some("python-test") => python::test(&args[1..]),
        Some("web-test") => web::test(&args[1..]),
        Some("web-serve") => web::serve(&args[1..]),
        _ => Err(
            "usage: cargo xtask <setup | test | run | python-test | web-test | web-serve> [extra args]".into(),
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

/// Installs whatever of `packages` is missing, with apt-get (as root, or
/// through sudo). Off Debian, says what it would need and carries on.
fn apt_install(packages: &[&str]) -> Result<(), String> {
    if Command::new("dpkg-query")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!(
            "xtask: not a Debian system; make sure the equivalents of these are installed: {}",
            packages.join(" ")
        );
        return Ok(());
    }
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0"));
    let apt = |args: &[&str]| -> Result<(), String> {
        let mut cmd = if root {
            Command::new("apt-get")
        } else {
            Command::new("sudo")
        };
        if !root {
            cmd.arg("apt-get");
        }
        cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        run(&mut cmd)
    };
    apt(&["update", "-qq"])?;
    let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
    args.extend(&missing);
    apt(&args)
}

fn setup() -> Result<(), String> {
    apt_install(GPU_PACKAGES)
}

fn test(extra: &[String]) -> Result<(), String> {
    apt_install(MPI_PACKAGES)?;
    cargo(&["fmt", "--all", "--", "--check"], &[])?;
    cargo(
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--features",
            FEATURES,
            "--",
            "-D",
            "warnings",
        ],
        &[],
    )?;
    cargo(&["test", "--workspace", "--features", FEATURES], extra)?;
    // The forward, backward and property suites once more with wgpu's
    // shader bounds checks on, as browsers always run them.
    let mut checked = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    checked
        .args([
            "test",
            // The workspace's feature set, as in the run above: the same
            // build, so this rerun compiles nothing again.
            "--workspace",
            "--test",
            "forward",
            "--test",
            "backward",
            "--test",
            "properties",
            "--test",
            "draft",
            "--test",
            "checkpoints",
            "--test",
            "parallel",
            "--test",
            "grouped",
            "--features",
            FEATURES,
        ])
        .env("LIGHTNING_CHECKED", "1")
        .env("NODEVICE_SELECT", "1");
    run(&mut checked)?;
    // The sequence-parallel cost example runs (three thread ranks, tiny).
    example(
        "sequence_parallel_bench",
        &[
            "--ranks", "3", "--n", "300", "--h", "2", "--d", "16", "--reps", "2", "--dtype", "f32",
        ],
    )?;
    // The burn example trains a few steps on the default adapter and must
    // see its loss fall, then generates with the decode kernel.
    example(
        "train_lm",
        &[
            "--steps",
            "12",
            "--batch",
            "4",
            "--context",
            "64",
            "--generate",
            "40",
            "--check",
        ],
    )
}

/// Runs an example the workspace's test build made (with [`FEATURES`])
/// directly: `cargo run -p` would resolve other features and build the
/// dependencies again.
fn example(name: &str, args: &[&str]) -> Result<(), String> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    let mut cmd = Command::new(target.join("debug").join("examples").join(name));
    cmd.args(args).env("NODEVICE_SELECT", "1");
    run(&mut cmd)
}

fn cargo(args: &[&str], extra: &[String]) -> Result<(), String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(args).args(extra).env("NODEVICE_SELECT", "1");
    run(&mut cmd)
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let shown = format!("{cmd:?}");
    let status = cmd.status().map_err(|e| format!("{shown}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{shown} failed ({status})"))
    }
}
