//! One writer per directory, for stores and evaluation runs alike: an advisory `flock` on
//! `DIR/.lock`.
//!
//! The lock belongs to an open file description, so it is released when the handle holding it is
//! dropped or its process dies (killed, out of memory: a crashed writer leaves nothing stuck), and
//! two handles conflict even inside one process. A child forked while the lock is held holds it
//! too until it exits (the descriptor is closed on `exec`). Readers never take it: sealed store
//! files are immutable and a manifest is replaced by an atomic rename, so a reader always sees a
//! consistent state, and never waits.
//!
//! The holder writes who it is into the file (pid, host, what it locked) for the message the next
//! writer gets; that record is never trusted, only the `flock` counts. The file is never deleted:
//! a writer that unlinked it could race one that has just opened it and a third that creates a
//! new one, and two of them would hold "the" lock. It is opened without following a symbolic
//! link (`O_NOFOLLOW`): a link there would make every writer write its record into whatever file
//! the link names, so a link is refused with an error saying so.
//!
//! `File::try_lock` would do the same but needs Rust 1.89 (the crate's MSRV is 1.80), hence
//! `libc::flock`. On platforms without `flock` the lock is not taken.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::Path;

use crate::error::{Error, Result};
use crate::files::symlink_refused;

pub(crate) const LOCK_FILE: &str = ".lock";

/// Held for as long as the writer that took it lives (a store handle, a run).
pub(crate) struct WriterLock {
    _file: File,
}

impl WriterLock {
    /// Take the lock of the directory `dir` (which must exist) without waiting: `Error::Locked`
    /// naming the holder when another handle holds it. `what` names the directory in that
    /// message ("store", "run").
    pub fn acquire(dir: &Path, what: &str) -> Result<WriterLock> {
        let path = dir.join(LOCK_FILE);
        let mut file = open_lock_file(&path)?;
        if let Err(e) = try_lock(&file) {
            if e.kind() != std::io::ErrorKind::WouldBlock {
                let msg = format!("cannot take the writer lock: {e}");
                return Err(Error::io(&path, std::io::Error::new(e.kind(), msg)));
            }
            let mut record = String::new();
            let _ = file.read_to_string(&mut record);
            return Err(Error::Locked {
                path: dir.to_path_buf(),
                msg: format!(
                    "another writer holds this {what}'s lock ({}; lock file {LOCK_FILE}): one \
                     writer at a time, readers are not affected; the lock is released when that \
                     writer finishes or its process ends",
                    describe_holder(&record)
                ),
            });
        }
        // Who holds it, for the message above (advisory: the flock is what counts).
        let record = serde_json::json!({
            "pid": std::process::id(),
            "host": hostname(),
            "what": what,
        });
        let _ = file
            .set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| write!(file, "{record}"));
        Ok(WriterLock { _file: file })
    }
}

/// Open (or create) the lock file, refusing a symbolic link in its place.
fn open_lock_file(path: &Path) -> Result<File> {
    let mut options = OpenOptions::new();
    options.create(true).truncate(false).read(true).write(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NOFOLLOW);
    }
    options.open(path).map_err(|e| {
        let is_link = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
        if is_link {
            symlink_refused(path)
        } else {
            Error::io(path, e)
        }
    })
}

/// "pid 123 on host (this process)" from a holder's record: the JSON this module writes, or a
/// bare pid (what stores wrote before the record had a host).
fn describe_holder(record: &str) -> String {
    let record = record.trim();
    let parsed: Option<serde_json::Value> = serde_json::from_str(record).ok();
    let (pid, host) = match &parsed {
        Some(serde_json::Value::Object(o)) => (
            o.get("pid").and_then(serde_json::Value::as_u64),
            o.get("host").and_then(serde_json::Value::as_str),
        ),
        Some(serde_json::Value::Number(n)) => (n.as_u64(), None),
        _ => (None, None),
    };
    let Some(pid) = pid else {
        return "its pid is not recorded yet".into();
    };
    let mut who = format!("pid {pid}");
    if let Some(h) = host.filter(|h| !h.is_empty()) {
        who.push_str(&format!(" on {h}"));
    }
    if u64::from(std::process::id()) == pid && host.map_or(true, |h| h == hostname()) {
        who.push_str(", this process");
    }
    who
}

#[cfg(unix)]
fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into the buffer it is given.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return String::new();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

#[cfg(not(unix))]
fn hostname() -> String {
    String::new()
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
        let first = WriterLock::acquire(tmp.path(), "run").unwrap();
        let err = WriterLock::acquire(tmp.path(), "run").err().unwrap();
        assert!(matches!(err, Error::Locked { .. }), "{err}");
        let me = format!("pid {} on {}, this process", std::process::id(), hostname());
        assert!(err.to_string().contains(&me), "{err}");
        assert!(err.to_string().contains("this run's lock"), "{err}");
        drop(first);
        WriterLock::acquire(tmp.path(), "run").unwrap();
    }

    #[test]
    fn holder_records_of_any_shape_give_a_message() {
        assert_eq!(describe_holder("garbage"), "its pid is not recorded yet");
        assert_eq!(describe_holder(""), "its pid is not recorded yet");
        assert_eq!(describe_holder("4000000000"), "pid 4000000000");
        let other = r#"{"pid": 4000000000, "host": "elsewhere", "what": "store"}"#;
        assert_eq!(describe_holder(other), "pid 4000000000 on elsewhere");
    }

    #[cfg(unix)]
    #[test]
    fn a_symbolic_link_in_place_of_the_lock_file_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("precious");
        std::fs::write(&target, b"keep").unwrap();
        std::os::unix::fs::symlink(&target, tmp.path().join(LOCK_FILE)).unwrap();
        let err = WriterLock::acquire(tmp.path(), "run").err().unwrap();
        assert!(matches!(err, Error::Io { .. }), "{err}");
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
    }
}
