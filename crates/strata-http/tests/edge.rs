//! `strata edge` and the layer against real Redis and a real origin (an axum app on a free
//! port that counts the requests it serves).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get as route_get;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use strata::{Cache, KeySchema};
use strata_cluster::{RedisCluster, RedisServer};
use strata_http::{Config, Edge, EdgeConfig, HttpCache};

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

const TOKEN: &str = "a-purge-token-of-some-length";

/// The origin: every handler counts its calls.
#[derive(Clone, Default)]
struct Origin {
    calls: Arc<AtomicU64>,
    /// The kinds of `/flaky` answered once.
    answered: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

impl Origin {
    fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }
}

async fn fresh(State(o): State<Origin>, Path(name): Path<String>) -> impl IntoResponse {
    let n = o.calls.fetch_add(1, Ordering::SeqCst) + 1;
    ([("cache-control", "max-age=60"), ("surrogate-key", "all-pages page-x")], format!("{name} #{n}"))
}

/// An origin that honours preconditions and ranges itself, with freshness on every answer.
async fn honest(State(o): State<Origin>, headers: HeaderMap) -> axum::response::Response {
    let n = o.calls.fetch_add(1, Ordering::SeqCst) + 1;
    let cc = [("cache-control", "max-age=60"), ("etag", "\"v1\"")];
    if headers.contains_key("if-none-match") {
        return (StatusCode::NOT_MODIFIED, cc).into_response();
    }
    if headers.contains_key("range") {
        return (StatusCode::PARTIAL_CONTENT, cc, [("content-range", "bytes 0-0/9")], "h").into_response();
    }
    (cc, format!("honest #{n}")).into_response()
}

async fn slow(State(o): State<Origin>) -> impl IntoResponse {
    let n = o.calls.fetch_add(1, Ordering::SeqCst) + 1;
    tokio::time::sleep(Duration::from_millis(300)).await;
    ([("cache-control", "max-age=60"), ("surrogate-key", "all-slow")], format!("slow #{n}"))
}

async fn varied(State(o): State<Origin>, headers: HeaderMap) -> impl IntoResponse {
    o.calls.fetch_add(1, Ordering::SeqCst);
    let lang = headers.get("x-lang").and_then(|v| v.to_str().ok()).unwrap_or("none").to_owned();
    ([("cache-control", "max-age=60"), ("vary", "X-Lang")], format!("lang {lang}"))
}

async fn with_headers(State(o): State<Origin>, Path(kind): Path<String>) -> impl IntoResponse {
    let n = o.calls.fetch_add(1, Ordering::SeqCst) + 1;
    let cc = match kind.as_str() {
        "star" => "max-age=60",
        "private" => "private, max-age=60",
        "no-store" => "no-store, max-age=60",
        _ => "max-age=abc, ,, =, no-store=, max-age",
    };
    let mut headers = HeaderMap::new();
    headers.insert("cache-control", HeaderValue::from_static(cc));
    if kind == "star" {
        headers.insert("vary", HeaderValue::from_static("*"));
    }
    (headers, format!("{kind} #{n}"))
}

/// The first call succeeds with `cc`, every later one is a 500.
async fn flaky(State(o): State<Origin>, Path(kind): Path<String>) -> axum::response::Response {
    let n = o.calls.fetch_add(1, Ordering::SeqCst) + 1;
    let cc = if kind == "sie" { "max-age=1, stale-if-error=60" } else { "max-age=1" };
    let first = o.answered.lock().map(|mut a| a.insert(kind.clone())).unwrap_or(false);
    if first {
        ([("cache-control", cc)], format!("{kind} #{n}")).into_response()
    } else {
        (StatusCode::INTERNAL_SERVER_ERROR, format!("{kind} failed #{n}")).into_response()
    }
}

async fn swr(State(o): State<Origin>) -> impl IntoResponse {
    let n = o.calls.fetch_add(1, Ordering::SeqCst) + 1;
    ([("cache-control", "max-age=1, stale-while-revalidate=30")], format!("swr #{n}"))
}

