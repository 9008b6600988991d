//! Splitting one call into dispatches that fit the device.
//!
//! A dispatch covers a range of (batch, head) pairs and a range of rows of the
//! sequence. Each tensor is bound as a window: an aligned byte range no larger
//! than the largest storage binding, plus an element offset (`base`) that the
//! kernels add to every index. Ranges shrink — heads first, then rows, state
//! carried between row ranges — until every window, the scratch states and
//! the grid fit.

use crate::error::{Error, Result};
use crate::kernels::spec::STRIPE;
use crate::layout::{Dims, Layout};

/// Largest scratch buffer of per-block states one dispatch may use, in bytes
/// (also capped by the binding limit). Much smaller, and long sequences fit
/// so few heads into a dispatch that the stripe scan, sequential over
/// stripes, runs with too few invocations (docs/perf-log.md).
pub(crate) const SCRATCH_BUDGET: u64 = 1 << 30;

/// A tensor's bound byte range and the element offset of the dispatch's
/// origin inside it (wrapping: see `offset_of` in shaders/common.wgsl).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Window {
    pub offset: u64,
    pub size: u64,
    pub base: u32,
}

/// One sequence of a call: its rows `[start, start + len)` and where its
/// states begin in the state tensor, counted in (head) states. A plain batch
/// is one sequence of all `n` rows whose states are indexed by `b * h + head`;
/// packed variable-length batches have one per sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Sequence {
    pub start: usize,
    pub len: usize,
    pub first_state: usize,
}

/// One dispatch's share of the work.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Segment {
    /// Where the rows of this segment's sequence begin, and how many it has.
    pub seq_start: usize,
    pub seq_len: usize,
    pub bh_start: usize,
    pub bh_count: usize,
    pub n0: usize,
    pub rows: usize,
    pub blocks: usize,
    pub q: Window,
    pub k: Window,
    pub v: Window,
    pub o: Window,
    pub state: Window,
    pub state_base: u32,
    /// Where the per-stripe states start in the scratch, in 32-bit words.
    pub stripe_base: u32,
    pub scratch_bytes: u64,
}

/// Which heads of a tensor a call's head `h` reads: the tensor's head
/// `first + step h`, so the tensor has `step` times the call's heads. Grouped
/// heads run one call per member of every group, each viewing its member's
/// heads of the wider tensors (q and o) in place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct HeadView {
    pub step: usize,
    pub first: usize,
}

impl Default for HeadView {
    fn default() -> Self {
        HeadView { step: 1, first: 0 }
    }
}

impl HeadView {
    /// Element strides (batch, head, row) of the view of a `(b, heads, n,
    /// width)` call's tensor, and the element offset of its first head.
    pub(crate) fn strides(
        self,
        layout: Layout,
        heads: usize,
        n: usize,
        width: usize,
    ) -> ((usize, usize, usize), usize) {
        let (sb, sh, sn) = layout.strides(heads * self.step, n, width);
        ((sb, sh * self.step, sn), self.first * sh)
    }
}

/// What bounds a plan.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub block_rows: usize,
    /// Bytes per element of q, k and v.
    pub input_bytes: u64,
    /// Bytes per element the passes write to o: 4 (f32, packed afterwards
    /// for halves), or 2 where the tensor-core output pass writes f16.
    pub output_bytes: u64,
    /// Bytes per element of the chunked forward's per-block states: 4, or 2
    /// where the tensor-core passes keep them in f16.
    pub block_state_bytes: u64,
    /// Views of q, k, v and o read (written) in reversed time.
    pub reversed: [bool; 4],
    /// Where each tensor starts in its buffer, in its elements.
    pub at: Starts,
    /// The heads q, k, v and o are read (written) at.
    pub heads: [HeadView; 4],
    pub max_binding: u64,
    pub offset_align: u64,
    pub max_groups: u64,
}

/// The element offset at which each tensor of a call starts in its buffer
/// (0 but for views of a caller's buffers).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Starts {
    pub q: u64,
    pub k: u64,
    pub v: u64,
    pub o: u64,
    pub state: u64,
}

/// The largest grid a pass of this segment dispatches.
pub(crate) fn max_groups(dims: &Dims, tile: usize, bh_count: usize, blocks: usize) -> u64 {
    let tiles = |w: usize| w.div_ceil(tile) as u64;
    let per_block = (tiles(dims.d) * tiles(dims.e)).max(tiles(dims.e));
    (bh_count * blocks) as u64 * per_block
}

