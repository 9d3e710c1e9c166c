//! One test over a real socket: the router served on 127.0.0.1:0, called with plain HTTP/1.1.

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::common::{Env, TestResult};

/// Sends one request with `Connection: close` and reads the whole response.
async fn request(addr: std::net::SocketAddr, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let body = body.unwrap_or("");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.expect("write head");
    stream.write_all(body.as_bytes()).await.expect("write body");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.expect("read");
    let text = String::from_utf8(raw).expect("utf-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("header end");
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status line");
    let body = if body.is_empty() { Value::Null } else { serde_json::from_str(body).expect("json body") };
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_answers_over_tcp() -> TestResult {
    let env = Env::standalone().await;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move { axum::serve(listener, env.app.clone()).await.map(|_| env) });

    let (status, health) = request(addr, "GET", "/healthz", None).await;
    assert_eq!(status, 200);
    assert_eq!(health["redis"], true);
    assert_eq!(health["database"], "Sqlite");
    let (status, user) = request(addr, "GET", "/users/11", None).await;
    assert_eq!((status, user["name"].as_str()), (200, Some("user-11")));
    let (status, user) = request(addr, "PUT", "/users/11", Some(r#"{"name":"Grace"}"#)).await;
    assert_eq!((status, user["name"].as_str()), (200, Some("Grace")));
    let (_, user) = request(addr, "GET", "/users/11", None).await;
    assert_eq!(user["name"], "Grace");
    let (status, _) = request(addr, "GET", "/users/123456", None).await;
    assert_eq!(status, 404);
    let (status, stats) = request(addr, "GET", "/stats", None).await;
    assert_eq!(status, 200);
    assert!(stats["db_queries"].as_u64().expect("queries") >= 3);
    server.abort();
    Ok(())
}
