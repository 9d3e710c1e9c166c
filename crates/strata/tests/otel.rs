//! OpenTelemetry end to end (feature `otel`, docs/decisions/0020-opentelemetry.md): a real
//! Redis, an axum service whose requests run in a server span and call
//! `Cache::get_or_set`, the OpenTelemetry SDK exporting over OTLP/gRPC (opentelemetry-otlp,
//! tonic) to a receiver in this process (opentelemetry-proto's generated `TraceService` and
//! `MetricsService` servers), and `tracing-opentelemetry` bridging the spans. It checks what
//! the receiver got: the `strata.get_or_set` spans, their attributes, their parent links to
//! the request spans, the Redis client spans under them, and the metrics.
// Proving an axum handler's future `Send` walks the whole of `get_or_set`'s future, which the
// spans make a few types deeper (strata-http needs the same).
#![recursion_limit = "256"]

use std::collections::HashMap;
use std::error::Error;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::get;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{Metric, NumberDataPoint, metric, number_data_point};
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::trace::SdkTracerProvider;
use strata::opentelemetry::metrics::MeterProvider as _;
use strata::{Cache, Key, KeySchema, Ttl};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{Instrument, Level};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;

type TestResult = Result<(), Box<dyn Error + Send + Sync>>;

/// What the OTLP receiver got.
#[derive(Clone, Default)]
struct Received {
    spans: Arc<Mutex<Vec<Span>>>,
    metrics: Arc<Mutex<Vec<Metric>>>,
}

#[tonic::async_trait]
impl TraceService for Received {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let spans = request.into_inner().resource_spans.into_iter().flat_map(|r| r.scope_spans).flat_map(|s| s.spans);
        self.spans.lock().unwrap_or_else(|p| p.into_inner()).extend(spans);
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

#[tonic::async_trait]
impl MetricsService for Received {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let metrics =
            request.into_inner().resource_metrics.into_iter().flat_map(|r| r.scope_metrics).flat_map(|s| s.metrics);
        self.metrics.lock().unwrap_or_else(|p| p.into_inner()).extend(metrics);
        Ok(tonic::Response::new(ExportMetricsServiceResponse { partial_success: None }))
    }
}

impl Received {
    fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The last export of each metric.
    fn metrics(&self) -> HashMap<String, Metric> {
        let metrics = self.metrics.lock().unwrap_or_else(|p| p.into_inner());
        metrics.iter().map(|m| (m.name.clone(), m.clone())).collect()
    }
}

/// The service: one route, cache-aside over a "database" that counts its queries.
#[derive(Clone)]
struct App {
    cache: Cache,
    users: KeySchema,
    queries: Arc<AtomicUsize>,
}

async fn user(State(app): State<App>, Path(id): Path<u64>) -> Result<String, StatusCode> {
    let key: Key = app.users.key("user", &id.to_string()).map_err(|_| StatusCode::BAD_REQUEST)?;
    let queries = app.queries.clone();
    app.cache
        .get_or_set(&key, Ttl::Medium, || async move {
            queries.fetch_add(1, Ordering::SeqCst);
            Ok::<_, std::io::Error>(format!("user {id}: Ada"))
        })
        .await
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)
}

/// Each request in a server span, as tower-http's `TraceLayer` would make it.
async fn request_span(request: Request, next: Next) -> Response {
    let span = tracing::info_span!(
        "GET /user/{id}",
        otel.kind = "server",
        http.request.method = %request.method(),
        http.route = "/user/{id}",
        url.path = %request.uri().path(),
    );
    next.run(request).instrument(span).await
}

/// One HTTP/1.1 GET, the connection closed after it: the whole response.
async fn http_get(addr: SocketAddr, path: &str) -> Result<String, Box<dyn Error + Send + Sync>> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes()).await?;
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut response)).await??;
    Ok(response)
}

fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attributes.iter().find(|kv| kv.key == key).and_then(|kv| kv.value.as_ref()).and_then(|v| v.value.as_ref())
}