#[allow(clippy::too_many_arguments)]
fn window(
    layout: Layout,
    dims: &Dims,
    width: usize,
    bh: (usize, usize),
    rows: (usize, usize),
    align: u64,
    elem: u64,
    reversed: bool,
    at: u64,
    view: HeadView,
) -> Window {
    let ((sb, sh, sn), first_head) = view.strides(layout, dims.h, dims.n, width);
    let at = at as usize + first_head;
    let (bh_start, bh_count) = bh;
    let (n0, len) = rows;
    // A reversed view reads logical row i at physical row n - 1 - i: the
    // segment's rows are then physical rows n - n0 - len ..= n - 1 - n0, and
    // its origin (logical row n0) is the last of them.
    let (first, origin_row) = if reversed {
        (dims.n - n0 - len, dims.n - 1 - n0)
    } else {
        (n0, n0)
    };
    let mut lo = usize::MAX;
    let mut hi = 0usize;
    for g in bh_start..bh_start + bh_count {
        let origin = at + (g / dims.h) * sb + (g % dims.h) * sh + first * sn;
        lo = lo.min(origin);
        hi = hi.max(origin + (len - 1) * sn + width);
    }
    // `align` is a multiple of 4, so a window starts on an element (for
    // halves, on an even one: the first of a word) and covers whole words.
    let start = (lo as u64 * elem) / align * align;
    let start_elements = (start / elem) as i128;
    let origin = (at + (bh_start / dims.h) * sb + origin_row * sn) as i128;
    Window {
        offset: start,
        size: (hi as u64 * elem - start).next_multiple_of(4),
        base: (origin - start_elements).rem_euclid(1 << 32) as u32,
    }
}

fn segment(
    layout: Layout,
    dims: &Dims,
    lim: &Limits,
    seq: &Sequence,
    bh: (usize, usize),
    rows: (usize, usize),
) -> Segment {
    let blocks = rows.1.div_ceil(lim.block_rows);
    let state_size = dims.d * dims.e;
    let per_block_words = ((bh.1 * blocks * state_size) as u64 * lim.block_state_bytes).div_ceil(4);
    let state_lo = lim.at.state as usize + (seq.first_state + bh.0) * state_size;
    let state_start = (state_lo as u64 * 4) / lim.offset_align * lim.offset_align;
    let [rq, rk, rv, ro] = lim.reversed;
    let [hq, hk, hv, ho] = lim.heads;
    // A tensor's window: its width, bytes per element, time direction, heads.
    let win = |width: usize, bytes: u64, reversed: bool, at: u64, view: HeadView| {
        window(
            layout,
            dims,
            width,
            bh,
            rows,
            lim.offset_align,
            bytes,
            reversed,
            at,
            view,
        )
    };
    Segment {
        seq_start: seq.start,
        seq_len: seq.len,
        bh_start: bh.0,
        bh_count: bh.1,
        n0: rows.0,
        rows: rows.1,
        blocks,
        q: win(dims.d, lim.input_bytes, rq, lim.at.q, hq),
        k: win(dims.d, lim.input_bytes, rk, lim.at.k, hk),
        v: win(dims.e, lim.input_bytes, rv, lim.at.v, hv),
        o: win(dims.e, lim.output_bytes, ro, lim.at.o, ho),
        state: Window {
            offset: state_start,
            size: ((state_lo + bh.1 * state_size) as u64) * 4 - state_start,
            base: 0,
        },
        state_base: (state_lo as u64 - state_start / 4) as u32,
        // Per-block states, then per-stripe ones in f32 (see block_state.wgsl).
        stripe_base: u32::try_from(per_block_words).unwrap_or(u32::MAX),
        scratch_bytes: (per_block_words
            + (bh.1 * blocks.div_ceil(STRIPE as usize) * state_size) as u64)
            * 4,
    }
}

/// Why a segment does not fit, naming the tensor.
fn misfit(
    s: &Segment,
    dims: &Dims,
    lim: &Limits,
) -> Option<(&'static str, u64, u64, &'static str)> {
    let binding = "max_storage_buffer_binding_size";
    for (arg, w) in [
        ("q", s.q),
        ("k", s.k),
        ("v", s.v),
        ("o", s.o),
        ("state", s.state),
    ] {
        if w.size > lim.max_binding {
            return Some((arg, w.size, lim.max_binding, binding));
        }
    }
    let scratch_cap = lim.max_binding.min(SCRATCH_BUDGET);
    if s.scratch_bytes > scratch_cap {
        return Some((
            "block states",
            s.scratch_bytes,
            scratch_cap,
            "scratch budget",
        ));
    }
    let groups = max_groups(dims, lim.block_rows, s.bh_count, s.blocks);
    if groups > lim.max_groups * lim.max_groups {
        return Some((
            "grid",
            groups,
            lim.max_groups * lim.max_groups,
            "max_compute_workgroups_per_dimension^2",
        ));
    }
    None
}

