//! The parts of RFC 9111 (and RFC 5861) that `http-cache-semantics` leaves to its caller: what
//! is stored besides its own verdict, which URLs an unsafe method invalidates, when a stale
//! response may stand in for the origin, and the client's own conditional requests.

use std::time::{Duration, SystemTime};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Uri};

/// The `Vary` of a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Vary {
    /// No `Vary`: one response per URL.
    None,
    /// The request header names it varies on, lower-case, sorted, without duplicates.
    Names(Vec<String>),
    /// `*` among the names: never reused (RFC 9111 §4.1).
    Star,
}

impl Vary {
    pub(crate) fn of(headers: &HeaderMap) -> Vary {
        let mut names = Vec::new();
        for value in headers.get_all(header::VARY) {
            let Ok(value) = value.to_str() else { return Vary::Star };
            for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                if name == "*" {
                    return Vary::Star;
                }
                names.push(name.to_ascii_lowercase());
            }
        }
        names.sort();
        names.dedup();
        if names.is_empty() { Vary::None } else { Vary::Names(names) }
    }
}

/// The request's values of the headers a response varies on, as one string per name: field
/// lines joined with ", ", each trimmed; an absent header differs from an empty one.
pub(crate) fn selecting_values(names: &[String], request: &HeaderMap) -> Vec<u8> {
    let mut out = Vec::new();
    for name in names {
        out.extend_from_slice(name.as_bytes());
        let mut values = request.get_all(name.as_str()).iter().peekable();
        if values.peek().is_none() {
            out.push(0);
            continue;
        }
        out.push(b'=');
        let mut first = true;
        for value in values {
            if !first {
                out.extend_from_slice(b", ");
            }
            first = false;
            out.extend_from_slice(value.as_bytes().trim_ascii());
        }
        out.push(0);
    }
    out
}

/// The response's `Age` when it can be believed: absent (`Ok(None)`), or one field line of
/// digits only. `Err` for anything else (a list, two lines, a sign, a fraction, a parameter):
/// the response's age is then unknown, and it is not stored (RFC 9111 §5.1: `Age` is a single
/// non-negative integer; the suite's `age-parse` tests treat lists as stale).
pub(crate) fn first_age(headers: &HeaderMap) -> Result<Option<HeaderValue>, ()> {
    let mut ages = headers.get_all(header::AGE).iter();
    match (ages.next(), ages.next()) {
        (None, _) => Ok(None),
        (Some(age), None) if !age.is_empty() && age.as_bytes().iter().all(u8::is_ascii_digit) => {
            let secs = age.to_str().ok().and_then(|a| a.parse::<u64>().ok()).unwrap_or(MAX_DELTA_SECONDS);
            Ok(Some(HeaderValue::from(secs.min(MAX_DELTA_SECONDS))))
        }
        _ => Err(()),
    }
}

/// Statuses `http-cache-semantics` stores (its list of understood codes).
const UNDERSTOOD: &[u16] = &[200, 203, 204, 300, 301, 302, 303, 307, 308, 404, 405, 410, 414, 501];

/// Statuses never stored: answers to one client's conditions or ranges (a 304, a 206, a 412,
/// a 416), whatever their freshness; stored, they would be replayed to everyone.
const NEVER_STORED: &[u16] = &[206, 304, 412, 416];

/// The largest delta-seconds value read (RFC 9111 §1.2.2: larger ones count as 2^31).
pub(crate) const MAX_DELTA_SECONDS: u64 = 1 << 31;

