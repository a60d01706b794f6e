//! Python values to Rust values: one converter per kind of input. They check types and shapes
//! (what only the binding can see); every range and consistency rule is the core's, so its
//! messages are the ones users read.

use numpy::{
    Element, PyArray1, PyArray2, PyArrayDescr, PyArrayDescrMethods, PyArrayMethods,
    PyReadonlyArray1, PyReadonlyArray2, PyUntypedArray, PyUntypedArrayMethods,
};
use pyo3::exceptions::{PyOverflowError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};
use std::borrow::Cow;

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_default()
}

fn dtype_str(arr: &Bound<'_, PyUntypedArray>) -> String {
    arr.dtype().str().map(|s| s.to_string()).unwrap_or_default()
}

fn is_text(obj: &Bound<'_, PyAny>) -> bool {
    obj.is_instance_of::<PyString>() || obj.is_instance_of::<PyBytes>()
}

/// A count or size from Python. Negative values become 0, which the core rejects as "must be
/// positive", so the rule and its message live in the core only.
pub(crate) fn count(v: i64) -> usize {
    usize::try_from(v).unwrap_or(0)
}

/// An integer argument. A Python int has no size limit, and pyo3's conversion of one beyond 64
/// bits raises OverflowError, which names nothing and which callers do not expect for a value
/// out of range; such an int is kept as its text here, and [`Int::get`] makes it a ValueError
/// naming the argument and its range. Anything that is not an int is pyo3's TypeError, as
/// before.
#[derive(Clone, Debug)]
pub(crate) enum Int {
    Fits(i64),
    Beyond { text: String, negative: bool },
}

impl<'a, 'py> FromPyObject<'a, 'py> for Int {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        match obj.extract::<i64>() {
            Ok(v) => Ok(Int::Fits(v)),
            Err(e) if e.is_instance_of::<PyOverflowError>(obj.py()) => Ok(Int::Beyond {
                text: obj.str().map(|s| s.to_string()).unwrap_or_default(),
                negative: obj.lt(0)?,
            }),
            Err(e) => Err(e),
        }
    }
}

impl Int {
    /// The value of the argument `name`, or a ValueError saying the range it must be in.
    pub(crate) fn get(&self, name: &str) -> PyResult<i64> {
        match self {
            Int::Fits(v) => Ok(*v),
            Int::Beyond { text, negative } => Err(PyValueError::new_err(if *negative {
                format!("{name} must be at least {}, got {text}", i64::MIN)
            } else {
                format!("{name} must be at most {}, got {text}", i64::MAX)
            })),
        }
    }

    /// [`Int::get`] of an optional argument.
    pub(crate) fn get_opt(arg: Option<&Int>, name: &str) -> PyResult<Option<i64>> {
        arg.map(|v| v.get(name)).transpose()
    }

    /// [`Int::get`] of every item of a list argument, named `name[i]`.
    pub(crate) fn get_all(args: &[Int], name: &str) -> PyResult<Vec<i64>> {
        args.iter()
            .enumerate()
            .map(|(i, v)| v.get(&format!("{name}[{i}]")))
            .collect()
    }
}

/// A C-contiguous float32 `(n, dim)` array from `obj`: float32 arrays are borrowed as they are,
/// float16/float64 arrays and nested lists of numbers are converted; other dtypes are rejected.
/// A 1-D array becomes one row when `allow_1d`; `dim`, when given, is checked.
pub(crate) fn f32_matrix<'py>(
    obj: &Bound<'py, PyAny>,
    name: &str,
    dim: Option<usize>,
    allow_1d: bool,
) -> PyResult<PyReadonlyArray2<'py, f32>> {
    let py = obj.py();
    let np = py.import("numpy")?;
    let f32_dtype = np.getattr("float32")?;
    let arr = if let Ok(arr) = obj.cast::<PyUntypedArray>() {
        if arr.dtype().kind() != b'f' {
            return Err(PyValueError::new_err(format!(
                "{name} must be a floating-point array (float32, float16 or float64 are \
                 converted to float32), got dtype {}",
                dtype_str(arr)
            )));
        }
        np.call_method1("ascontiguousarray", (arr, &f32_dtype))?
    } else if is_text(obj) {
        return Err(PyTypeError::new_err(format!(
            "{name} must be a float array, got {}",
            type_name(obj)
        )));
    } else {
        np.call_method1("asarray", (obj, &f32_dtype)).map_err(|e| {
            PyValueError::new_err(format!(
                "{name} must be a float array or a nested list of numbers: {e}"
            ))
        })?
    };
    let arr = arr.cast_into::<PyUntypedArray>()?;
    let arr = match arr.ndim() {
        2 => arr.into_any(),
        1 if allow_1d => arr.call_method1("reshape", ((1, arr.shape()[0]),))?,
        _ => {
            return Err(PyValueError::new_err(format!(
                "{name} must be a 2-D array{}{}, got shape {:?}",
                dim.map(|d| format!(" (n, {d})")).unwrap_or_default(),
                if allow_1d { " or 1-D (dim,)" } else { "" },
                arr.shape()
            )))
        }
    };
    let arr = arr.cast_into::<PyArray2<f32>>()?;
    let shape = arr.shape();
    if let Some(dim) = dim {
        if shape[1] != dim {
            return Err(PyValueError::new_err(format!(
                "{name} have dimension {}, expected {dim} (shape {:?})",
                shape[1], shape
            )));
        }
    }
    arr.try_readonly()
        .map_err(|e| PyValueError::new_err(format!("cannot borrow {name}: {e}")))
}

