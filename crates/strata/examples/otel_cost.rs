//! What the `otel` feature costs an L1 hit (docs/decisions/0020-opentelemetry.md): a loop of
//! `cache.get` on one key held in L1, against a real Redis. Run it in release mode, with and
//! without the feature:
//!
//! ```text
//! cargo run --release -p strata-cache --example otel_cost
//! cargo run --release -p strata-cache --features otel --example otel_cost
//! ```
//!
//! With the feature it also measures the hit with a `tracing-opentelemetry` layer over the
//! OpenTelemetry SDK (batch span processor, an exporter that drops what it gets), and with that
//! layer filtering `strata` out.

use std::time::{Duration, Instant};

use strata::{Cache, KeySchema, Ttl};

const HITS: u32 = 200_000;

/// Nanoseconds per `get` of a key L1 holds, the best of three rounds.
async fn per_hit(cache: &Cache, key: &strata::Key) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..3 {
        let started = Instant::now();
        for _ in 0..HITS {
            let hit: Option<String> = cache.get(key).await.expect("get");
            std::hint::black_box(hit);
        }
        best = best.min(started.elapsed().as_nanos() as f64 / f64::from(HITS));
    }
    best
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let redis = strata_cluster::RedisServer::start()?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let cache = Cache::builder().redis_url(redis.url()).build().await?;
        let key = KeySchema::new("shop", 1)?.key("user", "42")?;
        cache.set(&key, &"Ada".to_owned(), Ttl::Long).await?;
        let _warm: Option<String> = cache.get(&key).await?;
        let feature = if cfg!(feature = "otel") { "on" } else { "off" };
        println!("otel feature {feature}, no subscriber: {:.0} ns per L1 hit", per_hit(&cache, &key).await);
        #[cfg(feature = "otel")]
        with_opentelemetry(&cache, &key).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
        Ok::<_, Box<dyn std::error::Error>>(())
    })
}

#[cfg(feature = "otel")]
async fn with_opentelemetry(cache: &Cache, key: &strata::Key) {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::error::OTelSdkResult;
    use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
    use tracing::{Instrument, Level};
    use tracing_subscriber::Layer;
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::layer::SubscriberExt;

    /// Drops every span (the cost measured is the application's, not the network's).
    #[derive(Debug)]
    struct Discard;

    impl SpanExporter for Discard {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            std::hint::black_box(batch);
            Ok(())
        }
    }

    let provider = SdkTracerProvider::builder().with_batch_exporter(Discard).build();
    for (what, level) in [("strata spans filtered out", None), ("strata spans exported", Some(Level::INFO))] {
        let mut filter = Targets::new().with_default(Level::INFO);
        filter = match level {
            Some(level) => filter.with_target("strata", level),
            None => filter.with_target("strata", tracing::level_filters::LevelFilter::OFF),
        };
        let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("otel_cost")).with_filter(filter);
        let subscriber = tracing_subscriber::registry().with(layer);
        let _default = tracing::subscriber::set_default(subscriber);
        // Inside a request's span, as in a service.
        let hit = per_hit(cache, key).instrument(tracing::info_span!("request")).await;
        println!("otel feature on, tracing-opentelemetry, {what}: {hit:.0} ns per L1 hit");
    }
    let _ = provider.shutdown();
}
