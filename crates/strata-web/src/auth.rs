//! HTTP basic auth against bcrypt hashes, with a bounded memory of successful checks.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use http::{HeaderValue, StatusCode, header};
use sha2::{Digest, Sha256};

/// Successful checks remembered (the oldest is forgotten first).
const REMEMBERED: usize = 1024;
/// The realm of the `WWW-Authenticate` challenge.
pub(crate) const CHALLENGE: &str = "Basic realm=\"strata\"";

/// The users and their bcrypt hashes.
pub(crate) struct BasicAuth {
    users: BTreeMap<String, String>,
    /// Checked for a user that does not exist, so that an unknown user takes as long as a
    /// wrong password (a bcrypt hash of the highest cost among the users).
    dummy: String,
    /// A random key for the hashes in `verified`, so a memory dump of them helps no one.
    key: [u8; 32],
    verified: Mutex<Verified>,
    /// Bounds the bcrypt checks running at once (each takes a blocking thread for 50-250 ms).
    running: Arc<tokio::sync::Semaphore>,
}

#[derive(Default)]
struct Verified {
    set: HashSet<[u8; 32]>,
    order: VecDeque<[u8; 32]>,
}

impl BasicAuth {
    /// Checks every hash (a bcrypt hash of cost 4 to 31) and prepares the dummy hash.
    pub(crate) fn new(users: BTreeMap<String, String>) -> Result<Self, String> {
        let mut cost = 4;
        for (name, hash) in &users {
            if name.is_empty() || name.contains(':') {
                return Err(format!("basic_auth_users: {name:?} cannot be a user name (empty, or has a ':')"));
            }
            let parts: bcrypt::HashParts = hash.parse().map_err(|e| {
                format!(
                    "basic_auth_users.{name}: not a bcrypt hash ({e}); make one with `htpasswd -nBC 10 {name}` \
                     (the part after the colon)"
                )
            })?;
            if !(4..=31).contains(&parts.get_cost()) {
                return Err(format!("basic_auth_users.{name}: bcrypt cost {} is not within 4..=31", parts.get_cost()));
            }
            cost = cost.max(parts.get_cost());
        }
        // The users' highest cost, so a guessed user is answered no faster than the slowest real
        // one (give every user the same cost, or names can be told apart by timing: docs/security.md).
        let dummy = bcrypt::hash(rand::random::<[u8; 16]>(), cost).map_err(|e| format!("bcrypt: {e}"))?;
        let threads = std::thread::available_parallelism().map(usize::from).unwrap_or(2);
        Ok(Self {
            users,
            dummy,
            key: rand::random(),
            verified: Mutex::new(Verified::default()),
            running: Arc::new(tokio::sync::Semaphore::new(threads)),
        })
    }

    pub(crate) fn user_count(&self) -> usize {
        self.users.len()
    }

    fn fingerprint(&self, user: &str, password: &str) -> [u8; 32] {
        let mut hash = Sha256::new();
        hash.update(self.key);
        hash.update((user.len() as u64).to_be_bytes());
        hash.update(user.as_bytes());
        hash.update(password.as_bytes());
        hash.finalize().into()
    }

    fn remembered(&self, fingerprint: &[u8; 32]) -> bool {
        self.verified.lock().unwrap_or_else(|p| p.into_inner()).set.contains(fingerprint)
    }

    fn remember(&self, fingerprint: [u8; 32]) {
        let mut verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if verified.set.insert(fingerprint) {
            verified.order.push_back(fingerprint);
            while verified.order.len() > REMEMBERED {
                if let Some(old) = verified.order.pop_front() {
                    verified.set.remove(&old);
                }
            }
        }
    }

    /// Whether `authorization` (the header's value) names a user and its password.
    pub(crate) async fn check(self: &Arc<Self>, authorization: Option<&HeaderValue>) -> bool {
        let Some((user, password)) = authorization.and_then(credentials) else {
            return false;
        };
        let fingerprint = self.fingerprint(&user, &password);
        if self.remembered(&fingerprint) {
            return true;
        }
        // The permit goes with the check, not with this future: a client that hangs up does not
        // free it while bcrypt still runs.
        let Ok(permit) = self.running.clone().acquire_owned().await else {
            return false;
        };
        let auth = self.clone();
        let ok = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            auth.verify(&user, &password)
        })
        .await
        .unwrap_or(false);
        if ok {
            self.remember(fingerprint);
        }
        ok
    }

    /// The bcrypt check itself (blocking: tens to hundreds of milliseconds).
    pub(crate) fn verify(&self, user: &str, password: &str) -> bool {
        match self.users.get(user) {
            Some(hash) => bcrypt::verify(password, hash).unwrap_or(false),
            None => {
                let _ = bcrypt::verify(password, &self.dummy);
                false
            }
        }
    }
}

