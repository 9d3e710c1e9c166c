//! `strata config --secure`: the production files of a TLS-only node with the ACL roles of
//! `strata up --secure`, which both come from `strata-cluster` (`AclRoles`, `TlsPems`) so the
//! roles and the TLS settings are written in one place only.
//!
//! Files besides `redis.conf`: `users.acl` (the roles, SHA-256 hashes), `replication.conf`
//! (`masteruser replication`), `credentials` (plaintext passwords, 0600), and the CA, server
//! and client certificates (`*.crt`, 0644) with their keys (`*.key`, 0600). The server
//! certificate names `localhost` and every address of `--bind`; production deployments with
//! their own PKI replace `server.crt` / `server.key` (and `ca.crt`).

use std::fmt::Write as _;

use strata_cluster::{AclRoles, Role, TlsMaterial, TlsPems};

use crate::config::{
    CREDENTIALS, ConfigOptions, GeneratedFile, REDIS_CONF, REPLICATION_CONF, RenderedConfig, Secrets, USERS_ACL,
    render_replication_conf,
};
use crate::config_conf::{comment, directive, render_redis_conf};
use crate::error::{OpsError, Result};

/// The ACL users of a secure configuration, as `credentials` lists them.
pub(crate) fn users() -> [&'static str; 5] {
    Role::ALL.map(Role::user)
}

pub(crate) fn render(options: &ConfigOptions, maxmemory_bytes: u64) -> Result<RenderedConfig> {
    if options.secrets == Secrets::Placeholder {
        return Err(OpsError::invalid(
            "--secure generates real certificates and passwords; it cannot be combined with --placeholder-secrets",
        ));
    }
    // The roles of `strata up --secure` take a prefix with its separator (`shop:`).
    let roles =
        AclRoles::generate(&format!("{}:", options.key_prefix)).map_err(|e| OpsError::invalid(e.to_string()))?;
    let pems = TlsPems::generate(&server_names(&options.bind)).map_err(|e| OpsError::invalid(e.to_string()))?;
    let passwords: Vec<(&'static str, String)> =
        Role::ALL.iter().map(|&r| (r.user(), roles.password(r).to_owned())).collect();
    let mut credentials = String::new();
    for (user, password) in &passwords {
        let _ = writeln!(credentials, "{user} {password}");
    }
    let replication = roles.password(Role::Replication);
    let mut files = vec![
        GeneratedFile {
            name: REDIS_CONF,
            contents: render_redis_conf(options, maxmemory_bytes),
            mode: 0o640,
            secret: false,
        },
        GeneratedFile { name: USERS_ACL, contents: roles.render_acl_file(), mode: 0o600, secret: false },
        GeneratedFile {
            name: REPLICATION_CONF,
            contents: render_replication_conf(options, Role::Replication.user(), replication),
            mode: 0o600,
            secret: true,
        },
        GeneratedFile { name: CREDENTIALS, contents: credentials, mode: 0o600, secret: true },
    ];
    for (name, pem) in pems.files() {
        let key = name.ends_with(".key");
        files.push(GeneratedFile {
            name,
            contents: pem.to_owned(),
            mode: if key { 0o600 } else { 0o644 },
            secret: key,
        });
    }
    Ok(RenderedConfig { workload: options.workload, files, passwords })
}

/// `localhost` and the addresses of `bind` (without the optional-address `-`, and without
/// wildcards, which cannot be certificate names).
fn server_names(bind: &str) -> Vec<String> {
    let mut names = vec!["localhost".to_owned()];
    for addr in bind.split_whitespace().map(|a| a.strip_prefix('-').unwrap_or(a)) {
        if !addr.contains('*') && !names.iter().any(|n| n == addr) {
            names.push(addr.to_owned());
        }
    }
    names
}

/// The TLS directives that replace `port` in `redis.conf`.
pub(crate) fn tls_directives(s: &mut String, o: &ConfigOptions) {
    comment(s, "TLS only (--secure): no plaintext listener (`port 0`); clients, replicas and the cluster bus");
    comment(s, "use TLS with the certificates next to this file. `tls-auth-clients optional`: a client");
    comment(s, "certificate is checked when presented, and the ACL password is required either way.");
    for (name, value) in TlsMaterial::in_dir(&o.conf_dir).config_lines(o.port) {
        directive(s, name, &value);
    }
}

/// The role comments of a secure `redis.conf`.
pub(crate) fn roles_comment(s: &mut String, o: &ConfigOptions) {
    let p = &o.key_prefix;
    comment(s, "Users and passwords live in users.acl (SHA-256 hashes only; plaintext in the `credentials`");
    comment(s, "file next to it, mode 0600). The roles are those of `strata up --secure` (docs/security.md):");
    comment(s, "  default      disabled.");
    comment(s, "  admin        every command, key and channel.");
    comment(s, &format!("  app          keys `{p}:*`, `{{{p}:*` (leases, stamps), `{{wb:{p}:*` (write-behind); no"));
    comment(
        s,
        "               channels; every command but @dangerous, @admin, @pubsub and SCRIPT FLUSH/KILL, FUNCTION.",
    );
    comment(s, "  readonly     @read on the same keys.");
    comment(s, "  metrics      INFO, CLUSTER INFO/NODES/SLOTS/SHARDS, LATENCY, SLOWLOG, PING; no keys.");
    comment(s, "  replication  PSYNC, REPLCONF, PING: replicas log in to their master as this user.");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Workload, render};

    #[test]
    fn secure_files_are_tls_only_with_the_shared_roles() -> Result<()> {
        let options = ConfigOptions { secure: true, cluster: true, ..ConfigOptions::new(Workload::App) };
        let rendered = render(&options)?;
        let conf = rendered.redis_conf();
        for line in
            ["port 0\n", "tls-port 6379\n", "tls-replication yes\n", "tls-cluster yes\n", "tls-auth-clients optional\n"]
        {
            assert!(conf.contains(line), "{line:?} missing");
        }
        assert!(
            conf.contains("tls-cert-file \"/etc/redis/server.crt\"")
                || conf.contains("tls-cert-file /etc/redis/server.crt"),
            "{conf}"
        );
        let acl = rendered.users_acl();
        assert!(acl.starts_with("user default off"));
        assert!(acl.contains("~app:* ~{app:* ~{wb:app:*"), "{acl}");
        assert!(rendered.file(REPLICATION_CONF).is_some_and(|r| r.contains("masteruser replication")));
        for user in users() {
            let password = rendered.password(user).ok_or_else(|| OpsError::invalid(user))?;
            assert!(!acl.contains(password) && !conf.contains(password), "{user} password in a public file");
        }
        for file in rendered.files() {
            let expected =
                if file.name.ends_with(".key") || file.secret || file.name == USERS_ACL { 0o600 } else { file.mode };
            assert_eq!(file.mode, expected, "{}", file.name);
        }
        assert!(rendered.file("server.key").is_some_and(|k| k.contains("PRIVATE KEY")));
        let placeholder = ConfigOptions { secrets: Secrets::Placeholder, ..options };
        assert!(render(&placeholder).is_err());
        Ok(())
    }

    #[test]
    fn certificate_names_come_from_bind() {
        assert_eq!(server_names("127.0.0.1 -::1"), ["localhost", "127.0.0.1", "::1"]);
        assert_eq!(server_names("* 10.0.0.5"), ["localhost", "10.0.0.5"]);
    }
}