/// The response head the policy decides on, or `None` when the response must not be stored.
/// It differs from what is stored and served in what the policy would misread:
///
/// - `Age`: none stored unless it is a plain number ([`first_age`]), at most 2^31;
/// - `Cache-Control`: directive names in lower case (they are case-insensitive), numbers
///   at most 2^31;
/// - `Surrogate-Control` (for this cache, a surrogate): `no-store` is not stored; `max-age=N`
///   replaces the freshness and `no-store` of `Cache-Control` (the Edge Architecture
///   Specification), while `private` and `no-cache` still hold;
/// - `Set-Cookie`: a response that sets a cookie is stored only when `public`, or when
///   `cookies` allows it (RFC 9111 §7.3 would store it; one user's cookie must not be handed to
///   the next by default); the policy does not see the header (it would give such a response
///   no freshness);
/// - a final status the policy does not know, with explicit freshness and without
///   `must-understand`, is decided as a 200 (RFC 9111 §3: any final status may be stored
///   when its freshness is explicit); 206, 304, 412 and 416 never are.
pub(crate) fn policy_head(status: StatusCode, headers: &HeaderMap, cookies: bool) -> Option<http::response::Parts> {
    if NEVER_STORED.contains(&status.as_u16()) {
        return None;
    }
    let mut head = http::Response::new(()).into_parts().0;
    head.status = status;
    head.headers = headers.clone();
    let h = &mut head.headers;
    match first_age(headers) {
        Ok(Some(age)) => {
            h.insert(header::AGE, age);
        }
        Ok(None) => {}
        Err(()) => return None,
    }
    let lowered: Vec<HeaderValue> = headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| HeaderValue::from_str(&normalise_directives(v)).ok())
        .collect();
    h.remove(header::CACHE_CONTROL);
    for value in lowered {
        h.append(header::CACHE_CONTROL, value);
    }
    if let Some(surrogate) = surrogate_control(headers) {
        if surrogate.no_store {
            return None;
        }
        if let Some(max_age) = surrogate.max_age {
            h.remove(header::EXPIRES);
            h.remove(header::PRAGMA);
            let kept: Vec<&str> = ["private", "no-cache"].into_iter().filter(|d| directive(h, d).is_some()).collect();
            let value = [format!("max-age={}", max_age.min(MAX_DELTA_SECONDS))]
                .into_iter()
                .chain(kept.iter().map(|d| (*d).to_owned()))
                .collect::<Vec<_>>()
                .join(", ");
            h.insert(header::CACHE_CONTROL, HeaderValue::from_str(&value).ok()?);
        }
    }
    if h.contains_key(header::SET_COOKIE) && !cookies && directive(h, "public").is_none() {
        return None;
    }
    h.remove(header::SET_COOKIE);
    let explicit =
        directive(h, "max-age").is_some() || directive(h, "s-maxage").is_some() || h.contains_key(header::EXPIRES);
    if !UNDERSTOOD.contains(&status.as_u16()) && explicit && directive(h, "must-understand").is_none() {
        head.status = StatusCode::OK;
    }
    Some(head)
}

/// Directive names in lower case; a numeric argument at most [`MAX_DELTA_SECONDS`].
fn normalise_directives(value: &str) -> String {
    value
        .split(',')
        .map(|part| match part.split_once('=') {
            Some((name, arg)) => {
                let arg = arg.trim();
                let arg = if !arg.is_empty() && arg.bytes().all(|b| b.is_ascii_digit()) {
                    arg.parse::<u64>().map_or(MAX_DELTA_SECONDS, |n| n.min(MAX_DELTA_SECONDS)).to_string()
                } else {
                    arg.to_owned()
                };
                format!("{}={arg}", name.trim().to_ascii_lowercase())
            }
            None => part.trim().to_ascii_lowercase(),
        })
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join(", ")
}

/// This cache's device token in the Edge Architecture Specification's `Surrogate-Capability`
/// request header, which it sends the origin: `Surrogate-Control` directives may target it
/// (`max-age=60;strata`).
pub(crate) const SURROGATE_DEVICE: &str = "strata";

/// The `Surrogate-Capability` value this cache adds to the requests it forwards.
pub(crate) const SURROGATE_CAPABILITY: &str = "strata=\"Surrogate/1.0\"";

/// The directives of `Surrogate-Control` this cache follows: those without a target, and
/// those targeted at [`SURROGATE_DEVICE`] (`max-age=60;strata`, not `max-age=60;other`).
struct SurrogateControl {
    no_store: bool,
    max_age: Option<u64>,
}

