//! Latency in front of a host's TCP services. This kernel has no `netem` queueing discipline, so
//! the delay is a proxy inside the host: an nftables rule there redirects every new TCP
//! connection that arrives on the host's link (SSH aside) to it, and it forwards the
//! connection to where it was going, holding each chunk of the reply for the delay. A request
//! and its reply therefore take the delay more, as with `netem delay` on the host's link; the
//! requests themselves pass at once. Connections open before the delay was set keep their path.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::error::{Error, ErrorKind, Result};
use crate::lab::{Delay, Lab};
use crate::sh::{self, run};

/// The proxy's port inside a delayed host.
pub const PROXY_PORT: u16 = 39_999;
const TABLE: &str = "strata_lab_delay";
/// Largest delay `delay` accepts.
pub const MAX_DELAY: Duration = Duration::from_secs(10);

impl Lab {
    /// Adds `delay` to every reply of `host`'s TCP services (a new delay replaces the old one;
    /// zero removes it). `program` is a binary whose `lab serve-delay --listen ADDR
    /// --delay-ms N` runs [`serve`] (the `strata` CLI).
    pub fn delay(&mut self, host: &str, delay: Duration, program: &Path) -> Result<()> {
        if delay > MAX_DELAY {
            return Err(Error::new(ErrorKind::Invalid, format!("a delay of at most {MAX_DELAY:?}, got {delay:?}")));
        }
        let host = self.host(host)?.clone();
        self.undelay(&host.name)?;
        if delay.is_zero() {
            return Ok(());
        }
        let listen = SocketAddr::from((host.addr, PROXY_PORT));
        let log = host.root.join("delay.log");
        let log_file =
            std::fs::File::create(&log).map_err(|e| Error::new(ErrorKind::State, format!("{}: {e}", log.display())))?;
        let err_file =
            log_file.try_clone().map_err(|e| Error::new(ErrorKind::State, format!("{}: {e}", log.display())))?;
        let mut cmd = self.command(&host.name, program)?;
        cmd.args(["lab", "serve-delay", "--listen", &listen.to_string(), "--delay-ms", &delay.as_millis().to_string()]);
        cmd.stdin(Stdio::null()).stdout(log_file).stderr(err_file);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd
            .spawn()
            .map_err(|e| Error::new(ErrorKind::Command, format!("starting the delay proxy on {}: {e}", host.name)))?;
        let pid = child.id();
        // Recorded before it is waited for, so that `down` stops it whatever happens next.
        self.delays.push(Delay { host: host.name.clone(), delay_ms: delay.as_millis() as u64, port: PROXY_PORT, pid });
        self.save()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect_timeout(&listen, Duration::from_millis(200)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                let logged = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(Error::new(
                    ErrorKind::Command,
                    format!("delay proxy on {} exited ({status}): {}", host.name, logged.trim()),
                ));
            }
            if Instant::now() > deadline {
                return Err(Error::new(
                    ErrorKind::Command,
                    format!("delay proxy on {} did not listen in 10 s", host.name),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Not waited for: `undelay` or `down` stops it.
        std::mem::forget(child);
        let rules = format!(
            "table ip {TABLE} {{\n  chain prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n    \
             iifname \"eth0\" tcp dport != {{ 22, {PROXY_PORT} }} redirect to :{PROXY_PORT}\n  }}\n}}\n"
        );
        sh::run_with_input("ip", &["netns", "exec", &host.netns, "nft", "-f", "-"], &rules)
    }

    /// Removes `host`'s delay, if any.
    pub fn undelay(&mut self, host: &str) -> Result<()> {
        let host = self.host(host)?.clone();
        let table_exists = Command::new("ip")
            .args(["netns", "exec", &host.netns, "nft", "list", "table", "ip", TABLE])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if table_exists {
            run("ip", &["netns", "exec", &host.netns, "nft", "delete", "table", "ip", TABLE])?;
        }
        let (gone, kept): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.delays).into_iter().partition(|d| d.host == host.name);
        self.delays = kept;
        for delay in gone {
            // Only if it is still the proxy of this host (not a pid reused since).
            if sh::in_netns(delay.pid, &host.netns) {
                sh::stop(delay.pid);
            }
        }
        self.save()
    }
}

/// The delay proxy: accepts the connections redirected to `listen` and forwards each to its
/// original destination, holding every chunk of the reply for `delay`. Runs until killed.
pub async fn serve(listen: SocketAddr, delay: Duration) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    loop {
        let (client, from) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of file descriptors, an aborted handshake: the next one may work.
                tracing::warn!(error = %err, "delay proxy: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            if let Err(err) = forward(client, listen, delay).await {
                tracing::debug!(%from, error = %err, "delayed connection ended");
            }
        });
    }
}

async fn forward(client: TcpStream, listen: SocketAddr, delay: Duration) -> std::io::Result<()> {
    let target = original_destination(&client)?;
    if target == listen {
        // A connection made to the proxy itself (its readiness check): nothing to forward.
        return Ok(());
    }
    client.set_nodelay(true)?;
    let server = TcpStream::connect(target).await?;
    server.set_nodelay(true)?;
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let requests = async {
        let copied = tokio::io::copy(&mut client_read, &mut server_write).await;
        let _ = server_write.shutdown().await;
        copied.map(drop)
    };
    // Replies: read as they come, each released `delay` after it arrived, in order. The channel
    // bounds what is held (a slow client slows the reads).
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(tokio::time::Instant, Vec<u8>)>(256);
    let read_replies = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = server_read.read(&mut buf).await?;
            if n == 0 || tx.send((tokio::time::Instant::now() + delay, buf[..n].to_vec())).await.is_err() {
                return Ok::<_, std::io::Error>(());
            }
        }
    };
    // Owns the receiver: when writing to the client fails, dropping it ends the reader too.
    let write_replies = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            client_write.write_all(&chunk).await?;
        }
        client_write.shutdown().await
    };
    let (a, b, c) = tokio::join!(requests, read_replies, write_replies);
    a.and(b).and(c)
}

/// Where a redirected connection was going (`SO_ORIGINAL_DST`).
fn original_destination(stream: &TcpStream) -> std::io::Result<SocketAddr> {
    let addr =
        nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::OriginalDst).map_err(std::io::Error::from)?;
    let ip = Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr));
    Ok(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(addr.sin_port))))
}
