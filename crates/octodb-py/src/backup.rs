//! Copying databases: `backup` (page by page, with progress) and `serialize` / `deserialize`.

use crate::connection::Connection;
use crate::errors;
use crate::values;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use rusqlite::ffi;
use std::ffi::{c_void, CString};

fn cname(s: &str) -> PyResult<CString> {
    CString::new(s).map_err(|_| PyValueError::new_err("embedded null character"))
}

pub fn run(
    source: &Bound<'_, Connection>,
    target: &Bound<'_, PyAny>,
    pages: i32,
    progress: Option<&Bound<'_, PyAny>>,
    name: &str,
    sleep: f64,
) -> PyResult<()> {
    let py = source.py();
    let src = source.get().checked(py)?;
    let target = target.cast::<Connection>().map_err(|_| {
        PyTypeError::new_err(format!(
            "backup() argument 1 must be octodb.Connection, not {}",
            crate::adapters::type_name(target)
        ))
    })?;
    if target.is(source) {
        return Err(PyValueError::new_err(
            "target cannot be the same connection instance",
        ));
    }
    let dst = target.get().checked_open(py)?;
    let progress = progress.filter(|p| !p.is_none());
    if progress.is_some_and(|p| !p.is_callable()) {
        return Err(PyTypeError::new_err("progress argument must be a callable"));
    }
    let pages = if pages == 0 { -1 } else { pages };
    let name = cname(name)?;
    // Two threads copying A into B and B into A must not each hold one database and wait for
    // the other: the two are always locked in the same order (by address), whichever is the
    // source.
    let (gs, gd) = if std::ptr::from_ref(&*src.db) < std::ptr::from_ref(&*dst.db) {
        let gs = src.db.lock(py);
        (gs, dst.db.lock(py))
    } else {
        let gd = dst.db.lock(py);
        (src.db.lock(py), gd)
    };
    if !gd.autocommit()? {
        return Err(errors::OperationalError::new_err(
            "target is in transaction",
        ));
    }
    let (sraw, draw) = (gs.raw()?, gd.raw()?);
    // SQLCipher's backup checks, before SQLite looks the name up, that both sides are plain or
    // both encrypted, and answers an unknown name with a message of its own: say what SQLite
    // (and so sqlite3) says. SAFETY: the handle is open and locked; the name outlives the call.
    // (`temp` exists before its file is opened, which sqlite3_db_readonly does not count.)
    let known = matches!(name.to_bytes(), b"main" | b"temp")
        || unsafe { ffi::sqlite3_db_readonly(sraw.0, name.as_ptr()) } >= 0;
    if !known {
        return Err(errors::OperationalError::new_err(format!(
            "unknown database {}",
            name.to_string_lossy()
        )));
    }
    if name.to_bytes() == b"temp" {
        // SQLCipher's check above reads the key length of `temp` into a variable it leaves
        // uninitialised while `temp` is not open yet (SQLite opens it only later in the same
        // call), so it failed at random with "backup is not supported with encrypted
        // databases". A PRAGMA that names `temp` opens it, as SQLite would. SAFETY: the
        // handle is open and locked; the statement text is a static C string, and no callback
        // or output pointer is passed.
        unsafe {
            ffi::sqlite3_exec(
                sraw.0,
                c"PRAGMA temp.page_count".as_ptr(),
                None,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
    }
    // SAFETY: both handles are open and locked; the names outlive the call.
    let bck = unsafe { ffi::sqlite3_backup_init(draw.0, c"main".as_ptr(), sraw.0, name.as_ptr()) };
    if bck.is_null() {
        return Err(errors::from_db(py, draw));
    }
    let handle = crate::ffi_util::Detached(bck);
    let mut failure = None;
    loop {
        // SAFETY: `bck` is live until backup_finish below; both databases stay locked.
        let rc = py.detach(move || {
            let h = handle;
            unsafe { ffi::sqlite3_backup_step(h.0, pages) }
        });
        if let Some(p) = progress {
            // SAFETY: as above.
            let (remaining, total) = unsafe {
                (
                    ffi::sqlite3_backup_remaining(bck),
                    ffi::sqlite3_backup_pagecount(bck),
                )
            };
            if let Err(e) = p.call1((rc, remaining, total)) {
                failure = Some(e);
                break;
            }
        }
        match rc {
            ffi::SQLITE_OK => {}
            ffi::SQLITE_BUSY | ffi::SQLITE_LOCKED => {
                let pause = std::time::Duration::from_secs_f64(sleep.max(0.0));
                py.detach(move || std::thread::sleep(pause));
            }
            _ => break,
        }
    }
    // SAFETY: finishes the live backup exactly once.
    let rc = unsafe { ffi::sqlite3_backup_finish(bck) };
    if let Some(e) = failure {
        return Err(e);
    }
    if rc != ffi::SQLITE_OK {
        return Err(errors::from_db(py, draw));
    }
    // A whole copy of a primary's file is marked as `octodb backup` marks its copies: restored,
    // a member of a cluster rejoins it as a new member, a primary alone keeps the ids it
    // handed out after the copy for their devices (see `mark_as_restored_copy`).
    if gs.role == Some(octodb::Role::Primary) && gd.role.is_none() && name.to_bytes() == b"main" {
        gd.engine()?
            .mark_as_restored_copy()
            .map_err(|e| errors::from_engine(py, e))?;
    }
    Ok(())
}

pub fn serialize<'py>(
    conn: &Connection,
    py: Python<'py>,
    name: &str,
) -> PyResult<Bound<'py, PyBytes>> {
    let inner = conn.checked(py)?;
    let g = inner.db.lock(py);
    let raw = g.raw()?;
    let cn = cname(name)?;
    let mut size: i64 = 0;
    // SAFETY: an open handle under its lock; the copy SQLite returns is read then freed.
    let p = unsafe { ffi::sqlite3_serialize(raw.0, cn.as_ptr(), &mut size, 0) };
    if p.is_null() {
        return Err(errors::OperationalError::new_err(format!(
            "unable to serialize '{name}'"
        )));
    }
    // SAFETY: `p` holds `size` bytes.
    let bytes = unsafe { std::slice::from_raw_parts(p, size.max(0) as usize) };
    let out = PyBytes::new(py, bytes);
    // SAFETY: `p` came from SQLite's allocator and is freed once.
    unsafe { ffi::sqlite3_free(p as *mut c_void) };
    Ok(out)
}

