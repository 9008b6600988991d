//! Memory layouts of the q, k, v and o tensors.

use std::str::FromStr;

/// The sizes of one attention problem.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Dims {
    /// Batch size.
    pub b: usize,
    /// Heads.
    pub h: usize,
    /// Sequence length.
    pub n: usize,
    /// Width of q and k.
    pub d: usize,
    /// Width of v and o.
    pub e: usize,
}

impl Dims {
    /// Shape of the state `S`: `(b, h, d, e)`, whatever the layout.
    pub fn state_shape(&self) -> [usize; 4] {
        [self.b, self.h, self.d, self.e]
    }
}

/// Order of the dimensions of q, k, v and o in memory (row-major).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Layout {
    /// `(batch, heads, n, width)`: the official Lightning Attention API.
    #[default]
    Bhnd,
    /// `(batch, n, heads, width)`: the FLA / FlashAttention layout, read in
    /// place through strides.
    Bnhd,
}

impl Layout {
    /// `(b, h, n, width)` of a 4-dimensional shape in this layout.
    pub fn split(self, shape: &[usize; 4]) -> (usize, usize, usize, usize) {
        match self {
            Layout::Bhnd => (shape[0], shape[1], shape[2], shape[3]),
            Layout::Bnhd => (shape[0], shape[2], shape[1], shape[3]),
        }
    }

    /// The shape of a `(b, h, n, width)` tensor in this layout.
    pub fn shape(self, b: usize, h: usize, n: usize, width: usize) -> [usize; 4] {
        match self {
            Layout::Bhnd => [b, h, n, width],
            Layout::Bnhd => [b, n, h, width],
        }
    }

    /// Element strides `(batch, head, row)` of a `(b, h, n, width)` tensor.
    pub fn strides(self, h: usize, n: usize, width: usize) -> (usize, usize, usize) {
        match self {
            Layout::Bhnd => (h * n * width, n * width, width),
            Layout::Bnhd => (n * h * width, width, h * width),
        }
    }

    /// Offset of element `at = [b, h, i, c]` of a `(b, heads, n, width)` tensor.
    pub fn index(self, heads: usize, n: usize, width: usize, at: [usize; 4]) -> usize {
        let (sb, sh, sn) = self.strides(heads, n, width);
        at[0] * sb + at[1] * sh + at[2] * sn + at[3]
    }

    /// Rows `rows` of host data `x`, a `(b, h, n, width)` tensor in this
    /// layout, as the data of a `(b, h, rows.len(), width)` one: a slice of
    /// the positions, as a sequence-parallel rank holds it.
    ///
    /// # Panics
    ///
    /// If `rows` reaches past `dims.n` or `x` is not `b h n width` long.
    pub fn rows(
        self,
        x: &[f32],
        dims: &Dims,
        width: usize,
        rows: std::ops::Range<usize>,
    ) -> Vec<f32> {
        assert_eq!(
            x.len(),
            dims.b * dims.h * dims.n * width,
            "rows: x must hold b h n width values"
        );
        let len = rows.len();
        let mut out = vec![0.0; dims.b * dims.h * len * width];
        self.each_row(dims, width, &rows, |from, to| {
            out[to..to + width].copy_from_slice(&x[from..from + width])
        });
        out
    }

    /// Writes `slice` (as [`Layout::rows`] returns) back into rows `rows` of `x`.
    ///
    /// # Panics
    ///
    /// If `rows` reaches past `dims.n`, `x` is not `b h n width` long or
    /// `slice` not `b h rows.len() width`.
    pub fn put_rows(
        self,
        x: &mut [f32],
        slice: &[f32],
        dims: &Dims,
        width: usize,
        rows: std::ops::Range<usize>,
    ) {
        assert_eq!(
            (x.len(), slice.len()),
            (
                dims.b * dims.h * dims.n * width,
                dims.b * dims.h * rows.len() * width
            ),
            "put_rows: x must hold b h n width values and the slice b h rows width"
        );
        self.each_row(dims, width, &rows, |from, to| {
            x[from..from + width].copy_from_slice(&slice[to..to + width])
        });
    }

    /// `(offset in the whole, offset in the slice)` of every row of `rows`.
    fn each_row(
        self,
        dims: &Dims,
        width: usize,
        rows: &std::ops::Range<usize>,
        mut f: impl FnMut(usize, usize),
    ) {
        // A row past n would be another head's (or batch entry's) first rows.
        assert!(
            rows.start <= rows.end && rows.end <= dims.n,
            "rows {rows:?} reach past n = {}",
            dims.n
        );
        for b in 0..dims.b {
            for h in 0..dims.h {
                for i in rows.clone() {
                    f(
                        self.index(dims.h, dims.n, width, [b, h, i, 0]),
                        self.index(dims.h, rows.len(), width, [b, h, i - rows.start, 0]),
                    );
                }
            }
        }
    }
}

impl FromStr for Layout {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "bhnd" => Ok(Layout::Bhnd),
            "bnhd" => Ok(Layout::Bnhd),
            other => Err(format!("unknown layout `{other}` (expected bhnd or bnhd)")),
        }
    }
}

impl std::fmt::Display for Layout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Layout::Bhnd => "bhnd",
            Layout::Bnhd => "bnhd",
        })
    }
}
