//! Creating, replacing and appending to files without ever writing through a symbolic link.
//!
//! A store or a run directory may be shared with other users, or damaged by hand. A symbolic
//! link planted where tttnn writes one of its own files (`manifest.json.tmp -> ../victim`) would
//! make a plain `open(O_CREAT|O_TRUNC)` overwrite whatever file the link names, outside the
//! directory, and a rename would then move the link itself into place. So every file tttnn
//! writes goes through one of three rules here:
//! * [`write_new`]: a file that must not exist yet is created with `O_CREAT|O_EXCL|O_NOFOLLOW`:
//!   the kernel refuses any existing name, a link included, atomically (no check-then-open race);
//! * [`replace`]: a file replaced atomically is written to a fresh temporary name beside it
//!   (`.NAME.PID.N.tmp`, created as above, so a planted name is skipped, never followed),
//!   fsynced, renamed over the target (a rename replaces a name, it never follows one), and the
//!   directory fsynced; a target that is itself a symbolic link is refused;
//! * [`append`]: a file appended to is opened with `O_APPEND|O_NOFOLLOW`.
//!
//! A symbolic link where one of these files belongs is an error naming the path
//! ([`symlink_refused`]), never followed and never silently removed. Directories the caller
//! names (a store reached through a link, say) are followed as usual: only the last component is
//! tttnn's. New files get the permissions of the umask (`0o666` before it), as Python's `open`
//! gives them, not `0o600`.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use xxhash_rust::xxh3::Xxh3;

use crate::error::{Error, Result};
use crate::ragged::FileSum;

/// The error for a symbolic link found where tttnn writes one of its own files.
pub fn symlink_refused(path: &Path) -> Error {
    Error::io(
        path,
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "is a symbolic link where tttnn writes a file of its own; tttnn never writes \
             through a link (it would change the file the link points to): remove the link",
        ),
    )
}

/// `path` (its last component) is a symbolic link.
fn is_symlink(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
}

/// An error unless `path` is absent or not a symbolic link (a directory tttnn writes into).
pub(crate) fn refuse_symlink(path: &Path) -> Result<()> {
    if is_symlink(path) {
        return Err(symlink_refused(path));
    }
    Ok(())
}

/// An error from opening `path` without following a link: [`symlink_refused`] when a link is
/// what made it fail (`ELOOP` from `O_NOFOLLOW`, `EEXIST` from `O_EXCL`), else the error itself.
fn open_error(path: &Path, e: std::io::Error) -> Error {
    if is_symlink(path) {
        symlink_refused(path)
    } else {
        Error::io(path, e)
    }
}

fn no_follow(options: &mut OpenOptions) -> &mut OpenOptions {
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NOFOLLOW);
    }
    options
}

/// Create `path`, which must not exist (not even as a link), for writing.
pub(crate) fn create_new(path: &Path) -> Result<File> {
    if is_symlink(path) {
        // O_EXCL refuses it anyway; say why instead of "file exists".
        return Err(symlink_refused(path));
    }
    no_follow(OpenOptions::new().write(true).create_new(true))
        .open(path)
        .map_err(|e| open_error(path, e))
}

/// Write `sections` back to back into `file` (named `path` in errors), fsync it, and return
/// its size and xxh3.
fn write_all_hashed(path: &Path, file: File, sections: &[&[u8]]) -> Result<FileSum> {
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let mut hasher = Xxh3::new();
    let mut bytes = 0u64;
    for s in sections {
        w.write_all(s).map_err(|e| Error::io(path, e))?;
        hasher.update(s);
        bytes += s.len() as u64;
    }
    let file = w
        .into_inner()
        .map_err(|e| Error::io(path, e.into_error()))?;
    file.sync_all().map_err(|e| Error::io(path, e))?;
    Ok(FileSum {
        bytes,
        xxh3: hasher.digest(),
    })
}

/// Write `sections` back to back into the new file `path` (which must not exist, see
/// [`create_new`]), fsync it, and return its size and xxh3.
pub fn write_new(path: &Path, sections: &[&[u8]]) -> Result<FileSum> {
    let file = create_new(path)?;
    write_all_hashed(path, file, sections)
}

/// Makes temporary names unique within a process (the pid, across processes).
static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// A new temporary file beside `path` (`.NAME.PID.N.tmp`), created exclusively: a name that
/// exists, a planted link included, is skipped for the next one.
fn create_temp(path: &Path) -> Result<(PathBuf, File)> {
    let dir = parent(path);
    let name = path
        .file_name()
        .ok_or_else(|| {
            Error::io(
                path,
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file name"),
            )
        })?
        .to_string_lossy();
    let pid = std::process::id();
    let mut last = None;
    for _ in 0..64 {
        let n = TEMP_SEQ.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".{name}.{pid}.{n}.tmp"));
        match no_follow(OpenOptions::new().write(true).create_new(true)).open(&tmp) {
            Ok(file) => return Ok((tmp, file)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some((tmp, e)),
            Err(e) => return Err(Error::io(&tmp, e)),
        }
    }
    let (tmp, e) = last.unwrap_or_else(|| {
        let e = std::io::Error::from(std::io::ErrorKind::AlreadyExists);
        (path.to_path_buf(), e)
    });
    Err(Error::io(tmp, e))
}

