//! The tower layer: every request goes through [`HttpCache::handle`].

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::StreamExt as _;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt as _, BodyStream, Full, StreamBody};
use http_cache_semantics::{BeforeRequest, CacheOptions, CachePolicy};
use tower::{Layer, Service, ServiceExt as _};

use crate::rules::{self, OriginFailure, Vary};
use crate::store::{Store, Stored};
use crate::{BoxError, HttpCache};

/// What one fetch from the origin needs, owned, so that it can run in a task of its own.
struct Refresh<S, B> {
    http: HttpCache,
    inner: S,
    url: String,
    /// The request as the cache sends it (the client's preconditions and ranges removed).
    as_get: http::request::Parts,
    /// The client's request head: its preconditions, its method (HEAD: no body).
    client: http::request::Parts,
    /// The stored response to revalidate, and the conditional request for it.
    stale: Option<(Stored, http::request::Parts)>,
    _body: std::marker::PhantomData<fn() -> B>,
}

impl<S, B> Refresh<S, B> {
    fn new(
        http: &HttpCache,
        inner: S,
        url: &str,
        as_get: &http::request::Parts,
        client: &http::request::Parts,
        stale: Option<(Stored, http::request::Parts)>,
    ) -> Self {
        Self {
            http: http.clone(),
            inner,
            url: url.to_owned(),
            as_get: head_of(as_get, Method::GET),
            client: head_of(client, client.method.clone()),
            stale: stale.map(|(stored, request)| {
                let method = request.method.clone();
                (stored, head_of(&request, method))
            }),
            _body: std::marker::PhantomData,
        }
    }
}

/// When a stored response's purge epochs are read again: past Strata's invalidation bound
/// between instances (docs/reliability.md), so a purge on another instance is seen by then.
const EPOCH_RECHECK: Duration = Duration::from_secs(2);

/// What a coalesced fetch ended in, the value of its marker: the requests that waited for it
/// read what it stored, or answer with the origin's failure without asking it again.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
enum Fetch {
    /// A response came (stored if it may be).
    Done,
    /// The origin could not answer: this status (502, 504) was the answer.
    Failed(u16),
}

impl Fetch {
    fn of(response: &Response<ResponseBody>) -> Self {
        // The cache's own error answers carry no `X-Cache`.
        if response.headers().contains_key(X_CACHE) { Fetch::Done } else { Fetch::Failed(response.status().as_u16()) }
    }
}

/// How long the marker of a fetch stays: concurrent misses of a URL within it read what the
/// fetch stored rather than fetching again (Strata's single-flight and leases make them wait for
/// it); a miss after it fetches anew.
const FETCH_MARKER_TTL: strata::Ttl = strata::Ttl::Exact(Duration::from_secs(1));

/// The purge epochs read before a fetch (see [`Store::epochs`]).
type Epochs = (Option<u64>, Option<u64>);

/// The body of the responses the layer returns.
pub type ResponseBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// The `X-Cache` header: how a response was produced.
pub const X_CACHE: &str = "x-cache";

/// How a response was produced (the `X-Cache` value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Served from the cache without contacting the origin.
    Hit,
    /// From the origin (stored if it could be).
    Miss,
    /// A stored response past its freshness, served because the origin failed.
    Stale,
    /// A stored response the origin confirmed with a 304.
    Revalidated,
    /// Not cacheable by method: passed to the origin.
    Pass,
}

impl Outcome {
    fn value(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Outcome::Hit => "HIT",
            Outcome::Miss => "MISS",
            Outcome::Stale => "STALE",
            Outcome::Revalidated => "REVALIDATED",
            Outcome::Pass => "PASS",
        })
    }
}

/// A [`tower::Layer`] that caches the responses of the service it wraps in an [`HttpCache`].
#[derive(Clone, Debug)]
pub struct HttpCacheLayer {
    http: HttpCache,
}

impl HttpCacheLayer {
    /// The layer over `http`.
    pub fn new(http: HttpCache) -> Self {
        Self { http }
    }
}

impl<S> Layer<S> for HttpCacheLayer {
    type Service = HttpCacheService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        HttpCacheService { http: self.http.clone(), inner }
    }
}

