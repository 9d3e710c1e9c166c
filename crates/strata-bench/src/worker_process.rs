//! The worker processes of the multi-process drills (`drill stampede`, `drill consistency`):
//! each is a copy of the `strata` binary, killed if the drill returns early, and its last
//! stdout line is its result. The drills meet them through files in a directory they share.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::Context;

/// A worker process, killed (and reaped) when dropped before it was waited for.
pub(crate) struct WorkerProcess(Option<Child>);

impl WorkerProcess {
    pub(crate) fn new(child: Child) -> Self {
        Self(Some(child))
    }

    /// The process id, while it has not been waited for.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.0.as_ref().map(Child::id)
    }

    /// Whether it has exited, successfully or not.
    pub(crate) fn exited(&mut self) -> bool {
        self.0.as_mut().and_then(|c| c.try_wait().ok().flatten()).is_some()
    }

    /// Whether it has exited with a failure.
    pub(crate) fn exited_badly(&mut self) -> bool {
        self.0.as_mut().and_then(|c| c.try_wait().ok().flatten()).is_some_and(|s| !s.success())
    }

    /// Waits until it exits (successfully, else an error), at the latest until `deadline`
    /// (then it is killed), and returns its stdout.
    pub(crate) fn wait(&mut self, deadline: Instant) -> anyhow::Result<String> {
        let mut child = self.0.take().context("the worker was already waited for")?;
        loop {
            if child.try_wait()?.is_some() {
                let out = child.wait_with_output()?;
                anyhow::ensure!(out.status.success(), "a worker failed ({})", out.status);
                return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                anyhow::bail!("a worker did not finish in time");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Files in `dir` whose names start with `prefix` (the workers' "ready" marks).
pub(crate) fn count_files(dir: &Path, prefix: &str) -> usize {
    std::fs::read_dir(dir)
        .map(|d| d.flatten().filter(|e| e.file_name().to_string_lossy().starts_with(prefix)).count())
        .unwrap_or(0)
}

/// A name no other run uses at the same time (nanoseconds since the epoch, in hex).
pub(crate) fn unique() -> String {
    format!(
        "{:x}",
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
    )
}

/// A directory the workers share, removed when dropped.
pub(crate) struct RemoveDir(pub(crate) PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
