//! The npm package and the browser demo (`web/`): build the package for
//! wasm32 and pack it, lay out the demo on it, serve them, and test them in
//! headless Chromium.
//!
//! - `web-serve [--port N]`: builds, then serves the demo on 127.0.0.1 until
//!   Ctrl-C (a person opens the printed URL in a browser with WebGPU).
//! - `web-test`: builds; installs the tarball with npm into a fresh copy of
//!   `web/sample` and opens that page in headless Chromium (Debian's, on its
//!   SwiftShader WebGPU); then opens the demo. Each page ends with a
//!   `LIGHTNING-RESULT PASS|FAIL ...` console line; the test fails unless
//!   both say PASS. The demo's run saves a screenshot of the finished page
//!   as `docs/web-demo.png`.
//!
//! Chromium is driven by hand (a flag-started headless run, a console line,
//! a local server) rather than with playwright: nothing beyond Debian's
//! Chromium is needed, and the server also holds the page's load event
//! until its result is in, which is what makes the screenshot show it.
//!
//! The wasm build uses a rustup toolchain's `wasm32-unknown-unknown` target
//! when one is installed. Otherwise (rustup cannot fetch targets here) it uses
//! Debian's Rust (`rustc-web`, `cargo-web`, `rust-web-src`) with
//! `-Z build-std`, linking with LLVM's `wasm-ld` (`lld-22`). Packages are
//! installed only when missing; `wasm-bindgen-cli` of exactly the version in
//! `web/Cargo.lock` is installed once into `web/target/tools`.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::{apt_install, root, run};

const TARGET: &str = "wasm32-unknown-unknown";
/// Debian's Rust with its standard library sources, and a linker for wasm32.
const DEBIAN_RUST: &[&str] = &["rustc-web", "cargo-web", "rust-web-src", "lld-22"];
/// Linkers for wasm32 when `rust-lld` is not on the PATH (Debian's Rust).
const WASM_LINKERS: &[&str] = &["wasm-ld-22", "wasm-ld"];
/// Chromium's flags for a headless run with WebGPU, no network of its own.
const CHROMIUM_FLAGS: &[&str] = &[
    "--headless=new",
    "--no-sandbox",
    "--enable-unsafe-webgpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--enable-logging=stderr",
    "--v=0",
    "--hide-scrollbars",
    "--disable-crash-reporter",
    "--disable-breakpad",
    "--window-size=1280,1400",
];
/// The line the page logs when a run ends.
const RESULT: &str = "LIGHTNING-RESULT ";
/// How long the page may take, from Chromium's start to its result line;
/// `LIGHTNING_WEB_TIMEOUT` (seconds) overrides.
const DEFAULT_TIMEOUT_S: u64 = 240;

fn web_dir() -> PathBuf {
    root().join("web")
}

/// `cargo xtask web-test`: the package in a fresh sample page, then the demo.
pub fn test(args: &[String]) -> Result<(), String> {
    if let Some(a) = args.first() {
        return Err(format!("web-test takes no arguments, got `{a}`"));
    }
    let started = Instant::now();
    // Formatting of the web crate (its own workspace, so `cargo fmt --all`
    // at the root does not see it); needs no wasm toolchain.
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = web_dir().join("Cargo.toml");
    run(Command::new(&cargo)
        .args(["fmt", "--manifest-path"])
        .arg(&manifest)
        .arg("--check"))?;
    let built = build()?;
    let chromium = chromium()?;
    let timeout = std::env::var("LIGHTNING_WEB_TIMEOUT")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(DEFAULT_TIMEOUT_S));

    // 1. A fresh page that installs the tarball, as a web developer would.
    let sample = sample_site(&built.tarball)?;
    let server = Server::start(&sample, 0)?;
    let url = format!("http://127.0.0.1:{}/index.html", server.port);
    eprintln!("xtask: opening the sample page {url} in headless Chromium");
    let outcome = browse(&chromium, &url, None, timeout, &server);
    server.release();
    let verdict = outcome?;
    eprintln!("xtask: sample page: {verdict}");
    if !verdict.starts_with("LIGHTNING-RESULT PASS") {
        return Err(format!("the sample page failed: {verdict}"));
    }

    // 2. The demo, with a screenshot of the finished page.
    let server = Server::start(&built.site, 0)?;
    let url = format!("http://127.0.0.1:{}/index.html?hold=1", server.port);
    let shot = web_dir().join("target").join("web-demo.png");
    let _ = std::fs::remove_file(&shot);
    eprintln!("xtask: opening the demo {url} in headless Chromium");
    let outcome = browse(&chromium, &url, Some(&shot), timeout, &server);
    server.release();
    let verdict = outcome?;
    eprintln!("xtask: demo: {verdict}");
    if !verdict.starts_with("LIGHTNING-RESULT PASS") {
        if shot.exists() {
            eprintln!("xtask: screenshot of the failed run: {}", shot.display());
        }
        return Err(format!("the browser demo failed: {verdict}"));
    }
    let docs = root().join("docs").join("web-demo.png");
    std::fs::copy(&shot, &docs).map_err(|e| format!("copying the screenshot to {docs:?}: {e}"))?;
    eprintln!(
        "xtask: web-test passed in {:.0} s; package {}; screenshot in {}",
        started.elapsed().as_secs_f64(),
        built.tarball.display(),
        docs.display()
    );
    Ok(())
}