/// The service of [`HttpCacheLayer`]. It never fails: an origin that cannot answer becomes a
/// 502 (or 504 on a timeout) unless a stored response may stand in for it.
#[derive(Clone, Debug)]
pub struct HttpCacheService<S> {
    http: HttpCache,
    inner: S,
}

impl<S, B, RB> Service<Request<B>> for HttpCacheService<S>
where
    S: Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    B: Default + Send + 'static,
    RB: Body<Data = Bytes> + Send + 'static,
    RB::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Each call waits for a clone of the inner service to be ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let (http, inner) = (self.http.clone(), self.inner.clone());
        Box::pin(async move { Ok(http.handle(inner, request).await) })
    }
}

/// What the origin gave for one request.
enum Fetched<RB> {
    Response(Response<RB>),
    Failed(OriginFailure, Response<ResponseBody>),
}

async fn fetch<S, B, RB>(inner: S, request: Request<B>, timeout: Duration) -> Fetched<RB>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Error: Into<BoxError>,
{
    let call = async move { inner.oneshot(request).await.map_err(Into::into) };
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(response)) => Fetched::Response(response),
        Ok(Err(err)) => {
            tracing::debug!(error = %err, "origin failed");
            Fetched::Failed(OriginFailure::Unreachable, status_only(StatusCode::BAD_GATEWAY))
        }
        Err(_) => Fetched::Failed(OriginFailure::Unreachable, status_only(StatusCode::GATEWAY_TIMEOUT)),
    }
}

fn status_only(status: StatusCode) -> Response<ResponseBody> {
    let mut response = Response::new(full(Bytes::new()));
    *response.status_mut() = status;
    response
}

fn full(bytes: Bytes) -> ResponseBody {
    Full::new(bytes).map_err(|never| match never {}).boxed_unsync()
}

fn boxed<RB>(body: RB) -> ResponseBody
where
    RB: Body<Data = Bytes> + Send + 'static,
    RB::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// A copy of the request's head with `method`, its extensions too (a router's path
/// parameters: the requests the cache sends the service it wraps need them).
fn head_of(parts: &http::request::Parts, method: Method) -> http::request::Parts {
    let mut head = Request::new(()).into_parts().0;
    head.method = method;
    head.uri = parts.uri.clone();
    head.version = parts.version;
    head.headers = parts.headers.clone();
    head.extensions = parts.extensions.clone();
    head
}

/// A body read up to a limit: whole, or its first chunks and the rest.
enum Buffered<RB> {
    Whole(Bytes),
    TooLarge(Vec<Bytes>, Pin<Box<RB>>),
}

async fn buffer<RB>(body: RB, limit: usize) -> Result<Buffered<RB>, BoxError>
where
    RB: Body<Data = Bytes>,
    RB::Error: Into<BoxError>,
{
    let mut body = Box::pin(body);
    let (mut chunks, mut len) = (Vec::new(), 0usize);
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(Into::into)?.into_data() else { continue };
        len += data.len();
        chunks.push(data);
        if len > limit {
            return Ok(Buffered::TooLarge(chunks, body));
        }
    }
    Ok(Buffered::Whole(match chunks.len() {
        1 => chunks.pop().unwrap_or_default(),
        _ => chunks.concat().into(),
    }))
}