fn surrogate_control(headers: &HeaderMap) -> Option<SurrogateControl> {
    let mut found = None::<SurrogateControl>;
    for value in headers.get_all("surrogate-control") {
        let Ok(value) = value.to_str() else { continue };
        let sc = found.get_or_insert(SurrogateControl { no_store: false, max_age: None });
        for part in value.split(',') {
            let (part, target) = match part.split_once(';') {
                Some((p, t)) => (p.trim(), Some(t.trim())),
                None => (part.trim(), None),
            };
            if target.is_some_and(|t| t != SURROGATE_DEVICE) {
                continue;
            }
            let (name, arg) = match part.split_once('=') {
                Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
                None => (part, None),
            };
            if name.eq_ignore_ascii_case("no-store") {
                sc.no_store = true;
            } else if name.eq_ignore_ascii_case("max-age") {
                sc.max_age = arg.and_then(|a| a.parse().ok()).or(Some(0));
            }
        }
    }
    found
}

/// The value of a `Cache-Control` directive of `headers` (`Some(None)` without a value).
pub(crate) fn directive<'a>(headers: &'a HeaderMap, name: &str) -> Option<Option<&'a str>> {
    for value in headers.get_all(header::CACHE_CONTROL) {
        let Ok(value) = value.to_str() else { continue };
        for part in value.split(',') {
            let (key, arg) = match part.split_once('=') {
                Some((k, v)) => (k.trim(), Some(v.trim().trim_matches('"'))),
                None => (part.trim(), None),
            };
            if key.eq_ignore_ascii_case(name) {
                return Some(arg);
            }
        }
    }
    None
}

/// Seconds of a directive such as `stale-if-error=60` (none when absent or not a number).
pub(crate) fn seconds(headers: &HeaderMap, name: &str) -> Option<Duration> {
    let arg = directive(headers, name).flatten()?;
    if arg.is_empty() || !arg.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(Duration::from_secs(arg.parse::<u64>().map_or(MAX_DELTA_SECONDS, |n| n.min(MAX_DELTA_SECONDS))))
}

/// Whether a stored response may be served stale at all by a shared cache (RFC 9111 §4.2.4,
/// §5.2.2): not with `must-revalidate`, `proxy-revalidate`, `no-cache` or `s-maxage`.
pub(crate) fn may_serve_stale(response: &HeaderMap) -> bool {
    ["must-revalidate", "proxy-revalidate", "no-cache", "s-maxage"].iter().all(|d| directive(response, d).is_none())
}

/// Why the origin could not give a usable response, for the stale-on-error decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OriginFailure {
    /// No response: connection refused or reset, timeout.
    Unreachable,
    /// A 500, 502, 503 or 504.
    Error,
}

/// Whether `stale` (past its freshness by `staleness`) may answer for an origin that failed:
/// when the origin is unreachable, any response a shared cache may serve stale (§4.2.4); on an
/// error status, only within its `stale-if-error` window (RFC 5861 §4).
pub(crate) fn stale_on_failure(response: &HeaderMap, staleness: Duration, failure: OriginFailure) -> bool {
    if !may_serve_stale(response) {
        return false;
    }
    match (failure, seconds(response, "stale-if-error")) {
        (_, Some(window)) => staleness <= window,
        (OriginFailure::Unreachable, None) => true,
        (OriginFailure::Error, None) => false,
    }
}

/// Whether a status is one of the error statuses `stale-if-error` covers.
pub(crate) fn is_origin_error(status: StatusCode) -> bool {
    matches!(status.as_u16(), 500 | 502 | 503 | 504)
}

/// Safe methods (RFC 9110 §9.2.1): they never invalidate.
pub(crate) fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE)
}

