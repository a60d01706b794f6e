//! One writer per store directory: an advisory `flock` on `DIR/.lock`.
//!
//! The lock belongs to an open file description, so it is released when the handle holding it is
//! dropped or its process dies (a crashed writer leaves nothing stuck), and two handles conflict
//! even inside one process. Readers never take it: sealed files are immutable and the manifest is
//! replaced by an atomic rename, so a reader always sees a consistent state. `File::try_lock`
//! would do the same but needs Rust 1.89 (the crate's MSRV is 1.80), hence `libc::flock`.
//! On platforms without `flock` the lock is not taken.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::Path;

use crate::error::{Error, Result};

pub(crate) const LOCK_FILE: &str = ".lock";

/// Held for as long as the store handle that writes lives.
pub(crate) struct WriterLock {
    _file: File,
}

impl WriterLock {
    /// Take the lock of the store in `dir` without waiting: `Error::Locked` when another handle
    /// holds it.
    pub fn acquire(dir: &Path) -> Result<WriterLock> {
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        if let Err(e) = try_lock(&file) {
            if e.kind() != std::io::ErrorKind::WouldBlock {
                return Err(Error::io(&path, e));
            }
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            return Err(Error::Locked {
                path: dir.to_path_buf(),
                msg: format!(
                    "another writer holds this store's lock ({LOCK_FILE}, process {}): one \
                     writer at a time (readers are not affected); wait for it to finish or \
                     release the other handle",
                    holder.trim()
                ),
            });
        }
        // The holder's pid, for the message above (advisory: the flock is what counts).
        let _ = file
            .set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| write!(file, "{}", std::process::id()));
        Ok(WriterLock { _file: file })
    }
}

#[cfg(unix)]
fn try_lock(file: &File) -> std::io::Result<()> {
    use std::os::unix::io::AsRawFd;
    // SAFETY: flock on a file descriptor this `File` owns and keeps open.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(unix))]
fn try_lock(_file: &File) -> std::io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_handle_is_refused_until_the_first_is_dropped() {
        let tmp = tempfile::tempdir().unwrap();
        let first = WriterLock::acquire(tmp.path()).unwrap();
        let err = WriterLock::acquire(tmp.path()).err().unwrap();
        assert!(matches!(err, Error::Locked { .. }), "{err}");
        let me = format!("process {}", std::process::id());
        assert!(err.to_string().contains(&me), "{err}");
        drop(first);
        WriterLock::acquire(tmp.path()).unwrap();
    }
}
