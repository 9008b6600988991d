//! The `lightning-wgpu` binary end to end: `.npy` files in, `.npy` files out,
//! checked against the f64 reference; bad inputs fail with one line on
//! stderr and a non-zero status, never a panic.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use lightning_wgpu::{alibi_slopes, reference, ContextOptions, Dims, Layout};
use npyz::half::f16;
use npyz::{NpyFile, Order, WriteOptions, WriterBuilder};
use rand::RngExt;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_lightning-wgpu"))
}

fn run(args: &[&str]) -> Output {
    match bin().args(args).output() {
        Ok(out) => out,
        Err(e) => panic!("cannot run lightning-wgpu: {e}"),
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Writes a C-ordered `.npy` (or Fortran-ordered with `order`).
fn write_npy_ordered<T: npyz::AutoSerialize + Copy>(
    path: &Path,
    shape: &[usize],
    data: &[T],
    order: Order,
) {
    let shape: Vec<u64> = shape.iter().map(|&x| x as u64).collect();
    let file = std::fs::File::create(path).expect("create .npy");
    let mut w = WriteOptions::<T>::new()
        .default_dtype()
        .order(order)
        .shape(&shape)
        .writer(std::io::BufWriter::new(file))
        .begin_nd()
        .expect("npy header");
    w.extend(data.iter().copied()).expect("npy data");
    w.finish().expect("npy finish");
}

fn write_npy<T: npyz::AutoSerialize + Copy>(path: &Path, shape: &[usize], data: &[T]) {
    write_npy_ordered(path, shape, data, Order::C);
}

/// Reads an f32 `.npy`, checking it is C-ordered float32 as promised.
fn read_npy(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let file = std::fs::File::open(path).expect("open output .npy");
    let npy = NpyFile::new(std::io::BufReader::new(file)).expect("output .npy header");
    assert_eq!(npy.order(), Order::C, "{} not in C order", path.display());
    assert_eq!(
        npy.dtype().descr(),
        "'<f4'",
        "{} not float32",
        path.display()
    );
    let shape = npy.shape().iter().map(|&x| x as usize).collect();
    (shape, npy.into_vec::<f32>().expect("output .npy data"))
}

/// Random inputs of one problem, and where they were written.
struct Case {
    dir: tempfile::TempDir,
    dims: Dims,
    layout: Layout,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
}

impl Case {
    /// Random q, k, v of `dims` in `layout`, written as q.npy, k.npy, v.npy.
    fn new(dims: Dims, layout: Layout, rng: &mut rand::rngs::StdRng) -> Case {
        let Dims { b, h, n, d, e } = dims;
        let q = common::random(rng, b * h * n * d, d);
        let k = common::random(rng, b * h * n * d, d);
        let v = common::random(rng, b * h * n * e, e);
        let case = Case {
            dir: tempfile::tempdir().expect("temp dir"),
            dims,
            layout,
            q,
            k,
            v,
        };
        write_npy(&case.path("q.npy"), &case.qk_shape(), &case.q);
        write_npy(&case.path("k.npy"), &case.qk_shape(), &case.k);
        write_npy(&case.path("v.npy"), &case.v_shape(), &case.v);
        case
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `name` inside the case's directory, as an argument.
    fn arg(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    fn qk_shape(&self) -> [usize; 4] {
        let Dims { b, h, n, d, .. } = self.dims;
        self.layout.shape(b, h, n, d)
    }

    fn v_shape(&self) -> [usize; 4] {
        let Dims { b, h, n, e, .. } = self.dims;
        self.layout.shape(b, h, n, e)
    }

    /// `forward --q --k --v --layout --out o.npy` followed by `extra`.
    fn forward(&self, extra: &[&str]) -> Output {
        let (q, k, v, out) = (
            self.arg("q.npy"),
            self.arg("k.npy"),
            self.arg("v.npy"),
            self.arg("o.npy"),
        );
        let layout = self.layout.to_string();
        let mut args = vec![
            "forward", "--q", &q, "--k", &k, "--v", &v, "--layout", &layout, "--out", &out,
        ];
        args.extend_from_slice(extra);
        run(&args)
    }
}

fn assert_success(out: &Output) {
    assert!(
        out.status.success(),
        "lightning-wgpu failed ({}): stdout {:?} stderr {:?}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// Odd sizes everywhere (n not a multiple of the block, d != e, several
/// batches and heads), random slopes, an initial state, a scale: the output
/// and final state must match the f64 reference.
fn forward_matches_reference(layout: Layout) {
    let seed = common::seed();
    let mut rng = common::rng(seed);
    let dims = Dims {
        b: 2,
        h: 3,
        n: 77,
        d: 20,
        e: 12,
    };
    let case = Case::new(dims, layout, &mut rng);
    let slopes: Vec<f32> = (0..dims.h).map(|_| rng.random_range(0.0f32..0.5)).collect();
    let s0 = common::random(&mut rng, dims.b * dims.h * dims.d * dims.e, dims.d);
    write_npy(&case.path("slopes.npy"), &[dims.h], &slopes);
    write_npy(&case.path("s0.npy"), &dims.state_shape(), &s0);

    let (slopes_arg, s0_arg, sn_arg) = (
        case.arg("slopes.npy"),
        case.arg("s0.npy"),
        case.arg("sn.npy"),
    );
    let out = case.forward(&[
        "--slopes",
        &slopes_arg,
        "--initial-state",
        &s0_arg,
        "--final-state",
        &sn_arg,
        "--scale",
        "0.5",
    ]);
    assert_success(&out);

    let want = reference::forward(
        dims,
        layout,
        &case.q,
        &case.k,
        &case.v,
        &slopes,
        0.5,
        Some(&s0),
    );
    let (o_shape, o) = read_npy(&case.path("o.npy"));
    assert_eq!(o_shape, case.v_shape());
    let err = reference::relative_error(&o, &want.o);
    assert!(
        err <= 1e-5,
        "{layout}: output relative error {err} (seed {seed})"
    );
    let (sn_shape, sn) = read_npy(&case.path("sn.npy"));
    assert_eq!(sn_shape, dims.state_shape());
    let err = reference::relative_error(&sn, &want.final_state);
    assert!(
        err <= 1e-5,
        "{layout}: final state relative error {err} (seed {seed})"
    );
}

#[test]
fn forward_bhnd_matches_reference() {
    forward_matches_reference(Layout::Bhnd);
}

#[test]
fn forward_bnhd_matches_reference() {
    forward_matches_reference(Layout::Bnhd);
}

/// float16 files are widened exactly, so the result must match the
/// reference on the widened values as closely as float32 input does.
#[test]
fn forward_accepts_float16_and_alibi() {
    let seed = common::seed();
    let mut rng = common::rng(seed);
    let dims = Dims {
        b: 1,
        h: 5,
        n: 40,
        d: 8,
        e: 16,
    };
    let case = Case::new(dims, Layout::Bhnd, &mut rng);
    let halves = |x: &[f32]| x.iter().map(|&x| f16::from_f32(x)).collect::<Vec<_>>();
    let (q16, v16) = (halves(&case.q), halves(&case.v));
    write_npy(&case.path("q.npy"), &case.qk_shape(), &q16);
    write_npy(&case.path("v.npy"), &case.v_shape(), &v16);
    let widen = |x: &[f16]| x.iter().map(|&x| x.to_f32()).collect::<Vec<_>>();

    let out = case.forward(&["--alibi"]);
    assert_success(&out);

    let slopes = alibi_slopes(dims.h);
    let want = reference::forward(
        dims,
        Layout::Bhnd,
        &widen(&q16),
        &case.k,
        &widen(&v16),
        &slopes,
        1.0,
        None,
    );
    let (_, o) = read_npy(&case.path("o.npy"));
    let err = reference::relative_error(&o, &want.o);
    assert!(err <= 1e-5, "relative error {err} (seed {seed})");
}

/// A failure: status 1 (not a panic's 101, not a signal), and stderr exactly
/// one line `error: ...` containing every word of `words`.
fn assert_fails(out: &Output, words: &[&str]) {
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "expected exit status 1, stderr {stderr:?}"
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "expected one line on stderr, got {stderr:?}"
    );
    assert!(
        lines[0].starts_with("error: "),
        "no `error: ` prefix: {stderr:?}"
    );
    for w in words {
        assert!(lines[0].contains(w), "{w:?} not in {stderr:?}");
    }
}

fn small_case(layout: Layout) -> Case {
    let mut rng = common::rng(common::seed());
    Case::new(
        Dims {
            b: 1,
            h: 3,
            n: 9,
            d: 4,
            e: 5,
        },
        layout,
        &mut rng,
    )
}

#[test]
fn missing_file_fails() {
    let case = small_case(Layout::Bhnd);
    std::fs::remove_file(case.path("k.npy")).expect("remove k");
    assert_fails(&case.forward(&[]), &["k.npy", "No such file"]);
    assert!(
        !case.path("o.npy").exists(),
        "output written despite the error"
    );
}

#[test]
fn mismatched_shape_fails() {
    let case = small_case(Layout::Bnhd);
    // k with a different n: (b, n, h, d) with n = 7 instead of 9.
    write_npy(&case.path("k.npy"), &[1, 7, 3, 4], &vec![0.0f32; 7 * 3 * 4]);
    assert_fails(&case.forward(&[]), &["mismatch", "`k`", "n = 7", "n = 9"]);
}

#[test]
fn wrong_rank_fails() {
    let case = small_case(Layout::Bhnd);
    write_npy(&case.path("q.npy"), &[3, 9, 4], &case.q);
    assert_fails(&case.forward(&[]), &["`q`", "4 dimensions", "[3, 9, 4]"]);
}

#[test]
fn wrong_slopes_length_fails() {
    let case = small_case(Layout::Bhnd);
    write_npy(&case.path("slopes.npy"), &[4], &[0.1f32, 0.2, 0.3, 0.4]);
    let slopes = case.arg("slopes.npy");
    assert_fails(
        &case.forward(&["--slopes", &slopes]),
        &["slopes", "3 values", "[4]"],
    );
}

#[test]
fn wrong_initial_state_shape_fails() {
    let case = small_case(Layout::Bhnd);
    write_npy(&case.path("s0.npy"), &[1, 3, 5, 4], &[0.0f32; 60]);
    let s0 = case.arg("s0.npy");
    assert_fails(
        &case.forward(&["--initial-state", &s0]),
        &["initial_state", "[1, 3, 4, 5]"],
    );
}

#[test]
fn int32_array_fails() {
    let case = small_case(Layout::Bhnd);
    write_npy(
        &case.path("v.npy"),
        &case.v_shape(),
        &vec![1i32; case.v.len()],
    );
    assert_fails(&case.forward(&[]), &["v.npy", "int32", "float32"]);
}

#[test]
fn fortran_order_fails() {
    let case = small_case(Layout::Bhnd);
    write_npy_ordered(
        &case.path("q.npy"),
        &case.qk_shape(),
        &case.q,
        Order::Fortran,
    );
    assert_fails(&case.forward(&[]), &["q.npy", "Fortran"]);
}

#[test]
fn not_npy_fails() {
    let case = small_case(Layout::Bhnd);
    std::fs::write(case.path("q.npy"), b"q,k,v\n1,2,3\n").expect("write");
    assert_fails(&case.forward(&[]), &["q.npy", ".npy"]);
}

#[test]
fn info_lists_adapters() {
    let out = run(&["info"]);
    assert_success(&out);
    let stdout = text(&out.stdout);
    let adapters = lightning_wgpu::adapters(&ContextOptions::default());
    assert!(!adapters.is_empty(), "no adapter; stdout {stdout:?}");
    for a in &adapters {
        assert!(
            stdout.contains(&a.info.name),
            "{:?} not listed in {stdout:?}",
            a.info.name
        );
    }
    for word in ["max_storage_buffer_binding_size", "SHADER_F16", "SUBGROUP"] {
        assert!(stdout.contains(word), "{word} not in {stdout:?}");
    }
    let picked = stdout.lines().filter(|l| l.starts_with("* [")).count();
    assert_eq!(picked, 1, "exactly one adapter must be marked: {stdout:?}");
}

#[test]
fn unknown_adapter_fails() {
    let out = run(&["info", "--adapter", "no-such-gpu-anywhere"]);
    assert_fails(&out, &["no-such-gpu-anywhere"]);
}

#[test]
fn demo_passes() {
    // Global flags after the subcommand reach it too.
    let out = run(&[
        "demo",
        "--n",
        "70",
        "--h",
        "3",
        "--d",
        "16",
        "--e",
        "8",
        "--checked",
    ]);
    assert_success(&out);
    let stdout = text(&out.stdout);
    assert!(stdout.contains("PASS"), "{stdout:?}");
    assert!(stdout.contains("n=70"), "{stdout:?}");
}

/// `--coop on` runs f16 on the tensor cores or fails with one line naming
/// what the adapter lacks; `--coop off` always runs (the portable kernels).
#[test]
fn coop_flag_requires_or_refuses_the_tensor_cores() {
    let demo = |coop: &str| {
        run(&[
            "--coop", coop, "demo", "--n", "70", "--h", "2", "--d", "32", "--e", "16", "--dtype",
            "f16",
        ])
    };
    let has_coop = lightning_wgpu::Context::with_options(ContextOptions {
        cooperative_matrix: Some(true),
        ..Default::default()
    })
    .is_ok();
    let on = demo("on");
    if has_coop {
        assert_success(&on);
        assert!(text(&on.stdout).contains("PASS"));
    } else {
        assert_fails(&on, &["cooperative_matrix", "cooperative matrices"]);
    }
    let off = demo("off");
    assert_success(&off);
    assert!(
        text(&off.stdout).contains("PASS"),
        "{:?}",
        text(&off.stdout)
    );
}

/// No subcommand: `info` then the default `demo`.
#[test]
fn no_subcommand_runs_info_demo_and_the_sweep() {
    let out = run(&[]);
    assert_success(&out);
    let stdout = text(&out.stdout);
    assert!(stdout.contains("adapters ("), "{stdout:?}");
    assert!(stdout.contains("PASS"), "{stdout:?}");
    for provider in ["lightning-chunk", "recurrent", "softmax"] {
        assert!(
            stdout.contains(provider),
            "{provider} missing from the sweep: {stdout:?}"
        );
    }
}

/// `--method recurrent` gives the reference's output too.
#[test]
fn forward_recurrent_method_matches_reference() {
    let seed = common::seed();
    let mut rng = common::rng(seed);
    let dims = Dims {
        b: 2,
        h: 2,
        n: 45,
        d: 12,
        e: 20,
    };
    let case = Case::new(dims, Layout::Bnhd, &mut rng);
    assert_success(&case.forward(&["--method", "recurrent", "--alibi"]));
    let want = reference::forward(
        dims,
        Layout::Bnhd,
        &case.q,
        &case.k,
        &case.v,
        &alibi_slopes(2),
        1.0,
        None,
    );
    let (_, o) = read_npy(&case.path("o.npy"));
    let err = reference::relative_error(&o, &want.o);
    assert!(err <= 1e-5, "relative error {err} (seed {seed})");
}

/// `--cu-seqlens` (int64 here, int32 below): each packed sequence equals the
/// reference run on it alone, with its own initial and final state.
#[test]
fn forward_packed_sequences_match_reference() {
    let seed = common::seed();
    let mut rng = common::rng(seed);
    let lens = [30usize, 1, 66];
    let n: usize = lens.iter().sum();
    let dims = Dims {
        b: 1,
        h: 2,
        n,
        d: 8,
        e: 12,
    };
    let case = Case::new(dims, Layout::Bhnd, &mut rng);
    let cu: Vec<i64> = [0, 30, 31, 97].to_vec();
    write_npy(&case.path("cu.npy"), &[4], &cu);
    let state_len = dims.h * dims.d * dims.e;
    let s0 = common::random(&mut rng, 3 * state_len, 1);
    write_npy(&case.path("s0.npy"), &[3, dims.h, dims.d, dims.e], &s0);
    let (cu_arg, s0_arg, sn_arg) = (case.arg("cu.npy"), case.arg("s0.npy"), case.arg("sn.npy"));
    let out = case.forward(&[
        "--cu-seqlens",
        &cu_arg,
        "--initial-state",
        &s0_arg,
        "--final-state",
        &sn_arg,
    ]);
    assert_success(&out);
    let (_, o) = read_npy(&case.path("o.npy"));
    let (sn_shape, sn) = read_npy(&case.path("sn.npy"));
    assert_eq!(sn_shape, vec![3, dims.h, dims.d, dims.e]);
    for (s, w) in cu.windows(2).enumerate() {
        let (r0, r1) = (w[0] as usize, w[1] as usize);
        let part = Dims { n: r1 - r0, ..dims };
        // (1, h, n, w): rows r0..r1 of every head.
        let rows = |x: &[f32], width: usize| -> Vec<f32> {
            (0..dims.h)
                .flat_map(|h| x[(h * n + r0) * width..(h * n + r1) * width].to_vec())
                .collect()
        };
        let init = &s0[s * state_len..(s + 1) * state_len];
        let want = reference::forward(
            part,
            Layout::Bhnd,
            &rows(&case.q, 8),
            &rows(&case.k, 8),
            &rows(&case.v, 12),
            &[0.0; 2],
            1.0,
            Some(init),
        );
        let eo = reference::relative_error(&rows(&o, 12), &want.o);
        let es =
            reference::relative_error(&sn[s * state_len..(s + 1) * state_len], &want.final_state);
        assert!(
            eo <= 1e-5 && es <= 1e-5,
            "sequence {s}: o {eo:e} state {es:e} (seed {seed})"
        );
    }
    // Offsets that do not end at n are refused in one line.
    write_npy(&case.path("cu.npy"), &[3], &[0i32, 30, 90]);
    assert_fails(
        &case.forward(&["--cu-seqlens", &cu_arg]),
        &["cu_seqlens", "end at n = 97"],
    );
    // Float offsets are refused.
    write_npy(&case.path("cu.npy"), &[2], &[0.0f32, 97.0]);
    assert_fails(
        &case.forward(&["--cu-seqlens", &cu_arg]),
        &["cu.npy", "float32", "int32 or int64"],
    );
}

/// `bench` writes the table, the JSON schema of docs/BENCHMARKS.md (with
/// anchors merged under this project's provider names) and an SVG plot.
#[test]
fn bench_writes_json_plot_and_merges_anchors() {
    let dir = tempfile::tempdir().expect("temp dir");
    let anchors = dir.path().join("anchors.json");
    std::fs::write(
        &anchors,
        r#"{"device": "test", "rows": [{"dtype": "bf16", "b": 4, "h": 32, "n": 1024, "d": 128,
            "provider": "la2", "fwd_ms": 0.5, "fwd_bwd_ms": 2.0, "peak_mem_MB": 100.0}],
            "ceilings": {"copy_TBps": 3.0}}"#,
    )
    .expect("write anchors");
    let (json, svg) = (dir.path().join("b.json"), dir.path().join("b.svg"));
    let out = run(&[
        "bench",
        "--lengths",
        "32,64",
        "--tokens",
        "64",
        "--h",
        "1",
        "--d",
        "8",
        "--e",
        "4",
        "--warmup",
        "0",
        "--reps",
        "1",
        "--json",
        json.to_str().unwrap(),
        "--plot",
        svg.to_str().unwrap(),
        "--anchors",
        anchors.to_str().unwrap(),
    ]);
    assert_success(&out);
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("lightning-chunk") && stdout.contains("official-la2"),
        "{stdout}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert!(report["adapter"]["name"].is_string() && report["date"].is_string());
    let rows = report["rows"].as_array().unwrap();
    // 2 lengths x 3 providers, plus the anchor.
    assert_eq!(rows.len(), 7, "{rows:?}");
    for r in rows {
        for key in [
            "provider",
            "dtype",
            "b",
            "h",
            "n",
            "d",
            "e",
            "fwd_ms",
            "fwd_bwd_ms",
            "tokens_per_s",
            "peak_mem_mb",
        ] {
            assert!(r.get(key).is_some(), "row without {key}: {r}");
        }
        assert_eq!(
            r["b"].as_u64().unwrap() * r["n"].as_u64().unwrap(),
            if r["provider"] == "official-la2" {
                4096
            } else {
                64
            }
        );
    }
    assert!(rows
        .iter()
        .any(|r| r["provider"] == "official-la2" && r["fwd_ms"] == 0.5));
    assert_eq!(report["anchors"]["ceilings"]["copy_TBps"], 3.0);
    let plot = std::fs::read_to_string(&svg).unwrap();
    assert!(
        plot.starts_with("<svg")
            && plot.contains("lightning-chunk (f32)")
            && plot.contains("official-la2 (bf16)")
    );
    // Bad arguments fail in one line.
    assert_fails(
        &run(&["bench", "--providers", "nonsense"]),
        &["unknown provider", "nonsense"],
    );
    assert_fails(
        &run(&["bench", "--lengths", "48", "--tokens", "64"]),
        &["48", "divide"],
    );
}

/// `--dtype f16|bf16`: inputs rounded on the way in, outputs written as
/// float32, within the half-precision tolerances of the reference on the
/// rounded inputs.
#[test]
fn forward_in_half_precision() {
    let seed = common::seed();
    let mut rng = common::rng(seed);
    let dims = Dims {
        b: 1,
        h: 2,
        n: 50,
        d: 16,
        e: 8,
    };
    let case = Case::new(dims, Layout::Bhnd, &mut rng);
    for (dtype, tol) in [("f16", 2e-3), ("bf16", 1e-2)] {
        assert_success(&case.forward(&["--dtype", dtype, "--alibi"]));
        let round = |x: &[f32]| -> Vec<f32> {
            x.iter()
                .map(|&v| {
                    if dtype == "f16" {
                        f16::from_f32(v).to_f32()
                    } else {
                        half::bf16::from_f32(v).to_f32()
                    }
                })
                .collect()
        };
        let want = reference::forward(
            dims,
            Layout::Bhnd,
            &round(&case.q),
            &round(&case.k),
            &round(&case.v),
            &alibi_slopes(2),
            1.0,
            None,
        );
        let (_, o) = read_npy(&case.path("o.npy"));
        let err = reference::relative_error(&o, &want.o);
        assert!(err <= tol, "{dtype}: relative error {err} (seed {seed})");
    }
    let out = run(&[
        "bench",
        "--dtype",
        "f16,bf16",
        "--lengths",
        "32",
        "--tokens",
        "32",
        "--h",
        "1",
        "--d",
        "8",
        "--reps",
        "1",
    ]);
    assert_success(&out);
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(" f16 ") && stdout.contains(" bf16 "),
        "{stdout}"
    );
    assert_fails(
        &run(&["bench", "--dtype", "f64"]),
        &["unknown dtype", "f64"],
    );
}

/// Grouped heads through the files' shapes: q and dO with 3 heads over one
/// kv head. `forward` equals the reference with k and v repeated; `backward`
/// writes dk, dv shaped like k, v (the numerics are the library's tests').
#[test]
fn grouped_heads_come_from_the_shapes() {
    let seed = common::seed();
    let mut rng = common::rng(seed);
    let dims = Dims {
        b: 1,
        h: 1,
        n: 70,
        d: 12,
        e: 6,
    };
    let group = 3;
    let case = Case::new(dims, Layout::Bhnd, &mut rng);
    let q = common::random(&mut rng, group * 70 * 12, 12);
    let q_shape = [1, group, 70, 12];
    write_npy(&case.path("q.npy"), &q_shape, &q);
    let out = case.forward(&["--alibi"]);
    assert_success(&out);
    let repeat = |x: &[f32]| x.repeat(group);
    let full = Dims { h: group, ..dims };
    let slopes = vec![alibi_slopes(1)[0]; group];
    let want = reference::forward(
        full,
        Layout::Bhnd,
        &q,
        &repeat(&case.k),
        &repeat(&case.v),
        &slopes,
        1.0,
        None,
    );
    let (o_shape, o) = read_npy(&case.path("o.npy"));
    assert_eq!(o_shape, [1, group, 70, 6]);
    let err = reference::relative_error(&o, &want.o);
    assert!(err <= 1e-5, "relative error {err} (seed {seed})");

    let d_o = common::random(&mut rng, group * 70 * 6, 1);
    let a = |n: &str| case.arg(n);
    let (qa, ka, va, dov, dq, dk, dv) = (
        a("q.npy"),
        a("k.npy"),
        a("v.npy"),
        a("do.npy"),
        a("dq.npy"),
        a("dk.npy"),
        a("dv.npy"),
    );
    let backward = |d_o_shape: &[usize]| {
        let len = d_o_shape.iter().product();
        write_npy(&case.path("do.npy"), d_o_shape, &d_o[..len]);
        run(&[
            "backward", "--q", &qa, "--k", &ka, "--v", &va, "--alibi", "--do", &dov, "--dq", &dq,
            "--dk", &dk, "--dv", &dv,
        ])
    };
    assert_success(&backward(&o_shape));
    for (file, shape) in [
        ("dq.npy", q_shape),
        ("dk.npy", case.qk_shape()),
        ("dv.npy", case.v_shape()),
    ] {
        let (got, values) = read_npy(&case.path(file));
        assert_eq!(got, shape, "{file}");
        assert!(values.iter().all(|x| x.is_finite()), "{file}");
    }
    // dO shaped like v (one head) is refused, naming the output's shape.
    assert_fails(&backward(&case.v_shape()), &["do", "q's heads"]);
    // 2 q heads over 3 kv heads cannot group.
    write_npy(&case.path("k.npy"), &[1, 3, 70, 12], &repeat(&case.k));
    write_npy(&case.path("v.npy"), &[1, 3, 70, 6], &repeat(&case.v));
    write_npy(&case.path("q.npy"), &[1, 2, 70, 12], &q[..2 * 70 * 12]);
    assert_fails(&case.forward(&[]), &["heads", "multiple"]);
}

/// `backward` writes dq, dk, dv and dS0 matching the f64 reference backward.
#[test]
fn backward_matches_reference() {
    let seed = common::seed();
    let mut rng = common::rng(seed);
    let dims = Dims {
        b: 1,
        h: 2,
        n: 70,
        d: 12,
        e: 6,
    };
    let case = Case::new(dims, Layout::Bnhd, &mut rng);
    let d_o = common::random(&mut rng, 2 * 70 * 6, 1);
    let s0 = common::random(&mut rng, 2 * 12 * 6, 1);
    let dsn = common::random(&mut rng, 2 * 12 * 6, 1);
    write_npy(&case.path("do.npy"), &case.v_shape(), &d_o);
    write_npy(&case.path("s0.npy"), &dims.state_shape(), &s0);
    write_npy(&case.path("dsn.npy"), &dims.state_shape(), &dsn);
    let a = |n: &str| case.arg(n);
    let (q, k, v, dov, s0a, dsna) = (
        a("q.npy"),
        a("k.npy"),
        a("v.npy"),
        a("do.npy"),
        a("s0.npy"),
        a("dsn.npy"),
    );
    let (dq, dk, dv, ds0) = (a("dq.npy"), a("dk.npy"), a("dv.npy"), a("ds0.npy"));
    let out = run(&[
        "backward",
        "--q",
        &q,
        "--k",
        &k,
        "--v",
        &v,
        "--layout",
        "bnhd",
        "--alibi",
        "--scale",
        "0.5",
        "--initial-state",
        &s0a,
        "--do",
        &dov,
        "--d-final-state",
        &dsna,
        "--dq",
        &dq,
        "--dk",
        &dk,
        "--dv",
        &dv,
        "--d-initial-state",
        &ds0,
    ]);
    assert_success(&out);
    let want = reference::backward(
        dims,
        Layout::Bnhd,
        &case.q,
        &case.k,
        &case.v,
        &d_o,
        &alibi_slopes(2),
        0.5,
        Some(&s0),
        Some(&dsn),
    );
    for (file, want) in [
        ("dq.npy", &want.dq),
        ("dk.npy", &want.dk),
        ("dv.npy", &want.dv),
        ("ds0.npy", &want.d_initial_state),
    ] {
        let (_, got) = read_npy(&case.path(file));
        let err = reference::relative_error(&got, want);
        assert!(err <= 1e-5, "{file}: relative error {err} (seed {seed})");
    }
    // A gradient of the wrong shape is refused in one line.
    write_npy(&case.path("do.npy"), &[1, 69, 2, 6], &d_o[..69 * 12]);
    let out = run(&[
        "backward", "--q", &q, "--k", &k, "--v", &v, "--do", &dov, "--dq", &dq, "--dk", &dk,
        "--dv", &dv,
    ]);
    assert_fails(&out, &["do.npy", "shaped like v"]);
}

#[test]
fn outputs_never_overwrite_each_other_or_an_input() {
    // Before 0.2.0 these exited 0 and lost data.
    let case = small_case(Layout::Bhnd);
    let (o, q) = (case.arg("o.npy"), case.arg("q.npy"));
    let out = case.forward(&["--final-state", &o]);
    assert_fails(&out, &["--out", "--final-state", "o.npy"]);
    // --out on an input, named through another spelling of its path.
    let q_again = format!("{}/./q.npy", case.dir.path().display());
    let args = [
        "forward",
        "--q",
        &q,
        "--k",
        &case.arg("k.npy"),
        "--v",
        &case.arg("v.npy"),
        "--out",
        &q_again,
    ];
    assert_fails(&run(&args), &["--out", "--q"]);
    assert_eq!(read_npy(&case.path("q.npy")).1, case.q, "q.npy was touched");
    let d_o = case.arg("v.npy");
    let dq = case.arg("dq.npy");
    let args = [
        "backward",
        "--q",
        &q,
        "--k",
        &case.arg("k.npy"),
        "--v",
        &case.arg("v.npy"),
        "--do",
        &d_o,
        "--dq",
        &dq,
        "--dk",
        &dq,
        "--dv",
        &case.arg("dv.npy"),
    ];
    assert_fails(&run(&args), &["--dq", "--dk"]);
}

#[test]
fn a_failed_write_leaves_nothing_behind() {
    // The final state cannot be written: o.npy must not appear either
    // (before 0.2.0 it stayed behind), and no partial file.
    let case = small_case(Layout::Bhnd);
    let out = case.forward(&["--final-state", "/proc/no-such-dir/sn.npy"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let left: Vec<String> = std::fs::read_dir(case.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !matches!(n.as_str(), "q.npy" | "k.npy" | "v.npy"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn absurd_sizes_and_durations_fail_in_one_line() {
    // Each ended in an abort, a capacity-overflow panic or a hang before
    // 0.2.0. Now: exit 1 (or 2 for what the parser refuses), one line that
    // names the option.
    let cases: [(&[&str], &str); 14] = [
        (&["bench", "--reps", "1099511627776"], "--reps"),
        (&["bench", "--reps", "18446744073709551615"], "--reps"),
        (&["bench", "--reps", "18446744073709551616"], "--reps"),
        (&["bench", "--warmup", "1099511627776"], "--warmup"),
        (&["bench", "--tokens", "1099511627776"], "--tokens"),
        (&["bench", "--b", "8589934592"], "--b"),
        (
            &["bench", "--decode", "--decode-batches", "1099511627776"],
            "--decode-batches",
        ),
        (
            &["bench", "--decode", "--decode-batches", "0"],
            "--decode-batches",
        ),
        (&["bench", "--warmup-ms", "inf"], "--warmup-ms"),
        (&["bench", "--warmup-ms", "-1"], "--warmup-ms"),
        (&["bench", "--warmup-ms", "nan"], "--warmup-ms"),
        (&["bench", "--max-ms", "-inf"], "--max-ms"),
        (
            &[
                "demo", "--n", "1000000", "--h", "1000", "--d", "1000", "--e", "1",
            ],
            "--n",
        ),
        (&["demo", "--n", "0"], "--b, --h, --n"),
    ];
    for (args, option) in cases {
        let out = run(args);
        let stderr = text(&out.stderr);
        let code = out.status.code();
        assert!(
            matches!(code, Some(1) | Some(2)),
            "{args:?}: exit {code:?}, {stderr:?}"
        );
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{args:?}: {stderr:?}");
        assert!(
            lines[0].starts_with("error: ") && lines[0].contains(option),
            "{args:?}: {stderr:?}"
        );
    }
    // A scale read as a number, then refused with its reason.
    let case = small_case(Layout::Bhnd);
    for scale in ["-inf", "nan", "inf"] {
        assert_fails(&case.forward(&["--scale", scale]), &["--scale", "finite"]);
    }
}

#[test]
fn switches_with_unknown_values_are_refused() {
    // `LIGHTNING_COOP=banana` and `=OFF` both read as "on" before 0.2.0.
    let out = bin()
        .arg("info")
        .env("LIGHTNING_COOP", "banana")
        .output()
        .unwrap();
    assert_fails(&out, &["LIGHTNING_COOP", "banana"]);
    let out = bin()
        .arg("info")
        .env("LIGHTNING_CHECKED", "maybe")
        .output()
        .unwrap();
    assert_fails(&out, &["LIGHTNING_CHECKED", "maybe"]);
    let out = bin()
        .arg("info")
        .env("LIGHTNING_COOP", "OFF")
        .output()
        .unwrap();
    assert_success(&out);
    assert!(text(&out.stdout).contains("cooperative matrices no"));
}

/// A float32 `.npy` file whose header promises `shape` (a Python tuple's
/// text), followed by 16 bytes of data.
fn write_npy_header(path: &Path, shape: &str) {
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
    while !(10 + header.len() + 1).is_multiple_of(64) {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = vec![0x93];
    bytes.extend_from_slice(b"NUMPY\x01\x00");
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(&[0; 16]);
    std::fs::write(path, &bytes).unwrap();
}

#[test]
fn npy_shapes_beyond_the_file_are_refused() {
    // (2^32, 2^32, 1, 1) float32: the element count overflows; once it
    // passed as an empty array.
    let case = small_case(Layout::Bhnd);
    let path = case.path("huge.npy");
    write_npy_header(&path, "(4294967296, 4294967296, 1, 1)");
    let huge = path.display().to_string();
    let (k, v, o) = (case.arg("k.npy"), case.arg("v.npy"), case.arg("o.npy"));
    let args = ["forward", "--q", &huge, "--k", &k, "--v", &v, "--out", &o];
    assert_fails(&run(&args), &["`q`", "too many elements"]);
    // A shape that fits in memory but not in the file: truncated, before
    // anything is allocated for it.
    write_npy_header(&path, "(1, 1, 1, 100000000)");
    assert_fails(&run(&args), &["`q`", "truncated"]);
}

/// `mpirun -np R lightning-wgpu forward|backward --sequence-parallel` for
/// R = 1..4 writes what one process writes (f32, within 1e-5 of the largest
/// entry): uneven shares of n = 61, an initial state and a final-state
/// gradient. Needs the `mpi` feature and OpenMPI's `mpirun` (`cargo xtask
/// test` installs it).
#[cfg(feature = "mpi")]
#[test]
fn sequence_parallel_under_mpirun_matches_one_process() {
    let seed = common::seed();
    let mut rng = common::rng(seed);
    let dims = Dims {
        b: 2,
        h: 3,
        n: 61,
        d: 8,
        e: 12,
    };
    let case = Case::new(dims, Layout::Bnhd, &mut rng);
    let state = [dims.b, dims.h, dims.d, dims.e];
    let d_o = common::random(&mut rng, dims.b * dims.h * dims.n * dims.e, 1);
    write_npy(&case.path("do.npy"), &case.v_shape(), &d_o);
    for name in ["s0.npy", "dsn.npy"] {
        write_npy(
            &case.path(name),
            &state,
            &common::random(&mut rng, state.iter().product(), 1),
        );
    }
    let shared = || -> Vec<String> {
        let mut a: Vec<String> = [
            "--q",
            "q.npy",
            "--k",
            "k.npy",
            "--v",
            "v.npy",
            "--initial-state",
            "s0.npy",
        ]
        .iter()
        .map(|s| {
            if s.ends_with(".npy") {
                case.arg(s)
            } else {
                s.to_string()
            }
        })
        .collect();
        a.extend(["--layout", "bnhd", "--alibi", "--scale", "0.5"].map(String::from));
        a
    };
    let forward = |tag: &str| {
        let mut a = vec!["forward".to_string()];
        a.extend(shared());
        a.extend([
            "--out".into(),
            case.arg(&format!("o{tag}.npy")),
            "--final-state".into(),
            case.arg(&format!("sn{tag}.npy")),
        ]);
        a
    };
    let backward = |tag: &str| {
        let mut a = vec!["backward".to_string()];
        a.extend(shared());
        a.extend([
            "--do".into(),
            case.arg("do.npy"),
            "--d-final-state".into(),
            case.arg("dsn.npy"),
        ]);
        for g in ["dq", "dk", "dv"] {
            a.extend([format!("--{g}"), case.arg(&format!("{g}{tag}.npy"))]);
        }
        a.extend([
            "--d-initial-state".into(),
            case.arg(&format!("ds0{tag}.npy")),
        ]);
        a
    };
    for args in [forward(""), backward("")] {
        assert_success(&bin().args(&args).output().expect("run"));
    }
    for ranks in 1..=4 {
        let tag = format!("-r{ranks}");
        for mut args in [forward(&tag), backward(&tag)] {
            args.push("--sequence-parallel".into());
            let out = Command::new("mpirun")
                .args([
                    "--allow-run-as-root",
                    "--oversubscribe",
                    "--bind-to",
                    "none",
                ])
                .args(["--mca", "btl", "self,vader", "--mca", "pml", "ob1"])
                .args(["--mca", "btl_vader_single_copy_mechanism", "none"])
                .args(["-np", &ranks.to_string()])
                .arg(env!("CARGO_BIN_EXE_lightning-wgpu"))
                .args(&args)
                .env("XDG_RUNTIME_DIR", std::env::temp_dir())
                .output()
                .expect("mpirun (cargo xtask test installs openmpi-bin)");
            assert_success(&out);
        }
        for name in ["o", "sn", "dq", "dk", "dv", "ds0"] {
            let (shape, want) = read_npy(&case.path(&format!("{name}.npy")));
            let (got_shape, got) = read_npy(&case.path(&format!("{name}{tag}.npy")));
            assert_eq!(got_shape, shape, "{name} with {ranks} ranks");
            let peak = want.iter().fold(0f32, |m, x| m.max(x.abs()));
            let worst = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(
                worst <= 1e-5 * peak,
                "{name} with {ranks} ranks: max error {worst} against {peak} (seed {seed})"
            );
        }
    }
}

/// `decode` on .npy files: t draft tokens for a request in slot 1 (another
/// is padding), outputs against the f64 reference from that slot's state,
/// the new cache at the state after the 2 accepted tokens, slot 0 unchanged;
/// accepting more than drafted fails with a message.
#[test]
fn decode_drafts_and_commits_on_npy_files() {
    let seed = common::seed();
    let mut rng = common::rng(seed);
    let (t, batch, h, d, e, slots) = (3, 2, 2, 4, 5, 2);
    let dir = tempfile::tempdir().expect("temp dir");
    let path = |n: &str| dir.path().join(n);
    let arg = |n: &str| path(n).display().to_string();
    let q = common::random(&mut rng, t * batch * h * d, d);
    let k = common::random(&mut rng, t * batch * h * d, d);
    let v = common::random(&mut rng, t * batch * h * e, 1);
    let cache = common::random(&mut rng, slots * h * d * e, 1);
    write_npy(&path("q.npy"), &[t, batch, h, d], &q);
    write_npy(&path("k.npy"), &[t, batch, h, d], &k);
    write_npy(&path("v.npy"), &[t, batch, h, e], &v);
    write_npy(&path("cache.npy"), &[slots, h, d, e], &cache);
    write_npy(&path("slots.npy"), &[batch], &[1i32, -1]);
    write_npy(&path("accepted.npy"), &[batch], &[2i64, 0]);
    let base = [
        "decode",
        "--q",
        &arg("q.npy"),
        "--k",
        &arg("k.npy"),
        "--v",
        &arg("v.npy"),
        "--cache",
        &arg("cache.npy"),
        "--slots",
        &arg("slots.npy"),
        "--alibi",
        "--out",
        &arg("o.npy"),
        "--new-cache",
        &arg("c2.npy"),
    ]
    .map(String::from);
    let mut args: Vec<String> = base.to_vec();
    args.extend(["--accepted".into(), arg("accepted.npy")]);
    assert_success(&bin().args(&args).output().expect("run"));
    let (_, o) = read_npy(&path("o.npy"));
    let (_, new_cache) = read_npy(&path("c2.npy"));
    let size = h * d * e;
    // Request 0's tokens as a (1, h, j, *) problem from slot 1's state.
    let prefix = |x: &[f32], w: usize, j: usize| {
        let mut out = vec![0.0; h * j * w];
        for i in 0..j {
            for hh in 0..h {
                out[(hh * j + i) * w..][..w].copy_from_slice(&x[(i * batch * h + hh) * w..][..w]);
            }
        }
        out
    };
    let slopes = alibi_slopes(h);
    let s1 = &cache[size..2 * size];
    let whole = reference::forward(
        Dims {
            b: 1,
            h,
            n: t,
            d,
            e,
        },
        Layout::Bhnd,
        &prefix(&q, d, t),
        &prefix(&k, d, t),
        &prefix(&v, e, t),
        &slopes,
        1.0,
        Some(s1),
    );
    let got: Vec<f32> = (0..h)
        .flat_map(|hh| (0..t).flat_map(move |i| (0..e).map(move |c| (hh, i, c))))
        .map(|(hh, i, c)| o[((i * batch) * h + hh) * e + c])
        .collect();
    assert!(
        reference::relative_error(&got, &whole.o) < 1e-5,
        "decode outputs (seed {seed})"
    );
    assert!(
        (0..t).all(|i| o[(i * batch + 1) * h * e..][..h * e]
            .iter()
            .all(|&x| x == 0.0)),
        "padding outputs are not zero"
    );
    let two = reference::forward(
        Dims {
            b: 1,
            h,
            n: 2,
            d,
            e,
        },
        Layout::Bhnd,
        &prefix(&q, d, 2),
        &prefix(&k, d, 2),
        &prefix(&v, e, 2),
        &slopes,
        1.0,
        Some(s1),
    );
    assert!(
        reference::relative_error(&new_cache[size..], &two.final_state) < 1e-5,
        "committed state"
    );
    assert_eq!(&new_cache[..size], &cache[..size], "slot 0 changed");

    write_npy(&path("too_many.npy"), &[batch], &[4i32, 0]);
    let mut args: Vec<String> = base.to_vec();
    args.extend(["--accepted".into(), arg("too_many.npy")]);
    let out = bin().args(&args).output().expect("run");
    assert_fails(&out, &["accepted"]);
}

#[test]
fn decode_takes_grouped_heads_with_slopes_per_kv_head() {
    // q of twice k's heads, both members of each group a copy of the q of
    // an ungrouped run: every q head's output equals its kv head's there,
    // and --alibi gives k's heads their slopes.
    let seed = common::seed();
    let mut rng = common::rng(seed);
    let (t, batch, h, d, e, slots) = (2, 2, 3, 4, 6, 3);
    let dir = tempfile::tempdir().expect("temp dir");
    let path = |n: &str| dir.path().join(n);
    let arg = |n: &str| path(n).display().to_string();
    let q = common::random(&mut rng, t * batch * h * d, d);
    let grouped: Vec<f32> = (0..t * batch * 2 * h)
        .flat_map(|row| {
            let (tb, head) = (row / (2 * h), row % (2 * h));
            q[(tb * h + head / 2) * d..][..d].to_vec()
        })
        .collect();
    write_npy(&path("q.npy"), &[t, batch, h, d], &q);
    write_npy(&path("qg.npy"), &[t, batch, 2 * h, d], &grouped);
    let k = common::random(&mut rng, t * batch * h * d, d);
    write_npy(&path("k.npy"), &[t, batch, h, d], &k);
    let v = common::random(&mut rng, t * batch * h * e, 1);
    write_npy(&path("v.npy"), &[t, batch, h, e], &v);
    let cache = common::random(&mut rng, slots * h * d * e, 1);
    write_npy(&path("cache.npy"), &[slots, h, d, e], &cache);
    write_npy(&path("slots.npy"), &[batch], &[2i32, 0]);
    let run = |q: &str, out: &str, new_cache: &str| {
        let args = [
            "decode",
            "--q",
            &arg(q),
            "--k",
            &arg("k.npy"),
            "--v",
            &arg("v.npy"),
            "--cache",
            &arg("cache.npy"),
            "--slots",
            &arg("slots.npy"),
            "--alibi",
            "--out",
            &arg(out),
            "--new-cache",
            &arg(new_cache),
        ];
        assert_success(&bin().args(args).output().expect("run"));
    };
    run("q.npy", "o.npy", "c.npy");
    run("qg.npy", "og.npy", "cg.npy");
    let (shape, o) = read_npy(&path("o.npy"));
    let (gshape, og) = read_npy(&path("og.npy"));
    assert_eq!(shape, [t, batch, h, e]);
    assert_eq!(gshape, [t, batch, 2 * h, e]);
    for row in 0..t * batch * 2 * h {
        let (tb, head) = (row / (2 * h), row % (2 * h));
        let want = &o[(tb * h + head / 2) * e..][..e];
        assert_eq!(
            &og[row * e..][..e],
            want,
            "q head {head} of token/request {tb}"
        );
    }
    assert_eq!(
        read_npy(&path("cg.npy")).1,
        read_npy(&path("c.npy")).1,
        "new cache"
    );
}

/// `forward --checkpoint-every C --checkpoints CK.npy` writes (b, h, n / C,
/// d, e) states: the first the f64 reference's state after C rows, the last
/// the final state when C divides n; a C that is not a multiple of the
/// block rows fails naming the option.
#[test]
fn forward_writes_checkpoints() {
    let seed = common::seed();
    let mut rng = common::rng(seed);
    let dims = Dims {
        b: 1,
        h: 2,
        n: 128,
        d: 4,
        e: 6,
    };
    let case = Case::new(dims, Layout::Bhnd, &mut rng);
    let (ck, sn) = (case.arg("ck.npy"), case.arg("sn.npy"));
    let out = case.forward(&[
        "--alibi",
        "--checkpoint-every",
        "64",
        "--checkpoints",
        &ck,
        "--final-state",
        &sn,
    ]);
    assert_success(&out);
    let (shape, checkpoints) = read_npy(&case.path("ck.npy"));
    assert_eq!(shape, vec![1, 2, 2, 4, 6]);
    let (_, final_state) = read_npy(&case.path("sn.npy"));
    let size = 4 * 6;
    for head in 0..2 {
        let last = &checkpoints[(head * 2 + 1) * size..][..size];
        let want = &final_state[head * size..][..size];
        let err = last
            .iter()
            .zip(want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            err <= 1e-6,
            "head {head}: the last checkpoint is not the final state ({err}, seed {seed})"
        );
    }
    let first = Dims { n: 64, ..dims };
    let prefix = |x: &[f32], w| Layout::Bhnd.rows(x, &dims, w, 0..64);
    let want = reference::forward(
        first,
        Layout::Bhnd,
        &prefix(&case.q, 4),
        &prefix(&case.k, 4),
        &prefix(&case.v, 6),
        &alibi_slopes(2),
        1.0,
        None,
    );
    for head in 0..2 {
        let got = &checkpoints[(head * 2) * size..][..size];
        let err = reference::relative_error(got, &want.final_state[head * size..][..size]);
        assert!(
            err <= 1e-5,
            "head {head}: checkpoint 0 against the reference ({err:e}, seed {seed})"
        );
    }
    let out = case.forward(&["--checkpoint-every", "65", "--checkpoints", &ck]);
    assert_fails(&out, &["checkpoint_every"]);
}

/// `bench --decode --decode-tokens 1,3` measures decode steps and drafts
/// (3 tokens per request, then the commit) and writes both to the JSON.
#[test]
fn bench_measures_what_checkpoints_cost() {
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("ck.json").display().to_string();
    let out = run(&[
        "bench",
        "--providers",
        "lightning-chunk",
        "--b",
        "1",
        "--h",
        "2",
        "--d",
        "8",
        "--lengths",
        "200",
        "--checkpoint-every",
        "64",
        "--reps",
        "1",
        "--warmup",
        "0",
        "--json",
        &json,
    ]);
    assert_success(&out);
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("State checkpoints every 64 positions"),
        "{stdout}"
    );
    let value: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("the JSON")).expect("JSON");
    let row = &value["rows"][0];
    for key in ["wall_ms", "checkpoints_wall_ms"] {
        assert!(
            row[key].as_f64().is_some_and(|ms| ms > 0.0),
            "{key} in {row}"
        );
    }
    // Not a multiple of the block rows: the library's error, naming the flag's value.
    let bad = run(&[
        "bench",
        "--providers",
        "lightning-chunk",
        "--b",
        "1",
        "--h",
        "2",
        "--d",
        "8",
        "--lengths",
        "200",
        "--checkpoint-every",
        "63",
        "--reps",
        "1",
        "--warmup",
        "0",
    ]);
    let stderr = text(&bad.stderr);
    assert!(!bad.status.success(), "{stderr}");
    assert!(stderr.contains("checkpoint"), "{stderr}");
}

#[test]
fn bench_measures_decode_drafts() {
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("decode.json").display().to_string();
    let out = run(&[
        "bench",
        "--decode",
        "--decode-batches",
        "2",
        "--decode-tokens",
        "1,3",
        "--h",
        "2",
        "--d",
        "8",
        "--e",
        "8",
        "--reps",
        "1",
        "--warmup",
        "0",
        "--json",
        &json,
    ]);
    assert_success(&out);
    let text = std::fs::read_to_string(&json).expect("the JSON");
    let value: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    let rows = value["rows"].as_array().expect("rows");
    let kinds: Vec<(String, u64)> = rows
        .iter()
        .map(|r| {
            (
                r["provider"].as_str().unwrap_or("").to_string(),
                r["n"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert!(kinds.contains(&("decode".into(), 1)), "{kinds:?}");
    assert!(kinds.contains(&("decode-draft".into(), 3)), "{kinds:?}");
    let out = run(&["bench", "--decode", "--decode-tokens", "0"]);
    assert_fails(&out, &["--decode-tokens"]);
}

#[test]
fn bench_decode_skips_a_size_past_the_limits_and_keeps_the_rest() {
    // 100000 requests of 2 MiB states pass the benchmark's cap (4 of the
    // largest buffers) on any device; 2 requests do not.
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("decode.json").display().to_string();
    let big = [
        "--h", "32", "--d", "128", "--e", "128", "--reps", "1", "--warmup", "0",
    ];
    let mut args = vec![
        "bench",
        "--decode",
        "--decode-batches",
        "2,100000",
        "--json",
        &json,
    ];
    args.extend(big);
    let out = run(&args);
    assert_success(&out);
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("skipped decode with batch 100000, 1 tokens"),
        "{stderr}"
    );
    let value: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("the JSON")).expect("JSON");
    let batches: Vec<u64> = value["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| r["b"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(batches, [2], "{value}");
    // Every size skipped: an error naming the cache.
    let mut args = vec!["bench", "--decode", "--decode-batches", "100000"];
    args.extend(big);
    assert_fails(&run(&args), &["every decode size was skipped", "`cache`"]);
}
