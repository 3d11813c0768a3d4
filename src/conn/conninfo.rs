//! The syntax of a libpq connection string, in both of libpq's forms, without I/O:
//!
//! - `key=value` pairs separated by white space; spaces around `=` are allowed; a value may
//!   be single-quoted (`password='a b'`); a backslash takes the next character literally,
//!   quoted or not (`\'`, `\\`).
//! - `postgresql://` or `postgres://` URIs:
//!   `postgresql://[user[:password]@][host][:port][,host[:port]...][/dbname][?key=value&...]`,
//!   percent-decoded part by part; an IPv6 host in brackets; `ssl=true` in the query means
//!   `sslmode=require`, as in libpq.
//!
//! Every key must be one of libpq's keywords. Errors never repeat the string or a value
//! taken from it: either may hold the password.

use super::keywords;
use crate::error::{Error, Result};

/// The pairs of `text`, in order; a later pair overrides an earlier one with the same key.
pub fn parse(text: &str) -> Result<Vec<(String, String)>> {
    let pairs = match uri_body(text) {
        Some(body) => parse_uri(body)?,
        None => parse_pairs(text)?,
    };
    for (key, _) in &pairs {
        keywords::known(key)?;
    }
    Ok(pairs)
}

fn uri_body(text: &str) -> Option<&str> {
    text.strip_prefix("postgresql://").or_else(|| text.strip_prefix("postgres://"))
}

fn parse_pairs(text: &str) -> Result<Vec<(String, String)>> {
    let mut pairs = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(pairs);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| !c.is_whitespace() && *c != '=') {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(Error::config(format!("missing \"=\" after {key:?} in the connection string")));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    None => {
                        return Err(Error::config(format!(
                            "unterminated quoted string in the connection string (the value of {key:?})"
                        )))
                    }
                    Some('\'') => break,
                    Some('\\') => value.extend(chars.next()),
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        pairs.push((key, value));
    }
}

fn parse_uri(body: &str) -> Result<Vec<(String, String)>> {
    let mut pairs = Vec::new();
    // The user part ends at an '@' that comes before any '/'.
    let mut rest = body;
    let auth_end = body.find(['@', '/']);
    if let Some(at) = auth_end.filter(|i| body.as_bytes()[*i] == b'@') {
        let (user, password) = match body[..at].split_once(':') {
            Some((u, p)) => (u, Some(p)),
            None => (&body[..at], None),
        };
        if !user.is_empty() {
            pairs.push(("user".to_string(), decode(user, "the user name")?));
        }
        if let Some(p) = password.filter(|p| !p.is_empty()) {
            pairs.push(("password".to_string(), decode(p, "the password")?));
        }
        rest = &body[at + 1..];
    }
    let host_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (hosts, ports) = uri_hosts(&rest[..host_end])?;
    if hosts.iter().any(|h| !h.is_empty()) || hosts.len() > 1 {
        pairs.push(("host".to_string(), hosts.join(",")));
    }
    if ports.iter().any(|p| !p.is_empty()) {
        pairs.push(("port".to_string(), ports.join(",")));
    }
    rest = &rest[host_end..];
    if let Some(after) = rest.strip_prefix('/') {
        let db_end = after.find('?').unwrap_or(after.len());
        if db_end > 0 {
            pairs.push(("dbname".to_string(), decode(&after[..db_end], "the database name")?));
        }
        rest = &after[db_end..];
    }
    if let Some(query) = rest.strip_prefix('?') {
        for param in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = param.split_once('=').ok_or_else(|| {
                Error::config(format!("missing key/value separator \"=\" in URI query parameter {param:?}"))
            })?;
            let key = decode(key, "a query parameter's name")?;
            if value.contains('=') {
                return Err(Error::config(format!("extra key/value separator \"=\" in URI query parameter {key:?}")));
            }
            let value = decode(value, &format!("the value of {key:?}"))?;
            // libpq reads the JDBC spelling too.
            let (key, value) = if key == "ssl" && value == "true" { ("sslmode".to_string(), "require".to_string()) } else { (key, value) };
            if keywords::find(&key).is_none() {
                return Err(Error::config(format!("invalid URI query parameter {key:?}")));
            }
            pairs.push((key, value));
        }
    }
    Ok(pairs)
}