/// A C-contiguous int64 `(n, m)` array from `obj` (ids): int64 arrays are borrowed, other
/// integer arrays and nested lists of ints converted; uint64 (which int64 cannot hold) and
/// non-integer dtypes are rejected.
pub(crate) fn i64_matrix<'py>(
    obj: &Bound<'py, PyAny>,
    name: &str,
) -> PyResult<PyReadonlyArray2<'py, i64>> {
    let np = obj.py().import("numpy")?;
    let arr = np
        .call_method1("asarray", (obj,))
        .and_then(|a| Ok(a.cast_into::<PyUntypedArray>()?))
        .map_err(|e| PyTypeError::new_err(format!("{name} must be a 2-D integer array: {e}")))?;
    let dtype = arr.dtype();
    let signed_or_narrow = match dtype.kind() {
        b'i' => true,
        b'u' => dtype.itemsize() < 8,
        _ => false,
    };
    if !signed_or_narrow {
        return Err(PyValueError::new_err(format!(
            "{name} must be integers that fit int64, got dtype {}",
            dtype_str(&arr)
        )));
    }
    if arr.ndim() != 2 {
        return Err(PyValueError::new_err(format!(
            "{name} must be a 2-D array (n, k), got shape {:?}",
            arr.shape()
        )));
    }
    np.call_method1("ascontiguousarray", (&arr, numpy::dtype::<i64>(obj.py())))?
        .cast_into::<PyArray2<i64>>()?
        .try_readonly()
        .map_err(|e| PyValueError::new_err(format!("cannot borrow {name}: {e}")))
}

/// Integer element types the binding hands to the core: token ids (`u32`) and row ids (`i64`).
pub(crate) trait IntTarget: Element + Copy + TryFrom<i64> + TryFrom<u64> {
    /// The values the type holds, for error messages.
    const RANGE: &'static str;
}

impl IntTarget for u32 {
    const RANGE: &'static str = "0..=4294967295";
}

impl IntTarget for i64 {
    const RANGE: &'static str = "the int64 range";
}

/// A 1-D integer input: borrowed when it already has the target dtype, else a checked copy.
pub(crate) enum Ints<'py, T: IntTarget> {
    Borrowed(PyReadonlyArray1<'py, T>),
    Owned(Vec<T>),
}

impl<T: IntTarget> Ints<'_, T> {
    pub(crate) fn as_slice(&self) -> PyResult<&[T]> {
        match self {
            Ints::Borrowed(a) => a.as_slice().map_err(PyErr::from),
            Ints::Owned(v) => Ok(v),
        }
    }
}

fn checked<S, T>(what: &str, noun: &str, values: &[S]) -> PyResult<Vec<T>>
where
    S: Copy + std::fmt::Display,
    T: IntTarget + TryFrom<S>,
{
    values
        .iter()
        .enumerate()
        .map(|(p, &v)| {
            T::try_from(v).map_err(|_| {
                PyValueError::new_err(format!(
                    "{what}: {noun} {v} at position {p} is outside {}",
                    T::RANGE
                ))
            })
        })
        .collect()
}