/// `cargo xtask web-serve [--port N]`.
pub fn serve(args: &[String]) -> Result<(), String> {
    let port = match args {
        [] => None,
        [flag, n] if flag == "--port" => Some(
            n.parse::<u16>()
                .map_err(|_| format!("--port needs a port number, got `{n}`"))?,
        ),
        _ => return Err("usage: cargo xtask web-serve [--port N]".into()),
    };
    let site = build()?.site;
    let server = match port {
        Some(p) => Server::start(&site, p)?,
        // 8000 when free, else any free port.
        None => Server::start(&site, 8000).or_else(|_| Server::start(&site, 0))?,
    };
    eprintln!(
        "xtask: serving {} at http://127.0.0.1:{}/ (Ctrl-C to stop)",
        site.display(),
        server.port
    );
    loop {
        std::thread::park();
    }
}

// ---- building --------------------------------------------------------------

/// How to build for wasm32 on this machine.
enum Toolchain {
    /// A rustup toolchain with the wasm32 target: plain `cargo build`.
    Rustup { cargo: String },
    /// Debian's Rust with `-Z build-std`, and the linker when `rust-lld` is
    /// missing.
    Debian { linker: Option<String> },
}

fn on_path(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

fn toolchain() -> Result<Toolchain, String> {
    let has_target = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .is_ok_and(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.trim() == TARGET)
        });
    if has_target {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        return Ok(Toolchain::Rustup { cargo });
    }
    eprintln!("xtask: no rustup {TARGET} target: building with Debian's Rust and -Z build-std");
    apt_install(DEBIAN_RUST)?;
    for tool in ["/usr/bin/cargo", "/usr/bin/rustc"] {
        if !Path::new(tool).exists() {
            return Err(format!(
                "{tool} is missing: install Debian's {} or add the target with \
                 `rustup target add {TARGET}`",
                DEBIAN_RUST.join(" ")
            ));
        }
    }
    let linker = if on_path("rust-lld") {
        None
    } else {
        let found = WASM_LINKERS.iter().find(|l| on_path(l));
        Some(
            found
                .ok_or_else(|| format!("no wasm linker found (tried {})", WASM_LINKERS.join(", ")))?
                .to_string(),
        )
    };
    Ok(Toolchain::Debian { linker })
}

/// What [`build`] made.
struct Built {
    /// The npm tarball (`npm pack` of `web/pkg`).
    tarball: PathBuf,
    /// The demo: its pages, the package under `lightning-wgpu/`, and
    /// onnxruntime-web under `ort/` when it could be fetched.
    site: PathBuf,
}

/// onnxruntime-web for the demo's side-by-side (the version of the anchor
/// in shared/GPU.md), fetched from npm once into `web/target/ort`.
const ORT_WEB: &str = "onnxruntime-web@1.27.0";
/// The files of its WebGPU build.
const ORT_FILES: &[&str] = &[
    "ort.webgpu.min.mjs",
    "ort-wasm-simd-threaded.asyncify.mjs",
    "ort-wasm-simd-threaded.asyncify.wasm",
    "ort-wasm-simd-threaded.jsep.mjs",
    "ort-wasm-simd-threaded.jsep.wasm",
];

