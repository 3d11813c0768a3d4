//! Converting a plain table into a partitioned one (`--partition-by` with `--partitions FILE`
//! or `--partitions-auto`): what the flags say, read through PostgreSQL's parser.
//!
//! The ghost is created `PARTITION BY` the given key, and its partitions from the DBA's
//! `CREATE TABLE ... PARTITION OF <table> ...` statements, each retargeted through the parse
//! tree: the parent becomes the ghost, the partition's name its temporary name
//! (`_<name>_gho`), which the swap turns into the name written in the statement. An
//! unqualified partition name is in the table's schema.
//!
//! Invariants: the partition key is a list of columns (an expression key leaves no primary
//! key possible, and the copy and apply need one); each statement creates one partition of
//! the table being converted, one level deep, permanent; nothing here talks to the server.

use crate::error::{Error, Result};
use crate::sql::{fit_ident, ident, literal, QualifiedName};
use pg_query::protobuf::{self, node::Node as N, PartitionStrategy};

/// A conversion as the flags give it, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conversion {
    /// `RANGE ("created_at")`: the strategy and the quoted key columns.
    pub partition_by: String,
    /// The partition key's columns, as named on the original.
    pub columns: Vec<String>,
    pub partitions: Vec<PartitionStatement>,
}

/// One `CREATE TABLE ... PARTITION OF` statement of the DBA's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionStatement {
    /// The schema written in the statement, if any (else the table's).
    pub schema: Option<String>,
    pub name: String,
    /// The parent as written: (schema, name); it must resolve to the table being converted.
    pub parent: (Option<String>, String),
    pub is_default: bool,
    /// The statement, as PostgreSQL's parser reads it (deparsed).
    pub sql: String,
}

impl PartitionStatement {
    /// The name the partition has after the swap.
    pub fn final_name(&self, table: &QualifiedName) -> QualifiedName {
        QualifiedName::new(self.schema.clone().unwrap_or_else(|| table.schema.clone()), self.name.clone())
    }

    /// The parent as written, as SQL text (for `to_regclass`).
    pub fn parent_sql(&self) -> String {
        match &self.parent.0 {
            Some(s) => format!("{}.{}", ident(s), ident(&self.parent.1)),
            None => ident(&self.parent.1),
        }
    }

    /// The statement that creates this partition on `ghost` under its temporary name.
    pub fn ghost_sql(&self, table: &QualifiedName, ghost: &QualifiedName) -> Result<String> {
        self.sql_as(&self.temp_name(table), ghost)
    }

    /// The statement, retargeted through its parse tree: the partition named `name`, made
    /// `PARTITION OF parent`, with the statement's bound and options.
    pub fn sql_as(&self, name: &QualifiedName, parent: &QualifiedName) -> Result<String> {
        let (temp, ghost) = (name, parent);
        let mut tree = parse(&self.sql)?;
        let stmt = match tree.stmts.as_mut_slice() {
            [one] => match one.stmt.as_mut().and_then(|s| s.node.as_mut()) {
                Some(N::CreateStmt(c)) => c,
                _ => return Err(Error::internal(format!("not a CREATE TABLE statement: {:?}", self.sql))),
            },
            _ => return Err(Error::internal(format!("not one statement: {:?}", self.sql))),
        };
        let rel = stmt.relation.get_or_insert_with(Default::default);
        rel.schemaname = temp.schema.clone();
        rel.relname = temp.name.clone();
        match stmt.inh_relations.as_mut_slice() {
            [parent] => match parent.node.as_mut() {
                Some(N::RangeVar(p)) => {
                    p.schemaname = ghost.schema.clone();
                    p.relname = ghost.name.clone();
                }
                _ => return Err(Error::internal(format!("the parent of {:?} is not a table name", self.sql))),
            },
            _ => return Err(Error::internal(format!("{:?} has not one parent", self.sql))),
        }
        pg_query::deparse(&tree, Default::default()).map_err(|e| Error::internal(format!("cannot deparse a partition statement: {e}")))
    }

    /// The name the partition has on the ghost until the swap.
    pub fn temp_name(&self, table: &QualifiedName) -> QualifiedName {
        let f = self.final_name(table);
        f.sibling(super::temp_name(&f.name))
    }
}