/// The effective request URL, `scheme://authority/path?query`: the authority from the URI, or
/// the `Host` header.
pub(crate) fn effective_url(scheme: &str, uri: &Uri, headers: &HeaderMap) -> Option<String> {
    let authority = match uri.authority() {
        Some(a) => a.as_str().to_owned(),
        None => headers.get(header::HOST)?.to_str().ok()?.to_owned(),
    };
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let authority = authority.to_ascii_lowercase();
    // The scheme's default port is the same host (`site` and `site:80`).
    let default_port = match scheme {
        "http" => ":80",
        "https" => ":443",
        _ => "",
    };
    let authority = match authority.strip_suffix(default_port) {
        Some(host) if !default_port.is_empty() => host,
        _ => authority.as_str(),
    };
    Some(format!("{scheme}://{authority}{path}"))
}

/// The URLs an unsafe request's response invalidates besides the request's own: its
/// `Location` and `Content-Location`, resolved against the request's URL, when they are of the
/// same origin (RFC 9111 §4.4).
pub(crate) fn invalidated_by(url: &str, response: &HeaderMap) -> Vec<String> {
    let origin = origin_of(url);
    [header::LOCATION, header::CONTENT_LOCATION]
        .iter()
        .filter_map(|name| response.get(name)?.to_str().ok())
        .filter_map(|reference| resolve(url, reference.trim()))
        .filter(|target| origin.is_some() && origin_of(target) == origin)
        .collect()
}

/// `scheme://authority` of an absolute URL.
fn origin_of(url: &str) -> Option<&str> {
    let rest = url.find("://")? + 3;
    let end = url[rest..].find('/').map_or(url.len(), |i| rest + i);
    Some(&url[..end])
}

/// A reference resolved against `base` (absolute, path-absolute, or path-relative).
fn resolve(base: &str, reference: &str) -> Option<String> {
    if reference.is_empty() {
        return None;
    }
    if let Ok(uri) = reference.parse::<Uri>()
        && uri.scheme().is_some()
    {
        let authority = uri.authority()?.as_str().to_ascii_lowercase();
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        return Some(format!("{}://{authority}{path}", uri.scheme_str()?));
    }
    let origin = origin_of(base)?;
    if reference.starts_with("//") {
        return None;
    }
    if reference.starts_with('/') {
        return Some(format!("{origin}{reference}"));
    }
    let path = &base[origin.len()..];
    let path = path.split(['?', '#']).next().unwrap_or("/");
    let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
    Some(format!("{origin}{}{reference}", if dir.is_empty() { "/" } else { dir }))
}

/// Whether the client's own conditional request is satisfied by the stored response (a 304
/// answers it): `If-None-Match` against its `ETag` (weak comparison, `*` matches anything),
/// or else `If-Modified-Since` against its `Last-Modified` (RFC 9110 §13.1).
pub(crate) fn not_modified(request: &HeaderMap, stored: &HeaderMap) -> bool {
    if let Some(inm) = request.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) {
        if inm.split(',').any(|t| t.trim() == "*") {
            return true;
        }
        let Some(etag) = stored.get(header::ETAG).and_then(|v| v.to_str().ok()) else { return false };
        let weak = |t: &str| t.trim().trim_start_matches("W/").to_owned();
        return inm.split(',').any(|t| weak(t) == weak(etag));
    }
    let (Some(since), Some(modified)) = (
        request.get(header::IF_MODIFIED_SINCE).and_then(|v| v.to_str().ok()).and_then(http_date),
        stored.get(header::LAST_MODIFIED).and_then(|v| v.to_str().ok()).and_then(http_date),
    ) else {
        return false;
    };
    modified <= since
}

/// An IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the form origins send.
pub(crate) fn http_date(value: &str) -> Option<SystemTime> {
    let mut parts = value.split_ascii_whitespace();
    let (_, day, month, year, time, zone) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if zone != "GMT" || parts.next().is_some() {
        return None;
    }
    let month = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
        .iter()
        .position(|m| *m == month)? as u64
        + 1;
    let (day, year): (u64, u64) = (day.parse().ok()?, year.parse().ok()?);
    let mut hms = time.split(':').map(|p| p.parse::<u64>());
    let (h, m, s) = (hms.next()?.ok()?, hms.next()?.ok()?, hms.next()?.ok()?);
    if !(1..=31).contains(&day) || !(1970..=9999).contains(&year) || h > 23 || m > 59 || s > 60 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm), years from 1970 on.
    let (y, mo) = if month <= 2 { (year - 1, month + 9) } else { (year, month - 3) };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * mo + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = (era * 146_097 + doe).checked_sub(719_468)?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(days * 86_400 + h * 3600 + m * 60 + s))
}