/// A 1-D integer array or sequence of ints as `T`. `what` names the input in messages
/// ("document 3", "ids"), `noun` one of its values ("token id"). An empty input of any dtype is
/// empty; non-integer dtypes are a ValueError, values outside `T` a ValueError naming the
/// position.
pub(crate) fn int_array<'py, T: IntTarget>(
    obj: &Bound<'py, PyAny>,
    what: &str,
    noun: &str,
) -> PyResult<Ints<'py, T>> {
    if is_text(obj) {
        return Err(PyTypeError::new_err(format!(
            "{what} is a str/bytes; pass {noun}s (a 1-D integer array or a sequence of ints)"
        )));
    }
    let py = obj.py();
    let np = py.import("numpy")?;
    let not_ints = |e: String| {
        PyTypeError::new_err(format!(
            "{what} must be a 1-D integer array or a sequence of ints (got {}{e})",
            type_name(obj)
        ))
    };
    let arr = match obj.cast::<PyUntypedArray>() {
        Ok(a) => a.clone(),
        Err(_) => np
            .call_method1("asarray", (obj,))
            .and_then(|a| Ok(a.cast_into::<PyUntypedArray>()?))
            .map_err(|e| not_ints(format!(": {e}")))?,
    };
    if arr.dtype().kind() == b'O' {
        return Err(not_ints(String::new()));
    }
    if arr.ndim() != 1 {
        return Err(PyValueError::new_err(format!(
            "{what} must be 1-D, got shape {:?}",
            arr.shape()
        )));
    }
    if arr.len() == 0 {
        return Ok(Ints::Owned(Vec::new()));
    }
    let dtype = arr.dtype();
    let kind = dtype.kind();
    if !matches!(kind, b'i' | b'u') {
        return Err(PyValueError::new_err(format!(
            "{what} must be integers, got dtype {}",
            dtype_str(&arr)
        )));
    }
    let contiguous = |to: Bound<'py, PyArrayDescr>| {
        np.call_method1("ascontiguousarray", (&arr, to))
            .and_then(|a| Ok(a.cast_into::<PyUntypedArray>()?))
    };
    if dtype.is_equiv_to(&numpy::dtype::<T>(py)) {
        let a = contiguous(numpy::dtype::<T>(py))?.cast_into::<PyArray1<T>>()?;
        return a
            .try_readonly()
            .map(Ints::Borrowed)
            .map_err(|e| PyValueError::new_err(format!("cannot borrow {what}: {e}")));
    }
    // Every integer dtype but uint64 widens to int64 without loss.
    if kind == b'u' && dtype.itemsize() == 8 {
        let a = contiguous(numpy::dtype::<u64>(py))?.cast_into::<PyArray1<u64>>()?;
        let r = a.readonly();
        checked(what, noun, r.as_slice()?).map(Ints::Owned)
    } else {
        let a = contiguous(numpy::dtype::<i64>(py))?.cast_into::<PyArray1<i64>>()?;
        let r = a.readonly();
        checked(what, noun, r.as_slice()?).map(Ints::Owned)
    }
}

/// The bytes of a str (as UTF-8) or bytes object; `what` names it in messages. Whether bytes
/// must be UTF-8 is the core's rule. Bytes are borrowed; a str is encoded into a copy, as the
/// 3.9 stable ABI the extension is built for has no borrowed UTF-8 view of a str (pyo3 borrows
/// one when built for 3.10 or later).
pub(crate) fn text_bytes<'a>(
    obj: &'a Bound<'_, PyAny>,
    what: &dyn Fn() -> String,
) -> PyResult<Cow<'a, [u8]>> {
    if let Ok(b) = obj.cast::<PyBytes>() {
        return Ok(Cow::Borrowed(b.as_bytes()));
    }
    if let Ok(s) = obj.cast::<PyString>() {
        return s
            .to_cow()
            .map(|s| match s {
                Cow::Borrowed(s) => Cow::Borrowed(s.as_bytes()),
                Cow::Owned(s) => Cow::Owned(s.into_bytes()),
            })
            .map_err(|e| PyValueError::new_err(format!("{} is not valid UTF-8: {e}", what())));
    }
    Err(PyTypeError::new_err(format!(
        "{} must be str or bytes, got {}",
        what(),
        type_name(obj)
    )))
}

/// Slices of [`text_bytes`] results, the form the core takes.
pub(crate) fn slices<'a>(items: &'a [Cow<'_, [u8]>]) -> Vec<&'a [u8]> {
    items.iter().map(|b| &**b).collect()
}

/// The items of a sequence given one per document (texts, token lists, candidates); a single
/// str/bytes is refused rather than iterated character by character. `None` stays `None`.
pub(crate) fn sequence<'py>(
    obj: Option<&Bound<'py, PyAny>>,
    name: &str,
) -> PyResult<Option<Vec<Bound<'py, PyAny>>>> {
    let Some(obj) = obj.filter(|o| !o.is_none()) else {
        return Ok(None);
    };
    if is_text(obj) {
        return Err(PyTypeError::new_err(format!(
            "{name} must be a sequence (one item per document), not a single str/bytes"
        )));
    }
    obj.try_iter()
        .map_err(|_| {
            PyTypeError::new_err(format!("{name} must be a sequence, got {}", type_name(obj)))
        })?
        .collect::<PyResult<Vec<_>>>()
        .map(Some)
}