fn parse(sql: &str) -> Result<protobuf::ParseResult> {
    pg_query::parse(sql, pg_query::ParserOptions::DEFAULT)
        .map(|r| r.protobuf)
        .map_err(|e| Error::config(format!("not valid SQL: {}", e.to_string().trim_start_matches("Error parsing query: "))))
}

/// Reads `--partition-by` (`RANGE (created_at)`, `LIST (region)`, `HASH (id)`): returns the
/// clause to create the ghost with and the key's columns.
pub fn partition_by(spec: &str) -> Result<(String, Vec<String>)> {
    let spec = spec.trim();
    if spec.is_empty() {
        return Err(Error::config("--partition-by is empty: give the partition key, e.g. \"RANGE (created_at)\""));
    }
    let tree = parse(&format!("CREATE TABLE pg_ghost_t (x int) PARTITION BY {spec}"))
        .map_err(|e| Error::config(format!("--partition-by {spec:?}: {}", e.message())))?;
    let create = match tree.stmts.as_slice() {
        [one] => match one.stmt.as_ref().and_then(|s| s.node.as_ref()) {
            Some(N::CreateStmt(c)) => Some(c),
            _ => None,
        },
        _ => None,
    };
    let Some(c) = create.filter(|c| c.options.is_empty() && c.tablespacename.is_empty() && c.access_method.is_empty() && c.constraints.is_empty()) else {
        return Err(Error::config(format!("--partition-by {spec:?} must be the partition key alone, e.g. \"RANGE (created_at)\"")));
    };
    let Some(ps) = &c.partspec else { return Err(Error::internal("the parser lost PARTITION BY")) };
    let strategy = match PartitionStrategy::try_from(ps.strategy) {
        Ok(PartitionStrategy::Range) => "RANGE",
        Ok(PartitionStrategy::List) => "LIST",
        Ok(PartitionStrategy::Hash) => "HASH",
        _ => return Err(Error::config(format!("--partition-by {spec:?}: unknown strategy"))),
    };
    let mut columns = Vec::new();
    for p in &ps.part_params {
        match p.node.as_ref() {
            Some(N::PartitionElem(e)) if !e.name.is_empty() && e.expr.is_none() && e.collation.is_empty() && e.opclass.is_empty() => {
                columns.push(e.name.clone())
            }
            _ => {
                return Err(Error::config(format!(
                    "--partition-by {spec:?}: the partition key must be plain columns (no expression, COLLATE or operator class): \
                     PostgreSQL allows no primary key on a table partitioned by an expression, and pg-ghost copies by a key"
                )))
            }
        }
    }
    let clause = format!("{strategy} ({})", columns.iter().map(|c| ident(c)).collect::<Vec<_>>().join(", "));
    Ok((clause, columns))
}

/// Reads the `--partitions` file: `CREATE TABLE <name> PARTITION OF <table> <bound>`
/// statements, one partition each.
pub fn read_partitions(text: &str) -> Result<Vec<PartitionStatement>> {
    let tree = parse(text).map_err(|e| Error::config(format!("--partitions: {}", e.message())))?;
    let mut out: Vec<PartitionStatement> = Vec::new();
    for (i, raw) in tree.stmts.iter().enumerate() {
        let n = i + 1;
        let refuse = |why: &str| Error::config(format!("--partitions: statement {n} {why}"));
        let Some(N::CreateStmt(c)) = raw.stmt.as_ref().and_then(|s| s.node.as_ref()) else {
            return Err(refuse("is not a CREATE TABLE ... PARTITION OF statement"));
        };
        let (Some(bound), [parent]) = (&c.partbound, c.inh_relations.as_slice()) else {
            return Err(refuse("is not a CREATE TABLE ... PARTITION OF statement"));
        };
        let Some(N::RangeVar(parent)) = parent.node.as_ref() else { return Err(refuse("names no parent table")) };
        let Some(rel) = &c.relation else { return Err(refuse("names no table")) };
        if rel.relpersistence != "p" {
            return Err(refuse("creates a temporary or unlogged partition, whose changes are not in the WAL"));
        }
        if c.partspec.is_some() {
            return Err(refuse("creates a partition that is itself partitioned; pg-ghost converts to one level of partitions"));
        }
        if c.if_not_exists {
            return Err(refuse("says IF NOT EXISTS; the partitions are new tables, and a name already taken is refused"));
        }
        if !rel.catalogname.is_empty() || !parent.catalogname.is_empty() {
            return Err(refuse("names a database"));
        }
        let one = protobuf::ParseResult { version: tree.version, stmts: vec![protobuf::RawStmt { stmt: raw.stmt.clone(), stmt_location: 0, stmt_len: 0 }] };
        let sql = pg_query::deparse(&one, Default::default()).map_err(|e| Error::internal(format!("cannot deparse a partition statement: {e}")))?;
        let schema = (!rel.schemaname.is_empty()).then(|| rel.schemaname.clone());
        let p = PartitionStatement {
            schema,
            name: rel.relname.clone(),
            parent: ((!parent.schemaname.is_empty()).then(|| parent.schemaname.clone()), parent.relname.clone()),
            is_default: bound.is_default,
            sql,
        };
        if out.iter().any(|o| o.name == p.name && o.schema == p.schema) {
            return Err(Error::config(format!("--partitions: partition {} is created twice", ident(&p.name))));
        }
        if p.is_default && out.iter().any(|o| o.is_default) {
            return Err(Error::config("--partitions: more than one DEFAULT partition"));
        }
        out.push(p);
    }
    if out.is_empty() {
        return Err(Error::config("--partitions: the file has no CREATE TABLE ... PARTITION OF statement"));
    }
    Ok(out)
}

