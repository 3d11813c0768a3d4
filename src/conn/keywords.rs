//! libpq's connection keywords, the environment variable behind each, and what pg-ghost
//! does with it.
//!
//! Every keyword libpq knows is listed, so that a string a DBA already uses with psql is
//! read the same way. A keyword pg-ghost does not act on is refused with its reason, unless
//! its value is what pg-ghost does anyway (`gssencmode=disable`, `sslsni=1`): a setting is
//! never dropped silently. A keyword libpq does not know is refused as libpq refuses it.

use crate::error::{Error, Result};

/// What pg-ghost does with a keyword.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Support {
    /// Read and honored.
    Yes,
    /// Accepted only with one of these values (compared case-insensitively): what pg-ghost
    /// does anyway. The text says why the others are refused.
    Only(&'static [&'static str], &'static str),
    /// Refused whatever its value; the text says why.
    No(&'static str),
}

/// One libpq keyword.
#[derive(Clone, Copy, Debug)]
pub struct Keyword {
    pub name: &'static str,
    /// The variable libpq reads when neither the string nor the service sets the keyword.
    pub env: Option<&'static str>,
    pub support: Support,
    /// Its value is a secret: it never appears in a message.
    pub secret: bool,
}

const fn kw(name: &'static str, env: Option<&'static str>, support: Support) -> Keyword {
    Keyword { name, env, support, secret: false }
}

const fn secret(name: &'static str, env: Option<&'static str>, support: Support) -> Keyword {
    Keyword { name, env, support, secret: true }
}

const NO_GSS: &str = "pg-ghost does not speak GSSAPI (Kerberos)";
const OWN_SESSIONS: &str = "pg-ghost sets up its sessions itself";
const KEEPALIVES: &str = "pg-ghost needs TCP keepalives to find a server gone with the network";

/// libpq's keywords (PostgreSQL 17, and 18's where they are harmless to name).
pub const KEYWORDS: &[Keyword] = &[
    kw("service", Some("PGSERVICE"), Support::Yes),
    kw("servicefile", None, Support::Yes),
    kw("user", Some("PGUSER"), Support::Yes),
    secret("password", Some("PGPASSWORD"), Support::Yes),
    kw("passfile", Some("PGPASSFILE"), Support::Yes),
    kw("channel_binding", Some("PGCHANNELBINDING"), Support::Yes),
    kw("connect_timeout", Some("PGCONNECT_TIMEOUT"), Support::Yes),
    kw("dbname", Some("PGDATABASE"), Support::Yes),
    kw("host", Some("PGHOST"), Support::Yes),
    kw("hostaddr", Some("PGHOSTADDR"), Support::No("give the address in host= instead")),
    kw("port", Some("PGPORT"), Support::Yes),
    kw("client_encoding", Some("PGCLIENTENCODING"), Support::Only(&["UTF8", "UTF-8"], "pg-ghost always speaks UTF8")),
    kw(
        "options",
        Some("PGOPTIONS"),
        Support::No(
            "pg-ghost sets its sessions' options itself (row_security=off, its own timeouts) and the replication stream would not see yours; set defaults with ALTER ROLE ... SET instead",
        ),
    ),
    kw("application_name", Some("PGAPPNAME"), Support::Yes),
    kw("fallback_application_name", None, Support::Yes),
    kw("keepalives", None, Support::Only(&["1"], KEEPALIVES)),
    kw("keepalives_idle", None, Support::Yes),
    kw("keepalives_interval", None, Support::Yes),
    kw("keepalives_count", None, Support::Yes),
    kw("tcp_user_timeout", None, Support::Yes),
    kw("sslmode", Some("PGSSLMODE"), Support::Yes),
    kw("sslnegotiation", Some("PGSSLNEGOTIATION"), Support::Only(&["postgres"], "pg-ghost negotiates TLS the standard way")),
    kw("sslcompression", Some("PGSSLCOMPRESSION"), Support::Only(&["0"], "pg-ghost never compresses TLS")),
    kw("sslcert", Some("PGSSLCERT"), Support::Yes),
    kw("sslkey", Some("PGSSLKEY"), Support::Yes),
    kw("sslcertmode", Some("PGSSLCERTMODE"), Support::Only(&["allow"], "pg-ghost sends a client certificate when one is configured")),
    secret("sslpassword", None, Support::No("an encrypted client key is not supported: give sslkey a key without a passphrase")),
    kw("sslrootcert", Some("PGSSLROOTCERT"), Support::Yes),
    kw("sslcrl", Some("PGSSLCRL"), Support::Yes),
    kw("sslcrldir", Some("PGSSLCRLDIR"), Support::No("give the revocation list as one file in sslcrl")),
    kw("sslsni", Some("PGSSLSNI"), Support::Only(&["1"], "pg-ghost always sends the host name (SNI)")),
    kw("ssl_min_protocol_version", Some("PGSSLMINPROTOCOLVERSION"), Support::Only(&["TLSv1.2"], "pg-ghost speaks TLS 1.2 and 1.3")),
    kw("ssl_max_protocol_version", Some("PGSSLMAXPROTOCOLVERSION"), Support::No("pg-ghost speaks TLS 1.2 and 1.3")),
    kw("requirepeer", Some("PGREQUIREPEER"), Support::No("pg-ghost does not check the peer of a Unix socket")),
    kw("require_auth", Some("PGREQUIREAUTH"), Support::No("pg-ghost does not restrict the authentication method")),
    kw("gssencmode", Some("PGGSSENCMODE"), Support::Only(&["disable", "prefer"], NO_GSS)),
    kw("krbsrvname", Some("PGKRBSRVNAME"), Support::No(NO_GSS)),
    kw("gsslib", Some("PGGSSLIB"), Support::No(NO_GSS)),
    kw("gssdelegation", Some("PGGSSDELEGATION"), Support::Only(&["0"], NO_GSS)),
    kw("replication", None, Support::No("pg-ghost opens its replication connections itself")),
    kw(
        "target_session_attrs",
        Some("PGTARGETSESSIONATTRS"),
        Support::Only(&["any", "read-write", "primary"], "pg-ghost writes the table: it must run on the primary"),
    ),
    kw(
        "load_balance_hosts",
        Some("PGLOADBALANCEHOSTS"),
        Support::Only(&["disable"], "pg-ghost tries the hosts in order, and all its sessions go to the one it chose"),
    ),
    kw("min_protocol_version", Some("PGMINPROTOCOLVERSION"), Support::Only(&["3.0"], "pg-ghost speaks protocol 3.0")),
    kw("max_protocol_version", Some("PGMAXPROTOCOLVERSION"), Support::Only(&["3.0"], "pg-ghost speaks protocol 3.0")),
    kw("sslkeylogfile", Some("PGSSLKEYLOGFILE"), Support::No("pg-ghost never writes TLS keys to a file")),
    secret("scram_client_key", None, Support::No(OWN_SESSIONS)),
    secret("scram_server_key", None, Support::No(OWN_SESSIONS)),
    kw("oauth_issuer", None, Support::No("pg-ghost does not authenticate with OAuth")),
    kw("oauth_client_id", None, Support::No("pg-ghost does not authenticate with OAuth")),
    secret("oauth_client_secret", None, Support::No("pg-ghost does not authenticate with OAuth")),
    kw("oauth_scope", None, Support::No("pg-ghost does not authenticate with OAuth")),
];

