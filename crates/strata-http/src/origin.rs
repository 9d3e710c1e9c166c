//! [`Origin`]: the service `strata edge` puts behind the cache, a hyper client to one origin.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tower::Service;

use crate::{BoxError, Error, rules};

/// Forwards every request to one origin (`http://host:port`), keeping its path, query, method,
/// headers (hop-by-hop ones aside) and body; pooled connections.
#[derive(Clone, Debug)]
pub struct Origin {
    client: Client<HttpConnector, axum::body::Body>,
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
}

impl Origin {
    /// An origin at `url` (`http://` only: TLS to the origin is not supported).
    pub fn new(url: &str, connect_timeout: Duration) -> Result<Self, Error> {
        let uri: Uri = url.parse().map_err(Error::config)?;
        let scheme = uri.scheme().cloned().ok_or_else(|| Error::config("the origin URL has no scheme"))?;
        if scheme != http::uri::Scheme::HTTP {
            return Err(Error::config("the origin must be an http:// URL"));
        }
        let authority = uri.authority().cloned().ok_or_else(|| Error::config("the origin URL has no host"))?;
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        // Idle connections are dropped before a typical origin's keep-alive timeout (5 s in
        // Node, Apache and Go's defaults), so a request is not sent on one it is closing.
        let client = Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(4)).build(connector);
        Ok(Self { client, scheme, authority })
    }
}

impl Service<Request<axum::body::Body>> for Origin {
    type Response = Response<Incoming>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Incoming>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<axum::body::Body>) -> Self::Future {
        let (mut parts, body) = request.into_parts();
        let path = parts.uri.path_and_query().cloned();
        let mut uri = http::uri::Builder::new().scheme(self.scheme.clone()).authority(self.authority.clone());
        if let Some(path) = path {
            uri = uri.path_and_query(path);
        } else {
            uri = uri.path_and_query("/");
        }
        let client = self.client.clone();
        let host = HeaderValue::from_str(self.authority.as_str());
        Box::pin(async move {
            parts.uri = uri.build()?;
            rules::strip_hop_by_hop(&mut parts.headers);
            if !parts.headers.contains_key(header::HOST) {
                parts.headers.insert(header::HOST, host?);
            }
            parts.version = http::Version::HTTP_11;
            Ok(client.request(Request::from_parts(parts, body)).await?)
        })
    }
}
