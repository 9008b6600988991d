//! What sequence parallelism costs: R ranks each run the forward (and the
//! backward) on their n/R rows of one sequence, with the one all-gather of
//! states between them; the median wall time of a call and the bytes each
//! rank sends per all-gather are printed as JSON. The ranks are threads, each
//! with its own device on the same adapter (as R processes would have),
//! exchanging in memory: the transport (MPI, torch.distributed) adds one
//! all-gather of those bytes. `--ranks 1` is the baseline, a plain call over
//! the whole sequence timed the same way.
//!
//! ```text
//! cargo run --release -p lightning-wgpu --example sequence_parallel_bench -- --ranks 2 --n 131072
//! ```

use lightning_wgpu::{
    alibi_slopes, BackwardOptions, Context, DType, Exchange, ForwardOptions, Result,
};
use std::sync::{Arc, Barrier, Mutex};
use std::time::Instant;

/// An all-gather between threads: each writes its bytes, all wait, all read.
struct Room {
    rank: usize,
    ranks: usize,
    slots: Arc<Mutex<Vec<Vec<u8>>>>,
    barrier: Arc<Barrier>,
}

impl Exchange for Room {
    fn rank(&self) -> usize {
        self.rank
    }
    fn ranks(&self) -> usize {
        self.ranks
    }
    fn all_gather(&self, mine: &[u8]) -> Result<Vec<u8>> {
        self.slots.lock().expect("a rank panicked")[self.rank] = mine.to_vec();
        self.barrier.wait();
        let all = self.slots.lock().expect("a rank panicked").concat();
        // Nobody writes the next round's bytes before everyone has read these.
        self.barrier.wait();
        Ok(all)
    }
}

#[derive(Clone, Copy)]
struct Args {
    ranks: usize,
    n: usize,
    h: usize,
    d: usize,
    dtype: DType,
    reps: usize,
    backward: bool,
    mode: Mode,
    shared: bool,
    warmup: usize,
    passes: bool,
}

/// What each rank runs, to tell the split's own cost from the GPU's
/// sharing: by default the sequence-parallel call (a plain one for one
/// rank); the sequence-parallel call even for one rank (`parallel`); a
/// plain call on its slice with no exchange (`split`), or that plain call
/// one rank at a time (`serial`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Auto,
    Parallel,
    Split,
    Serial,
}

fn parse() -> std::result::Result<Args, String> {
    let mut a = Args {
        ranks: 1,
        n: 131072,
        h: 32,
        d: 128,
        dtype: DType::BF16,
        reps: 10,
        backward: true,
        mode: Mode::Auto,
        shared: false,
        warmup: 20,
        passes: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        let number = |v: String| v.parse::<usize>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--ranks" => a.ranks = number(value()?)?.max(1),
            "--n" => a.n = number(value()?)?,
            "--h" => a.h = number(value()?)?,
            "--d" => a.d = number(value()?)?,
            "--reps" => a.reps = number(value()?)?.max(1),
            "--dtype" => a.dtype = value()?.parse().map_err(|e| format!("--dtype: {e}"))?,
            "--no-backward" => a.backward = false,
            "--shared-device" => a.shared = true,
            "--warmup" => a.warmup = number(value()?)?,
            "--passes" => a.passes = true,
            "--mode" => {
                a.mode = match value()?.as_str() {
                    "auto" => Mode::Auto,
                    "parallel" => Mode::Parallel,
                    "split" => Mode::Split,
                    "serial" => Mode::Serial,
                    other => {
                        return Err(format!("--mode {other}: auto, parallel, split or serial"))
                    }
                }
            }
            _ => return Err(format!("unknown argument {flag}")),
        }
    }
    if a.n < a.ranks {
        return Err(format!("--n {} must be at least --ranks {}", a.n, a.ranks));
    }
    Ok(a)
}

/// Deterministic values in [-0.1, 0.1), different per rank.
fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 11) as f64 / (1u64 << 53) as f64 * 0.2 - 0.1) as f32
        })
        .collect()
}

/// Waits for everything submitted to the context's device.
fn wait(ctx: &Context) -> Result<()> {
    ctx.device()
        .poll(wgpu::PollType::wait_indefinitely())
        .map(|_| ())
        .map_err(|e| lightning_wgpu::Error::DeviceLost(e.to_string()))
}

