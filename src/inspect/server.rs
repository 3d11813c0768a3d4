//! Facts about the server and the connected role, read in one query.

use super::get;
use crate::error::{Context, Error, Result};
use tokio_postgres::Client;

/// PostgreSQL 14, the oldest release pg-ghost supports: the cut-over sentinel travels as a
/// logical message, which pgoutput carries (`messages 'true'`) from 14 on, and large
/// transactions are streamed with protocol version 2, also new in 14.
pub const MIN_SERVER_VERSION_NUM: i32 = 140000;

/// What preflight learned about the server; returned once every check passed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerInfo {
    /// e.g. `150004`.
    pub server_version_num: i32,
    /// e.g. `15.4 (Debian 15.4-1)`.
    pub server_version: String,
    pub wal_level: String,
    pub in_recovery: bool,
    pub max_replication_slots: i64,
    /// Slots of every database count against `max_replication_slots`.
    pub used_replication_slots: i64,
    pub max_wal_senders: i64,
    pub used_wal_senders: i64,
    pub current_user: String,
    pub is_superuser: bool,
    /// The role's REPLICATION attribute.
    pub has_replication: bool,
}

impl ServerInfo {
    pub async fn read(client: &Client) -> Result<ServerInfo> {
        let row = client
            .query_one(
                "SELECT current_setting('server_version_num')::int AS version_num,
                        current_setting('server_version') AS version,
                        current_setting('wal_level') AS wal_level,
                        pg_is_in_recovery() AS in_recovery,
                        current_setting('max_replication_slots')::int8 AS max_slots,
                        (SELECT count(*) FROM pg_replication_slots) AS used_slots,
                        current_setting('max_wal_senders')::int8 AS max_senders,
                        (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'walsender') AS used_senders,
                        r.rolname::text AS role, r.rolsuper, r.rolreplication
                   FROM pg_roles r
                  WHERE r.rolname = current_user",
                &[],
            )
            .await
            .context("reading server settings")?;
        Ok(ServerInfo {
            server_version_num: get(&row, "version_num")?,
            server_version: get(&row, "version")?,
            wal_level: get(&row, "wal_level")?,
            in_recovery: get(&row, "in_recovery")?,
            max_replication_slots: get(&row, "max_slots")?,
            used_replication_slots: get(&row, "used_slots")?,
            max_wal_senders: get(&row, "max_senders")?,
            used_wal_senders: get(&row, "used_senders")?,
            current_user: get(&row, "role")?,
            is_superuser: get(&row, "rolsuper")?,
            has_replication: get(&row, "rolreplication")?,
        })
    }
}

/// Check 1: the server is new enough. Also run first by `table_info`, whose catalog queries
/// would otherwise fail on an old server with a confusing "column does not exist".
pub(super) fn check_version(version_num: i32, version: &str) -> Result<()> {
    if version_num < MIN_SERVER_VERSION_NUM {
        return Err(Error::refused(format!(
            "the server runs PostgreSQL {version} (server_version_num {version_num}); pg-ghost needs PostgreSQL 14 or later"
        )));
    }
    Ok(())
}

/// Reads just the version, for `table_info`.
pub(super) async fn require_supported_version(client: &Client) -> Result<i32> {
    let row = client
        .query_one(
            "SELECT current_setting('server_version_num')::int AS version_num, current_setting('server_version') AS version",
            &[],
        )
        .await
        .context("reading the server version")?;
    let num: i32 = get(&row, "version_num")?;
    let version: String = get(&row, "version")?;
    check_version(num, &version)?;
    Ok(num)
}

/// Check 2: a primary, which takes writes (both ways).
pub(super) fn check_primary(s: &ServerInfo) -> Result<()> {
    if s.in_recovery {
        return Err(Error::refused("the server is a standby (in recovery): connect pg-ghost to the primary"));
    }
    Ok(())
}

/// Checks 2 to 5: a primary, logical WAL, room for one more slot and one more walsender.
pub(super) fn check_replication(s: &ServerInfo) -> Result<()> {
    check_primary(s)?;
    if s.wal_level != "logical" {
        return Err(Error::refused(format!(
            "wal_level is {:?}, but pg-ghost streams changes through logical decoding, which needs wal_level = logical: \
             set it in postgresql.conf (ALTER SYSTEM SET wal_level = logical) and restart the server",
            s.wal_level
        )));
    }
    if s.used_replication_slots >= s.max_replication_slots {
        return Err(Error::refused(format!(
            "no free replication slot: {} of max_replication_slots = {} are in use (see pg_replication_slots); \
             drop an unused slot or raise max_replication_slots (needs a restart)",
            s.used_replication_slots, s.max_replication_slots
        )));
    }
    if s.used_wal_senders >= s.max_wal_senders {
        return Err(Error::refused(format!(
            "no free walsender: {} of max_wal_senders = {} are running (see pg_stat_replication); \
             raise max_wal_senders (needs a restart)",
            s.used_wal_senders, s.max_wal_senders
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    fn server() -> ServerInfo {
        ServerInfo {
            server_version_num: 150004,
            server_version: "15.4".into(),
            wal_level: "logical".into(),
            in_recovery: false,
            max_replication_slots: 10,
            used_replication_slots: 9,
            max_wal_senders: 10,
            used_wal_senders: 0,
            current_user: "ghost".into(),
            is_superuser: true,
            has_replication: true,
        }
    }

    #[test]
    fn refuses_old_servers() {
        assert!(check_version(140000, "14.0").is_ok());
        let e = check_version(130015, "13.15").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Refused);
        assert!(e.message().contains("13.15"), "{e}");
    }

    #[test]
    fn replication_checks() {
        assert!(check_replication(&server()).is_ok());
        let e = check_replication(&ServerInfo { wal_level: "replica".into(), ..server() }).unwrap_err();
        assert!(e.message().contains("wal_level is \"replica\""), "{e}");
        let e = check_replication(&ServerInfo { used_replication_slots: 10, ..server() }).unwrap_err();
        assert!(e.message().contains("10 of max_replication_slots = 10"), "{e}");
        let e = check_replication(&ServerInfo { used_wal_senders: 10, ..server() }).unwrap_err();
        assert!(e.message().contains("max_wal_senders"), "{e}");
        let e = check_replication(&ServerInfo { in_recovery: true, ..server() }).unwrap_err();
        assert!(e.message().contains("standby"), "{e}");
    }
}
