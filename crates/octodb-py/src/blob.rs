//! `Blob`: incremental I/O on one BLOB value (`connection.blobopen(...)`), file-like and
//! indexable like `bytes`.

use crate::connection::Connection;
use crate::db::{Db, DbState};
use crate::errors;
use crate::values;
use pyo3::exceptions::{PyIndexError, PyOverflowError, PyTypeError, PyValueError};
use pyo3::ffi as pyffi;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyInt, PySlice, PyTuple};
use rusqlite::ffi;
use std::ffi::{c_int, c_void};
use std::sync::atomic::{AtomicI32, AtomicPtr, Ordering};
use std::sync::Arc;

/// The SQLite blob handle, closed by the blob or by its database's close.
pub struct BlobHandle {
    raw: AtomicPtr<ffi::sqlite3_blob>,
}

impl BlobHandle {
    pub fn close(&self, _g: &DbState) {
        let p = self.raw.swap(std::ptr::null_mut(), Ordering::Relaxed);
        if !p.is_null() {
            // SAFETY: `p` came from sqlite3_blob_open and is closed exactly once (the swap),
            // under the database lock.
            unsafe { ffi::sqlite3_blob_close(p) };
        }
    }
}

#[pyclass(module = "octodb", frozen)]
pub struct Blob {
    conn: Py<Connection>,
    db: Arc<Db>,
    handle: Arc<BlobHandle>,
    offset: AtomicI32,
}

pub fn open(
    conn: &Bound<'_, Connection>,
    table: &str,
    column: &str,
    row: i64,
    readonly: bool,
    name: &str,
) -> PyResult<Blob> {
    let py = conn.py();
    let inner = conn.get().checked(py)?;
    let g = inner.db.lock(py);
    let raw = g.raw()?;
    let c = |s: &str| {
        std::ffi::CString::new(s).map_err(|_| PyValueError::new_err("embedded null character"))
    };
    if !readonly && name.eq_ignore_ascii_case("main") {
        let engine = g.engine()?;
        if engine.is_autocommit() && engine.replicates_table(table) {
            return Err(errors::from_code(
                py,
                ffi::SQLITE_ERROR,
                &format!(
                    "octodb: open a writable blob of the replicated table `{table}` inside a \
                     transaction (execute BEGIN first, COMMIT once the blob is closed): it is the \
                     COMMIT that sends the row to the other nodes, and a blob written outside a \
                     transaction is committed by SQLite alone"
                ),
            ));
        }
    }
    let (name, table, column) = (c(name)?, c(table)?, c(column)?);
    // With the GIL released: a writable blob may begin the write transaction, which waits
    // (the busy timeout) for a lock another thread of the program may hold while it needs
    // the GIL.
    let (rc, blob) = py.detach(move || {
        let raw = raw; // (the whole handle, which is Send, not its raw pointer field)
        let mut blob = std::ptr::null_mut();
        // SAFETY: an open handle under its lock (`g`, held across this call); the strings
        // are owned by this closure and outlive the call.
        let rc = unsafe {
            ffi::sqlite3_blob_open(
                raw.0,
                name.as_ptr(),
                table.as_ptr(),
                column.as_ptr(),
                row,
                (!readonly) as c_int,
                &mut blob,
            )
        };
        (rc, OpenedBlob(blob))
    });
    let blob = blob.0;
    if rc != ffi::SQLITE_OK {
        return Err(errors::from_db(py, raw));
    }
    let handle = Arc::new(BlobHandle {
        raw: AtomicPtr::new(blob),
    });
    g.track_blob(&handle);
    Ok(Blob {
        conn: conn.clone().unbind(),
        db: inner.db.clone(),
        handle,
        offset: AtomicI32::new(0),
    })
}

/// A blob the program dropped without closing it is closed, as sqlite3 does: an open blob
/// keeps its transaction and its locks (a table it holds cannot be dropped, other connections
/// cannot write, a device's connection stops seeing new rows).
impl Drop for Blob {
    fn drop(&mut self) {
        crate::callback::with_gil((), |py| {
            let g = self.db.lock(py);
            self.handle.close(&g);
        });
    }
}