/// The user and password of a `Basic` authorization header.
fn credentials(value: &HeaderValue) -> Option<(String, String)> {
    let value = value.to_str().ok()?.trim();
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

/// The middleware: the request goes on with valid credentials, gets a 401 otherwise.
pub(crate) async fn require(State(auth): State<Arc<BasicAuth>>, request: Request, next: Next) -> Response {
    if auth.check(request.headers().get(header::AUTHORIZATION)).await {
        next.run(request).await
    } else {
        (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, CHALLENGE)], "Unauthorized\n").into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user: &str, password: &str) -> HeaderValue {
        let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        HeaderValue::try_from(format!("Basic {encoded}")).expect("header")
    }

    fn auth() -> Arc<BasicAuth> {
        let users = BTreeMap::from([("prometheus".to_owned(), bcrypt::hash("s3cret:x", 4).expect("hash"))]);
        Arc::new(BasicAuth::new(users).expect("auth"))
    }

    #[test]
    fn credentials_are_read_from_the_header() {
        assert_eq!(credentials(&basic("u", "p:w")), Some(("u".into(), "p:w".into())));
        let lower = HeaderValue::from_static("basic dTpw");
        assert_eq!(credentials(&lower), Some(("u".into(), "p".into())));
        for bad in ["Bearer dTpw", "Basic", "Basic !!!", "Basic dXNlcg=="] {
            assert_eq!(credentials(&HeaderValue::from_static(bad)), None, "{bad}");
        }
    }

    #[tokio::test]
    async fn right_password_passes_and_is_remembered() {
        let auth = auth();
        let header = basic("prometheus", "s3cret:x");
        assert!(!auth.remembered(&auth.fingerprint("prometheus", "s3cret:x")));
        assert!(auth.check(Some(&header)).await);
        assert!(auth.remembered(&auth.fingerprint("prometheus", "s3cret:x")));
        assert!(auth.check(Some(&header)).await);
    }

    #[tokio::test]
    async fn wrong_password_unknown_user_or_nothing_fail() {
        let auth = auth();
        assert!(!auth.check(Some(&basic("prometheus", "s3cret"))).await);
        assert!(!auth.check(Some(&basic("nobody", "s3cret:x"))).await);
        assert!(!auth.check(None).await);
        assert!(!auth.check(Some(&HeaderValue::from_static("Bearer x"))).await);
        // Failures are not remembered.
        assert!(!auth.remembered(&auth.fingerprint("prometheus", "s3cret")));
        // The user and password are kept apart in the fingerprint.
        assert_ne!(auth.fingerprint("ab", "c"), auth.fingerprint("a", "bc"));
    }

    #[test]
    fn the_memory_is_bounded() {
        let auth = auth();
        for i in 0..REMEMBERED + 10 {
            auth.remember(auth.fingerprint("u", &i.to_string()));
        }
        let verified = auth.verified.lock().expect("lock");
        assert_eq!((verified.set.len(), verified.order.len()), (REMEMBERED, REMEMBERED));
        drop(verified);
        assert!(!auth.remembered(&auth.fingerprint("u", "0")));
        assert!(auth.remembered(&auth.fingerprint("u", &(REMEMBERED + 9).to_string())));
    }

    #[test]
    fn bad_hashes_and_names_are_refused() {
        for (name, hash) in [("u", "plain"), ("u", "$2y$10$short"), ("a:b", "x"), ("", "x")] {
            let users = BTreeMap::from([(name.to_owned(), hash.to_owned())]);
            let err = BasicAuth::new(users).err().expect("refused");
            assert!(err.contains("basic_auth_users"), "{err}");
        }
    }

    #[test]
    fn unknown_users_are_checked_against_a_dummy_hash_of_the_users_cost() {
        let users = BTreeMap::from([("u".to_owned(), bcrypt::hash("p", 11).expect("hash"))]);
        let auth = BasicAuth::new(users).expect("auth");
        let parts: bcrypt::HashParts = auth.dummy.parse().expect("dummy is a bcrypt hash");
        assert_eq!(parts.get_cost(), 11);
        assert!(!auth.verify("nobody", "p"));
    }
}
