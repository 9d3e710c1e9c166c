//! Signatures `#[strata::cached]` accepts: error types, aliases, generics, lifetimes, methods,
//! statics, TTL forms, a renamed crate path, and a future that is `Send`.
use std::sync::LazyLock;
use std::time::Duration;

use strata::{Cache, KeySchema, Ttl, cached};

#[derive(Debug)]
pub struct AppError(strata::Error);

impl std::fmt::Display for AppError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl From<strata::Error> for AppError {
    fn from(err: strata::Error) -> Self {
        AppError(err)
    }
}

type AppResult<T> = Result<T, AppError>;

static CACHE: LazyLock<Cache> = LazyLock::new(|| unimplemented!("compiled, never run"));
static SCHEMA: LazyLock<KeySchema> = LazyLock::new(|| unimplemented!("compiled, never run"));

#[cached(namespace = "user", ttl = "short")]
pub async fn own_error(cache: &Cache, id: u64) -> Result<String, AppError> {
    let _ = cache;
    Ok(id.to_string())
}

#[cached(app = "shop", version = 3, ttl = "500ms")]
pub async fn alias(cache: &strata::Cache, name: &str, page: u32) -> AppResult<String> {
    Ok(format!("{name}{page}"))
}

#[cached(ttl = "long")]
pub async fn boxed(cache: &::strata::Cache, id: u64) -> Result<u64, Box<dyn std::error::Error + Send + Sync>> {
    let n: u64 = "7".parse()?; // `?` converts into the function's error
    Ok(id + n)
}

#[cached(cache = CACHE, schema = SCHEMA, ttl = Ttl::Exact(Duration::from_secs(5)))]
pub async fn from_statics<'a, D: std::fmt::Display + Sync>(name: &'a str, extra: D) -> strata::Result<Vec<u8>> {
    if name.is_empty() {
        return Ok(Vec::new()); // `return` leaves the body, not the macro's code
    }
    Ok(format!("{name}{extra}").into_bytes())
}

#[cached(args = [], ttl = Duration::from_secs(60))]
pub async fn no_args(c: &Cache, _ignored: (u8, u8)) -> strata::Result<()> {
    Ok(())
}

#[cached(cache = cache, key = "{a}/{b}")]
pub async fn named_cache(a: u8, cache: std::sync::Arc<Cache>, b: u8) -> strata::Result<u16> {
    Ok(u16::from(a) + u16::from(b))
}

#[cached(crate = ::strata)]
pub async fn r#type(cache: &Cache, mut n: u32) -> strata::Result<u32> {
    n += 1;
    Ok(n)
}

pub struct Service {
    cache: Cache,
    schema: KeySchema,
}

impl Service {
    #[cached(cache = self.cache, schema = self.schema, args = [id])]
    pub async fn method(&self, id: u64) -> strata::Result<u64> {
        Ok(id)
    }
}

fn assert_send<T: Send>(_: T) {}

#[allow(dead_code, unreachable_code, clippy::diverging_sub_expression)]
fn futures_are_send(cache: &Cache, service: &Service) {
    assert_send(own_error(cache, 1));
    assert_send(alias(cache, "x", 1));
    assert_send(boxed(cache, 1));
    assert_send(from_statics("x", 1));
    assert_send(service.method(1));
    assert_send(named_cache(1, unimplemented!(), 2));
}

fn main() {}