/// The steps of `--partitions-auto`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Daily,
    Monthly,
    Yearly,
}

/// A calendar date (proleptic Gregorian), enough for partition bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Date {
    y: i32,
    m: u32,
    d: u32,
}

fn days_in_month(y: i32, m: u32) -> u32 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

impl Date {
    fn next(self, step: Step) -> Date {
        match step {
            Step::Yearly => Date { y: self.y + 1, ..self },
            Step::Monthly if self.m == 12 => Date { y: self.y + 1, m: 1, d: 1 },
            Step::Monthly => Date { m: self.m + 1, ..self },
            Step::Daily if self.d < days_in_month(self.y, self.m) => Date { d: self.d + 1, ..self },
            Step::Daily => Date { d: 1, ..self }.next(Step::Monthly),
        }
    }

    fn suffix(self, step: Step) -> String {
        match step {
            Step::Yearly => format!("{:04}", self.y),
            Step::Monthly => format!("{:04}_{:02}", self.y, self.m),
            Step::Daily => format!("{:04}_{:02}_{:02}", self.y, self.m, self.d),
        }
    }

    fn iso(self) -> String {
        format!("{:04}-{:02}-{:02}", self.y, self.m, self.d)
    }

    /// `2024`, `2024-03` or `2024-03-15`, as the step asks.
    fn parse(s: &str, step: Step) -> Option<Date> {
        let parts: Vec<&str> = s.split('-').collect();
        let num = |p: &str, len: usize| (p.len() == len && p.bytes().all(|b| b.is_ascii_digit())).then(|| p.parse::<u32>().ok()).flatten();
        let (y, m, d) = match (step, parts.as_slice()) {
            (Step::Yearly, [y]) => (num(y, 4)?, 1, 1),
            (Step::Monthly, [y, m]) => (num(y, 4)?, num(m, 2)?, 1),
            (Step::Daily, [y, m, d]) => (num(y, 4)?, num(m, 2)?, num(d, 2)?),
            _ => return None,
        };
        let y = i32::try_from(y).ok()?;
        ((1..=12).contains(&m) && d >= 1 && d <= days_in_month(y, m)).then_some(Date { y, m, d })
    }
}

/// The most partitions `--partitions-auto` makes: more is more likely a mistake in the range.
pub const MAX_AUTO_PARTITIONS: usize = 5000;