/// Builds the wasm module, runs wasm-bindgen, lays out the npm package in
/// `web/pkg` (the bindings and `web/js`), packs it, and lays out the demo.
fn build() -> Result<Built, String> {
    let web = web_dir();
    let target_dir = web.join("target");
    let mut cmd = match toolchain()? {
        Toolchain::Rustup { cargo } => {
            let mut cmd = Command::new(cargo);
            cmd.args(["build", "--release", "--target", TARGET]);
            cmd
        }
        Toolchain::Debian { linker } => {
            let mut cmd = Command::new("/usr/bin/cargo");
            cmd.env("RUSTC", "/usr/bin/rustc")
                .env("RUSTC_BOOTSTRAP", "1")
                .args(["build", "--release", "--target", TARGET])
                .args(["-Z", "build-std=std,panic_abort"]);
            if let Some(l) = linker {
                cmd.env("CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER", l);
            }
            cmd
        }
    };
    cmd.current_dir(&web).arg("--target-dir").arg(&target_dir);
    run(&mut cmd)?;
    let wasm = target_dir
        .join(TARGET)
        .join("release")
        .join("lightning_wgpu_web.wasm");

    let bindgen = wasm_bindgen(&web)?;
    let pkg = web.join("pkg");
    fresh_dir(&pkg)?;
    run(Command::new(&bindgen)
        .args(["--target", "web", "--out-dir"])
        .arg(&pkg)
        .arg(&wasm))?;
    copy_files(&web.join("js"), &pkg)?;
    for license in ["LICENSE-MIT", "LICENSE-APACHE"] {
        copy(&root().join(license), &pkg.join(license))?;
    }
    let npm = npm()?;
    let packed = target_dir.join("npm");
    fresh_dir(&packed)?;
    run(Command::new(&npm)
        .args(["pack", "--silent", "--pack-destination"])
        .arg(&packed)
        .current_dir(&pkg))?;
    let tarball = only_file(&packed, ".tgz")?;

    let site = target_dir.join("site");
    fresh_dir(&site)?;
    copy_files(&web.join("demo"), &site)?;
    copy_files(&pkg, &site.join("lightning-wgpu"))?;
    match ort_web(&npm, &target_dir) {
        Ok(dist) => {
            for f in ORT_FILES {
                copy(&dist.join(f), &site.join("ort").join(f))?;
            }
        }
        // The page says ORT is not there; the rest of the demo runs.
        Err(e) => eprintln!("xtask: no {ORT_WEB} for the demo's side-by-side: {e}"),
    }
    Ok(Built { tarball, site })
}

/// A fresh copy of `web/sample` with the tarball installed by npm, offline
/// (the package has no dependencies: nothing else is fetched).
fn sample_site(tarball: &Path) -> Result<PathBuf, String> {
    let dir = web_dir().join("target").join("sample");
    fresh_dir(&dir)?;
    copy_files(&web_dir().join("sample"), &dir)?;
    run(Command::new(npm()?)
        .args([
            "install",
            "--offline",
            "--no-audit",
            "--no-fund",
            "--silent",
        ])
        .arg(tarball)
        .current_dir(&dir))?;
    Ok(dir)
}

/// `dist/` of onnxruntime-web, installed with npm into `web/target/ort` once.
fn ort_web(npm: &str, target_dir: &Path) -> Result<PathBuf, String> {
    let prefix = target_dir.join("ort");
    let dist = prefix
        .join("node_modules")
        .join("onnxruntime-web")
        .join("dist");
    if !ORT_FILES.iter().all(|f| dist.join(f).exists()) {
        std::fs::create_dir_all(&prefix).map_err(|e| format!("creating {prefix:?}: {e}"))?;
        run(Command::new(npm)
            .args([
                "install",
                "--no-audit",
                "--no-fund",
                "--silent",
                "--no-save",
                "--prefix",
            ])
            .arg(&prefix)
            .arg(ORT_WEB))?;
    }
    Ok(dist)
}

/// npm on the PATH, or Debian's (with its Node.js) installed.
fn npm() -> Result<String, String> {
    if !on_path("npm") {
        apt_install(&["npm"])?;
    }
    if on_path("npm") {
        Ok("npm".into())
    } else {
        Err("npm is missing: install Debian's `npm` (or Node.js with npm)".into())
    }
}

fn fresh_dir(dir: &Path) -> Result<(), String> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| format!("removing {dir:?}: {e}"))?;
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {dir:?}: {e}"))
}

fn copy(from: &Path, to: &Path) -> Result<(), String> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("creating {parent:?}: {e}"))?;
    }
    std::fs::copy(from, to)
        .map(|_| ())
        .map_err(|e| format!("copying {from:?} to {to:?}: {e}"))
}