pub fn deserialize(
    conn: &Connection,
    py: Python<'_>,
    data: &Bound<'_, PyAny>,
    name: &str,
) -> PyResult<()> {
    let inner = conn.checked(py)?;
    let blob = values::buffer_bytes(data)?.ok_or_else(|| {
        PyTypeError::new_err(format!(
            "a bytes-like object is required, not '{}'",
            crate::adapters::type_name(data)
        ))
    })?;
    let g = inner.db.lock(py);
    if g.replicated {
        return Err(errors::NotSupportedError::new_err(
            "deserialize would replace a replicated node's database behind the engine's back; use it on a plain local database",
        ));
    }
    let raw = g.raw()?;
    let bytes = blob.as_slice();
    let cn = cname(name)?;
    // SAFETY: a fresh SQLite allocation of at least one byte, filled below and handed to
    // SQLite, which frees it (FREEONCLOSE), also when deserialize fails.
    let rc = unsafe {
        let buf = ffi::sqlite3_malloc64(bytes.len().max(1) as u64) as *mut u8;
        if buf.is_null() {
            return Err(pyo3::exceptions::PyMemoryError::new_err("out of memory"));
        }
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), buf, bytes.len());
        ffi::sqlite3_deserialize(
            raw.0,
            cn.as_ptr(),
            buf,
            bytes.len() as i64,
            bytes.len() as i64,
            ffi::SQLITE_DESERIALIZE_FREEONCLOSE | ffi::SQLITE_DESERIALIZE_RESIZEABLE,
        )
    };
    if rc != ffi::SQLITE_OK {
        return Err(errors::from_db(py, raw));
    }
    Ok(())
}