/// Writes the statements of `--partitions-auto "<daily|monthly|yearly> from START to END[, default]"`
/// for `table` (as given to `--table`) partitioned `RANGE` on one column: one partition per
/// step from START (included) to END (excluded), named `<table>_pYYYY`, `<table>_pYYYY_MM` or
/// `<table>_pYYYY_MM_DD`, and with `default` a `<table>_default` partition.
pub fn auto_partitions(spec: &str, table: &str, partition_by: &str, columns: &[String]) -> Result<String> {
    let refuse = |why: String| Error::config(format!("--partitions-auto {spec:?}: {why}"));
    if !partition_by.starts_with("RANGE ") || columns.len() != 1 {
        return Err(refuse("needs --partition-by \"RANGE (column)\" on one column".into()));
    }
    let (range, default) = match spec.split_once(',') {
        Some((range, rest)) if rest.trim().eq_ignore_ascii_case("default") => (range, true),
        Some(_) => return Err(refuse("only `default` may follow the comma".into())),
        None => (spec, false),
    };
    let words: Vec<&str> = range.split_whitespace().collect();
    let [step, from_kw, start, to_kw, end] = words.as_slice() else {
        return Err(refuse("must read `<daily|monthly|yearly> from START to END[, default]`".into()));
    };
    let step = match step.to_ascii_lowercase().as_str() {
        "daily" => Step::Daily,
        "monthly" => Step::Monthly,
        "yearly" => Step::Yearly,
        other => return Err(refuse(format!("unknown step {other:?} (daily, monthly or yearly)"))),
    };
    if !from_kw.eq_ignore_ascii_case("from") || !to_kw.eq_ignore_ascii_case("to") {
        return Err(refuse("must read `<daily|monthly|yearly> from START to END[, default]`".into()));
    }
    let form = match step {
        Step::Daily => "YYYY-MM-DD",
        Step::Monthly => "YYYY-MM",
        Step::Yearly => "YYYY",
    };
    let start = Date::parse(start, step).ok_or_else(|| refuse(format!("START {start:?} is not a date of the form {form}")))?;
    let end = Date::parse(end, step).ok_or_else(|| refuse(format!("END {end:?} is not a date of the form {form}")))?;
    if end <= start {
        return Err(refuse("END must come after START (END is excluded)".into()));
    }
    let parent = parse_table(table)?;
    let mut statements = Vec::new();
    let mut at = start;
    while at < end {
        if statements.len() == MAX_AUTO_PARTITIONS {
            return Err(refuse(format!("makes more than {MAX_AUTO_PARTITIONS} partitions")));
        }
        let next = at.next(step);
        let name = fit_ident(&format!("{}_p{}", parent.1, at.suffix(step)));
        statements.push(format!(
            "CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({});",
            ident(&name),
            parent_sql(&parent),
            literal(&at.iso()),
            literal(&next.iso())
        ));
        at = next;
    }
    if default {
        statements.push(format!("CREATE TABLE {} PARTITION OF {} DEFAULT;", ident(&fit_ident(&format!("{}_default", parent.1))), parent_sql(&parent)));
    }
    Ok(statements.join("\n"))
}

fn parent_sql(parent: &(Option<String>, String)) -> String {
    match &parent.0 {
        Some(s) => format!("{}.{}", ident(s), ident(&parent.1)),
        None => ident(&parent.1),
    }
}

