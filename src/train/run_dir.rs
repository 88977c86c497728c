//! The run folder and its one owner: an exclusive lock held while a trainer uses the folder, fresh starts that move
//! an old run aside instead of deleting anything, and the removal of temporary files left by interrupted writes.

use crate::error::Error;
use candle_core::Result;
use std::fs::{File, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// The lock file inside a run folder; it holds the PID of the process that owns the run.
pub const LOCK_FILE: &str = "lock";

/// A run folder locked by this process (an exclusive `flock` on [`LOCK_FILE`], released when the value is dropped or
/// the process dies, even by `kill -9`).
#[derive(Debug)]
pub struct RunDir {
    path: PathBuf,
    _lock: File,
}

impl RunDir {
    /// Locks `path` (created if needed) for a run that continues what the folder holds. Errors, touching nothing,
    /// when another process holds the lock; the message names its PID.
    pub fn resume(path: &Path) -> Result<RunDir> {
        std::fs::create_dir_all(path).map_err(|e| Error::io(path, e))?;
        let lock = lock(path)?;
        remove_temp_files(path)?;
        Ok(RunDir {
            path: path.to_path_buf(),
            _lock: lock,
        })
    }

    /// Locks `path` for a fresh run: when the folder already holds anything (a log, a checkpoint, a tokenizer), it is
    /// first moved aside to `<path>.1` (`.2`, … whichever is free) under the old lock, and the move is reported on
    /// stderr. Nothing is ever deleted. Errors when another process holds the lock.
    pub fn fresh(path: &Path) -> Result<RunDir> {
        if path.is_dir() && holds_a_run(path)? {
            let old_lock = lock(path)?;
            let aside = (1..)
                .map(|k| PathBuf::from(format!("{}.{k}", path.display())))
                .find(|c| !c.exists())
                .expect("some suffix is free");
            std::fs::rename(path, &aside).map_err(|e| Error::io(path, e))?;
            crate::data::sync_parent(path)?;
            drop(old_lock);
            eprintln!(
                "{} held a previous run: moved to {} (resume a run instead to continue it)",
                path.display(),
                aside.display()
            );
        }
        Self::resume(path)
    }

    /// Errors (naming the holder's PID) when a process holds the lock of `path`; creates nothing. For checking a
    /// run folder before any work, the lock itself being taken by [`RunDir::fresh`] or [`RunDir::resume`].
    pub fn check_free(path: &Path) -> Result<()> {
        let lock_path = path.join(LOCK_FILE);
        let Ok(mut file) = File::open(&lock_path) else {
            return Ok(());
        };
        match file.try_lock() {
            Ok(()) => Ok(()),
            Err(TryLockError::WouldBlock) => Err(busy(path, &mut file)),
            Err(TryLockError::Error(e)) => Err(Error::io(&lock_path, e).into()),
        }
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Whether the folder holds anything besides its lock file and temporary files.
fn holds_a_run(path: &Path) -> Result<bool> {
    let entries = std::fs::read_dir(path).map_err(|e| Error::io(path, e))?;
    for e in entries {
        let e = e.map_err(|e| Error::io(path, e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name != LOCK_FILE && !is_temp(&name) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Temporary files of [`crate::data::write_atomic`]: `<name>.tmp-<pid>`.
fn is_temp(name: &str) -> bool {
    name.rsplit_once(".tmp-")
        .is_some_and(|(_, pid)| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
}

/// Removes the temporary files of interrupted writes (only called under the lock: no live writer can own them).
fn remove_temp_files(path: &Path) -> Result<()> {
    let entries = std::fs::read_dir(path).map_err(|e| Error::io(path, e))?;
    for e in entries {
        let e = e.map_err(|e| Error::io(path, e))?;
        if is_temp(&e.file_name().to_string_lossy()) {
            let p = e.path();
            std::fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
        }
    }
    Ok(())
}

/// The error for a folder whose lock `file` another process holds, naming its PID.
fn busy(dir: &Path, file: &mut File) -> candle_core::Error {
    let mut pid = String::new();
    let _ = file.read_to_string(&mut pid);
    let pid = pid.trim();
    Error::Config(format!(
        "the run folder {} is in use by process {} (it holds {}); wait for it or stop it, or choose another \
         run folder",
        dir.display(),
        if pid.is_empty() { "?" } else { pid },
        dir.join(LOCK_FILE).display()
    ))
    .into()
}

/// Takes the folder's lock without waiting and writes this process's PID into it.
fn lock(dir: &Path) -> Result<File> {
    let path = dir.join(LOCK_FILE);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => return Err(busy(dir, &mut file)),
        Err(TryLockError::Error(e)) => return Err(Error::io(&path, e).into()),
    }
    let write = |f: &mut File| -> std::io::Result<()> {
        f.set_len(0)?;
        f.rewind()?;
        writeln!(f, "{}", std::process::id())?;
        f.sync_all()
    };
    write(&mut file).map_err(|e| Error::io(&path, e))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names() {
        assert!(is_temp("checkpoint.safetensors.tmp-1234"));
        assert!(!is_temp("checkpoint.safetensors"));
        assert!(!is_temp("x.tmp-"));
        assert!(!is_temp("x.tmp-12a"));
    }

    #[test]
    fn second_lock_names_the_holder_and_fresh_moves_aside() {
        let dir = std::env::temp_dir().join(format!("cs-rundir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let run = dir.join("r");
        let a = RunDir::fresh(&run).unwrap();
        std::fs::write(run.join("log.jsonl"), "{}\n").unwrap();
        std::fs::write(run.join("checkpoint.safetensors.tmp-99"), "x").unwrap();
        // flock locks are per open file description: a second open in the same process conflicts too.
        let err = RunDir::resume(&run).unwrap_err().to_string();
        assert!(err.contains(&std::process::id().to_string()), "{err}");
        assert!(run.join("checkpoint.safetensors.tmp-99").exists());
        drop(a);
        let b = RunDir::resume(&run).unwrap();
        assert!(!run.join("checkpoint.safetensors.tmp-99").exists());
        drop(b);
        let _c = RunDir::fresh(&run).unwrap();
        assert!(dir.join("r.1").join("log.jsonl").exists());
        assert!(!run.join("log.jsonl").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