impl Blob {
    /// sqlite3's checks (thread, open database, open blob), then `f` with the handle locked.
    fn with<T>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(*mut ffi::sqlite3_blob) -> PyResult<T>,
    ) -> PyResult<T> {
        self.conn.get().checked(py)?;
        let g = self.db.lock(py);
        let p = self.handle.raw.load(Ordering::Relaxed);
        if p.is_null() {
            return Err(errors::programming("Cannot operate on a closed blob."));
        }
        let out = f(p);
        drop(g);
        out
    }

    fn len_of(p: *mut ffi::sqlite3_blob) -> i32 {
        // SAFETY: an open blob under its database lock.
        unsafe { ffi::sqlite3_blob_bytes(p) }
    }

    fn read_at(
        &self,
        py: Python<'_>,
        p: *mut ffi::sqlite3_blob,
        offset: i32,
        n: i32,
    ) -> PyResult<Vec<u8>> {
        let mut buf = vec![0u8; n.max(0) as usize];
        // SAFETY: an open blob under its lock; `buf` has room for `n` bytes.
        let rc = unsafe { ffi::sqlite3_blob_read(p, buf.as_mut_ptr() as *mut c_void, n, offset) };
        if rc != ffi::SQLITE_OK {
            return Err(self.error(py));
        }
        Ok(buf)
    }

    fn write_at(
        &self,
        py: Python<'_>,
        p: *mut ffi::sqlite3_blob,
        offset: i32,
        data: &[u8],
    ) -> PyResult<()> {
        // SAFETY: an open blob under its lock; `data` holds `len` readable bytes.
        let rc = unsafe {
            ffi::sqlite3_blob_write(
                p,
                data.as_ptr() as *const c_void,
                data.len() as c_int,
                offset,
            )
        };
        if rc != ffi::SQLITE_OK {
            return Err(self.error(py));
        }
        Ok(())
    }

    fn error(&self, py: Python<'_>) -> PyErr {
        let g = self.db.lock(py);
        match g.raw() {
            Ok(raw) => errors::from_db(py, raw),
            Err(e) => e,
        }
    }

    /// An index for `len` bytes, negative from the end (sqlite3's messages).
    fn index(key: &Bound<'_, PyAny>, len: i32) -> PyResult<i32> {
        // SAFETY: `key` is a live object; the call converts it or sets IndexError.
        let i = unsafe { pyffi::PyNumber_AsSsize_t(key.as_ptr(), pyffi::PyExc_IndexError) };
        if i == -1 {
            if let Some(e) = PyErr::take(key.py()) {
                return Err(e);
            }
        }
        let i = if i < 0 { i + len as isize } else { i };
        if i < 0 || i >= len as isize {
            return Err(PyIndexError::new_err("Blob index out of range"));
        }
        Ok(i as i32)
    }
}