/// Whether a 304 to the conditional request this cache made for `stored` updates it (RFC 9111
/// §4.3.4). A validator in the 304 must match the stored one: a strong `ETag` exactly, a weak
/// one weakly, a `Last-Modified` exactly. A 304 without validators answers the request that
/// carried the stored response's own: there is one stored response per variant here, and it is
/// the one revalidated.
pub(crate) fn selects(stored: &HeaderMap, not_modified: &HeaderMap) -> bool {
    fn get(h: &HeaderMap, name: HeaderName) -> Option<&str> {
        h.get(name).and_then(|v| v.to_str().ok()).map(str::trim)
    }
    let weak = |t: &str| t.trim_start_matches("W/").to_owned();
    if let Some(new) = get(not_modified, header::ETAG) {
        let Some(old) = get(stored, header::ETAG) else { return false };
        return if new.starts_with("W/") || old.starts_with("W/") { weak(new) == weak(old) } else { new == old };
    }
    match (get(not_modified, header::LAST_MODIFIED), get(stored, header::LAST_MODIFIED)) {
        (Some(new), Some(old)) => new == old,
        (Some(_), None) => false,
        (None, _) => true,
    }
}

/// The stored headers updated by a 304 that selected them (RFC 9111 §4.3.4): each header the
/// 304 carries replaces the stored one, except those that describe the stored body (length,
/// encodings, range, `Content-MD5`) and its `ETag`, which a 304 cannot change.
pub(crate) fn merge_not_modified(stored: &HeaderMap, not_modified: &HeaderMap) -> HeaderMap {
    const KEPT: &[&str] =
        &["content-length", "content-encoding", "transfer-encoding", "content-range", "content-md5", "etag"];
    let mut merged = stored.clone();
    for name in not_modified.keys() {
        if KEPT.contains(&name.as_str()) {
            continue;
        }
        merged.remove(name);
        for value in not_modified.get_all(name) {
            merged.append(name.clone(), value.clone());
        }
    }
    merged
}

/// The response headers a 304 to a client carries (RFC 9110 §15.4.5): the stored ones that
/// describe the representation's metadata, without its content headers.
pub(crate) fn not_modified_headers(mut headers: HeaderMap) -> HeaderMap {
    for name in [header::CONTENT_LENGTH, header::CONTENT_TYPE, header::CONTENT_ENCODING, header::CONTENT_RANGE] {
        headers.remove(name);
    }
    headers
}