/// Median wall time in ms of `f` after `warmup` calls (the same count on
/// every rank: each call may exchange), every rank starting together; with
/// `passes`, the GPU time of one more call by kernel.
fn median_ms(
    barrier: &Barrier,
    ctx: &Context,
    (reps, warmup, passes): (usize, usize, bool),
    mut f: impl FnMut() -> Result<()>,
) -> Result<(f64, Vec<(&'static str, f64)>)> {
    let wait = || wait(ctx);
    for _ in 0..warmup {
        f()?;
    }
    wait()?;
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        barrier.wait();
        let start = Instant::now();
        f()?;
        wait()?;
        barrier.wait();
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    let mut by_pass: Vec<(&'static str, f64)> = Vec::new();
    if passes && ctx.can_time() {
        barrier.wait();
        ctx.start_timing(4096)?;
        f()?;
        for (name, seconds) in ctx.finish_timing_by_pass()? {
            match by_pass.iter_mut().find(|(n, _)| *n == name) {
                Some((_, ms)) => *ms += seconds * 1e3,
                None => by_pass.push((name, seconds * 1e3)),
            }
        }
    }
    Ok((times[reps / 2], by_pass))
}

/// Kernel times as a JSON object.
fn passes_json(passes: &[(&str, f64)]) -> String {
    let fields: Vec<String> = passes
        .iter()
        .map(|(n, ms)| format!("{n:?}: {ms:.3}"))
        .collect();
    format!("{{{}}}", fields.join(", "))
}

/// One rank: its slice, warm-up, then the timed forward and backward.
/// One rank's (forward ms, backward ms, adapter name, its kernels' times).
fn rank_main(
    args: Args,
    ctx: Arc<Context>,
    room: Room,
    barrier: Arc<Barrier>,
    turn: Arc<Mutex<()>>,
) -> Result<(f64, Option<f64>, String, String)> {
    let Args {
        ranks,
        n,
        h,
        d,
        dtype,
        ..
    } = args;
    let rank = room.rank;
    // Even slices, the remainder on the last rank.
    let len = n / ranks + if rank == ranks - 1 { n % ranks } else { 0 };
    let shape = [1, h, len, d];
    let make = |seed| ctx.tensor_as(&values(h * len * d, seed), &shape, dtype);
    let (q, k, v, d_o) = (
        make(10 * rank as u64 + 1)?,
        make(10 * rank as u64 + 2)?,
        make(10 * rank as u64 + 3)?,
        make(10 * rank as u64 + 4)?,
    );
    let slopes = alibi_slopes(h);
    let opts = ForwardOptions {
        slopes: Some(&slopes),
        output_final_state: true,
        ..Default::default()
    };
    let bopts = BackwardOptions {
        forward: opts,
        d_final_state: None,
    };
    let parallel = match args.mode {
        Mode::Auto => ranks > 1,
        Mode::Parallel => true,
        Mode::Split | Mode::Serial => false,
    };
    // Serial: the plain call of each rank runs to its end alone.
    let alone = |f: &mut dyn FnMut() -> Result<()>| {
        if args.mode != Mode::Serial {
            return f();
        }
        let _turn = turn.lock().expect("a rank panicked");
        f()?;
        wait(&ctx)
    };
    // With one rank the baseline is the plain call, which exchanges nothing.
    let timing = (args.reps, args.warmup, args.passes);
    let (forward_ms, forward_passes) = median_ms(&barrier, &ctx, timing, || {
        alone(&mut || {
            if parallel {
                ctx.forward_sequence_parallel(&q, &k, &v, &opts, &room)
                    .map(drop)
            } else {
                ctx.forward(&q, &k, &v, &opts).map(drop)
            }
        })
    })?;
    let (backward_ms, backward_passes) = if args.backward {
        let (ms, passes) = median_ms(&barrier, &ctx, timing, || {
            alone(&mut || {
                if parallel {
                    ctx.backward_sequence_parallel(&q, &k, &v, &d_o, &bopts, &room)
                        .map(drop)
                } else {
                    ctx.backward(&q, &k, &v, &d_o, &bopts).map(drop)
                }
            })
        })?;
        (Some(ms), passes)
    } else {
        (None, Vec::new())
    };
    let passes = format!(
        "{{\"rank\": {rank}, \"forward\": {}, \"backward\": {}}}",
        passes_json(&forward_passes),
        passes_json(&backward_passes)
    );
    Ok((
        forward_ms,
        backward_ms,
        ctx.adapter_info().name.clone(),
        passes,
    ))
}

fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    let args = parse()?;
    let ranks = args.ranks;
    let slots = Arc::new(Mutex::new(vec![Vec::new(); ranks]));
    let (room_barrier, time_barrier) =
        (Arc::new(Barrier::new(ranks)), Arc::new(Barrier::new(ranks)));
    let turn = Arc::new(Mutex::new(()));
    // One device for every rank with --shared-device, else one each (as R
    // processes would have).
    let shared = args.shared.then(Context::new).transpose()?.map(Arc::new);
    let handles: Vec<_> = (0..ranks)
        .map(|rank| {
            let (shared, turn) = (shared.clone(), turn.clone());
            let room = Room {
                rank,
                ranks,
                slots: slots.clone(),
                barrier: room_barrier.clone(),
            };
            let barrier = time_barrier.clone();
            std::thread::spawn(move || {
                let result = match shared {
                    Some(ctx) => Ok(ctx),
                    None => Context::new().map(Arc::new),
                }
                .and_then(|ctx| rank_main(args, ctx, room, barrier, turn));
                // The other ranks would wait for this one at a barrier forever.
                if let Err(e) = &result {
                    eprintln!("rank {rank}: {e}");
                    std::process::exit(1);
                }
                result
            })
        })
        .collect();
    let mut results = Vec::new();
    for h in handles {
        results.push(h.join().map_err(|_| "a rank panicked")??);
    }
    // The slowest rank is the call's time.
    let forward_ms = results.iter().map(|r| r.0).fold(0.0, f64::max);
    let backward_ms = results.iter().filter_map(|r| r.1).reduce(f64::max);
    let Args { n, h, d, dtype, .. } = args;
    // Each all-gather carries a slice length (8 bytes) and one f32 state.
    let bytes = 8 + 4 * h * d * d;
    println!(
        "{{\"ranks\": {ranks}, \"n\": {n}, \"h\": {h}, \"d\": {d}, \"dtype\": \"{dtype:?}\", \
         \"mode\": \"{:?}\", \"shared_device\": {}, \"adapter\": {:?}, \"forward_ms\": {forward_ms:.3}, \"backward_ms\": {}, \
         \"bytes_per_rank_per_all_gather\": {bytes}, \"gpu_ms_by_rank\": [{}]}}",
        args.mode,
        args.shared,
        results[0].2,
        backward_ms.map_or("null".into(), |b| format!("{b:.3}")),
        results.iter().map(|r| r.3.as_str()).collect::<Vec<_>>().join(", "),
    );
    Ok(())
}