#[pymethods]
impl Blob {
    #[new]
    #[pyo3(signature = (*_args, **_kwargs))]
    fn new(_args: &Bound<'_, PyTuple>, _kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        Err(PyTypeError::new_err(
            "cannot create 'octodb.Blob' instances",
        ))
    }

    fn close(&self, py: Python<'_>) -> PyResult<()> {
        self.conn.get().checked(py)?;
        let g = self.db.lock(py);
        self.handle.close(&g);
        Ok(())
    }

    #[pyo3(signature = (length = -1))]
    fn read<'py>(&self, py: Python<'py>, length: i32) -> PyResult<Bound<'py, PyBytes>> {
        self.with(py, |p| {
            let off = self.offset.load(Ordering::Relaxed);
            let left = Blob::len_of(p) - off;
            let n = if length < 0 || length > left {
                left
            } else {
                length
            };
            let data = self.read_at(py, p, off, n)?;
            self.offset.store(off + n, Ordering::Relaxed);
            Ok(PyBytes::new(py, &data))
        })
    }

    fn write(&self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let bytes = values::buffer_bytes(data)?
            .ok_or_else(|| PyTypeError::new_err("a bytes-like object is required"))?;
        self.with(py, |p| {
            let off = self.offset.load(Ordering::Relaxed);
            let b = bytes.as_slice();
            if b.len() as i64 > (Blob::len_of(p) - off) as i64 {
                return Err(PyValueError::new_err("data longer than blob"));
            }
            self.write_at(py, p, off, b)?;
            self.offset.store(off + b.len() as i32, Ordering::Relaxed);
            Ok(())
        })
    }

    #[pyo3(signature = (offset, origin = 0))]
    fn seek(&self, py: Python<'_>, offset: i32, origin: i32) -> PyResult<()> {
        self.with(py, |p| {
            let len = Blob::len_of(p);
            let base = match origin {
                0 => 0,
                1 => self.offset.load(Ordering::Relaxed),
                2 => len,
                _ => {
                    return Err(PyValueError::new_err(
                        "'origin' should be os.SEEK_SET, os.SEEK_CUR, or os.SEEK_END",
                    ))
                }
            };
            let target = base
                .checked_add(offset)
                .ok_or_else(|| PyOverflowError::new_err("seek offset results in overflow"))?;
            if target < 0 || target > len {
                return Err(PyValueError::new_err("offset out of blob range"));
            }
            self.offset.store(target, Ordering::Relaxed);
            Ok(())
        })
    }

    fn tell(&self, py: Python<'_>) -> PyResult<i32> {
        self.with(py, |_| Ok(self.offset.load(Ordering::Relaxed)))
    }

    fn __enter__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, Self>> {
        slf.get().with(slf.py(), |_| Ok(()))?;
        Ok(slf.clone())
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, PyTuple>) -> PyResult<bool> {
        self.with(py, |_| Ok(()))?;
        self.close(py)?;
        Ok(false)
    }

    fn __len__(&self, py: Python<'_>) -> PyResult<usize> {
        self.with(py, |p| Ok(Blob::len_of(p) as usize))
    }

    fn __getitem__<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.with(py, |p| {
            let len = Blob::len_of(p);
            if key.is_instance_of::<PyInt>()
                || key.hasattr("__index__")? && !key.is_instance_of::<PySlice>()
            {
                let i = Blob::index(key, len)?;
                let b = self.read_at(py, p, i, 1)?;
                return Ok(b[0].into_pyobject(py)?.into_any());
            }
            let Ok(slice) = key.cast::<PySlice>() else {
                return Err(PyTypeError::new_err("Blob indices must be integers"));
            };
            let ix = slice.indices(len as isize)?;
            if ix.slicelength == 0 {
                return Ok(PyBytes::new(py, b"").into_any());
            }
            if ix.step == 1 {
                let b = self.read_at(py, p, ix.start as i32, ix.slicelength as i32)?;
                return Ok(PyBytes::new(py, &b).into_any());
            }
            let all = self.read_at(py, p, 0, len)?;
            let picked: Vec<u8> = (0..ix.slicelength)
                .map(|k| all[(ix.start + k as isize * ix.step) as usize])
                .collect();
            Ok(PyBytes::new(py, &picked).into_any())
        })
    }

    fn __setitem__(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        value: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        self.with(py, |p| {
            let len = Blob::len_of(p);
            if let Ok(slice) = key.cast::<PySlice>() {
                let data = values::buffer_bytes(value)?
                    .ok_or_else(|| PyTypeError::new_err("a bytes-like object is required"))?;
                let data = data.as_slice();
                let ix = slice.indices(len as isize)?;
                if data.len() != ix.slicelength {
                    return Err(PyIndexError::new_err("Blob slice assignment is wrong size"));
                }
                if ix.slicelength == 0 {
                    return Ok(());
                }
                if ix.step == 1 {
                    return self.write_at(py, p, ix.start as i32, data);
                }
                let mut all = self.read_at(py, p, 0, len)?;
                for (k, byte) in data.iter().enumerate() {
                    all[(ix.start + k as isize * ix.step) as usize] = *byte;
                }
                return self.write_at(py, p, 0, &all);
            }
            if !key.is_instance_of::<PyInt>() && !key.hasattr("__index__")? {
                return Err(PyTypeError::new_err("Blob indices must be integers"));
            }
            let i = Blob::index(key, len)?;
            if !value.is_instance_of::<PyInt>() {
                return Err(PyTypeError::new_err(format!(
                    "'{}' object cannot be interpreted as an integer",
                    crate::adapters::type_name(value)
                )));
            }
            let byte = value.extract::<i64>().unwrap_or(-1);
            if !(0..=255).contains(&byte) {
                return Err(PyValueError::new_err("byte must be in range(0, 256)"));
            }
            self.write_at(py, p, i, &[byte as u8])
        })
    }

    /// Blobs are not iterable (sqlite3's Blob is not a sequence).
    fn __contains__(&self, _item: &Bound<'_, PyAny>) -> PyResult<bool> {
        Err(PyTypeError::new_err(
            "argument of type 'Blob' is not iterable",
        ))
    }

    fn __delitem__(&self, key: &Bound<'_, PyAny>) -> PyResult<()> {
        let what = if key.is_instance_of::<PySlice>() {
            "slice"
        } else {
            "item"
        };
        Err(PyTypeError::new_err(format!(
            "Blob doesn't support {what} deletion"
        )))
    }
}

/// A blob handle just opened, handed back from the `detach` closure that opened it.
struct OpenedBlob(*mut ffi::sqlite3_blob);

// SAFETY: the handle is only used under its connection's `Db` lock, which the opening thread
// holds throughout (as for `RawDb`); the closure runs on that same thread.
unsafe impl Send for OpenedBlob {}
