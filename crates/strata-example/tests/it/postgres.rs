//! The PostgreSQL path: against `STRATA_TEST_POSTGRES_URL` when set, else a throwaway server
//! started from `/usr/lib/postgresql/15/bin` (Debian's `postgresql-15`), else skipped with the
//! reason printed.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use axum::http::{Method, StatusCode};
use serde_json::json;
use strata_example::db::{Backend, Db, UserUpdate};
use strata_example::service::ServiceConfig;

use crate::common::{Env, Redis, TestResult, call, get};

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// A PostgreSQL server in a temporary directory, stopped on drop.
struct PgServer {
    dir: tempfile::TempDir,
    url: String,
    as_postgres: bool,
}

impl PgServer {
    /// Initializes and starts a server; the error says why not.
    fn start() -> Result<PgServer, String> {
        if !Path::new(PG_BIN).join("initdb").exists() {
            return Err(format!("{PG_BIN}/initdb not found (apt-get install -y postgresql-15)"));
        }
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        // PostgreSQL refuses to run as root: run it as the `postgres` user, which must be able
        // to enter the directory and own the data in it.
        let as_postgres = is_root();
        let mut server = PgServer { dir, url: String::new(), as_postgres };
        if as_postgres {
            run(Command::new("chmod").arg("755").arg(server.dir.path()))?;
            run(Command::new("chown").arg("postgres:").arg(server.dir.path()))?;
        }
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(|e| e.to_string())?.port();
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

impl Drop for PgServer {
    fn drop(&mut self) {
        if !self.url.is_empty() {
            let _ = self.pg("pg_ctl").args(["-m", "immediate", "-D"]).arg(self.data()).arg("stop").output();
        }
    }
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| o.stdout.trim_ascii() == b"0").unwrap_or(false)
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_runs_on_postgres() -> TestResult {
    let (url, _server) = match std::env::var("STRATA_TEST_POSTGRES_URL") {
        Ok(url) => (url, None),
        Err(_) => match PgServer::start() {
            Ok(server) => (server.url.clone(), Some(server)),
            Err(reason) if reason.contains("not found") => {
                println!("skipped: no STRATA_TEST_POSTGRES_URL and {reason}");
                return Ok(());
            }
            Err(reason) => panic!("could not start PostgreSQL: {reason}"),
        },
    };
    let db = Db::open(&url).await?;
    assert_eq!(db.backend(), Backend::Postgres);
    // A database given by URL may hold rows of earlier runs: write values unique to this run.
    let marker = format!("pg-{:x}", rand::random::<u32>());

    let dir = tempfile::tempdir()?;
    let env = Env::with_db(Redis::standalone(), dir, url.clone(), &ServiceConfig::default()).await;
    assert_eq!(env.services.db().backend(), Backend::Postgres);

    // Cache-aside and negative caching.
    let before = env.queries();
    assert_eq!(get(&env.app, "/users/8").await.body["email"], "user8@example.com");
    assert_eq!(get(&env.app, "/users/8").await.status, StatusCode::OK);
    assert_eq!(get(&env.app, "/users/999999").await.status, StatusCode::NOT_FOUND);
    assert_eq!(get(&env.app, "/users/999999").await.status, StatusCode::NOT_FOUND);
    assert_eq!(env.queries(), before + 2);

    // Invalidation on write, seen through the database directly too.
    let put = call(&env.app, Method::PUT, "/users/8", Some(json!({ "name": marker }))).await;
    assert_eq!(put.status, StatusCode::OK);
    assert_eq!(get(&env.app, "/users/8").await.body["name"], marker.as_str());
    assert_eq!(db.get_user(8).await?.map(|u| u.name), Some(marker.clone()));
    assert_eq!(db.update_user(999_999, &UserUpdate::default()).await?, None);

    // Bulk update and listing.
    let old = get(&env.app, "/products?category=cat-3").await.body;
    assert!(!old.as_array().expect("array").is_empty());
    let r =
        call(&env.app, Method::POST, "/products/bulk-update", Some(json!({ "category": "cat-3", "percent": 5 }))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(r.body["updated"].as_u64().expect("count") >= 10);
    let new = get(&env.app, "/products?category=cat-3").await.body;
    assert_eq!(new, json!(db.list_products("cat-3").await?));
    assert_ne!(new, old);
    Ok(())
}