fn string(attributes: &[KeyValue], key: &str) -> Option<String> {
    match attribute(attributes, key)? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

fn count(attributes: &[KeyValue], key: &str) -> usize {
    attributes.iter().filter(|kv| kv.key == key).count()
}

/// The integer value of a counter's data point with these attributes.
fn point(metric: &Metric, wanted: &[(&str, &str)]) -> Option<i64> {
    let points: &[NumberDataPoint] = match metric.data.as_ref()? {
        metric::Data::Sum(sum) => &sum.data_points,
        metric::Data::Gauge(gauge) => &gauge.data_points,
        _ => return None,
    };
    let p = points.iter().find(|p| wanted.iter().all(|(k, v)| string(&p.attributes, k).as_deref() == Some(*v)))?;
    match p.value? {
        number_data_point::Value::AsInt(v) => Some(v),
        number_data_point::Value::AsDouble(v) => Some(v as i64),
    }
}

/// Flushes both providers (in blocking threads: the SDK's flush blocks until the exporter
/// answers) until `done` says the receiver has what the test needs, for at most 20 s.
async fn flush_until(
    tracer: &SdkTracerProvider,
    meter: &SdkMeterProvider,
    received: &Received,
    done: impl Fn(&Received) -> bool,
) -> TestResult {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (t, m) = (tracer.clone(), meter.clone());
        // A failed flush is tried again on the next turn.
        let _flushed = tokio::task::spawn_blocking(move || (t.force_flush(), m.force_flush())).await?;
        if done(received) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err("the OTLP receiver did not get the expected spans and metrics within 20 s".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_or_set_spans_are_children_of_the_request_span_and_metrics_arrive() -> TestResult {
    if !strata_cluster::redis_available() {
        strata_cluster::skip_test("otel: redis-server is not installed");
        return Ok(());
    }
    let redis = strata_cluster::RedisServer::start()?;

    // The OTLP/gRPC receiver.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let otlp = listener.local_addr()?;
    let received = Received::default();
    let receiver = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(received.clone()))
            .add_service(MetricsServiceServer::new(received.clone()))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );

    // The SDK, exporting to it; tracing bridged with tracing-opentelemetry: strata's operation
    // spans (target `strata`, INFO) and its Redis client spans (`strata::redis`, DEBUG), this
    // test's request spans.
    let endpoint = format!("http://{otlp}");
    let span_exporter =
        opentelemetry_otlp::SpanExporter::builder().with_tonic().with_endpoint(endpoint.clone()).build()?;
    let tracer_provider = SdkTracerProvider::builder().with_batch_exporter(span_exporter).build();
    let metric_exporter = opentelemetry_otlp::MetricExporter::builder().with_tonic().with_endpoint(endpoint).build()?;
    let meter_provider = SdkMeterProvider::builder().with_periodic_exporter(metric_exporter).build();
    let filter = Targets::new()
        .with_target("strata", Level::INFO)
        .with_target("strata::redis", Level::DEBUG)
        .with_target("otel", Level::INFO);
    let layer = tracing_opentelemetry::layer().with_tracer(tracer_provider.tracer("strata-otel-test"));
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer.with_filter(filter)))?;

    let cache = Cache::builder().redis_url(redis.url()).build().await?;
    cache.register_otel_metrics(&meter_provider.meter("strata"));
    let app = App { cache: cache.clone(), users: KeySchema::new("shop", 1)?, queries: Arc::new(AtomicUsize::new(0)) };
    let router = Router::new()
        .route("/user/{id}", get(user))
        .layer(axum::middleware::from_fn(request_span))
        .with_state(app.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let http = listener.local_addr()?;
    let service = tokio::spawn(async move { axum::serve(listener, router).await });

    // A miss (the loader runs), then a hit (L1).
    for _ in 0..2 {
        let response = http_get(http, "/user/42").await?;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(response.ends_with("user 42: Ada"), "{response}");
    }
    assert_eq!(app.queries.load(Ordering::SeqCst), 1, "the second request is a hit");
    cache.settled().await;

    let named = |spans: &[Span], name: &str| spans.iter().filter(|s| s.name == name).count();
    flush_until(&tracer_provider, &meter_provider, &received, |r| {
        let spans = r.spans();
        named(&spans, "GET /user/{id}") == 2
            && named(&spans, "strata.get_or_set") == 2
            && named(&spans, "strata.store") == 1
            && r.metrics().contains_key("strata.requests")
    })
    .await?;

    let spans = received.spans();
    let mut requests: Vec<&Span> = spans.iter().filter(|s| s.name == "GET /user/{id}").collect();
    requests.sort_by_key(|s| s.start_time_unix_nano);
    let mut operations: Vec<&Span> = spans.iter().filter(|s| s.name == "strata.get_or_set").collect();
    operations.sort_by_key(|s| s.start_time_unix_nano);
    for (request, operation) in requests.iter().zip(&operations) {
        assert_eq!(request.kind, SpanKind::Server as i32);
        assert_eq!(operation.trace_id, request.trace_id, "the operation is in the request's trace");
        assert_eq!(operation.parent_span_id, request.span_id, "the operation's parent is the request span");
        assert_eq!(operation.kind, SpanKind::Internal as i32);
        assert_eq!(string(&operation.attributes, "strata.namespace").as_deref(), Some("shop:v1:user"));
        for key in ["strata.tier", "strata.loader.called", "strata.value.size", "strata.lease"] {
            assert!(count(&operation.attributes, key) <= 1, "{key} recorded twice: {:?}", operation.attributes);
        }
    }
    assert_ne!(requests[0].trace_id, requests[1].trace_id, "two requests, two traces");

    // The miss: the loader ran under the lease, and the value's size is known.
    let (miss, hit) = (operations[0], operations[1]);
    assert_eq!(string(&miss.attributes, "strata.tier").as_deref(), Some("loader"), "{:?}", miss.attributes);
    assert_eq!(attribute(&miss.attributes, "strata.loader.called"), Some(&any_value::Value::BoolValue(true)));
    assert_eq!(string(&miss.attributes, "strata.lease").as_deref(), Some("acquired"));
    assert!(
        matches!(attribute(&miss.attributes, "strata.value.size"), Some(any_value::Value::IntValue(n)) if *n > 0),
        "{:?}",
        miss.attributes
    );
    // The hit: L1, no loader, no lease.
    assert_eq!(string(&hit.attributes, "strata.tier").as_deref(), Some("l1"), "{:?}", hit.attributes);
    assert_eq!(attribute(&hit.attributes, "strata.loader.called"), Some(&any_value::Value::BoolValue(false)));
    assert_eq!(attribute(&hit.attributes, "strata.lease"), None);
    assert!(hit.status.as_ref().is_none_or(|s| s.code != 2), "not an error: {:?}", hit.status);

    // Redis client spans under the miss: the read and the lease attempt; the background store
    // under a `strata.store` span of its own, child of the miss.
    let children = |parent: &Span| -> Vec<&Span> {
        spans.iter().filter(|s| s.parent_span_id == parent.span_id && s.trace_id == parent.trace_id).collect()
    };
    let under_miss = children(miss);
    let redis_calls: Vec<&&Span> = under_miss.iter().filter(|s| s.kind == SpanKind::Client as i32).collect();
    assert!(!redis_calls.is_empty(), "no Redis span under the miss: {under_miss:?}");
    for call in &redis_calls {
        assert_eq!(string(&call.attributes, "db.system.name").as_deref(), Some("redis"));
        assert_eq!(string(&call.attributes, "db.operation.name").as_deref(), Some(call.name.as_str()));
    }
    assert!(redis_calls.iter().any(|s| s.name == "GET"), "{redis_calls:?}");
    assert!(redis_calls.iter().any(|s| s.name == "lease acquire"), "{redis_calls:?}");
    let store = under_miss.iter().find(|s| s.name == "strata.store").ok_or("no strata.store span under the miss")?;
    assert!(children(store).iter().any(|s| s.name == "lease fill" && s.kind == SpanKind::Client as i32));
    assert!(children(hit).is_empty(), "an L1 hit makes no Redis call");

    // Metrics, through the OpenTelemetry API, from the same counters as Prometheus.
    let metrics = received.metrics();
    for (name, ..) in strata::OTEL_METRICS {
        assert!(metrics.contains_key(*name), "{name} was not exported; got {:?}", metrics.keys());
    }
    let ns = ("strata.namespace", "shop:v1:user");
    let requests_metric = &metrics["strata.requests"];
    assert_eq!(requests_metric.unit, "{request}");
    assert_eq!(point(requests_metric, &[ns, ("strata.tier", "l1"), ("strata.result", "hit")]), Some(1));
    assert_eq!(point(requests_metric, &[ns, ("strata.tier", "l1"), ("strata.result", "miss")]), Some(1));
    assert_eq!(point(requests_metric, &[ns, ("strata.tier", "l2"), ("strata.result", "miss")]), Some(1));
    assert_eq!(point(&metrics["strata.loader.calls"], &[ns]), Some(1));
    assert_eq!(point(&metrics["strata.sets"], &[ns]), Some(1));
    assert_eq!(point(&metrics["strata.l1.entries"], &[]), Some(1));
    assert!(matches!(metrics["strata.requests"].data, Some(metric::Data::Sum(ref s)) if s.is_monotonic));

    service.abort();
    receiver.abort();
    tokio::task::spawn_blocking(move || {
        let _ = tracer_provider.shutdown();
        let _ = meter_provider.shutdown();
    })
    .await?;
    Ok(())
}
