//! The password file (`~/.pgpass`, or `PGPASSFILE`, or `passfile=`), read as libpq reads it.
//!
//! Consulted only when no password was given. Each line is
//! `hostname:port:database:username:password`; `#` starts a comment line; `*` as a whole
//! field matches anything; `\:` and `\\` stand for `:` and `\`. The first matching line wins.
//! A Unix socket in the default directory matches `localhost`; one elsewhere matches its
//! directory. On Unix a file that group or others may read or write is ignored, with
//! libpq's warning, as is anything but a plain file; a missing file is no password.

use super::Endpoint;
use std::collections::HashSet;
use std::path::Path;
use std::sync::Mutex;

/// Where libpq looks for sockets by default on Debian and its derivatives.
pub const DEFAULT_SOCKET_DIR: &str = "/var/run/postgresql";

/// What a line is matched against.
#[derive(Clone, Copy, Debug)]
pub struct Lookup<'a> {
    pub endpoint: &'a Endpoint,
    pub dbname: &'a str,
    pub user: &'a str,
}

impl Lookup<'_> {
    fn host(&self) -> String {
        match self.endpoint {
            Endpoint::Tcp { host, .. } => host.clone(),
            Endpoint::Unix { dir, .. } if dir == Path::new(DEFAULT_SOCKET_DIR) => "localhost".to_string(),
            Endpoint::Unix { dir, .. } => dir.display().to_string(),
        }
    }

    fn port(&self) -> String {
        match self.endpoint {
            Endpoint::Tcp { port, .. } | Endpoint::Unix { port, .. } => port.to_string(),
        }
    }
}

/// The password `path` holds for `lookup`, if the file may be used and a line matches.
pub fn password(path: &Path, lookup: Lookup<'_>) -> Option<Vec<u8>> {
    let text = read(path)?;
    find(&text, lookup)
}

/// The file's text, or `None` (with libpq's warning where it would warn).
fn read(path: &Path) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_file() {
        warn_once(path, "is not a plain file");
        return None;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o077 != 0 {
            warn_once(path, "has group or world access; permissions should be u=rw (0600) or less");
            return None;
        }
    }
    match std::fs::read(path) {
        Ok(bytes) => Some(String::from_utf8_lossy(&bytes).into_owned()),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the password file");
            None
        }
    }
}

/// The file is read again for each host and replica: say what is wrong with it once.
fn warn_once(path: &Path, what: &str) {
    static WARNED: Mutex<Option<HashSet<String>>> = Mutex::new(None);
    let key = path.display().to_string();
    let first = match WARNED.lock() {
        Ok(mut set) => set.get_or_insert_with(HashSet::new).insert(key.clone()),
        Err(_) => true,
    };
    if first {
        tracing::warn!("password file \"{key}\" {what}");
    }
}

/// The first line of `text` that matches, its password unescaped.
pub fn find(text: &str, lookup: Lookup<'_>) -> Option<Vec<u8>> {
    let wanted = [lookup.host(), lookup.port(), lookup.dbname.to_string(), lookup.user.to_string()];
    text.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let line = line.trim_end_matches('\r');
        let mut rest = line;
        for want in &wanted {
            let (field, wildcard, after) = field(rest)?;
            if !(wildcard || field == *want) {
                return None;
            }
            rest = after?;
        }
        Some(field(rest)?.0.into_bytes())
    })
}

/// The next field of `line`, unescaped: (text, whether it was a bare `*`, the rest after its
/// `:` or `None` at the end of the line).
fn field(line: &str) -> Option<(String, bool, Option<&str>)> {
    let mut text = String::new();
    let mut chars = line.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => text.extend(chars.next().map(|(_, c)| c)),
            ':' => {
                let wildcard = &line[..i] == "*";
                return Some((text, wildcard, Some(&line[i + 1..])));
            }
            c => text.push(c),
        }
    }
    let wildcard = line == "*";
    Some((text, wildcard, None))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn at(endpoint: &Endpoint) -> Lookup<'_> {
        Lookup { endpoint, dbname: "app", user: "dba" }
    }

    fn tcp(host: &str, port: u16) -> Endpoint {
        Endpoint::Tcp { host: host.into(), port }
    }

    fn pw(text: &str, e: &Endpoint) -> Option<String> {
        find(text, at(e)).map(|p| String::from_utf8(p).unwrap())
    }

    #[test]
    fn first_matching_line_wins_with_wildcards() {
        let text = "# comment\nother:5432:app:dba:no\ndb1:5432:app:dba:first\ndb1:*:*:dba:second\n*:*:*:*:any\n";
        assert_eq!(pw(text, &tcp("db1", 5432)).as_deref(), Some("first"));
        assert_eq!(pw(text, &tcp("db1", 6000)).as_deref(), Some("second"));
        assert_eq!(pw(text, &tcp("db2", 6000)).as_deref(), Some("any"));
        assert_eq!(pw("db1:5432:app:dba\n", &tcp("db1", 5432)), None, "no password field");
        assert_eq!(pw("db1:5432:app\n", &tcp("db1", 5432)), None, "too few fields");
        assert_eq!(pw("db1:5432:other:dba:x\n", &tcp("db1", 5432)), None);
    }

    #[test]
    fn escapes_in_fields_and_password() {
        let text = "db\\:1:5432:a\\\\pp:dba:p\\:a\\\\ss\r\n";
        let e = tcp("db:1", 5432);
        let lookup = Lookup { endpoint: &e, dbname: "a\\pp", user: "dba" };
        assert_eq!(find(text, lookup).as_deref(), Some(&b"p:a\\ss"[..]));
        // A literal star is not a wildcard.
        assert_eq!(pw("\\*:5432:app:dba:x\n", &tcp("db1", 5432)), None);
        assert_eq!(pw("\\*:5432:app:dba:x\n", &tcp("*", 5432)).as_deref(), Some("x"));
        // The password ends at an unescaped colon.
        assert_eq!(pw("*:*:*:*:ab:cd\n", &tcp("h", 1)).as_deref(), Some("ab"));
    }

    #[test]
    fn sockets_in_the_default_directory_match_localhost() {
        let text = "localhost:5432:*:*:local\n/tmp/s:5432:*:*:elsewhere\n";
        let default = Endpoint::Unix { dir: PathBuf::from(DEFAULT_SOCKET_DIR), port: 5432 };
        assert_eq!(pw(text, &default).as_deref(), Some("local"));
        assert_eq!(pw(text, &Endpoint::Unix { dir: "/tmp/s".into(), port: 5432 }).as_deref(), Some("elsewhere"));
        assert_eq!(pw(text, &tcp("localhost", 5432)).as_deref(), Some("local"));
    }

    #[cfg(unix)]
    #[test]
    fn a_file_others_can_read_is_ignored() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pgpass");
        std::fs::write(&path, "*:*:*:*:secret\n").unwrap();
        let e = tcp("h", 5432);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(password(&path, at(&e)).as_deref(), Some(&b"secret"[..]));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert_eq!(password(&path, at(&e)), None);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o604)).unwrap();
        assert_eq!(password(&path, at(&e)), None);
        assert_eq!(password(dir.path(), at(&e)), None, "a directory is not a password file");
        assert_eq!(password(&dir.path().join("missing"), at(&e)), None);
    }
}
