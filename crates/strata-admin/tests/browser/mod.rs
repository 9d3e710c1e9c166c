//! Support for the dashboard test: headless Chromium bounded in time, the admin server on its own
//! runtime, a proxy that makes the server vanish after the page's first refresh, tiny HTTP GETs.

use std::collections::HashSet;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use strata_admin::{ServeConfig, Server};
use strata_ops::Deployment;

pub(crate) type Error = Box<dyn std::error::Error>;

/// One Chromium run (start, render, exit) takes a few seconds; a loaded machine may need more.
const CHROMIUM_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the page runs (virtual time) before the DOM is dumped or the screenshot taken:
/// several 2 s refreshes.
const VIRTUAL_TIME_MS: u32 = 10_000;

/// The text between `start` (excluded) and the next `end`.
pub(crate) fn section<'a>(text: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let from = text.find(start)? + start.len();
    let len = text[from..].find(end)?;
    Some(&text[from..from + len])
}

/// The raw response to a minimal HTTP/1.1 GET (`Connection: close`).
fn http_raw(addr: SocketAddr, path: &str) -> Result<Vec<u8>, Error> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    Ok(response)
}

/// Status and body of a GET (the server's own tests cover the API; this only waits for states).
pub(crate) fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), Error> {
    let response = String::from_utf8(http_raw(addr, path)?)?;
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or("no HTTP status line")?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Ok((status, body))
}

/// The admin server on a free port, on its own runtime; shut down on drop.
pub(crate) struct AdminServer {
    pub(crate) addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl AdminServer {
    pub(crate) fn start(deployment: Deployment, audit_log: PathBuf) -> Result<Self, Error> {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        let mut config = ServeConfig::new(deployment, "127.0.0.1:0".parse()?);
        config.audit_log = Some(audit_log);
        let server = runtime.block_on(Server::bind(config))?;
        let addr = server.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        runtime.spawn(async move {
            if let Err(err) = server.run(async move { drop(stopped.await) }).await {
                eprintln!("admin server failed: {err}");
            }
        });
        Ok(Self { addr, stop: Some(stop), runtime: Some(runtime) })
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(5));
        }
    }
}

/// Forwards each path to the admin server once; a second request for an API path gets its
/// connection closed unanswered. The page thus renders its first refresh and then finds the
/// server gone, deterministically, whatever the machine's speed. One request per connection.
pub(crate) struct FirstRoundProxy {
    pub(crate) addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FirstRoundProxy {
    pub(crate) fn start(upstream: SocketAddr) -> Result<Self, Error> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        // Non-blocking accept so the loop sees `stop`.
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(Mutex::new(HashSet::<String>::new()));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    // A thread per connection: Chromium opens sockets it may never use.
                    Ok((client, _)) => {
                        let served = served.clone();
                        std::thread::spawn(move || {
                            let _ = proxy_one(client, upstream, &served);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Ok(Self { addr, stop, thread: Some(thread) })
    }
}

fn proxy_one(mut client: TcpStream, upstream: SocketAddr, served: &Mutex<HashSet<String>>) -> Result<(), Error> {
    client.set_nonblocking(false)?;
    client.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
        let n = client.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head);
    let path = head.split(' ').nth(1).ok_or("no request line")?.to_owned();
    let route = path.split('?').next().unwrap_or_default().to_owned();
    let first = served.lock().map_err(|_| "poisoned")?.insert(route.clone());
    if !first && (route.starts_with("/api/") || route == "/healthz") {
        return Ok(()); // dropped unanswered: a network error for fetch()
    }
    client.write_all(&http_raw(upstream, &path)?)?;
    Ok(())
}

impl Drop for FirstRoundProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Headless Chromium: the Debian package, or `STRATA_CHROMIUM`.
pub(crate) struct Chromium {
    path: PathBuf,
}

impl Chromium {
    pub(crate) fn find() -> Result<Self, Error> {
        let path = PathBuf::from(std::env::var("STRATA_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()));
        if !path.exists() {
            return Err(format!(
                "{} not found: the dashboard test needs headless Chromium (`apt-get install -y chromium`; \
                 `./run test` installs it)",
                path.display()
            )
            .into());
        }
        Ok(Self { path })
    }

    /// The DOM of `url` after the page ran for the virtual time budget, with `&lt;`/`&gt;` in
    /// attribute values (bucket names such as `<1d`) turned back into `<` and `>`.
    pub(crate) fn dump_dom(&self, tmp: &Path, url: &str) -> Result<String, Error> {
        let dom = self.run(tmp, &["--dump-dom", url])?;
        Ok(dom.replace("&lt;", "<").replace("&gt;", ">"))
    }

    /// A 1400x1000 PNG of `url` at `path`.
    pub(crate) fn screenshot(&self, tmp: &Path, url: &str, path: &Path) -> Result<(), Error> {
        let shot = format!("--screenshot={}", path.display());
        self.run(tmp, &["--window-size=1400,1000", "--hide-scrollbars", &shot, url]).map(drop)
    }

    /// Runs Chromium with `args` and returns its stdout; killed (with its whole process group:
    /// renderer, GPU and zygote processes) after [`CHROMIUM_TIMEOUT`] or if the test panics.
    fn run(&self, tmp: &Path, args: &[&str]) -> Result<String, Error> {
        let out_path = tmp.join("chromium.out");
        let err_path = tmp.join("chromium.err");
        let mut cmd = Command::new(&self.path);
        cmd.args(["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions"])
            .arg(format!("--user-data-dir={}", tmp.join("chromium-profile").display()))
            .arg(format!("--virtual-time-budget={VIRTUAL_TIME_MS}"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(File::create(&out_path)?)
            .stderr(File::create(&err_path)?)
            .process_group(0);
        let mut child = KillGroupOnDrop(cmd.spawn().map_err(|e| format!("cannot start {}: {e}", self.path.display()))?);
        let deadline = Instant::now() + CHROMIUM_TIMEOUT;
        let status = loop {
            if let Some(status) = child.0.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
                return Err(
                    format!("chromium {args:?} did not finish within {CHROMIUM_TIMEOUT:?}; stderr:\n{stderr}").into()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        if !status.success() {
            let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
            return Err(format!("chromium {args:?} failed ({status}); stderr:\n{stderr}").into());
        }
        Ok(std::fs::read_to_string(&out_path)?)
    }
}

struct KillGroupOnDrop(Child);

impl Drop for KillGroupOnDrop {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            // A negative pid names the process group that process_group(0) created.
            let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", self.0.id())]).status();
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// `target/test-artifacts` of this workspace (CARGO_TARGET_DIR when set).
pub(crate) fn artifact_dir() -> Result<PathBuf, Error> {
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"),
    };
    let dir = target.join("test-artifacts");
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
