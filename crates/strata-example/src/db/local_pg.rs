//! A throwaway PostgreSQL server for tests, benchmarks and the demo: initialized in a temporary
//! directory from Debian's `postgresql-15` binaries, listening on a free loopback port, stopped
//! and deleted on drop.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Error, ErrorKind, Result};

/// Where Debian's `postgresql-15` package puts `initdb` and `pg_ctl`.
pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// A PostgreSQL server of its own, with trust authentication on 127.0.0.1 and fsync off
/// (throwaway data: durability would only slow the runs down). Stopped on drop.
#[derive(Debug)]
pub struct LocalPostgres {
    dir: tempfile::TempDir,
    url: String,
    as_postgres: bool,
}

impl LocalPostgres {
    /// Whether the binaries are installed (`apt-get install -y postgresql-15`).
    pub fn available() -> bool {
        Path::new(PG_BIN).join("initdb").exists()
    }

    /// Initializes and starts a server; the error says which step failed and its output.
    pub fn start() -> Result<LocalPostgres> {
        if !Self::available() {
            return Err(failure(format!("{PG_BIN}/initdb not found (apt-get install -y postgresql-15)")));
        }
        let dir = tempfile::tempdir().map_err(|e| failure(format!("creating a temporary directory: {e}")))?;
        // PostgreSQL refuses to run as root: run it as the `postgres` user, which must be able
        // to enter the directory and own the data in it.
        let as_postgres = is_root();
        let mut server = LocalPostgres { dir, url: String::new(), as_postgres };
        if as_postgres {
            run(Command::new("chmod").arg("755").arg(server.dir.path()))?;
            run(Command::new("chown").arg("postgres:").arg(server.dir.path()))?;
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| failure(format!("finding a free port: {e}")))?
            .port();
        let data = server.data();
        let dir = server.dir.path().display().to_string();
        run(server
            .pg("initdb")
            .args(["--auth=trust", "--username=postgres", "--encoding=UTF8", "--no-sync", "-D"])
            .arg(&data))?;
        let options = format!("-p {port} -k {dir} -c listen_addresses=127.0.0.1 -c fsync=off");
        run(server
            .pg("pg_ctl")
            .args(["-w", "-t", "60", "-l"])
            .arg(format!("{dir}/log"))
            .arg("-o")
            .arg(options)
            .arg("-D")
            .arg(&data)
            .arg("start"))?;
        server.url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
        Ok(server)
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn pg(&self, tool: &str) -> Command {
        let path = format!("{PG_BIN}/{tool}");
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", &path]);
            c
        } else {
            Command::new(path)
        };
        cmd.current_dir(self.dir.path());
        cmd
    }
}

impl Drop for LocalPostgres {
    fn drop(&mut self) {
        if !self.url.is_empty() {
            let _ = self.pg("pg_ctl").args(["-m", "immediate", "-D"]).arg(self.data()).arg("stop").output();
        }
    }
}

fn failure(message: String) -> Error {
    Error::new(ErrorKind::Database, format!("local PostgreSQL: {message}"))
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| o.stdout.trim_ascii() == b"0").unwrap_or(false)
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().map_err(|e| failure(format!("{cmd:?}: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(failure(format!(
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}