/// Responses meant to trip a shared cache: a cookie, a strict revalidation, huge numbers.
async fn tricky(State(o): State<Origin>, Path(kind): Path<String>) -> axum::response::Response {
    let n = o.calls.fetch_add(1, Ordering::SeqCst) + 1;
    let body = format!("{kind} #{n}");
    match kind.as_str() {
        "cookie" => ([("cache-control", "max-age=60"), ("set-cookie", "session=secret")], body).into_response(),
        "public-cookie" => {
            ([("cache-control", "public, max-age=60"), ("set-cookie", "session=secret")], body).into_response()
        }
        // http-cache-semantics checks `must-revalidate` against `max-stale` itself, not these.
        "strict" => ([("cache-control", "max-age=1, proxy-revalidate")], body).into_response(),
        _ => (
            [
                ("cache-control", "max-age=99999999999999999999999, stale-if-error=99999999999999999999"),
                ("age", "18446744073709551615"),
                ("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT"),
            ],
            body,
        )
            .into_response(),
    }
}

async fn hang() -> impl IntoResponse {
    tokio::time::sleep(Duration::from_secs(30)).await;
    "too late"
}

async fn start_origin() -> Result<(Origin, SocketAddr), Box<dyn std::error::Error + Send + Sync>> {
    let origin = Origin::default();
    let app = Router::new()
        .route(
            "/fresh/{name}",
            route_get(fresh).post(|State(o): State<Origin>| async move {
                o.calls.fetch_add(1, Ordering::SeqCst);
                StatusCode::NO_CONTENT
            }),
        )
        .route("/slow", route_get(slow))
        .route("/honest/{name}", route_get(honest))
        .route("/varied", route_get(varied))
        .route("/h/{kind}", route_get(with_headers))
        .route("/hang", route_get(hang))
        .route("/flaky/{kind}", route_get(flaky))
        .route("/swr", route_get(swr))
        .route("/tricky/{kind}", route_get(tricky))
        .with_state(origin.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((origin, addr))
}

async fn start_edge(
    cache: Cache,
    origin: SocketAddr,
    timeout: Duration,
) -> Result<SocketAddr, Box<dyn std::error::Error + Send + Sync>> {
    let mut config = Config::default();
    config.origin_timeout = timeout;
    let http = HttpCache::new(cache, KeySchema::new("edge", 1)?, "site", config)?;
    let edge =
        Edge::bind(http, EdgeConfig::new("127.0.0.1:0".parse()?, &format!("http://{origin}")).purge_token(TOKEN))
            .await?;
    let addr = edge.local_addr()?;
    tokio::spawn(edge.run(std::future::pending()));
    Ok(addr)
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Reply {
    fn x_cache(&self) -> &str {
        self.headers.get("x-cache").and_then(|v| v.to_str().ok()).unwrap_or("")
    }
}

fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

async fn send(
    client: &Client<HttpConnector, Full<Bytes>>,
    method: &str,
    url: String,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<Reply, Box<dyn std::error::Error + Send + Sync>> {
    let mut request = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = client.request(request.body(Full::new(Bytes::from(body.to_owned())))?).await?;
    let (parts, body) = response.into_parts();
    let body = String::from_utf8(body.collect().await?.to_bytes().to_vec())?;
    Ok(Reply { status: parts.status, headers: parts.headers, body })
}

async fn get(
    client: &Client<HttpConnector, Full<Bytes>>,
    edge: SocketAddr,
    path: &str,
) -> Result<Reply, Box<dyn std::error::Error + Send + Sync>> {
    send(client, "GET", format!("http://{edge}{path}"), &[], "").await
}

async fn purge(
    client: &Client<HttpConnector, Full<Bytes>>,
    edge: SocketAddr,
    body: &str,
) -> Result<StatusCode, Box<dyn std::error::Error + Send + Sync>> {
    let auth = format!("Bearer {TOKEN}");
    Ok(send(client, "POST", format!("http://{edge}/_strata/purge"), &[("authorization", auth.as_str())], body)
        .await?
        .status)
}

async fn standalone_cache(redis: &RedisServer) -> Result<Cache, strata::Error> {
    Cache::builder().redis_url(redis.url()).build().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_responses_are_served_from_the_cache_and_unsafe_methods_invalidate() -> TestResult {
    let redis = RedisServer::start()?;
    let (origin, origin_addr) = start_origin().await?;
    let edge = start_edge(standalone_cache(&redis).await?, origin_addr, Duration::from_secs(5)).await?;
    let c = client();

    let first = get(&c, edge, "/fresh/a").await?;
    assert_eq!((first.status, first.x_cache(), first.body.as_str()), (StatusCode::OK, "MISS", "a #1"));
    let second = get(&c, edge, "/fresh/a").await?;
    assert_eq!((second.x_cache(), second.body.as_str()), ("HIT", "a #1"));
    assert!(second.headers.contains_key("age"), "a hit carries Age");
    assert_eq!(origin.calls(), 1);

    // HEAD is answered from GET's entry: its headers, the GET's length.
    let head = send(&c, "HEAD", format!("http://{edge}/fresh/a"), &[], "").await?;
    assert_eq!(head.x_cache(), "HIT");
    assert_eq!(head.headers.get("content-length").and_then(|v| v.to_str().ok()), Some("4"));

    // A POST that succeeded invalidates the URL.
    let post = send(&c, "POST", format!("http://{edge}/fresh/a"), &[], "x").await?;
    assert_eq!((post.status, post.x_cache()), (StatusCode::NO_CONTENT, "PASS"));
    let after = get(&c, edge, "/fresh/a").await?;
    assert_eq!((after.x_cache(), after.body.as_str()), ("MISS", "a #3"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_variant_is_stored_apart_and_vary_star_never() -> TestResult {
    let redis = RedisServer::start()?;
    let (origin, origin_addr) = start_origin().await?;
    let edge = start_edge(standalone_cache(&redis).await?, origin_addr, Duration::from_secs(5)).await?;
    let c = client();
    let url = format!("http://{edge}/varied");
    for _ in 0..2 {
        for lang in ["en", "fr"] {
            let reply = send(&c, "GET", url.clone(), &[("x-lang", lang)], "").await?;
            assert_eq!(reply.body, format!("lang {lang}"));
        }
    }
    assert_eq!(origin.calls(), 2, "one origin call per variant");

    for kind in ["star", "private", "no-store", "malformed"] {
        let a = get(&c, edge, &format!("/h/{kind}")).await?;
        let b = get(&c, edge, &format!("/h/{kind}")).await?;
        assert_eq!(a.status, StatusCode::OK, "{kind}");
        assert_ne!(a.body, b.body, "{kind}: not stored");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_through_one_edge_is_honoured_by_the_other() -> TestResult {
    let cluster = RedisCluster::start(3, 1)?;
    let (origin, origin_addr) = start_origin().await?;
    let cache = || Cache::builder().cluster(cluster.seed_urls()).build();
    let (a, b) = (
        start_edge(cache().await?, origin_addr, Duration::from_secs(5)).await?,
        start_edge(cache().await?, origin_addr, Duration::from_secs(5)).await?,
    );
    let c = client();
    // Both edges serve one site, as behind a load balancer: the URL is the Host's.
    let site = |edge: SocketAddr, path: &'static str| {
        let c = c.clone();
        async move { send(&c, "GET", format!("http://{edge}{path}"), &[("host", "site.example")], "").await }
    };
    // `b` holds each page in its L1 before every purge.
    let warm = |path: &'static str| async move {
        site(a, path).await?;
        let hit = site(b, path).await?;
        assert_eq!(hit.x_cache(), "HIT", "{path}");
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    };
    // The purge returned: within the invalidation bound, `b` must not serve the old page.
    let purged_on_b = |path: &'static str| async move {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let reply = site(b, path).await?;
            if reply.x_cache() == "MISS" {
                return Ok::<_, Box<dyn std::error::Error + Send + Sync>>(());
            }
            assert!(Instant::now() < deadline, "{path} still served from the cache 2 s after the purge");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };

    warm("/fresh/one").await?;
    assert_eq!(purge(&c, a, r#"{"url": "http://site.example/fresh/one"}"#).await?, StatusCode::NO_CONTENT);
    purged_on_b("/fresh/one").await?;

    warm("/fresh/two").await?;
    assert_eq!(purge(&c, a, r#"{"key": "page-x"}"#).await?, StatusCode::NO_CONTENT);
    purged_on_b("/fresh/two").await?;

    warm("/fresh/three").await?;
    assert_eq!(purge(&c, a, r#"{"all": true}"#).await?, StatusCode::NO_CONTENT);
    purged_on_b("/fresh/three").await?;
    assert!(origin.calls() >= 6);

    // The purge API wants its token and one well-formed order.
    let no_token = send(&c, "POST", format!("http://{a}/_strata/purge"), &[], r#"{"all": true}"#).await?;
    assert_eq!(no_token.status, StatusCode::UNAUTHORIZED);
    assert_eq!(purge(&c, a, r#"{"all": true, "key": "x"}"#).await?, StatusCode::BAD_REQUEST);
    assert_eq!(purge(&c, a, "not json").await?, StatusCode::BAD_REQUEST);
    assert_eq!(purge(&c, a, r#"{"key": "has space"}"#).await?, StatusCode::BAD_REQUEST);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_requests_for_one_cold_url_reach_the_origin_once() -> TestResult {
    let redis = RedisServer::start()?;
    let (origin, origin_addr) = start_origin().await?;
    let edge = start_edge(standalone_cache(&redis).await?, origin_addr, Duration::from_secs(5)).await?;
    let c = client();
    let requests: Vec<_> = (0..1000)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { get(&c, edge, "/slow").await })
        })
        .collect();
    for request in requests {
        let reply = request.await??;
        assert_eq!((reply.status, reply.body.as_str()), (StatusCode::OK, "slow #1"));
    }
    assert_eq!(origin.calls(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_origin_gets_a_clear_status_and_nothing_is_stored() -> TestResult {
    let redis = RedisServer::start()?;
    let (_origin, origin_addr) = start_origin().await?;
    let edge = start_edge(standalone_cache(&redis).await?, origin_addr, Duration::from_millis(500)).await?;
    let c = client();
    assert_eq!(get(&c, edge, "/hang").await?.status, StatusCode::GATEWAY_TIMEOUT);

    // An origin that accepts and closes at once.
    let closing = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let closing_addr = closing.local_addr()?;
    tokio::spawn(async move {
        while let Ok((socket, _)) = closing.accept().await {
            drop(socket);
        }
    });
    let edge_to_closing = start_edge(standalone_cache(&redis).await?, closing_addr, Duration::from_secs(5)).await?;
    assert_eq!(get(&c, edge_to_closing, "/x").await?.status, StatusCode::BAD_GATEWAY);

    // Headers too large for the edge: a 431, before the origin is asked.
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut socket = tokio::net::TcpStream::connect(edge).await?;
    let request = format!("GET /fresh/big HTTP/1.1\r\nHost: a\r\nX-Huge: {}\r\n\r\n", "x".repeat(512 * 1024));
    // The edge may answer and close before the whole request is written.
    let _ = socket.write_all(request.as_bytes()).await;
    let mut answer = vec![0u8; 64];
    let n = socket.read(&mut answer).await?;
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_layer_caches_an_axum_service() -> TestResult {
    let redis = RedisServer::start()?;
    let (origin, _) = start_origin().await?;
    let http = HttpCache::new(standalone_cache(&redis).await?, KeySchema::new("app", 1)?, "pages", Config::default())?;
    let app = Router::new().route("/fresh/{name}", route_get(fresh)).with_state(origin.clone()).layer(http.layer());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    let c = client();
    assert_eq!(get(&c, addr, "/fresh/q").await?.x_cache(), "MISS");
    let hit = get(&c, addr, "/fresh/q").await?;
    assert_eq!((hit.x_cache(), hit.body.as_str()), ("HIT", "q #1"));
    http.purge_url(&format!("http://{addr}/fresh/q")).await?;
    assert_eq!(get(&c, addr, "/fresh/q").await?.body, "q #2");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_responses_serve_while_revalidating_and_on_errors_when_allowed() -> TestResult {
    let redis = RedisServer::start()?;
    let (_, origin_addr) = start_origin().await?;
    let edge = start_edge(standalone_cache(&redis).await?, origin_addr, Duration::from_secs(5)).await?;
    let c = client();

    // stale-while-revalidate: the stale copy at once, the new one stored in the background.
    assert_eq!(get(&c, edge, "/swr").await?.body, "swr #1");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let stale = get(&c, edge, "/swr").await?;
    assert_eq!((stale.x_cache(), stale.body.as_str()), ("STALE", "swr #1"));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let reply = get(&c, edge, "/swr").await?;
        if reply.body == "swr #2" {
            assert_eq!(reply.x_cache(), "HIT");
            break;
        }
        assert!(Instant::now() < deadline, "the background revalidation never stored the new response");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // stale-if-error: the stale copy stands in for a 500; without it, the 500 goes through.
    for kind in ["sie", "plain"] {
        assert_eq!(get(&c, edge, &format!("/flaky/{kind}")).await?.status, StatusCode::OK);
    }
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let sie = get(&c, edge, "/flaky/sie").await?;
    assert_eq!((sie.status, sie.x_cache()), (StatusCode::OK, "STALE"));
    assert!(sie.body.starts_with("sie #"), "{}", sie.body);
    let plain = get(&c, edge, "/flaky/plain").await?;
    assert_eq!(plain.status, StatusCode::INTERNAL_SERVER_ERROR);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_cannot_shape_what_the_others_get() -> TestResult {
    let redis = RedisServer::start()?;
    let (origin, origin_addr) = start_origin().await?;
    let edge = start_edge(standalone_cache(&redis).await?, origin_addr, Duration::from_secs(5)).await?;
    let c = client();

    // A client's own precondition on a cold URL: it gets its 304, the cache stores the page
    // (the origin would have answered the precondition with a fresh 304).
    let first = send(&c, "GET", format!("http://{edge}/honest/cond"), &[("if-none-match", "*")], "").await?;
    assert_eq!(first.status, StatusCode::NOT_MODIFIED);
    let next = get(&c, edge, "/honest/cond").await?;
    assert_eq!((next.status, next.x_cache(), next.body.as_str()), (StatusCode::OK, "HIT", "honest #1"));

    // A range with nothing stored: passed on, and the origin's 206 is never stored.
    let ranged = send(&c, "GET", format!("http://{edge}/honest/range"), &[("range", "bytes=0-0")], "").await?;
    assert_eq!((ranged.status, ranged.body.as_str()), (StatusCode::PARTIAL_CONTENT, "h"));
    let whole = get(&c, edge, "/honest/range").await?;
    assert_eq!((whole.status, whole.x_cache(), whole.body.as_str()), (StatusCode::OK, "MISS", "honest #3"));
    // A range with the page stored: the whole page, from the cache.
    let ranged = send(&c, "GET", format!("http://{edge}/honest/range"), &[("range", "bytes=0-0")], "").await?;
    assert_eq!((ranged.status, ranged.x_cache(), ranged.body.as_str()), (StatusCode::OK, "HIT", "honest #3"));

    // A cookie is not handed to the next client.
    let a = get(&c, edge, "/tricky/cookie").await?;
    let b = get(&c, edge, "/tricky/cookie").await?;
    assert_ne!(a.body, b.body);
    assert_eq!(b.x_cache(), "MISS");
    // A public one is stored, without the cookie: that was the first client's.
    let first = get(&c, edge, "/tricky/public-cookie").await?;
    assert!(first.headers.contains_key("set-cookie"));
    let next = get(&c, edge, "/tricky/public-cookie").await?;
    assert_eq!((next.x_cache(), next.body.as_str()), ("HIT", first.body.as_str()));
    assert!(!next.headers.contains_key("set-cookie"), "another client's cookie was handed on");

    // `max-stale` does not reach past `proxy-revalidate`.
    assert_eq!(get(&c, edge, "/tricky/strict").await?.x_cache(), "MISS");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let strict =
        send(&c, "GET", format!("http://{edge}/tricky/strict"), &[("cache-control", "max-stale=600")], "").await?;
    assert_ne!(strict.x_cache(), "HIT", "a stale proxy-revalidate response was served: {}", strict.body);

    // Numbers past 2^31 and a far-future client date: served, nothing panics.
    let calls = origin.calls();
    for _ in 0..2 {
        assert_eq!(get(&c, edge, "/tricky/huge").await?.status, StatusCode::OK);
    }
    let far = "Sun, 06 Nov 300000000000 08:49:37 GMT";
    let reply = send(&c, "GET", format!("http://{edge}/tricky/huge"), &[("if-modified-since", far)], "").await?;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(origin.calls() > calls);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_fetched_while_a_purge_ran_does_not_stay() -> TestResult {
    let redis = RedisServer::start()?;
    let (origin, origin_addr) = start_origin().await?;
    let edge = start_edge(standalone_cache(&redis).await?, origin_addr, Duration::from_secs(5)).await?;
    let other = start_edge(standalone_cache(&redis).await?, origin_addr, Duration::from_secs(5)).await?;
    let c = client();
    // Fetched through `edge`, purged through `edge` and then through `other`.
    for (round, (purger, purge_body)) in [
        (edge, r#"{"url": "http://site.example/slow?round=1"}"#),
        (edge, r#"{"all": true}"#),
        (other, r#"{"url": "http://site.example/slow?round=3"}"#),
        (other, r#"{"key": "all-slow"}"#),
    ]
    .into_iter()
    .enumerate()
    {
        let calls = origin.calls();
        let url = format!("http://{edge}/slow?round={}", round + 1);
        let slow = {
            let (c, url) = (c.clone(), url.clone());
            tokio::spawn(async move { send(&c, "GET", url, &[("host", "site.example")], "").await })
        };
        // The origin takes 300 ms; the purge comes while it works.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(purge(&c, purger, purge_body).await?, StatusCode::NO_CONTENT);
        assert_eq!(slow.await??.x_cache(), "MISS");
        // Past the epochs' second reading (EPOCH_RECHECK, 2 s).
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let after = send(&c, "GET", url, &[("host", "site.example")], "").await?;
        assert_eq!(after.x_cache(), "MISS", "{purge_body}: the response fetched before the purge was kept");
        assert_eq!(origin.calls(), calls + 2);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_url_asked_through_two_edges_reaches_the_origin_once() -> TestResult {
    let cluster = RedisCluster::start(3, 1)?;
    let (origin, origin_addr) = start_origin().await?;
    let cache = || Cache::builder().cluster(cluster.seed_urls()).build();
    let edges = [
        start_edge(cache().await?, origin_addr, Duration::from_secs(5)).await?,
        start_edge(cache().await?, origin_addr, Duration::from_secs(5)).await?,
    ];
    let c = client();
    let requests: Vec<_> = (0..400)
        .map(|i| {
            let (c, edge) = (c.clone(), edges[i % 2]);
            tokio::spawn(async move {
                send(&c, "GET", format!("http://{edge}/slow"), &[("host", "site.example")], "").await
            })
        })
        .collect();
    for request in requests {
        let reply = request.await??;
        assert_eq!((reply.status, reply.body.as_str()), (StatusCode::OK, "slow #1"));
    }
    assert_eq!(origin.calls(), 1, "Strata's lease made the other edge wait for the first fetch");
    Ok(())
}