/// What an op's segments need.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Needs {
    /// Per-block scratch states (the chunked forward).
    pub scratch: bool,
    /// Rows may be split into ranges, the state carried between them (not so
    /// for softmax attention, which needs every earlier key at once).
    pub split_rows: bool,
    /// Most rows one segment may hold, whatever fits (the recurrence walks
    /// them all in one invocation).
    pub max_rows: usize,
}

impl Needs {
    pub(crate) const CHUNK: Needs = Needs {
        scratch: true,
        split_rows: true,
        max_rows: usize::MAX,
    };
    pub(crate) const WHOLE_ROWS: Needs = Needs {
        scratch: false,
        split_rows: false,
        max_rows: usize::MAX,
    };

    /// The recurrence, at most `max_rows` rows per segment.
    pub(crate) fn recurrent(max_rows: usize) -> Needs {
        Needs {
            scratch: false,
            split_rows: true,
            max_rows: max_rows.max(1),
        }
    }
}

/// Splits the problem into segments, in an order that carries the state
/// correctly: per sequence, all row ranges of a head range, first to last.
pub(crate) fn plan(
    layout: Layout,
    dims: &Dims,
    lim: &Limits,
    sequences: &[Sequence],
    needs: Needs,
) -> Result<Vec<Segment>> {
    let heads = dims.b * dims.h;
    let mut count = heads;
    let longest = sequences.iter().map(|s| s.len).max().unwrap_or(1);
    let mut rows = if longest > needs.max_rows {
        // Whole blocks per segment, so block boundaries stay where one
        // segment would put them.
        (needs.max_rows / lim.block_rows).max(1) * lim.block_rows
    } else {
        longest
    };
    loop {
        let mut segments = Vec::new();
        let mut worst = None;
        for seq in sequences {
            for bh_start in (0..heads).step_by(count) {
                for n0 in (seq.start..seq.start + seq.len).step_by(rows) {
                    let bh = (bh_start, count.min(heads - bh_start));
                    let mut s = segment(
                        layout,
                        dims,
                        lim,
                        seq,
                        bh,
                        (n0, rows.min(seq.start + seq.len - n0)),
                    );
                    if !needs.scratch {
                        s.scratch_bytes = 0;
                    }
                    if worst.is_none() {
                        worst = misfit(&s, dims, lim);
                    }
                    segments.push(s);
                }
            }
        }
        let Some((arg, bytes, limit, which)) = worst else {
            return Ok(segments);
        };
        if count > 1 {
            count = count.div_ceil(2);
        } else if needs.split_rows && rows > lim.block_rows {
            rows = rows.div_ceil(2).next_multiple_of(lim.block_rows);
        } else {
            return Err(Error::TooLarge {
                arg,
                bytes,
                limit,
                which,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lim(max_binding: u64) -> Limits {
        Limits {
            block_rows: 64,
            input_bytes: 4,
            output_bytes: 4,
            block_state_bytes: 4,
            reversed: [false; 4],
            at: Starts::default(),
            heads: Default::default(),
            max_binding,
            offset_align: 256,
            max_groups: 65535,
        }
    }

    fn whole(dims: &Dims) -> [Sequence; 1] {
        [Sequence {
            start: 0,
            len: dims.n,
            first_state: 0,
        }]
    }

    /// Every (bh, row) is covered exactly once, in row order per bh, and
    /// every window holds the elements its segment touches.
    fn check_cover(layout: Layout, dims: Dims, max_binding: u64) -> usize {
        let segs = plan(
            layout,
            &dims,
            &lim(max_binding),
            &whole(&dims),
            Needs::CHUNK,
        )
        .expect("plan");
        // Next row expected per (batch, head).
        let mut next_row = std::collections::HashMap::new();
        for s in &segs {
            for g in s.bh_start..s.bh_start + s.bh_count {
                let next = next_row.entry(g).or_insert(0);
                assert_eq!(*next, s.n0, "rows out of order for bh {g}");
                *next += s.rows;
                for (w, width) in [(s.q, dims.d), (s.v, dims.e)] {
                    assert!(w.size <= max_binding);
                    assert_eq!(w.offset % 256, 0);
                    let (sb, sh, sn) = layout.strides(dims.h, dims.n, width);
                    for (i, c) in [(0, 0), (s.rows - 1, width - 1)] {
                        let abs = (g / dims.h) * sb + (g % dims.h) * sh + (s.n0 + i) * sn + c;
                        // What the kernel computes, wrapping like WGSL u32.
                        let rel = (w.base as u64)
                            .wrapping_add(((g / dims.h - s.bh_start / dims.h) * sb) as u64)
                            .wrapping_add((g % dims.h * sh + i * sn + c) as u64)
                            % (1 << 32);
                        assert_eq!(rel * 4 + w.offset, abs as u64 * 4);
                        assert!(rel * 4 < w.size);
                    }
                }
            }
        }
        assert_eq!(next_row.len(), dims.b * dims.h);
        assert!(next_row.values().all(|&r| r == dims.n));
        segs.len()
    }

    #[test]
    fn one_segment_when_it_fits() {
        let dims = Dims {
            b: 2,
            h: 3,
            n: 100,
            d: 16,
            e: 8,
        };
        assert_eq!(check_cover(Layout::Bhnd, dims, 1 << 30), 1);
    }

    #[test]
    fn half_block_states_put_the_stripes_after_half_the_words() {
        // 300 rows: 5 blocks of 64 (the last short), 1 stripe.
        let dims = Dims {
            b: 2,
            h: 3,
            n: 300,
            d: 16,
            e: 32,
        };
        let size = (dims.d * dims.e) as u64;
        for (bytes, words) in [(4u64, 6 * 5 * size), (2, 6 * 5 * size / 2)] {
            let lim = Limits {
                block_state_bytes: bytes,
                ..lim(1 << 30)
            };
            let segs = plan(Layout::Bhnd, &dims, &lim, &whole(&dims), Needs::CHUNK).expect("plan");
            assert_eq!(segs.len(), 1);
            assert_eq!(u64::from(segs[0].stripe_base), words);
            assert_eq!(segs[0].scratch_bytes, (words + 6 * size) * 4);
        }
        // Half-width states let twice the heads share one scratch budget
        // (d and e wide enough that the states, not q, k or v, bound it).
        let dims = Dims {
            n: 64 * 48,
            d: 256,
            e: 256,
            ..dims
        };
        let size = (dims.d * dims.e) as u64;
        let per_head = |bytes: u64| (48 * size * bytes).div_ceil(4) * 4 + 3 * size * 4;
        let cap = 4 * per_head(4);
        for (bytes, heads) in [(4u64, 3), (2, 6)] {
            let lim = Limits {
                block_state_bytes: bytes,
                ..lim(cap)
            };
            let segs = plan(Layout::Bhnd, &dims, &lim, &whole(&dims), Needs::CHUNK).expect("plan");
            assert_eq!(segs[0].bh_count, heads, "{bytes}-byte states");
            assert!(segs.iter().all(|s| s.scratch_bytes <= cap));
        }
    }

    #[test]
    fn splits_heads_then_rows() {
        let dims = Dims {
            b: 3,
            h: 5,
            n: 1000,
            d: 24,
            e: 40,
        };
        // In (b, n, h, d) one head's rows are interleaved with the other
        // heads', so its windows are h times wider: give it more room.
        for (layout, loose, tight) in [
            (Layout::Bhnd, 64 << 10, 20 << 10),
            (Layout::Bnhd, 256 << 10, 64 << 10),
        ] {
            assert!(check_cover(layout, dims, loose) > 1);
            assert!(check_cover(layout, dims, tight) > 15, "rows split too");
        }
    }

    #[test]
    fn packed_sequences_keep_their_own_states() {
        let dims = Dims {
            b: 1,
            h: 2,
            n: 300,
            d: 8,
            e: 8,
        };
        let seqs = [
            Sequence {
                start: 0,
                len: 100,
                first_state: 0,
            },
            Sequence {
                start: 100,
                len: 1,
                first_state: 2,
            },
            Sequence {
                start: 101,
                len: 199,
                first_state: 4,
            },
        ];
        let segs = plan(Layout::Bhnd, &dims, &lim(1 << 20), &seqs, Needs::CHUNK).expect("plan");
        assert_eq!(segs.len(), 3);
        for (s, seq) in segs.iter().zip(&seqs) {
            assert_eq!((s.n0, s.rows, s.seq_start), (seq.start, seq.len, seq.start));
            assert_eq!(
                s.state.offset / 4 + s.state_base as u64,
                (seq.first_state * 64) as u64
            );
        }
    }

    /// A view of every group's member m addresses that member's heads of a
    /// tensor with `step` times the call's heads, in both layouts and when
    /// the binding forces splits.
    #[test]
    fn head_views_address_one_member_of_every_group() {
        let dims = Dims {
            b: 2,
            h: 3,
            n: 150,
            d: 12,
            e: 5,
        };
        let step = 3;
        for layout in [Layout::Bhnd, Layout::Bnhd] {
            for first in 0..step {
                let view = HeadView { step, first };
                let lim = Limits {
                    heads: [view, HeadView::default(), HeadView::default(), view],
                    ..lim(64 << 10)
                };
                let segs = plan(layout, &dims, &lim, &whole(&dims), Needs::CHUNK).expect("plan");
                assert!(segs.len() > 1, "the small binding must force splits");
                let ((sb, sh, sn), _) = view.strides(layout, dims.h, dims.n, dims.d);
                for s in &segs {
                    for g in s.bh_start..s.bh_start + s.bh_count {
                        let (b, head) = (g / dims.h, g % dims.h);
                        for (i, c) in [(0, 0), (s.rows - 1, dims.d - 1)] {
                            let at = [b, head * step + first, s.n0 + i, c];
                            let abs = layout.index(dims.h * step, dims.n, dims.d, at);
                            let rel = (s.q.base as u64)
                                .wrapping_add(((b - s.bh_start / dims.h) * sb) as u64)
                                .wrapping_add((head * sh + i * sn + c) as u64)
                                % (1 << 32);
                            assert_eq!(rel * 4 + s.q.offset, abs as u64 * 4, "{layout} {view:?}");
                            assert!(rel * 4 < s.q.size);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn refuses_what_cannot_fit() {
        let dims = Dims {
            b: 1,
            h: 1,
            n: 64,
            d: 256,
            e: 256,
        };
        let err = plan(Layout::Bhnd, &dims, &lim(4096), &whole(&dims), Needs::CHUNK).unwrap_err();
        assert!(matches!(err, Error::TooLarge { .. }), "{err}");
    }
}

#[cfg(test)]
mod reversed_tests {
    use super::*;

    /// In a reversed view, logical row i of every segment lands on physical
    /// row n - 1 - i inside its window, with the row stride negated.
    #[test]
    fn reversed_windows_address_the_mirrored_rows() {
        let dims = Dims {
            b: 2,
            h: 3,
            n: 300,
            d: 12,
            e: 5,
        };
        for layout in [Layout::Bhnd, Layout::Bnhd] {
            let lim = Limits {
                block_rows: 64,
                input_bytes: 4,
                output_bytes: 4,
                block_state_bytes: 4,
                reversed: [true; 4],
                at: Starts::default(),
                heads: Default::default(),
                max_binding: 16 << 10,
                offset_align: 256,
                max_groups: 65535,
            };
            let whole = [Sequence {
                start: 0,
                len: dims.n,
                first_state: 0,
            }];
            let segs = plan(layout, &dims, &lim, &whole, Needs::CHUNK).expect("plan");
            assert!(segs.len() > 4, "the small binding must force splits");
            for s in &segs {
                for (w, width) in [(s.q, dims.d), (s.v, dims.e)] {
                    let (sb, sh, sn) = layout.strides(dims.h, dims.n, width);
                    for g in s.bh_start..s.bh_start + s.bh_count {
                        for (i, c) in [(0, 0), (s.rows - 1, width - 1)] {
                            let phys = dims.n - 1 - (s.n0 + i);
                            let abs = (g / dims.h) * sb + (g % dims.h) * sh + phys * sn + c;
                            let rel = (w.base as u64)
                                .wrapping_add(((g / dims.h - s.bh_start / dims.h) * sb) as u64)
                                .wrapping_add(((g % dims.h) * sh) as u64)
                                .wrapping_add(
                                    (i as u64).wrapping_mul((sn as u32).wrapping_neg() as u64),
                                )
                                .wrapping_add(c as u64)
                                % (1 << 32);
                            assert_eq!(
                                rel * 4 + w.offset,
                                abs as u64 * 4,
                                "{layout} segment {s:?}"
                            );
                            assert!(rel * 4 < w.size);
                        }
                    }
                }
            }
        }
    }
}