/// The files (not folders) of `from` into `to`.
fn copy_files(from: &Path, to: &Path) -> Result<(), String> {
    let entries = std::fs::read_dir(from).map_err(|e| format!("reading {from:?}: {e}"))?;
    for entry in entries {
        let path = entry.map_err(|e| e.to_string())?.path();
        if let Some(name) = path.file_name().filter(|_| path.is_file()) {
            copy(&path, &to.join(name))?;
        }
    }
    Ok(())
}

fn only_file(dir: &Path, suffix: &str) -> Result<PathBuf, String> {
    let found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("reading {dir:?}: {e}"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        other => Err(format!("expected one {suffix} in {dir:?}, found {other:?}")),
    }
}

/// The version of `name` in a Cargo.lock.
fn locked_version(lock: &str, name: &str) -> Option<String> {
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line.trim() == format!("name = \"{name}\"") {
            let version = lines.next()?.trim();
            return Some(
                version
                    .strip_prefix("version = \"")?
                    .trim_end_matches('"')
                    .to_string(),
            );
        }
    }
    None
}

/// A `wasm-bindgen` whose version equals the `wasm-bindgen` crate's in
/// `web/Cargo.lock` (they must match): on the PATH, in the cache, or
/// installed into the cache.
fn wasm_bindgen(web: &Path) -> Result<PathBuf, String> {
    let lock_path = web.join("Cargo.lock");
    let lock =
        std::fs::read_to_string(&lock_path).map_err(|e| format!("reading {lock_path:?}: {e}"))?;
    let version = locked_version(&lock, "wasm-bindgen")
        .ok_or_else(|| format!("no wasm-bindgen in {lock_path:?}"))?;
    let tools = web.join("target").join("tools");
    let cached = tools.join("bin").join("wasm-bindgen");
    let is_right = |program: &Path| {
        Command::new(program)
            .arg("--version")
            .output()
            .is_ok_and(|o| {
                String::from_utf8_lossy(&o.stdout).trim() == format!("wasm-bindgen {version}")
            })
    };
    for candidate in [PathBuf::from("wasm-bindgen"), cached.clone()] {
        if is_right(&candidate) {
            return Ok(candidate);
        }
    }
    eprintln!(
        "xtask: installing wasm-bindgen-cli {version} into {}",
        tools.display()
    );
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(Command::new(cargo)
        .args(["install", "wasm-bindgen-cli", "--version"])
        .arg(format!("={version}"))
        .args(["--no-default-features", "--bin", "wasm-bindgen", "--root"])
        .arg(&tools))?;
    if is_right(&cached) {
        Ok(cached)
    } else {
        Err(format!(
            "{cached:?} is not wasm-bindgen {version} after installing it"
        ))
    }
}

// ---- serving ---------------------------------------------------------------

/// What pages reported to `/done?id=X`, and whether every `/hold` may answer.
#[derive(Default)]
struct Done {
    /// `(id, result line)`, in the order they came.
    results: Vec<(String, String)>,
    released: bool,
}

/// A static file server on 127.0.0.1, one thread per connection, plus two
/// routes for the test: `POST /done?id=X` (a page's result) and
/// `GET /hold?id=X` (answers once that page's result is in, which holds the
/// page's load event).
struct Server {
    port: u16,
    done: Arc<(Mutex<Done>, Condvar)>,
}

impl Server {
    fn start(dir: &Path, port: u16) -> Result<Server, String> {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .map_err(|e| format!("cannot listen on 127.0.0.1:{port}: {e}"))?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        let done: Arc<(Mutex<Done>, Condvar)> = Arc::default();
        let (dir, shared) = (dir.to_path_buf(), done.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (dir, done) = (dir.clone(), shared.clone());
                std::thread::spawn(move || {
                    let _ = handle(stream, &dir, &done);
                });
            }
        });
        Ok(Server { port, done })
    }

    /// The first result a page posted, if any.
    fn result(&self) -> Option<String> {
        let done = self.done.0.lock().unwrap_or_else(|p| p.into_inner());
        done.results.first().map(|(_, line)| line.clone())
    }

    /// Lets `/hold` answer even without a result (on a time-out).
    fn release(&self) {
        let (lock, cvar) = &*self.done;
        lock.lock().unwrap_or_else(|p| p.into_inner()).released = true;
        cvar.notify_all();
    }
}