/// Variables libpq reads that are not keywords: it sends them as session settings.
/// pg-ghost's sessions and its replication stream must agree on them, so they are refused.
pub const SESSION_VARIABLES: &[(&str, &str)] =
    &[("PGDATESTYLE", "DateStyle"), ("PGTZ", "TimeZone"), ("PGGEQO", "geqo")];

pub fn find(name: &str) -> Option<&'static Keyword> {
    KEYWORDS.iter().find(|k| k.name == name)
}

/// The keyword, or libpq's own refusal of a name it does not know.
pub fn known(name: &str) -> Result<&'static Keyword> {
    find(name).ok_or_else(|| Error::config(format!("invalid connection option {name:?}")))
}

/// Refuses `value` for `kw` unless pg-ghost honors it; `from` says where it came from.
/// An empty value means "libpq's default" and is always accepted.
pub fn check(kw: &Keyword, value: &str, from: &str) -> Result<()> {
    if value.is_empty() {
        return Ok(());
    }
    let shown = if kw.secret { kw.name.to_string() } else { format!("{}={value}", kw.name) };
    match kw.support {
        Support::Yes => Ok(()),
        Support::Only(values, _) if values.iter().any(|v| v.eq_ignore_ascii_case(value)) => Ok(()),
        Support::Only(values, why) => Err(Error::config(format!(
            "connection option {shown} ({from}) is not supported: {why}; accepted: {}",
            values.join(", ")
        ))),
        Support::No(why) => Err(Error::config(format!("connection option {shown} ({from}) is not supported: {why}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_every_variable_maps_back() {
        for (i, k) in KEYWORDS.iter().enumerate() {
            assert!(KEYWORDS[i + 1..].iter().all(|o| o.name != k.name), "{} twice", k.name);
        }
        assert!(find("PGHOST").is_none());
        assert_eq!(find("host").and_then(|k| k.env), Some("PGHOST"));
    }

    #[test]
    fn refusals_name_the_key_and_hide_secrets() {
        let e = known("hots").unwrap_err().to_string();
        assert!(e.contains("invalid connection option \"hots\""), "{e}");
        let gss = known("gssencmode").unwrap();
        assert!(check(gss, "disable", "the connection string").is_ok());
        assert!(check(gss, "PREFER", "the connection string").is_ok());
        let e = check(gss, "require", "PGGSSENCMODE").unwrap_err().to_string();
        assert!(e.contains("gssencmode=require (PGGSSENCMODE) is not supported"), "{e}");
        let e = check(known("sslpassword").unwrap(), "hunter2", "the connection string").unwrap_err().to_string();
        assert!(e.contains("sslpassword") && !e.contains("hunter2"), "{e}");
        assert!(check(known("options").unwrap(), "", "x").is_ok(), "an empty value is the default");
    }
}
