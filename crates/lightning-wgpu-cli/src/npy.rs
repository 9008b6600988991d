//! `.npy` input and output through npyz: the format is NumPy's, so the tool
//! reads what `np.save` writes and its outputs load with `np.load`.
//!
//! Only what the kernels can take is accepted: float32, or float16 converted
//! on load (exactly: every f16 is an f32), in C order. Anything else is
//! refused with a reason rather than converted silently, because a silent
//! float64 -> float32 or int -> float conversion usually hides a mistake in
//! the script that saved the file.

use std::fs::File;
use std::io::{BufReader, BufWriter, ErrorKind};
use std::path::Path;

use anyhow::{bail, Context as _, Result};
use npyz::{DType, NpyFile, Order, TypeChar, TypeStr, WriteOptions, WriterBuilder};

/// A dense row-major array read from a `.npy` file, as f32.
#[derive(Debug)]
pub struct Array {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Storage types accepted on input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stored {
    F32,
    F16,
}

/// NumPy's name of a dtype (`int32`, `float64`, ...), so that an error
/// message reads like what the user wrote in Python.
fn numpy_name(dtype: &DType) -> String {
    match dtype {
        DType::Plain(ts) => type_name(ts),
        DType::Record(_) => "a structured (record) dtype".to_string(),
        DType::Array(..) => "a subarray dtype".to_string(),
    }
}

fn type_name(ts: &TypeStr) -> String {
    let bits = ts.size_field() * 8;
    match ts.type_char() {
        TypeChar::Bool => "bool".to_string(),
        TypeChar::Int => format!("int{bits}"),
        TypeChar::Uint => format!("uint{bits}"),
        TypeChar::Float => format!("float{bits}"),
        TypeChar::Complex => format!("complex{bits}"),
        TypeChar::Object => "object (pickled)".to_string(),
        _ => format!("`{ts}`"),
    }
}

fn stored(dtype: &DType) -> Option<Stored> {
    match dtype {
        DType::Plain(ts) if ts.type_char() == TypeChar::Float => match ts.size_field() {
            4 => Some(Stored::F32),
            2 => Some(Stored::F16),
            _ => None,
        },
        _ => None,
    }
}

/// The shape a `.npy` header promises, read before npyz sees the file:
/// npyz multiplies the dimensions unchecked, so a shape whose element count
/// overflows would reach it as a small (wrapped) one. `None` where the
/// header is not one we can read (npyz then reports what is wrong).
fn promised_shape(path: &Path) -> Option<Vec<u64>> {
    use std::io::Read;
    let mut f = File::open(path).ok()?;
    let mut head = [0u8; 12];
    f.read_exact(&mut head).ok()?;
    if &head[..6] != b"\x93NUMPY" {
        return None;
    }
    let (len, start) = match head[6] {
        1 => (u16::from_le_bytes([head[8], head[9]]) as usize, 10),
        _ => (
            u32::from_le_bytes([head[8], head[9], head[10], head[11]]) as usize,
            12,
        ),
    };
    let mut text = vec![0u8; start + len.min(1 << 16)];
    let mut f = File::open(path).ok()?;
    f.read_exact(&mut text).ok()?;
    let text = String::from_utf8_lossy(&text[start..]).into_owned();
    let after = &text[text.find("'shape'")? + 7..];
    let tuple = &after[after.find('(')? + 1..after.find(')')?];
    tuple
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| t.trim_end_matches('L').parse::<u64>().ok())
        .collect()
}

/// Refuses a header whose element count does not fit this machine.
fn check_count(path: &Path, arg: &str) -> Result<()> {
    if let Some(shape) = promised_shape(path) {
        let count = shape
            .iter()
            .try_fold(1u64, |acc, &x| acc.checked_mul(x))
            .filter(|&c| usize::try_from(c).is_ok());
        if count.is_none() {
            bail!(
                "`{arg}` file {} has shape {shape:?}: too many elements",
                path.display()
            );
        }
    }
    Ok(())
}