fn mime(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("wasm") => "application/wasm",
        Some("css") => "text/css; charset=utf-8",
        Some("json") => "application/json",
        Some("png") => "image/png",
        Some("svg") => "image/svg+xml",
        _ => "application/octet-stream",
    }
}

/// A 1x1 transparent GIF.
const PIXEL: &[u8] = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff\x21\xf9\x04\x01\x00\x00\x00\x00\x2c\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02\x44\x01\x00\x3b";

fn handle(stream: TcpStream, dir: &Path, done: &(Mutex<Done>, Condvar)) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    let mut length = 0usize;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.trim().eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut parts = request.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
    let target = target.split('#').next().unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let id = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("id="))
        .unwrap_or("")
        .to_string();
    let mut out = stream;
    let reply = |out: &mut TcpStream, status: &str, kind: &str, body: &[u8]| {
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n\
             Cache-Control: no-store\r\nConnection: close\r\n\r\n",
            body.len()
        );
        out.write_all(head.as_bytes())?;
        if method != "HEAD" {
            out.write_all(body)?;
        }
        out.flush()
    };
    match (method, path) {
        ("POST", "/done") => {
            let mut body = vec![0; length.min(1 << 16)];
            reader.read_exact(&mut body)?;
            let (lock, cvar) = done;
            let mut state = lock.lock().unwrap_or_else(|p| p.into_inner());
            state
                .results
                .push((id, String::from_utf8_lossy(&body).into_owned()));
            cvar.notify_all();
            drop(state);
            reply(&mut out, "204 No Content", "text/plain", b"")
        }
        ("GET", "/hold") => {
            let (lock, cvar) = done;
            let state = lock.lock().unwrap_or_else(|p| p.into_inner());
            let wait = Duration::from_secs(30 * 60);
            let state = cvar
                .wait_timeout_while(state, wait, |s| {
                    !s.released && !s.results.iter().any(|(i, _)| *i == id)
                })
                .map(|(s, _)| s)
                .unwrap_or_else(|p| p.into_inner().0);
            drop(state);
            reply(&mut out, "200 OK", "image/gif", PIXEL)
        }
        ("GET" | "HEAD", _) => {
            let relative = path.trim_start_matches('/');
            let relative = if relative.is_empty() {
                "index.html"
            } else {
                relative
            };
            let safe = !relative
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..");
            let file = dir.join(relative);
            match std::fs::read(&file) {
                Ok(body) if safe => reply(&mut out, "200 OK", mime(&file), &body),
                _ => reply(&mut out, "404 Not Found", "text/plain", b"not found"),
            }
        }
        _ => reply(&mut out, "405 Method Not Allowed", "text/plain", b""),
    }
}

// ---- the browser -----------------------------------------------------------

/// Debian's Chromium (`CHROMIUM` names another binary).
fn chromium() -> Result<String, String> {
    if let Ok(path) = std::env::var("CHROMIUM") {
        return Ok(path);
    }
    apt_install(&["chromium"])?;
    for candidate in ["chromium", "/usr/bin/chromium", "chromium-browser"] {
        if on_path(candidate) {
            return Ok(candidate.to_string());
        }
    }
    Err(
        "no Chromium found: install Debian's `chromium`, or set CHROMIUM to a browser binary"
            .into(),
    )
}

/// The page's result line out of a Chromium log line:
/// `[...:INFO:CONSOLE:5] "LIGHTNING-RESULT PASS ...", source: http://... (5)`.
fn result_line(log: &str) -> Option<String> {
    let at = log.find(RESULT)?;
    let rest = &log[at..];
    let line = match rest.find("\", source:") {
        Some(end) => &rest[..end],
        None => rest.strip_suffix('"').unwrap_or(rest),
    };
    Some(line.trim().to_string())
}

