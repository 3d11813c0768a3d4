//! Connection services (`service=name` or `PGSERVICE`), looked up as libpq looks them up.
//!
//! The files, in order, the first that defines the service winning:
//! 1. `servicefile=` in the connection string, else `PGSERVICEFILE`, else
//!    `~/.pg_service.conf`;
//! 2. `pg_service.conf` in `PGSYSCONFDIR`, else in [`DEFAULT_SYSCONFDIR`] (where Debian's
//!    libpq looks; `pg_config --sysconfdir` tells another build's).
//!
//! A file is INI-like: `[name]` opens a service, `key=value` lines (no spaces around `=`)
//! follow, `#` starts a comment line. A file that does not exist is skipped; a service
//! found nowhere is an error naming the service and the files searched.

use super::keywords;
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

pub const DEFAULT_SYSCONFDIR: &str = "/etc/postgresql-common";

/// The service's settings, in file order, and the file they came from.
pub fn lookup(
    name: &str,
    servicefile: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(Vec<(String, String)>, PathBuf)> {
    let user_file = match servicefile.map(str::to_string).or_else(|| env("PGSERVICEFILE")) {
        Some(f) if !f.is_empty() => Some(PathBuf::from(f)),
        _ => env("HOME").filter(|h| !h.is_empty()).map(|h| Path::new(&h).join(".pg_service.conf")),
    };
    let sysconfdir = env("PGSYSCONFDIR").filter(|d| !d.is_empty()).unwrap_or_else(|| DEFAULT_SYSCONFDIR.to_string());
    let files: Vec<PathBuf> = user_file.into_iter().chain([Path::new(&sysconfdir).join("pg_service.conf")]).collect();
    for file in &files {
        let text = match std::fs::read(file) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(Error::with_source(
                    crate::error::ErrorKind::Config,
                    format!("cannot read the service file \"{}\": {e}", file.display()),
                    e,
                ))
            }
        };
        if let Some(pairs) = find(&text, name, file)? {
            return Ok((pairs, file.clone()));
        }
    }
    let searched: Vec<String> = files.iter().map(|f| format!("\"{}\"", f.display())).collect();
    Err(Error::config(format!("definition of service \"{name}\" not found (searched {})", searched.join(", "))))
}

/// The settings of service `name` in `text`, or `None` if the file does not define it.
pub fn find(text: &str, name: &str, file: &Path) -> Result<Option<Vec<(String, String)>>> {
    let mut found: Option<Vec<(String, String)>> = None;
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(group) = line.strip_prefix('[') {
            if found.is_some() {
                break;
            }
            if group.strip_suffix(']') == Some(name) {
                found = Some(Vec::new());
            }
            continue;
        }
        let Some(pairs) = found.as_mut() else { continue };
        let syntax = || Error::config(format!("syntax error in service file \"{}\", line {}", file.display(), n + 1));
        let (key, value) = line.split_once('=').ok_or_else(syntax)?;
        if key == "service" || key == "servicefile" {
            return Err(Error::config(format!(
                "nested service specifications not supported in service file \"{}\", line {}",
                file.display(),
                n + 1
            )));
        }
        keywords::find(key).ok_or_else(syntax)?;
        pairs.push((key.to_string(), value.to_string()));
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "# services\n[other]\nhost=elsewhere\n\n[app]\nhost=db1\nport=5433\n  dbname=app db\nhost=ignored\n[later]\nuser=x\n";

    #[test]
    fn the_named_group_only() {
        let pairs = find(FILE, "app", Path::new("f")).unwrap().unwrap();
        let want: Vec<(String, String)> =
            [("host", "db1"), ("port", "5433"), ("dbname", "app db"), ("host", "ignored")].iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        assert_eq!(pairs, want);
        assert_eq!(find(FILE, "missing", Path::new("f")).unwrap(), None);
        assert_eq!(find(FILE, "ap", Path::new("f")).unwrap(), None);
    }

    #[test]
    fn bad_lines_are_errors_naming_file_and_line() {
        let e = find("[a]\nhost db1\n", "a", Path::new("/x/s.conf")).unwrap_err().to_string();
        assert!(e.contains("syntax error in service file \"/x/s.conf\", line 2"), "{e}");
        let e = find("[a]\ncolour=blue\n", "a", Path::new("f")).unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
        let e = find("[a]\nservice=b\n", "a", Path::new("f")).unwrap_err().to_string();
        assert!(e.contains("nested service"), "{e}");
        // Errors in other services do not matter.
        assert!(find("[b]\nnonsense\n[a]\nhost=h\n", "a", Path::new("f")).unwrap().is_some());
    }

    #[test]
    fn user_file_first_then_sysconfdir() {
        let dir = tempfile::tempdir().unwrap();
        let user = dir.path().join("mine.conf");
        std::fs::write(&user, "[a]\nhost=mine\n").unwrap();
        std::fs::write(dir.path().join("pg_service.conf"), "[a]\nhost=system\n[b]\nhost=sys-b\n").unwrap();
        let (d, u) = (dir.path().display().to_string(), user.display().to_string());
        let env = |k: &str| match k {
            "PGSERVICEFILE" => Some(u.clone()),
            "PGSYSCONFDIR" => Some(d.clone()),
            _ => None,
        };
        assert_eq!(lookup("a", None, &env).unwrap().0, vec![("host".to_string(), "mine".to_string())]);
        assert_eq!(lookup("b", None, &env).unwrap().0, vec![("host".to_string(), "sys-b".to_string())]);
        let e = lookup("c", None, &env).unwrap_err().to_string();
        assert!(e.contains("definition of service \"c\" not found") && e.contains(&u) && e.contains("pg_service.conf"), "{e}");
        // servicefile= wins over PGSERVICEFILE; a missing file is skipped.
        let missing = dir.path().join("none.conf").display().to_string();
        assert_eq!(lookup("a", Some(&missing), &env).unwrap().0, vec![("host".to_string(), "system".to_string())]);
    }
}
