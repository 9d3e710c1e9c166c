//! The ACL roles of a secure setup (`admin`, `app`, `readonly`, `metrics`,
//! and an internal `replication` user) rendered as a Redis ACL file.

use std::fmt::Write as _;
use std::path::Path;

use rand::RngCore as _;
use sha2::{Digest as _, Sha256};

use crate::config::Credentials;
use crate::error::{ClusterError, Result};

/// Default application key prefix.
pub const DEFAULT_KEY_PREFIX: &str = "app:";

/// One role of the generated ACL file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Every command, every key and channel (operators, `strata` CLI, cluster creation).
    Admin,
    /// The application: read-write on its key prefix, no dangerous or admin commands.
    App,
    /// Reads on the application's keys only.
    Readonly,
    /// INFO, CLUSTER INFO/NODES/SLOTS, LATENCY, SLOWLOG, PING; no keys.
    Metrics,
    /// Replicas towards their master (PSYNC, REPLCONF, PING only).
    Replication,
}

impl Role {
    /// Every role, in file order.
    pub const ALL: [Role; 5] = [Role::Admin, Role::App, Role::Readonly, Role::Metrics, Role::Replication];

    /// The ACL user name.
    pub fn user(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::App => "app",
            Role::Readonly => "readonly",
            Role::Metrics => "metrics",
            Role::Replication => "replication",
        }
    }
}

/// Commands no role but `admin` gets, whatever their category says: they
/// replace or remove server-side code every client relies on.
const CODE_CHANGES: &str = "-script|flush -script|kill -function";

/// Passwords for every role and the application key prefix. `Debug` never
/// prints the passwords.
#[derive(Clone)]
pub struct AclRoles {
    prefix: String,
    passwords: [String; 5],
}

impl std::fmt::Debug for AclRoles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AclRoles").field("prefix", &self.prefix).field("passwords", &"<redacted>").finish()
    }
}

impl AclRoles {
    /// Random passwords (32 bytes from the OS-seeded CSPRNG, hex) for every role.
    pub fn generate(prefix: &str) -> Result<AclRoles> {
        let passwords = Role::ALL.map(|_| random_secret());
        AclRoles::with_passwords(prefix, passwords)
    }

    /// Roles with given passwords, in [`Role::ALL`] order.
    pub fn with_passwords(prefix: &str, passwords: [String; 5]) -> Result<AclRoles> {
        let bad = prefix.is_empty()
            || prefix.chars().any(|c| c.is_whitespace() || c.is_control() || "*?[]\\{}\"'".contains(c));
        if bad {
            return Err(ClusterError::invalid(format!(
                "key prefix {prefix:?} must be non-empty, without whitespace, quotes, braces or glob characters"
            )));
        }
        Ok(AclRoles { prefix: prefix.to_string(), passwords })
    }

    /// The application key prefix (e.g. `app:`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The password of `role`.
    pub fn password(&self, role: Role) -> &str {
        &self.passwords[role as usize]
    }

    /// User name and password of `role`.
    pub fn credentials(&self, role: Role) -> Credentials {
        Credentials { user: Some(role.user().to_string()), password: self.password(role).to_string() }
    }

    /// The key patterns of the application: its keys, the lease and stamp keys
    /// Strata derives from them (`{KEY}:lease`, `{NAMESPACE}:stamp`,
    /// `{APP:tag:NAME}:stamp`), and write-behind streams named after the prefix
    /// (`{wb:PREFIX...:N}:s` and siblings).
    pub fn key_patterns(&self) -> String {
        let p = &self.prefix;
        format!("~{p}* ~{{{p}* ~{{wb:{p}*")
    }

    /// The ACL rule of each role (without the `user NAME on #hash` head).
    pub fn rules(&self, role: Role) -> String {
        let keys = self.key_patterns();
        match role {
            Role::Admin => "~* &* +@all".into(),
            // Pub/sub is not needed: invalidations arrive as RESP3 pushes on the tracking
            // connection, not on a channel. CLIENT TRACKING / CACHING / SETNAME / ID, HELLO, READONLY,
            // CLUSTER SLOTS / NODES / SHARDS, EVAL / EVALSHA / SCRIPT LOAD, WAIT and the
            // stream commands are in categories other than @dangerous and @admin.
            Role::App => format!("resetkeys {keys} resetchannels +@all -@dangerous -@admin -@pubsub {CODE_CHANGES}"),
            Role::Readonly => format!(
                "resetkeys {keys} resetchannels -@all +@read +@connection -@dangerous +cluster|slots +cluster|nodes \
                 +cluster|shards +cluster|info +readonly"
            ),
            Role::Metrics => {
                "resetkeys resetchannels -@all +@connection -@dangerous +info +cluster|info +cluster|nodes \
                              +cluster|slots +cluster|shards +latency -latency|reset +slowlog -slowlog|reset +ping"
                    .into()
            }
            Role::Replication => "resetkeys resetchannels -@all +psync +replconf +ping".into(),
        }
    }

    /// The ACL file: every role with a SHA-256 password hash (the file holds no
    /// plaintext secret) and the `default` user switched off.
    pub fn render_acl_file(&self) -> String {
        let mut out = String::new();
        out.push_str("user default off resetkeys resetchannels -@all\n");
        for role in Role::ALL {
            let hash = hex(&Sha256::digest(self.password(role).as_bytes()));
            let _ = writeln!(out, "user {} on #{hash} {}", role.user(), self.rules(role));
        }
        out
    }

    /// Write the ACL file (0600).
    pub fn write_acl_file(&self, path: &Path) -> Result<()> {
        crate::tls::write_private(path, self.render_acl_file().as_bytes())
    }
}

/// A fresh 32-byte secret, hex encoded.
pub fn random_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex(&bytes)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_hashes_passwords_and_disables_default() -> Result<()> {
        let roles = AclRoles::generate("shop:")?;
        let file = roles.render_acl_file();
        assert!(file.starts_with("user default off"));
        for role in Role::ALL {
            assert!(!file.contains(roles.password(role)), "{role:?} password in clear");
            assert_eq!(roles.password(role).len(), 64);
            assert!(file.contains(&format!("user {} on #", role.user())));
        }
        assert!(file.contains("~shop:* ~{shop:* ~{wb:shop:*"));
        assert_ne!(roles.password(Role::App), roles.password(Role::Admin));
        Ok(())
    }

    #[test]
    fn prefix_is_checked() {
        assert!(AclRoles::generate("a*").is_err());
        assert!(AclRoles::generate("").is_err());
        assert!(AclRoles::generate("a b").is_err());
    }
}