impl HttpCache {
    /// Answers one request: from the cache, the origin (`inner`), or both.
    pub(crate) async fn handle<S, B, RB>(&self, inner: S, request: Request<B>) -> Response<ResponseBody>
    where
        S: Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
        S::Future: Send,
        S::Error: Into<BoxError>,
        B: Default + Send + 'static,
        RB: Body<Data = Bytes> + Send + 'static,
        RB::Error: Into<BoxError>,
    {
        let (mut parts, body) = request.into_parts();
        let Some(url) = rules::effective_url(&self.config().scheme, &parts.uri, &parts.headers) else {
            // No host to key it under (an in-process call, HTTP/1.0): passed on, never cached.
            return match fetch(inner, Request::from_parts(parts, body), self.config().origin_timeout).await {
                Fetched::Response(response) => with_outcome(response.map(boxed), Outcome::Pass),
                Fetched::Failed(_, answer) => answer,
            };
        };
        // An absolute-form target names the host (RFC 9112 §3.2.2): the origin hears the same
        // host the response is stored under.
        if let Some(authority) = parts.uri.authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok()) {
            parts.headers.insert(header::HOST, authority);
        }
        // The origin may target this cache in `Surrogate-Control` (rules::SURROGATE_DEVICE).
        parts.headers.append("surrogate-capability", HeaderValue::from_static(rules::SURROGATE_CAPABILITY));
        if parts.method == Method::GET || parts.method == Method::HEAD {
            self.read(inner, parts, body, &url).await
        } else {
            self.pass(inner, parts, body, &url).await
        }
    }

    /// Any method but GET and HEAD: to the origin; an unsafe one that succeeded invalidates its
    /// URL and the same-origin `Location` and `Content-Location` (RFC 9111 §4.4).
    async fn pass<S, B, RB>(&self, inner: S, parts: http::request::Parts, body: B, url: &str) -> Response<ResponseBody>
    where
        S: Service<Request<B>, Response = Response<RB>>,
        S::Error: Into<BoxError>,
        RB: Body<Data = Bytes> + Send + 'static,
        RB::Error: Into<BoxError>,
    {
        let unsafe_method = !rules::is_safe(&parts.method);
        let response = match fetch(inner, Request::from_parts(parts, body), self.config().origin_timeout).await {
            Fetched::Response(response) => response,
            Fetched::Failed(_, response) => return response,
        };
        let status = response.status();
        if unsafe_method && (status.is_success() || status.is_redirection()) {
            let mut urls = vec![url.to_owned()];
            urls.extend(rules::invalidated_by(url, response.headers()));
            for url in &urls {
                let bumped = self.store().bump_url_epoch(url).await;
                if let Err(err) = bumped.and(self.store().invalidate(url).await) {
                    tracing::warn!(url = %url, error = %err, "could not invalidate after an unsafe request");
                }
            }
        }
        with_outcome(response.map(boxed), Outcome::Pass)
    }

    async fn read<S, B, RB>(&self, inner: S, parts: http::request::Parts, body: B, url: &str) -> Response<ResponseBody>
    where
        S: Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
        S::Future: Send,
        S::Error: Into<BoxError>,
        B: Default + Send + 'static,
        RB: Body<Data = Bytes> + Send + 'static,
        RB::Error: Into<BoxError>,
    {
        let head = parts.method == Method::HEAD;
        // What the cache asks the origin for: the whole representation, never an answer to this
        // client's own preconditions or ranges (those are answered here, from what is stored).
        // HEAD is answered from GET's entry; the policy compares methods, so it sees a GET.
        let mut as_get = head_of(&parts, Method::GET);
        rules::strip_client_conditions(&mut as_get.headers);
        let mut stale = None;
        if let Some(stored) = self.store().lookup(url, &parts.headers).await {
            // A client's `max-stale` does not reach past what the response allows (§4.2.4).
            let asked = self.without_disallowed_staleness(&stored, &as_get);
            match stored.policy.before_request(&asked, SystemTime::now()) {
                BeforeRequest::Fresh(_) => return self.serve(&stored, &parts, head, Outcome::Hit),
                BeforeRequest::Stale { request, matches: true } => {
                    if self.while_revalidating(&stored, &parts.headers) {
                        // RFC 5861: serve it now and revalidate in the background, once per URL.
                        if let Some(leading) = self.shared.flights.try_lead(url) {
                            let job = Refresh::new(
                                self,
                                inner.clone(),
                                url,
                                &as_get,
                                &parts,
                                Some((stored.clone(), request)),
                            );
                            tokio::spawn(async move {
                                let _leading = leading;
                                drop(job.http.clone().refresh(job).await);
                            });
                        }
                        return self.serve(&stored, &parts, head, Outcome::Stale);
                    }
                    stale = Some((stored, request));
                }
                BeforeRequest::Stale { matches: false, .. } => {}
            }
        }
        if stale.is_none() && (head || parts.headers.contains_key(header::RANGE)) {
            // Nothing stored to answer from: passed on as it came (a HEAD or a 206 is never stored).
            return match fetch(inner, Request::from_parts(parts, body), self.config().origin_timeout).await {
                Fetched::Response(response) => with_outcome(response.map(boxed), Outcome::Miss),
                Fetched::Failed(_, answer) => answer,
            };
        }
        let job = Refresh::new(self, inner.clone(), url, &as_get, &parts, stale.clone());
        let Ok(marker) = self.store().fetch_marker(url) else { return self.refresh(job).await };
        // One fetch per URL at a time, across every process on this Redis: Strata's
        // single-flight and lease on a short-lived fetch marker. The request whose loader runs
        // fetches, stores and gets its answer through `answered`; the others then read what it
        // stored. It runs in a task of its own, so a client that leaves does not cancel it, and
        // the fetch in another, so a loader Strata gives up on (its `Freshness` timeouts) does
        // not abandon the fetch.
        let (tx, answered) = tokio::sync::oneshot::channel();
        let (http, cache, mut job) = (self.clone(), self.cache().clone(), Some((job, tx)));
        let coalesced = tokio::spawn(async move {
            let load = move || {
                let job = job.take();
                async move {
                    let Some((job, tx)) = job else { return Ok::<Fetch, Infallible>(Fetch::Failed(502)) };
                    let fetched = tokio::spawn(async move {
                        let response = http.refresh(job).await;
                        let outcome = Fetch::of(&response);
                        let _ = tx.send(response);
                        outcome
                    });
                    Ok(fetched.await.unwrap_or(Fetch::Failed(502)))
                }
            };
            cache.get_or_set(&marker, FETCH_MARKER_TTL, load).await.ok()
        });
        let outcome = coalesced.await.ok().flatten();
        if let Ok(response) = answered.await {
            return response;
        }
        // Another request's fetch, here or in another process.
        if let Some(Fetch::Failed(status)) = outcome {
            let failure = if status == 504 { OriginFailure::Unreachable } else { OriginFailure::Error };
            let served = stale.as_ref().and_then(|(stored, _)| self.stale(stored, &parts, head, failure));
            return served
                .unwrap_or_else(|| status_only(StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY)));
        }
        if let Some(hit) = self.fresh_hit(url, &as_get, &parts, head).await {
            return hit;
        }
        // What it fetched was not stored, or not the variant this request selects: on its own.
        let job = Refresh::new(self, inner, url, &as_get, &parts, stale);
        self.refresh(job).await
    }

    /// One fetch from the origin for a read: a revalidation of `stale` when there is one, else
    /// a plain GET; what it gets is stored when it may be, and answered to the client.
    async fn refresh<S, B, RB>(&self, job: Refresh<S, B>) -> Response<ResponseBody>
    where
        S: Service<Request<B>, Response = Response<RB>> + Clone,
        S::Error: Into<BoxError>,
        B: Default,
        RB: Body<Data = Bytes> + Send + 'static,
        RB::Error: Into<BoxError>,
    {
        let Refresh { inner, url, as_get, client, stale, .. } = job;
        let url = url.as_str();
        let head = client.method == Method::HEAD;
        let epoch = self.store().epochs(url).await;
        let Some((stored, request)) = stale else {
            let request = Request::from_parts(head_of(&as_get, Method::GET), B::default());
            return match fetch(inner, request, self.config().origin_timeout).await {
                Fetched::Response(response) => self.answer(url, &as_get, &client, response, epoch).await,
                Fetched::Failed(_, answer) => answer,
            };
        };
        let conditional = Request::from_parts(request, B::default());
        match fetch(inner.clone(), conditional, self.config().origin_timeout).await {
            Fetched::Response(response) if response.status() == StatusCode::NOT_MODIFIED => {
                let (mut answer, _) = response.into_parts();
                rules::strip_hop_by_hop(&mut answer.headers);
                if !rules::selects(&stored.headers, &answer.headers) {
                    // A 304 that selects no stored response: asked again, without conditions.
                    let request = Request::from_parts(head_of(&as_get, Method::GET), B::default());
                    return match fetch(inner, request, self.config().origin_timeout).await {
                        Fetched::Response(response) => self.answer(url, &as_get, &client, response, epoch).await,
                        Fetched::Failed(_, answer) => answer,
                    };
                }
                let headers = rules::merge_not_modified(&stored.headers, &answer.headers);
                let updated = self.stored(&as_get, stored.status, headers.clone(), stored.body.clone());
                if let Some(updated) = &updated {
                    self.keep(url, &as_get, updated, epoch).await;
                }
                // Not storable any more: served to this client only.
                let updated = updated.unwrap_or_else(|| self.unstored(stored.status, &headers, stored.body));
                let mut response = self.serve(&updated, &client, head, Outcome::Revalidated);
                // A cookie the 304 set is this client's, not stored.
                for cookie in answer.headers.get_all(header::SET_COOKIE) {
                    response.headers_mut().append(header::SET_COOKIE, cookie.clone());
                }
                response
            }
            Fetched::Response(response) if rules::is_origin_error(response.status()) => {
                match self.stale(&stored, &client, head, OriginFailure::Error) {
                    Some(served) => served,
                    None => self.answer(url, &as_get, &client, response, epoch).await,
                }
            }
            Fetched::Response(response) => self.answer(url, &as_get, &client, response, epoch).await,
            Fetched::Failed(failure, answer) => self.stale(&stored, &client, head, failure).unwrap_or(answer),
        }
    }

    /// The stored response of `url` if it is fresh for this request, served.
    async fn fresh_hit(
        &self,
        url: &str,
        as_get: &http::request::Parts,
        parts: &http::request::Parts,
        head: bool,
    ) -> Option<Response<ResponseBody>> {
        let stored = self.store().lookup(url, &parts.headers).await?;
        let asked = self.without_disallowed_staleness(&stored, as_get);
        match stored.policy.before_request(&asked, SystemTime::now()) {
            BeforeRequest::Fresh(_) => Some(self.serve(&stored, parts, head, Outcome::Hit)),
            BeforeRequest::Stale { .. } => None,
        }
    }

    /// The request as the policy should judge it: without `max-stale` when the stored response
    /// may not be served stale (`must-revalidate`, `proxy-revalidate`, `no-cache`, `s-maxage`),
    /// which the policy checks only in part.
    fn without_disallowed_staleness(&self, stored: &Stored, as_get: &http::request::Parts) -> http::request::Parts {
        let mut asked = head_of(as_get, Method::GET);
        let allowed = rules::policy_head(stored.status, &stored.headers, true)
            .is_some_and(|view| rules::may_serve_stale(&view.headers));
        if !allowed && rules::directive(&asked.headers, "max-stale").is_some() {
            let kept: Vec<HeaderValue> = asked
                .headers
                .get_all(header::CACHE_CONTROL)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .map(|v| {
                    v.split(',')
                        .filter(|d| !d.trim().to_ascii_lowercase().starts_with("max-stale"))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .filter_map(|v| HeaderValue::from_str(&v).ok())
                .collect();
            asked.headers.remove(header::CACHE_CONTROL);
            for v in kept {
                asked.headers.append(header::CACHE_CONTROL, v);
            }
        }
        asked
    }

    /// Whether a stale `stored` may be served while it is revalidated: within its
    /// `stale-while-revalidate` window, when nothing forbids serving it stale and the request
    /// does not ask for a validated response.
    fn while_revalidating(&self, stored: &Stored, request: &http::HeaderMap) -> bool {
        let now = SystemTime::now();
        let Some(view) = rules::policy_head(stored.status, &stored.headers, true) else { return false };
        let Some(window) = rules::seconds(&view.headers, "stale-while-revalidate") else { return false };
        let asks_validation =
            ["no-cache", "max-age", "min-fresh"].iter().any(|d| rules::directive(request, d).is_some())
                || request.get(header::PRAGMA).is_some_and(|p| p.as_bytes().windows(8).any(|w| w == b"no-cache"));
        stored.policy.is_stale(now)
            && !asks_validation
            && rules::may_serve_stale(&view.headers)
            && stored.policy.age(now).saturating_sub(stored.lifetime) <= window
    }

    /// A stored response past its freshness, when it may stand in for a failed origin.
    fn stale(
        &self,
        stored: &Stored,
        parts: &http::request::Parts,
        head: bool,
        failure: OriginFailure,
    ) -> Option<Response<ResponseBody>> {
        let now = SystemTime::now();
        let staleness = stored.policy.age(now).saturating_sub(stored.lifetime);
        // The policy's view of the response has the directives' names in lower case.
        let view = rules::policy_head(stored.status, &stored.headers, true)?;
        if !stored.policy.is_storable() || !rules::stale_on_failure(&view.headers, staleness, failure) {
            return None;
        }
        Some(self.serve(stored, parts, head, Outcome::Stale))
    }

    /// The origin's response to a GET the cache sent, for a client's GET or HEAD: stored when it
    /// may be, then answered with the client's own preconditions applied (a 304 when they hold)
    /// and without a body for HEAD.
    async fn answer<RB>(
        &self,
        url: &str,
        as_get: &http::request::Parts,
        client: &http::request::Parts,
        response: Response<RB>,
        epoch: Epochs,
    ) -> Response<ResponseBody>
    where
        RB: Body<Data = Bytes> + Send + 'static,
        RB::Error: Into<BoxError>,
    {
        let response = self.fill(url, as_get, response, epoch).await;
        let head = client.method == Method::HEAD;
        let conditional =
            response.status() == StatusCode::OK && rules::not_modified(&client.headers, response.headers());
        if !head && !conditional {
            return response;
        }
        let (mut parts, _) = response.into_parts();
        if conditional {
            parts.headers = rules::not_modified_headers(parts.headers);
            parts.status = StatusCode::NOT_MODIFIED;
        }
        Response::from_parts(parts, full(Bytes::new()))
    }

    /// A response from the origin to a GET: stored if it may be, and returned.
    async fn fill<RB>(
        &self,
        url: &str,
        as_get: &http::request::Parts,
        response: Response<RB>,
        epoch: Epochs,
    ) -> Response<ResponseBody>
    where
        RB: Body<Data = Bytes> + Send + 'static,
        RB::Error: Into<BoxError>,
    {
        let (mut answer, body) = response.into_parts();
        rules::strip_hop_by_hop(&mut answer.headers);
        let fits = content_length(&answer.headers).is_none_or(|n| n <= self.config().max_body as u64);
        let candidate = fits && Vary::of(&answer.headers) != Vary::Star;
        // Whether it may be stored, before its body is read: the policy decides on the head.
        let storable = candidate
            && rules::policy_head(answer.status, &answer.headers, self.config().store_set_cookie)
                .is_some_and(|h| CachePolicy::new_options(as_get, &h, SystemTime::now(), self.options()).is_storable());
        if !storable {
            return with_outcome(Response::from_parts(answer, boxed(body)), Outcome::Miss);
        }
        let read = tokio::time::timeout(self.config().origin_timeout, buffer(body, self.config().max_body)).await;
        let bytes = match read {
            Ok(Ok(Buffered::Whole(bytes))) => bytes,
            Ok(Ok(Buffered::TooLarge(chunks, rest))) => {
                let first = futures_util::stream::iter(chunks.into_iter().map(|c| Ok::<_, BoxError>(Frame::data(c))));
                let rest = BodyStream::new(rest.map_err(Into::into));
                let body = StreamBody::new(first.chain(rest)).boxed_unsync();
                return with_outcome(Response::from_parts(answer, body), Outcome::Miss);
            }
            Ok(Err(err)) => {
                tracing::debug!(url = %url, error = %err, "the origin's body failed");
                return status_only(StatusCode::BAD_GATEWAY);
            }
            Err(_) => {
                tracing::debug!(url = %url, "the origin's body did not come in time");
                return status_only(StatusCode::GATEWAY_TIMEOUT);
            }
        };
        if let Some(stored) = self.stored(as_get, answer.status, answer.headers.clone(), bytes.clone()) {
            self.keep(url, as_get, &stored, epoch).await;
        }
        with_outcome(Response::from_parts(answer, full(bytes)), Outcome::Miss)
    }

    /// A response as stored, with its policy; `None` when it must not be stored.
    fn stored(
        &self,
        as_get: &http::request::Parts,
        status: StatusCode,
        headers: http::HeaderMap,
        body: Bytes,
    ) -> Option<Stored> {
        let now = SystemTime::now();
        let head = rules::policy_head(status, &headers, self.config().store_set_cookie)?;
        let policy = CachePolicy::new_options(as_get, &head, now, self.options());
        if !policy.is_storable() {
            return None;
        }
        let mut headers = headers;
        if !self.config().store_set_cookie {
            // Even a `public` response's cookie belongs to the client that caused it.
            headers.remove(header::SET_COOKIE);
        }
        let lifetime = policy.time_to_live(now).saturating_add(policy.age(now));
        Some(Stored { status, headers, policy, lifetime, body })
    }

    /// A response to serve once that may not be stored (a 304's merge that set a cookie).
    fn unstored(&self, status: StatusCode, headers: &http::HeaderMap, body: Bytes) -> Stored {
        let head = rules::policy_head(status, headers, true).unwrap_or_else(|| {
            let mut parts = Response::new(()).into_parts().0;
            parts.status = status;
            parts
        });
        let policy = CachePolicy::new_options(&Request::new(()), &head, SystemTime::now(), self.options());
        Stored { status, headers: headers.clone(), policy, lifetime: Duration::ZERO, body }
    }

    /// Puts a response in the store for as long as it can serve: its freshness, plus what it
    /// may be served stale or revalidated for.
    ///
    /// `epoch` is the store's purge epoch read before the origin was asked: when a purge came
    /// since (on any instance, as far as this one has heard), what was written is removed again
    /// (see [`Store::epochs`]).
    async fn keep(&self, url: &str, as_get: &http::request::Parts, stored: &Stored, epoch: Epochs) {
        let now = SystemTime::now();
        let headers = &stored.headers;
        let stale_window = rules::seconds(headers, "stale-if-error")
            .into_iter()
            .chain(rules::seconds(headers, "stale-while-revalidate"))
            .max()
            .unwrap_or_default();
        let ttl = stored.policy.time_to_live(now).saturating_add(self.config().keep.max(stale_window));
        let tags: Vec<_> =
            surrogate_keys(headers).filter_map(|k| self.store().tag(&k).ok()).take(strata::MAX_TAGS).collect();
        let vary = Vary::of(headers);
        if let Err(err) = self.store().put(url, &as_get.headers, &vary, stored, ttl, &tags).await {
            tracing::debug!(url = %url, error = %err, "a response could not be stored");
        }
        if self.store().epochs(url).await != epoch {
            self.drop_purged(url).await;
            return;
        }
        // Another instance's purge reaches this one's L1 within the invalidation bound: the
        // epochs are read once more after it.
        let (http, url) = (self.clone(), url.to_owned());
        tokio::spawn(async move {
            tokio::time::sleep(EPOCH_RECHECK).await;
            if http.store().epochs(&url).await != epoch {
                http.drop_purged(&url).await;
            }
        });
    }

    async fn drop_purged(&self, url: &str) {
        if let Err(err) = self.store().invalidate(url).await {
            tracing::warn!(url = %url, error = %err, "a response fetched before a purge could not be removed");
        }
    }

    /// A stored response as served: its headers with `Age` (RFC 9111 §5.1), without
    /// `Surrogate-Control` (meant for this cache); a 304 when the client's own conditions hold;
    /// no body for HEAD.
    fn serve(
        &self,
        stored: &Stored,
        parts: &http::request::Parts,
        head: bool,
        outcome: Outcome,
    ) -> Response<ResponseBody> {
        let mut headers = stored.headers.clone();
        headers.remove("surrogate-control");
        headers.insert(header::AGE, HeaderValue::from(stored.policy.age(SystemTime::now()).as_secs()));
        let mut view = Response::new(()).into_parts().0;
        view.status = stored.status;
        if view.status.is_success() && rules::not_modified(&parts.headers, &headers) {
            view.headers = rules::not_modified_headers(headers);
            view.status = StatusCode::NOT_MODIFIED;
            return with_outcome(Response::from_parts(view, full(Bytes::new())), outcome);
        }
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(stored.body.len()));
        view.headers = headers;
        let body = if head { Bytes::new() } else { stored.body.clone() };
        with_outcome(Response::from_parts(view, full(body)), outcome)
    }

    fn options(&self) -> CacheOptions {
        CacheOptions { shared: true, ..CacheOptions::default() }
    }

    fn store(&self) -> &Store {
        &self.shared.store
    }
}

fn with_outcome(mut response: Response<ResponseBody>, outcome: Outcome) -> Response<ResponseBody> {
    response.headers_mut().insert(X_CACHE, outcome.value());
    response
}

fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

/// The names of a `Surrogate-Key` header (space-separated), as they may name a tag.
fn surrogate_keys(headers: &http::HeaderMap) -> impl Iterator<Item = String> + '_ {
    headers
        .get_all("surrogate-key")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(str::split_ascii_whitespace)
        .map(str::to_owned)
}