/// `--table`'s `[schema.]name`, read by the parser.
fn parse_table(table: &str) -> Result<(Option<String>, String)> {
    let tree = parse(&format!("SELECT FROM {table}")).map_err(|e| Error::config(format!("--table {table:?}: {}", e.message())))?;
    let from = match tree.stmts.as_slice() {
        [one] => match one.stmt.as_ref().and_then(|s| s.node.as_ref()) {
            Some(N::SelectStmt(s)) => match s.from_clause.as_slice() {
                [f] => match f.node.as_ref() {
                    Some(N::RangeVar(r)) if r.alias.is_none() && r.catalogname.is_empty() => Some(r),
                    _ => None,
                },
                _ => None,
            },
            _ => None,
        },
        _ => None,
    };
    let r = from.ok_or_else(|| Error::config(format!("--table {table:?} is not a table name")))?;
    Ok(((!r.schemaname.is_empty()).then(|| r.schemaname.clone()), r.relname.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_by_is_read_by_the_parser() {
        assert_eq!(partition_by("range (created_at)").unwrap(), ("RANGE (\"created_at\")".to_string(), vec!["created_at".to_string()]));
        assert_eq!(partition_by("LIST (\"Region\", b)").unwrap().0, "LIST (\"Region\", \"b\")");
        assert!(partition_by("RANGE ((lower(x)))").is_err());
        assert!(partition_by("RANGE (a) WITH (fillfactor = 50)").is_err());
        assert!(partition_by("RANGE (a); DROP TABLE t").is_err());
        assert!(partition_by("").is_err());
    }

    #[test]
    fn partition_statements_are_read_and_retargeted() {
        let text = "CREATE TABLE t_2024 PARTITION OF public.t FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');\n\
                    create table other.t_rest partition of t default";
        let ps = read_partitions(text).unwrap();
        assert_eq!(ps.len(), 2);
        assert_eq!(ps[0].parent, (Some("public".to_string()), "t".to_string()));
        assert!(!ps[0].is_default && ps[1].is_default);
        let table = QualifiedName::new("public", "t");
        assert_eq!(ps[0].final_name(&table), QualifiedName::new("public", "t_2024"));
        assert_eq!(ps[1].final_name(&table), QualifiedName::new("other", "t_rest"));
        let ghost = QualifiedName::new("public", "_t_gho");
        let sql = ps[0].ghost_sql(&table, &ghost).unwrap();
        assert_eq!(sql, "CREATE TABLE public._t_2024_gho PARTITION OF public._t_gho FOR VALUES FROM ('2024-01-01') TO ('2025-01-01')");
        assert_eq!(ps[1].ghost_sql(&table, &ghost).unwrap(), "CREATE TABLE other._t_rest_gho PARTITION OF public._t_gho DEFAULT");
    }

    #[test]
    fn partition_statements_that_cannot_be_converted_are_refused() {
        for bad in [
            "CREATE TABLE x (a int)",
            "SELECT 1",
            "CREATE TEMP TABLE x PARTITION OF t DEFAULT",
            "CREATE TABLE x PARTITION OF t DEFAULT PARTITION BY LIST (a)",
            "CREATE TABLE IF NOT EXISTS x PARTITION OF t DEFAULT",
            "CREATE TABLE x PARTITION OF t DEFAULT; CREATE TABLE x PARTITION OF t FOR VALUES IN (1)",
            "CREATE TABLE x PARTITION OF t DEFAULT; CREATE TABLE y PARTITION OF t DEFAULT",
            "",
            "CREATE TABLE x PARTITION OF",
        ] {
            assert!(read_partitions(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn auto_partitions_cover_the_range_and_name_each_step() {
        let (by, cols) = partition_by("RANGE (created_at)").unwrap();
        let text = auto_partitions("monthly from 2023-11 to 2024-02, default", "public.orders", &by, &cols).unwrap();
        assert_eq!(
            text,
            "CREATE TABLE \"orders_p2023_11\" PARTITION OF \"public\".\"orders\" FOR VALUES FROM ('2023-11-01') TO ('2023-12-01');\n\
             CREATE TABLE \"orders_p2023_12\" PARTITION OF \"public\".\"orders\" FOR VALUES FROM ('2023-12-01') TO ('2024-01-01');\n\
             CREATE TABLE \"orders_p2024_01\" PARTITION OF \"public\".\"orders\" FOR VALUES FROM ('2024-01-01') TO ('2024-02-01');\n\
             CREATE TABLE \"orders_default\" PARTITION OF \"public\".\"orders\" DEFAULT;"
        );
        let ps = read_partitions(&text).unwrap();
        assert_eq!(ps.len(), 4);
        let daily = auto_partitions("DAILY FROM 2024-02-28 TO 2024-03-02", "t", &by, &cols).unwrap();
        assert!(daily.contains("\"t_p2024_02_29\" PARTITION OF \"t\" FOR VALUES FROM ('2024-02-29') TO ('2024-03-01')"), "{daily}");
        assert_eq!(read_partitions(&daily).unwrap().len(), 3);
        let yearly = auto_partitions("yearly from 2022 to 2024", "\"Odd\"", &by, &cols).unwrap();
        assert!(yearly.starts_with("CREATE TABLE \"Odd_p2022\" PARTITION OF \"Odd\" FOR VALUES FROM ('2022-01-01') TO ('2023-01-01');"), "{yearly}");
        for bad in ["monthly from 2024-01 to 2024-01", "monthly from 2024-13 to 2025-01", "weekly from 2024-01 to 2024-02", "monthly 2024-01 2024-02", "monthly from 2024-01 to 2024-03, other", "daily from 2023-02-29 to 2023-03-01"] {
            assert!(auto_partitions(bad, "t", &by, &cols).is_err(), "{bad}");
        }
        let (list, lcols) = partition_by("LIST (region)").unwrap();
        assert!(auto_partitions("monthly from 2024-01 to 2024-02", "t", &list, &lcols).is_err());
    }
}