/// Reads `path` as a float32 array. `arg` names the option the file came
/// from (`q`, `slopes`, ...) in error messages.
pub fn read(path: &Path, arg: &str) -> Result<Array> {
    let shown = path.display();
    let file = File::open(path).with_context(|| format!("cannot open `{arg}` file {shown}"))?;
    check_count(path, arg)?;
    let npy = NpyFile::new(BufReader::new(file))
        .with_context(|| format!("`{arg}` file {shown} is not a valid .npy file"))?;

    let dtype = npy.dtype();
    let Some(kind) = stored(&dtype) else {
        bail!(
            "`{arg}` file {shown} holds {}; expected float32 (or float16): save it with .astype(np.float32)",
            numpy_name(&dtype)
        );
    };
    let shape = npy
        .shape()
        .iter()
        .map(|&x| usize::try_from(x))
        .collect::<Result<Vec<usize>, _>>()
        .with_context(|| format!("`{arg}` file {shown} has a shape too large for this machine"))?;
    // Fortran order only changes the data when two or more axes are longer
    // than 1; otherwise both orders store the same sequence.
    let long_axes = shape.iter().filter(|&&x| x > 1).count();
    if npy.order() == Order::Fortran && long_axes > 1 {
        bail!(
            "`{arg}` file {shown} is in Fortran order; save a C-ordered array (np.ascontiguousarray)"
        );
    }

    // The element count, checked before anything is allocated for it: a
    // header can promise more than the file (or the machine) holds.
    let itemsize = if kind == Stored::F32 { 4 } else { 2 };
    let Some(len) = shape.iter().try_fold(1usize, |acc, &x| acc.checked_mul(x)) else {
        bail!("`{arg}` file {shown} has shape {shape:?}: too many elements");
    };
    let file_bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(u64::MAX);
    if (len as u64).saturating_mul(itemsize) > file_bytes {
        bail!("`{arg}` file {shown} is truncated: its header promises {len} values of shape {shape:?}");
    }
    let data = match kind {
        Stored::F32 => npy.into_vec::<f32>(),
        Stored::F16 => npy
            .into_vec::<npyz::half::f16>()
            .map(|v| v.into_iter().map(f32::from).collect()),
    };
    match data {
        Ok(data) => Ok(Array { shape, data }),
        // The usual way a copy or a crashed writer damages a file; say so
        // rather than "failed to fill whole buffer".
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => bail!(
            "`{arg}` file {shown} is truncated: its header promises {len} values of shape {shape:?}"
        ),
        Err(e) => Err(e).with_context(|| format!("cannot read the data of `{arg}` file {shown}")),
    }
}

/// Reads `path` as a vector of offsets: a 1-d int32 or int64 array of
/// values >= 0 (as FLA's `cu_seqlens`).
pub fn read_offsets(path: &Path, arg: &str) -> Result<Vec<usize>> {
    let shown = path.display();
    read_ints(path, arg)?
        .into_iter()
        .map(|x| {
            usize::try_from(x)
                .map_err(|_| anyhow::anyhow!("`{arg}` file {shown} holds a negative offset {x}"))
        })
        .collect()
}

/// A 1-D int32 or int64 `.npy` file's values.
pub fn read_ints(path: &Path, arg: &str) -> Result<Vec<i64>> {
    let shown = path.display();
    let file = File::open(path).with_context(|| format!("cannot open `{arg}` file {shown}"))?;
    check_count(path, arg)?;
    let npy = NpyFile::new(BufReader::new(file))
        .with_context(|| format!("`{arg}` file {shown} is not a valid .npy file"))?;
    let dtype = npy.dtype();
    if npy.shape().len() != 1 {
        bail!(
            "`{arg}` file {shown} must be 1-dimensional, got shape {:?}",
            npy.shape()
        );
    }
    let len = npy.shape()[0];
    let file_bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(u64::MAX);
    if len.saturating_mul(4) > file_bytes {
        bail!("`{arg}` file {shown} is truncated: its header promises {len} values");
    }
    let values: Vec<i64> = match &dtype {
        DType::Plain(ts) if ts.type_char() == TypeChar::Int && ts.size_field() == 4 => npy
            .into_vec::<i32>()
            .map(|v| v.into_iter().map(i64::from).collect()),
        DType::Plain(ts) if ts.type_char() == TypeChar::Int && ts.size_field() == 8 => {
            npy.into_vec::<i64>()
        }
        _ => bail!(
            "`{arg}` file {shown} holds {}; expected int32 or int64",
            numpy_name(&dtype)
        ),
    }
    .with_context(|| format!("cannot read the data of `{arg}` file {shown}"))?;
    Ok(values)
}

/// Writes `data` of `shape` to `path` as a C-ordered float32 `.npy` file.
pub fn write(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    let shown = path.display();
    let file = File::create(path).with_context(|| format!("cannot create {shown}"))?;
    let shape: Vec<u64> = shape.iter().map(|&x| x as u64).collect();
    let mut writer = WriteOptions::<f32>::new()
        .default_dtype()
        .shape(&shape)
        .writer(BufWriter::new(file))
        .begin_nd()
        .with_context(|| format!("cannot write {shown}"))?;
    writer
        .extend(data.iter().copied())
        .and_then(|()| writer.finish())
        .with_context(|| format!("cannot write {shown}"))
}
