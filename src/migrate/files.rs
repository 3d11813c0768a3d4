//! The migration files of a directory: `V<version>__<description>.sql`, ordered by version
//! numerically (`V2` before `V10`; a version may have parts, `V1.2` or `V1_2`), each with
//! its phase (a first-line header `-- pg-ghost: phase=expand|migrate|contract`) and the
//! SHA-256 of its bytes. Pure, but for reading the directory.

use crate::error::{Context, Error, Result};
use sha2::{Digest, Sha256};
use std::cmp::Ordering;
use std::fmt;
use std::path::{Path, PathBuf};

/// The phases of the expand → code → contract practice, in the order they are meant to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Expand,
    Migrate,
    Contract,
}

impl Phase {
    pub fn parse(text: &str) -> Option<Phase> {
        match text.trim().to_ascii_lowercase().as_str() {
            "expand" => Some(Phase::Expand),
            "migrate" => Some(Phase::Migrate),
            "contract" => Some(Phase::Contract),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Expand => "expand",
            Phase::Migrate => "migrate",
            Phase::Contract => "contract",
        }
    }
}

/// A version: its numeric parts, compared part by part (`1.2` < `1.10` < `2`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Version(pub Vec<u64>);

impl Version {
    pub fn parse(text: &str) -> Option<Version> {
        let parts: Option<Vec<u64>> = text.split(['.', '_']).map(|p| (!p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())).then(|| p.parse().ok()).flatten()).collect();
        parts.filter(|p| !p.is_empty()).map(Version)
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        // Missing parts count as 0, so `1` and `1.0` compare equal (and are refused as twins).
        let n = self.0.len().max(other.0.len());
        (0..n).map(|i| self.0.get(i).unwrap_or(&0).cmp(other.0.get(i).unwrap_or(&0))).find(|o| o.is_ne()).unwrap_or(Ordering::Equal)
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(u64::to_string).collect();
        f.write_str(&parts.join("."))
    }
}

/// One migration file, read.
#[derive(Clone, Debug)]
pub struct MigrationFile {
    pub version: Version,
    /// From the name, underscores as spaces.
    pub description: String,
    pub path: PathBuf,
    /// None: no header (the file runs whatever `--phase` says).
    pub phase: Option<Phase>,
    pub text: String,
    /// SHA-256 of the file's bytes, lower-case hex.
    pub checksum: String,
}

impl MigrationFile {
    pub fn name(&self) -> String {
        self.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    }
}

/// `V<version>__<description>.sql` → (version, description); None for any other name.
pub fn parse_name(name: &str) -> Option<(Version, String)> {
    let stem = name.strip_prefix('V')?.strip_suffix(".sql")?;
    let (version, description) = stem.split_once("__")?;
    Some((Version::parse(version)?, description.replace('_', " ").trim().to_string()))
}

/// The phase named by the first line, when it is a `-- pg-ghost: phase=...` header.
pub fn parse_header(text: &str) -> Result<Option<Phase>> {
    let first = text.lines().next().unwrap_or("");
    let Some(directive) = directive(first) else { return Ok(None) };
    let Some(value) = directive.strip_prefix("phase=").or_else(|| directive.strip_prefix("phase =")) else { return Ok(None) };
    Phase::parse(value).map(Some).ok_or_else(|| Error::config(format!("unknown phase {:?} in the header: give expand, migrate or contract", value.trim())))
}

/// The text after `-- pg-ghost:` on a comment line, trimmed.
pub fn directive(line: &str) -> Option<&str> {
    let rest = line.trim().strip_prefix("--")?.trim_start();
    rest.strip_prefix("pg-ghost:").map(str::trim)
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Every migration file of `dir`, by version. Other files are ignored (a `.sql` file that
/// starts with `V` but does not follow the pattern is refused: it is a typo, not a README).
pub fn discover(dir: &Path) -> Result<Vec<MigrationFile>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::config(format!("--dir {}: {e}", dir.display())))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::config(format!("--dir {}: {e}", dir.display())))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".sql") || !entry.path().is_file() {
            continue;
        }
        let Some((version, description)) = parse_name(&name) else {
            if name.starts_with('V') {
                return Err(Error::config(format!("{name}: a migration file is named V<version>__<description>.sql (e.g. V3__add_region.sql)")));
            }
            continue;
        };
        let bytes = std::fs::read(entry.path()).with_context(|| format!("reading {name}"))?;
        let text = String::from_utf8(bytes.clone()).map_err(|_| Error::config(format!("{name} is not UTF-8")))?;
        let phase = parse_header(&text).map_err(|e| e.context(name.clone()))?;
        files.push(MigrationFile { version, description, path: entry.path(), phase, text, checksum: sha256_hex(&bytes) });
    }
    files.sort_by(|a, b| a.version.cmp(&b.version));
    if let Some(w) = files.windows(2).find(|w| w[0].version == w[1].version) {
        return Err(Error::config(format!("{} and {} have the same version", w[0].name(), w[1].name())));
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_order_numerically() {
        let mut v: Vec<Version> = ["10", "2", "1.10", "1.2", "1_3"].iter().map(|t| Version::parse(t).unwrap()).collect();
        v.sort();
        let shown: Vec<String> = v.iter().map(Version::to_string).collect();
        assert_eq!(shown, ["1.2", "1.3", "1.10", "2", "10"]);
        assert_eq!(Version::parse("1.0"), Some(Version(vec![1, 0])));
        assert_eq!(Version::parse("1.0").unwrap().cmp(&Version::parse("1").unwrap()), Ordering::Equal);
        assert_eq!(Version::parse("1a"), None);
        assert_eq!(Version::parse(""), None);
    }

    #[test]
    fn names() {
        assert_eq!(parse_name("V3__add_region.sql"), Some((Version(vec![3]), "add region".into())));
        assert_eq!(parse_name("V1.2__x.sql"), Some((Version(vec![1, 2]), "x".into())));
        assert_eq!(parse_name("V3_add.sql"), None);
        assert_eq!(parse_name("README.md"), None);
    }

    #[test]
    fn headers() {
        assert_eq!(parse_header("-- pg-ghost: phase=contract\nALTER TABLE t DROP COLUMN c;").unwrap(), Some(Phase::Contract));
        assert_eq!(parse_header("--pg-ghost: phase=Expand").unwrap(), Some(Phase::Expand));
        assert_eq!(parse_header("ALTER TABLE t ADD c int;").unwrap(), None);
        assert_eq!(parse_header("-- a comment\n-- pg-ghost: phase=expand").unwrap(), None);
        assert!(parse_header("-- pg-ghost: phase=later").is_err());
        assert!(Phase::Expand < Phase::Migrate && Phase::Migrate < Phase::Contract);
    }

    #[test]
    fn checksum_is_sha256_hex() {
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