/// Loads `url` in headless Chromium and returns the page's result line.
/// With `shot`, Chromium also writes a screenshot once the page's load event
/// fires (held until the result is in) and exits; without, a debugging port
/// keeps it open until the line is in, then it is ended.
fn browse(
    chromium: &str,
    url: &str,
    shot: Option<&Path>,
    timeout: Duration,
    server: &Server,
) -> Result<String, String> {
    use std::os::unix::process::CommandExt;

    let profile = std::env::temp_dir().join(format!(
        "lightning-web-chromium-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    std::fs::create_dir_all(&profile).map_err(|e| format!("creating {profile:?}: {e}"))?;
    let log_path = web_dir().join("target").join("chromium.log");
    let mut cmd = Command::new(chromium);
    cmd.args(CHROMIUM_FLAGS)
        .arg(format!("--user-data-dir={}", profile.display()));
    match shot {
        Some(shot) => cmd.arg(format!("--screenshot={}", shot.display())),
        None => cmd.arg("--remote-debugging-port=0"),
    };
    cmd.arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        // Its own process group, so a time-out ends Chromium and its helpers.
        .process_group(0);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("starting {chromium}: {e}"))?;
    let pid = child.id();
    let stderr = child.stderr.take().ok_or("no stderr from Chromium")?;
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });

    let mut log = std::fs::File::create(&log_path).ok();
    let mut tail: VecDeque<String> = VecDeque::new();
    let mut verdict: Option<String> = None;
    let mut exited = None;
    // Until the result line, then until Chromium has written the screenshot
    // and exited (a further minute at most).
    let mut limit = Instant::now() + timeout;
    loop {
        let now = Instant::now();
        if now >= limit {
            break;
        }
        match rx.recv_timeout(Duration::from_millis(200).min(limit - now)) {
            Ok(line) => {
                if let Some(f) = log.as_mut() {
                    let _ = writeln!(f, "{line}");
                }
                if verdict.is_none() {
                    verdict = result_line(&line);
                    if verdict.is_some() {
                        limit = Instant::now() + Duration::from_secs(60);
                    }
                }
                if verdict.is_some() && shot.is_none() {
                    break;
                }
                tail.push_back(line);
                if tail.len() > 40 {
                    tail.pop_front();
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                exited = child.wait().ok();
                break;
            }
        }
        if verdict.is_none() {
            verdict = server.result();
            if verdict.is_some() {
                limit = Instant::now() + Duration::from_secs(60);
            }
        }
        if verdict.is_some() && shot.is_none() {
            break;
        }
    }
    if exited.is_none() {
        // Time-out: end Chromium's whole process group (ours, by its id).
        let _ = Command::new("kill")
            .args(["-s", "TERM", "--", &format!("-{pid}")])
            .status();
        std::thread::sleep(Duration::from_secs(2));
        let _ = Command::new("kill")
            .args(["-s", "KILL", "--", &format!("-{pid}")])
            .status();
        let _ = child.wait();
    }
    // The reader ends when the last holder of Chromium's stderr is gone; a
    // crash handler outside the process group may keep it a while, so a
    // killed run does not wait for it.
    if exited.is_some() {
        let _ = reader.join();
    }
    let _ = std::fs::remove_dir_all(&profile);
    let context = || {
        format!(
            "last lines of Chromium's log (all of it in {}):\n{}",
            log_path.display(),
            Vec::from(tail.clone()).join("\n")
        )
    };
    match verdict {
        None => Err(format!(
            "no {}line from the page within {} s\n{}",
            RESULT,
            timeout.as_secs(),
            context()
        )),
        Some(v) if v.starts_with("LIGHTNING-RESULT PASS") && shot.is_some_and(|s| !s.exists()) => {
            Err(format!(
                "the page passed ({v}) but Chromium wrote no screenshot to {}\n{}",
                shot.map(|s| s.display().to_string()).unwrap_or_default(),
                context()
            ))
        }
        Some(v) => {
            if !v.starts_with("LIGHTNING-RESULT PASS") {
                eprintln!("{}", context());
            }
            Ok(v)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_result_in_a_chromium_log_line() {
        let line = r#"[1:1:1124/003044.895897:INFO:CONSOLE:5] "LIGHTNING-RESULT PASS rel_err=1.0e-7 adapter="x"", source: http://127.0.0.1:1/main.js (5)"#;
        assert_eq!(
            result_line(line).as_deref(),
            Some(r#"LIGHTNING-RESULT PASS rel_err=1.0e-7 adapter="x""#)
        );
        assert_eq!(result_line("nothing here"), None);
    }

    #[test]
    fn reads_a_locked_version() {
        let lock = "[[package]]\nname = \"wasm-bindgen\"\nversion = \"0.2.130\"\n";
        assert_eq!(
            locked_version(lock, "wasm-bindgen").as_deref(),
            Some("0.2.130")
        );
        assert_eq!(locked_version(lock, "js-sys"), None);
    }
}
