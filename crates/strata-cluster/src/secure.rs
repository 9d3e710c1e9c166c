//! The on-disk layout of a secure setup: certificates, the ACL file and one
//! password file per role, all owner-only, in one directory.

use std::fs;
use std::path::{Path, PathBuf};

use crate::acl::{AclRoles, Role};
use crate::error::{ClusterError, Result};
use crate::tls::{TlsMaterial, write_private};

/// Name of the secrets directory inside a `strata up --secure` directory.
pub const SECURE_DIR: &str = "secure";
/// Name of the ACL file inside the secrets directory.
pub const ACL_FILE: &str = "users.acl";

/// Certificates, ACL roles and password files in one owner-only directory.
#[derive(Debug, Clone)]
pub struct SecureFiles {
    /// The directory (mode 0700).
    pub dir: PathBuf,
    /// The certificates.
    pub tls: TlsMaterial,
    /// The roles and their passwords.
    pub roles: AclRoles,
}

impl SecureFiles {
    /// Generate a CA and certificates, random passwords for every role, the ACL file and
    /// `<role>.password` files into `dir` (0700; files 0600).
    pub fn create(dir: &Path, key_prefix: &str) -> Result<SecureFiles> {
        let tls = TlsMaterial::generate(dir)?;
        let roles = AclRoles::generate(key_prefix)?;
        for role in Role::ALL {
            write_private(&Self::password_path(dir, role), format!("{}\n", roles.password(role)).as_bytes())?;
        }
        write_private(&dir.join("key-prefix"), format!("{key_prefix}\n").as_bytes())?;
        roles.write_acl_file(&dir.join(ACL_FILE))?;
        Ok(SecureFiles { dir: dir.to_path_buf(), tls, roles })
    }

    /// Read what [`create`](Self::create) wrote.
    pub fn load(dir: &Path) -> Result<SecureFiles> {
        let read = |p: PathBuf| {
            fs::read_to_string(&p)
                .map(|s| s.lines().next().unwrap_or_default().to_string())
                .map_err(|e| ClusterError::io(format!("reading {}", p.display()), e))
        };
        let prefix = read(dir.join("key-prefix"))?;
        let passwords = Role::ALL.map(|r| read(Self::password_path(dir, r)));
        let [a, b, c, d, e] = passwords;
        let roles = AclRoles::with_passwords(&prefix, [a?, b?, c?, d?, e?])?;
        Ok(SecureFiles { dir: dir.to_path_buf(), tls: TlsMaterial::in_dir(dir), roles })
    }

    /// `<dir>/<role>.password`.
    pub fn password_path(dir: &Path, role: Role) -> PathBuf {
        dir.join(format!("{}.password", role.user()))
    }

    /// The ACL file.
    pub fn acl_path(&self) -> PathBuf {
        self.dir.join(ACL_FILE)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn files_are_private_and_load_back() -> Result<()> {
        let tmp = tempfile::tempdir().map_err(|e| ClusterError::io("tempdir", e))?;
        let dir = tmp.path().join("s");
        let made = SecureFiles::create(&dir, "app:")?;
        let mode = |p: &Path| fs::metadata(p).map(|m| m.permissions().mode() & 0o777).unwrap_or(0);
        assert_eq!(mode(&dir), 0o700);
        for entry in fs::read_dir(&dir).map_err(|e| ClusterError::io("ls", e))? {
            let path = entry.map_err(|e| ClusterError::io("ls", e))?.path();
            assert_eq!(mode(&path), 0o600, "{}", path.display());
        }
        let loaded = SecureFiles::load(&dir)?;
        for role in Role::ALL {
            assert_eq!(loaded.roles.password(role), made.roles.password(role));
        }
        assert_eq!(loaded.roles.prefix(), "app:");
        assert!(loaded.tls.client_certificates().is_ok());
        Ok(())
    }
}