/// `host[:port],...`, each host possibly `[ipv6]`; decoded.
fn uri_hosts(spec: &str) -> Result<(Vec<String>, Vec<String>)> {
    let (mut hosts, mut ports) = (Vec::new(), Vec::new());
    for item in spec.split(',') {
        let (host, port) = if let Some(inner) = item.strip_prefix('[') {
            let close = inner
                .find(']')
                .ok_or_else(|| Error::config("end of string reached when looking for the \"]\" of an IPv6 host address in the URI"))?;
            if close == 0 {
                return Err(Error::config("an IPv6 host address may not be empty in the URI"));
            }
            let after = &inner[close + 1..];
            let port = match after {
                "" => "",
                _ => after.strip_prefix(':').ok_or_else(|| {
                    Error::config(format!("unexpected character after the IPv6 host address {:?} in the URI", &inner[..close]))
                })?,
            };
            (inner[..close].to_string(), port)
        } else {
            match item.split_once(':') {
                Some((h, p)) => (decode(h, "a host name")?, p),
                None => (decode(item, "a host name")?, ""),
            }
        };
        hosts.push(host);
        ports.push(decode(port, "a port")?);
    }
    Ok((hosts, ports))
}

/// Percent-decodes `text`; `what` names the part in an error (never its value).
fn decode(text: &str, what: &str) -> Result<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
            let byte = hex
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| Error::config(format!("invalid percent-encoded token in {what} in the URI")))?;
            if byte == 0 {
                return Err(Error::config(format!("forbidden value %00 in {what} in the URI")));
            }
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| Error::config(format!("{what} in the URI is not UTF-8 once percent-decoded")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(text: &str) -> Vec<(String, String)> {
        parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn p(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn key_value_quoting_and_escapes() {
        assert_eq!(pairs("host=db1  port = 5433\tdbname=app"), p(&[("host", "db1"), ("port", "5433"), ("dbname", "app")]));
        assert_eq!(pairs("password='a b\\'c\\\\d' user=x"), p(&[("password", "a b'c\\d"), ("user", "x")]));
        assert_eq!(pairs("password=a\\ b user="), p(&[("password", "a b"), ("user", "")]));
        assert_eq!(pairs("dbname=''"), p(&[("dbname", "")]));
        assert_eq!(pairs("  "), p(&[]));
        assert_eq!(pairs("application_name='my app'"), p(&[("application_name", "my app")]));
    }

    #[test]
    fn key_value_errors_do_not_repeat_values() {
        let e = parse("password='s3cret").unwrap_err().to_string();
        assert!(e.contains("unterminated quoted string") && !e.contains("s3cret"), "{e}");
        let e = parse("host").unwrap_err().to_string();
        assert!(e.contains("missing \"=\" after \"host\""), "{e}");
        let e = parse("host=a colour=blue").unwrap_err().to_string();
        assert!(e.contains("invalid connection option \"colour\""), "{e}");
    }

    #[test]
    fn uris() {
        assert_eq!(
            pairs("postgresql://u:p%40ss@db1:5433/app?sslmode=verify-full&application_name=x%20y"),
            p(&[("user", "u"), ("password", "p@ss"), ("host", "db1"), ("port", "5433"), ("dbname", "app"), ("sslmode", "verify-full"), ("application_name", "x y")])
        );
        assert_eq!(pairs("postgres://"), p(&[]));
        assert_eq!(pairs("postgresql:///app"), p(&[("dbname", "app")]));
        assert_eq!(pairs("postgresql://%2Fvar%2Frun%2Fpostgresql/app"), p(&[("host", "/var/run/postgresql"), ("dbname", "app")]));
        assert_eq!(pairs("postgresql://[::1]:6000/db"), p(&[("host", "::1"), ("port", "6000"), ("dbname", "db")]));
        assert_eq!(pairs("postgresql://a:1,b:2/db"), p(&[("host", "a,b"), ("port", "1,2"), ("dbname", "db")]));
        assert_eq!(pairs("postgresql://a:1,[::1]/db"), p(&[("host", "a,::1"), ("port", "1,"), ("dbname", "db")]));
        assert_eq!(pairs("postgresql://u@h?ssl=true"), p(&[("user", "u"), ("host", "h"), ("sslmode", "require")]));
        assert_eq!(pairs("postgresql://h/db?host=other"), p(&[("host", "h"), ("dbname", "db"), ("host", "other")]));
    }

    #[test]
    fn uri_errors() {
        let e = parse("postgresql://u:p%zz@h/db").unwrap_err().to_string();
        assert!(e.contains("invalid percent-encoded token in the password"), "{e}");
        assert!(parse("postgresql://h/d%00b").unwrap_err().to_string().contains("%00"));
        assert!(parse("postgresql://[::1/db").unwrap_err().to_string().contains("IPv6"));
        assert!(parse("postgresql://h/db?colour=blue").unwrap_err().to_string().contains("invalid URI query parameter \"colour\""));
        assert!(parse("postgresql://h/db?sslmode").unwrap_err().to_string().contains("missing key/value separator"));
    }
}