/// The client's own preconditions and ranges: removed from the requests the cache sends to fill
/// or revalidate a stored response (it answers them itself from what it stores), so the origin's
/// answer is the whole representation, not one meant for this client only.
pub(crate) fn strip_client_conditions(headers: &mut HeaderMap) {
    for name in [
        header::IF_NONE_MATCH,
        header::IF_MODIFIED_SINCE,
        header::IF_MATCH,
        header::IF_UNMODIFIED_SINCE,
        header::IF_RANGE,
        header::RANGE,
    ] {
        headers.remove(name);
    }
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) and those the `Connection` header names: never
/// forwarded by a proxy.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
    ] {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn vary_names_are_normalised_and_a_star_anywhere_wins() {
        assert_eq!(Vary::of(&headers(&[])), Vary::None);
        assert_eq!(
            Vary::of(&headers(&[("vary", "Accept-Encoding, foo"), ("vary", "FOO")])),
            Vary::Names(vec!["accept-encoding".into(), "foo".into()])
        );
        assert_eq!(Vary::of(&headers(&[("vary", "foo, *")])), Vary::Star);
    }

    #[test]
    fn an_absent_header_is_not_an_empty_one() {
        let names = vec!["foo".to_owned()];
        assert_ne!(selecting_values(&names, &headers(&[])), selecting_values(&names, &headers(&[("foo", "")])));
        assert_eq!(
            selecting_values(&names, &headers(&[("foo", "a"), ("foo", " b ")])),
            selecting_values(&names, &headers(&[("foo", "a, b")]))
        );
    }

    #[test]
    fn only_one_age_of_digits_is_believed() {
        let first = |h: HeaderMap| first_age(&h).map(|a| a.map(|v| v.to_str().unwrap_or_default().to_owned()));
        assert_eq!(first(headers(&[])), Ok(None));
        assert_eq!(first(headers(&[("age", "7200")])), Ok(Some("7200".to_owned())));
        for bad in ["-7200", "abc", "1.5", " ", "0,7200", "0, 0", "7200;foo=1"] {
            assert_eq!(first(headers(&[("age", bad)])), Err(()), "{bad}");
        }
        assert_eq!(first(headers(&[("age", "0"), ("age", "0")])), Err(()));
    }

    #[test]
    fn the_policy_sees_a_normalised_head() {
        let h = policy_head(
            StatusCode::OK,
            &headers(&[("cache-control", "Max-Age=10, No-CaChE, public"), ("set-cookie", "a=b")]),
            false,
        );
        let h = h.map(|p| p.headers).unwrap_or_default();
        assert_eq!(h.get("cache-control").and_then(|v| v.to_str().ok()), Some("max-age=10, no-cache, public"));
        assert!(!h.contains_key("set-cookie"), "the policy does not see the cookie");
        let cookie = headers(&[("cache-control", "max-age=10"), ("set-cookie", "a=b")]);
        assert!(policy_head(StatusCode::OK, &cookie, false).is_none(), "a cookie is not handed to others");
        assert!(policy_head(StatusCode::OK, &cookie, true).is_some());
        let huge = headers(&[("cache-control", "max-age=99999999999999999999999"), ("age", "18446744073709551615")]);
        let h = policy_head(StatusCode::OK, &huge, false).map(|p| p.headers).unwrap_or_default();
        assert_eq!(h.get("cache-control").and_then(|v| v.to_str().ok()), Some("max-age=2147483648"));
        assert_eq!(h.get("age").and_then(|v| v.to_str().ok()), Some("2147483648"));
        for status in [206, 304, 412, 416] {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            assert!(policy_head(status, &headers(&[("cache-control", "max-age=60")]), true).is_none(), "{status}");
        }
        let sc = headers(&[("cache-control", "no-store"), ("surrogate-control", "max-age=60"), ("expires", "0")]);
        let h = policy_head(StatusCode::OK, &sc, false).map(|p| p.headers).unwrap_or_default();
        assert_eq!(h.get("cache-control").and_then(|v| v.to_str().ok()), Some("max-age=60"));
        let private = headers(&[("cache-control", "private"), ("surrogate-control", "max-age=60")]);
        let h = policy_head(StatusCode::OK, &private, false).map(|p| p.headers).unwrap_or_default();
        assert_eq!(h.get("cache-control").and_then(|v| v.to_str().ok()), Some("max-age=60, private"));
        assert!(!h.contains_key("expires"));
        assert!(policy_head(StatusCode::OK, &headers(&[("surrogate-control", "no-store")]), false).is_none());
        let ours = headers(&[("surrogate-control", "max-age=60;strata"), ("cache-control", "no-store")]);
        let h = policy_head(StatusCode::OK, &ours, false).map(|p| p.headers).unwrap_or_default();
        assert_eq!(h.get("cache-control").and_then(|v| v.to_str().ok()), Some("max-age=60"));
        let other = headers(&[("surrogate-control", "max-age=60;other"), ("cache-control", "max-age=1")]);
        let h = policy_head(StatusCode::OK, &other, false).map(|p| p.headers).unwrap_or_default();
        assert_eq!(h.get("cache-control").and_then(|v| v.to_str().ok()), Some("max-age=1"));
        let odd = StatusCode::from_u16(599).unwrap_or(StatusCode::OK);
        let fresh = headers(&[("cache-control", "max-age=60")]);
        assert_eq!(policy_head(odd, &fresh, false).map(|p| p.status), Some(StatusCode::OK));
        let understand = headers(&[("cache-control", "max-age=60, must-understand")]);
        assert_eq!(policy_head(odd, &understand, false).map(|p| p.status), Some(odd));
        assert_eq!(policy_head(odd, &headers(&[]), false).map(|p| p.status), Some(odd));
    }

    #[test]
    fn stale_on_failure_follows_the_directives() {
        let plain = headers(&[("cache-control", "max-age=1")]);
        assert!(stale_on_failure(&plain, Duration::from_secs(100), OriginFailure::Unreachable));
        assert!(!stale_on_failure(&plain, Duration::from_secs(1), OriginFailure::Error));
        let sie = headers(&[("cache-control", "max-age=1, stale-if-error=10")]);
        assert!(stale_on_failure(&sie, Duration::from_secs(5), OriginFailure::Error));
        assert!(!stale_on_failure(&sie, Duration::from_secs(11), OriginFailure::Unreachable));
        let strict = headers(&[("cache-control", "max-age=1, must-revalidate, stale-if-error=10")]);
        assert!(!stale_on_failure(&strict, Duration::from_secs(1), OriginFailure::Unreachable));
    }

    #[test]
    fn locations_resolve_within_the_origin_only() {
        let url = "http://example.com/a/b?x=1";
        let h = headers(&[("location", "/c"), ("content-location", "d")]);
        assert_eq!(invalidated_by(url, &h), vec!["http://example.com/c", "http://example.com/a/d"]);
        let foreign = headers(&[("location", "http://other.example/c"), ("content-location", "//other/x")]);
        assert!(invalidated_by(url, &foreign).is_empty());
        let absolute = headers(&[("location", "http://EXAMPLE.com/e")]);
        assert_eq!(invalidated_by(url, &absolute), vec!["http://example.com/e"]);
    }

    #[test]
    fn client_conditionals() {
        let stored = headers(&[("etag", "\"abc\""), ("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT")]);
        assert!(not_modified(&headers(&[("if-none-match", "W/\"abc\"")]), &stored));
        assert!(not_modified(&headers(&[("if-none-match", "\"x\", *")]), &stored));
        assert!(not_modified(&headers(&[("if-none-match", "*")]), &headers(&[])), "any representation matches *");
        assert!(!not_modified(&headers(&[("if-none-match", "\"x\"")]), &stored));
        assert!(not_modified(&headers(&[("if-modified-since", "Sun, 06 Nov 1994 08:49:37 GMT")]), &stored));
        assert!(!not_modified(&headers(&[("if-modified-since", "Sat, 05 Nov 1994 08:49:37 GMT")]), &stored));
        assert!(!not_modified(&headers(&[("if-modified-since", "garbage")]), &stored));
    }

    #[test]
    fn a_304_selects_by_its_validators() {
        let stored = headers(&[("etag", "\"a\""), ("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT")]);
        assert!(selects(&stored, &headers(&[])));
        assert!(selects(&stored, &headers(&[("etag", "\"a\"")])));
        assert!(!selects(&stored, &headers(&[("etag", "\"b\"")])));
        assert!(selects(&stored, &headers(&[("etag", "W/\"a\"")])));
        assert!(!selects(&stored, &headers(&[("last-modified", "Mon, 07 Nov 1994 08:49:37 GMT")])));
        assert!(!selects(&headers(&[]), &headers(&[("etag", "\"a\"")])));
    }

    #[test]
    fn http_dates() {
        let t = http_date("Sun, 06 Nov 1994 08:49:37 GMT").and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok());
        assert_eq!(t, Some(Duration::from_secs(784_111_777)));
        assert_eq!(http_date("Sun, 06 Nov 1994 08:49:37 PST"), None);
        assert_eq!(http_date("Sun, 32 Nov 1994 08:49:37 GMT"), None);
        assert_eq!(http_date("Sun, 06 Nov 300000000000 08:49:37 GMT"), None);
    }
}