/// The directory holding `path` (`.` for a bare file name).
fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Replace `path` atomically with `sections` (back to back): written to a fresh temporary file
/// beside it, fsynced, renamed over `path`, the directory fsynced. A reader sees the old
/// content or the new, never a mix; a crash leaves at most a `.NAME.PID.N.tmp` file behind. A
/// symbolic link at `path` is refused ([`symlink_refused`]). Returns the size and xxh3 written.
pub fn replace(path: &Path, sections: &[&[u8]]) -> Result<FileSum> {
    refuse_symlink(path)?;
    let (tmp, file) = create_temp(path)?;
    let written = write_all_hashed(&tmp, file, sections).and_then(|sum| {
        std::fs::rename(&tmp, path)
            .map(|()| sum)
            .map_err(|e| Error::io(path, e))
    });
    match written {
        Ok(sum) => {
            fsync_dir(parent(path))?;
            Ok(sum)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Append `data` to `path` (created when absent) and fsync it; a symbolic link at `path` is
/// refused. The directory is fsynced too when the file was empty, so a first row survives a
/// crash with its file.
pub fn append(path: &Path, data: &[u8]) -> Result<()> {
    let mut file = no_follow(OpenOptions::new().append(true).create(true))
        .open(path)
        .map_err(|e| open_error(path, e))?;
    let was_empty = file.metadata().map_err(|e| Error::io(path, e))?.len() == 0;
    file.write_all(data).map_err(|e| Error::io(path, e))?;
    file.sync_all().map_err(|e| Error::io(path, e))?;
    if was_empty {
        fsync_dir(parent(path))?;
    }
    Ok(())
}

/// Remove what an interrupted write left at `path` (a file or a directory tree) so it can be
/// written again; nothing there is fine. A symbolic link is refused, not removed: tttnn never
/// leaves one, so someone else put it there.
pub(crate) fn remove_leftover(path: &Path) -> Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(path, e)),
    };
    if meta.file_type().is_symlink() {
        return Err(symlink_refused(path));
    }
    if meta.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    }
    .map_err(|e| Error::io(path, e))
}

/// fsync a directory so the renames inside it are durable.
pub(crate) fn fsync_dir(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(path, e))
}

#[cfg(test)]
#[cfg(unix)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A directory with `victim` (a file outside the one tttnn writes in) and `dir/`.
    fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let victim = tmp.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        let dir = tmp.path().join("dir");
        std::fs::create_dir(&dir).unwrap();
        (tmp, victim, dir)
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn replace_writes_atomically_and_leaves_no_temporary_file() {
        let (_tmp, _, dir) = setup();
        let p = dir.join("config.json");
        let sum = replace(&p, &[b"{\"a\":", b" 1}"]).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"{\"a\": 1}");
        assert_eq!(sum.bytes, 8);
        assert_eq!(sum.xxh3, xxhash_rust::xxh3::xxh3_64(b"{\"a\": 1}"));
        replace(&p, &[b"2"]).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"2");
        assert_eq!(names(&dir), vec!["config.json"]);
    }

    #[test]
    fn a_planted_link_is_never_written_through() {
        let (_tmp, victim, dir) = setup();
        // The target itself a link: refused, naming it.
        let p = dir.join("manifest.json");
        symlink(&victim, &p).unwrap();
        let err = replace(&p, &[b"new"]).unwrap_err().to_string();
        assert!(
            err.contains("manifest.json") && err.contains("symbolic link"),
            "{err}"
        );
        std::fs::remove_file(&p).unwrap();
        // Links at the temporary names tttnn used to use, and at the next one it would pick:
        // skipped, never followed.
        let next = TEMP_SEQ.load(Ordering::Relaxed);
        for name in [
            "manifest.json.tmp".to_string(),
            format!(".manifest.json.{}.{next}.tmp", std::process::id()),
        ] {
            symlink(&victim, dir.join(name)).unwrap();
        }
        replace(&p, &[b"new"]).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
        assert!(!is_symlink(&p));
        // New files and appends refuse a link too.
        let q = dir.join("vectors.bin");
        symlink(&victim, &q).unwrap();
        let err = write_new(&q, &[b"x"]).unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
        let r = dir.join("results.jsonl");
        symlink(&victim, &r).unwrap();
        let err = append(&r, b"x\n").unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
        // A leftover link is refused, not removed.
        assert!(remove_leftover(&r).is_err());
        assert!(is_symlink(&r));
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
    }

    #[test]
    fn append_creates_then_appends() {
        let (_tmp, _, dir) = setup();
        let p = dir.join("results.jsonl");
        append(&p, b"{\"a\": 1}\n").unwrap();
        append(&p, b"{\"a\": 2}\n").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"{\"a\": 1}\n{\"a\": 2}\n");
    }

    #[test]
    fn write_new_refuses_an_existing_file_and_leftovers_are_removed() {
        let (_tmp, _, dir) = setup();
        let p = dir.join("text.bin");
        write_new(&p, &[b"a"]).unwrap();
        let err = write_new(&p, &[b"b"]).unwrap_err();
        assert!(
            matches!(&err, Error::Io { source, .. }
            if source.kind() == std::io::ErrorKind::AlreadyExists),
            "{err}"
        );
        remove_leftover(&p).unwrap();
        std::fs::create_dir_all(dir.join("t/u")).unwrap();
        remove_leftover(&dir.join("t")).unwrap();
        remove_leftover(&dir.join("absent")).unwrap();
        assert!(names(&dir).is_empty());
    }
}
