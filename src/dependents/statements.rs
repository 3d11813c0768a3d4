//! The statements that move the dependents inside the swap transaction: some run before
//! the renames (while the names still mean the original), the rest after them (when the
//! same qualified names mean the new table).

use super::{Dependents, Function, Policy, PublicationMember};
use crate::error::Result;
use crate::sql::{ident, ident_list, literal, QualifiedName};
use crate::sqltree;

impl Dependents {
    /// Runs before the renames: what must let go of the original while its name still
    /// means it. `table` is the table's (original) name.
    pub fn before_renames(&self, table: &QualifiedName) -> Vec<String> {
        let mut sql = Vec::new();
        for fk in self.foreign_keys.iter().filter(|fk| !fk.self_reference) {
            sql.push(format!("ALTER TABLE {} DROP CONSTRAINT {}", fk.table.sql(), ident(&fk.name)));
        }
        // A function typed with the row type cannot be replaced in place (its type changes):
        // it is dropped here, by the signature that still means the original's type.
        for f in &self.functions {
            sql.push(format!("DROP ROUTINE {}", f.signature));
        }
        for p in &self.publications {
            sql.push(format!("ALTER PUBLICATION {} DROP TABLE {}", ident(&p.publication), table.sql()));
        }
        for p in &self.partitions {
            sql.extend(p.dependents.before_renames(&p.partition));
        }
        sql
    }

    /// Runs after the renames: `table` now names the new table.
    pub fn after_renames(&self, table: &QualifiedName) -> Result<Vec<String>> {
        let t = table.sql();
        let mut sql = Vec::new();
        if !self.functions.is_empty() {
            // As pg_dump does: a body is checked when it runs, not when it is created again
            // under whatever search_path this session has.
            sql.push("SET LOCAL check_function_bodies = off".to_string());
        }
        for f in &self.functions {
            sql.extend(function(f));
        }
        // Views that read a rebuilt materialized view are pointed at it the same way (by then
        // it carries the original's name); one that reads both is replaced once.
        let mut seen = std::collections::HashSet::new();
        let views = self.views.iter().chain(self.materialized_views.iter().flat_map(|m| &m.views));
        for v in views.filter(|v| seen.insert(&v.name)) {
            let with = if v.options.is_empty() {
                String::new()
            } else {
                let opts: Vec<String> = v
                    .options
                    .iter()
                    .filter_map(|o| o.split_once('='))
                    .map(|(k, val)| format!("{} = {}", ident(k), literal(val)))
                    .collect();
                format!(" WITH ({})", opts.join(", "))
            };
            sql.push(format!("CREATE OR REPLACE VIEW {}{with} AS {}", v.name.sql(), v.definition.trim().trim_end_matches(';')));
        }
        for r in &self.foreign_rules {
            sql.push(sqltree::replace_rule(&r.definition)?);
        }
        for r in &self.rules {
            sql.push(r.definition.trim().trim_end_matches(';').to_string());
            if let Some(state) = enabled_state(&r.enabled) {
                sql.push(format!("ALTER TABLE {t} {state} RULE {}", ident(&r.name)));
            }
            if let Some(c) = &r.comment {
                sql.push(format!("COMMENT ON RULE {} ON {t} IS {}", ident(&r.name), literal(c)));
            }
        }
        for tr in &self.triggers {
            sql.push(tr.definition.clone());
            if let Some(state) = enabled_state(&tr.enabled) {
                sql.push(format!("ALTER TABLE {t} {state} TRIGGER {}", ident(&tr.name)));
            }
            if let Some(c) = &tr.comment {
                sql.push(format!("COMMENT ON TRIGGER {} ON {t} IS {}", ident(&tr.name), literal(c)));
            }
        }
        for p in &self.policies {
            sql.extend(policy(p, table));
        }
        sql.extend(self.security_labels.iter().map(|l| l.sql("TABLE", table)));
        if self.force_row_security {
            sql.push(format!("ALTER TABLE {t} FORCE ROW LEVEL SECURITY"));
        }
        for p in &self.publications {
            sql.push(publication(p, table));
        }
        for fk in &self.foreign_keys {
            sql.extend(super::Validation::add_sql(fk));
        }
        // By then each partition's name means the new partition.
        for p in &self.partitions {
            sql.extend(p.dependents.after_renames(&p.partition)?);
        }
        Ok(sql)
    }
}

/// `ALTER TABLE ... <state> TRIGGER|RULE` for a state other than the default.
fn enabled_state(enabled: &str) -> Option<&'static str> {
    match enabled {
        "D" => Some("DISABLE"),
        "R" => Some("ENABLE REPLICA"),
        "A" => Some("ENABLE ALWAYS"),
        _ => None,
    }
}

fn function(f: &Function) -> Vec<String> {
    let Some(def) = &f.definition else { return Vec::new() };
    let sig = &f.signature;
    let mut sql = vec![def.trim().to_string(), format!("ALTER ROUTINE {sig} OWNER TO {}", ident(&f.owner))];
    if f.explicit_acl {
        // A new routine starts with the default ACL (owner and PUBLIC may execute).
        sql.push(format!("REVOKE ALL ON ROUTINE {sig} FROM PUBLIC"));
        sql.push(format!("REVOKE ALL ON ROUTINE {sig} FROM {}", ident(&f.owner)));
        for g in &f.grants {
            let to = g.grantee.as_deref().map(ident).unwrap_or_else(|| "PUBLIC".to_string());
            let option = if g.grantable { " WITH GRANT OPTION" } else { "" };
            sql.push(format!("GRANT {} ON ROUTINE {sig} TO {to}{option}", g.privilege));
        }
    }
    if let Some(c) = &f.comment {
        sql.push(format!("COMMENT ON ROUTINE {sig} IS {}", literal(c)));
    }
    for (provider, label) in &f.security_labels {
        sql.push(format!("SECURITY LABEL FOR {} ON ROUTINE {sig} IS {}", ident(provider), literal(label)));
    }
    sql
}

fn policy(p: &Policy, table: &QualifiedName) -> Vec<String> {
    let command = match p.command.as_str() {
        "r" => "SELECT",
        "a" => "INSERT",
        "w" => "UPDATE",
        "d" => "DELETE",
        _ => "ALL",
    };
    let kind = if p.permissive { "PERMISSIVE" } else { "RESTRICTIVE" };
    let roles = match &p.roles {
        None => "PUBLIC".to_string(),
        Some(r) => ident_list(r.iter().map(String::as_str)),
    };
    let mut s = format!("CREATE POLICY {} ON {} AS {kind} FOR {command} TO {roles}", ident(&p.name), table.sql());
    if let Some(u) = &p.using {
        s.push_str(&format!(" USING ({u})"));
    }
    if let Some(c) = &p.with_check {
        s.push_str(&format!(" WITH CHECK ({c})"));
    }
    let mut sql = vec![s];
    if let Some(c) = &p.comment {
        sql.push(format!("COMMENT ON POLICY {} ON {} IS {}", ident(&p.name), table.sql(), literal(c)));
    }
    sql
}

fn publication(p: &PublicationMember, table: &QualifiedName) -> String {
    let mut s = format!("ALTER PUBLICATION {} ADD TABLE {}", ident(&p.publication), table.sql());
    if let Some(cols) = &p.columns {
        s.push_str(&format!(" ({})", ident_list(cols.iter().map(String::as_str))));
    }
    if let Some(filter) = &p.row_filter {
        s.push_str(&format!(" WHERE ({filter})"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::super::*;

    fn t() -> QualifiedName {
        QualifiedName::new("public", "orders")
    }

    #[test]
    fn policies_publications_and_states() {
        let d = Dependents {
            policies: vec![Policy {
                name: "own rows".into(),
                permissive: false,
                command: "w".into(),
                roles: Some(vec!["app".into(), "Ops Team".into()]),
                using: Some("(owner = CURRENT_USER)".into()),
                with_check: None,
                comment: Some("it's".into()),
            }],
            publications: vec![PublicationMember {
                publication: "pub".into(),
                owned: true,
                columns: Some(vec!["id".into(), "total".into()]),
                row_filter: Some("(total > 0)".into()),
            }],
            triggers: vec![Trigger { name: "touch".into(), definition: "CREATE TRIGGER touch ...".into(), enabled: "R".into(), comment: None }],
            force_row_security: true,
            ..Dependents::default()
        };
        let sql = d.after_renames(&t()).unwrap();
        assert!(sql.contains(&"CREATE POLICY \"own rows\" ON \"public\".\"orders\" AS RESTRICTIVE FOR UPDATE TO \"app\", \"Ops Team\" USING ((owner = CURRENT_USER))".to_string()), "{sql:#?}");
        assert!(sql.contains(&"COMMENT ON POLICY \"own rows\" ON \"public\".\"orders\" IS 'it''s'".to_string()));
        assert!(sql.contains(&"ALTER PUBLICATION \"pub\" ADD TABLE \"public\".\"orders\" (\"id\", \"total\") WHERE ((total > 0))".to_string()));
        assert!(sql.contains(&"ALTER TABLE \"public\".\"orders\" ENABLE REPLICA TRIGGER \"touch\"".to_string()));
        assert!(sql.contains(&"ALTER TABLE \"public\".\"orders\" FORCE ROW LEVEL SECURITY".to_string()));
        assert_eq!(d.before_renames(&t()), vec!["ALTER PUBLICATION \"pub\" DROP TABLE \"public\".\"orders\"".to_string()]);
    }

    #[test]
    fn a_partitions_own_dependents_move_under_its_name() {
        let part = QualifiedName::new("public", "orders_t1");
        let d = Dependents {
            partitions: vec![PartitionDependents {
                partition: part.clone(),
                dependents: Dependents {
                    triggers: vec![Trigger { name: "t1_touch".into(), definition: "CREATE TRIGGER t1_touch ...".into(), enabled: "D".into(), comment: None }],
                    publications: vec![PublicationMember { publication: "t1_pub".into(), owned: true, columns: None, row_filter: None }],
                    force_row_security: true,
                    ..Dependents::default()
                },
            }],
            ..Dependents::default()
        };
        assert_eq!(d.before_renames(&t()), vec!["ALTER PUBLICATION \"t1_pub\" DROP TABLE \"public\".\"orders_t1\"".to_string()]);
        assert_eq!(
            d.after_renames(&t()).unwrap(),
            vec![
                "CREATE TRIGGER t1_touch ...".to_string(),
                "ALTER TABLE \"public\".\"orders_t1\" DISABLE TRIGGER \"t1_touch\"".to_string(),
                "ALTER TABLE \"public\".\"orders_t1\" FORCE ROW LEVEL SECURITY".to_string(),
                "ALTER PUBLICATION \"t1_pub\" ADD TABLE \"public\".\"orders_t1\"".to_string(),
            ]
        );
        assert_eq!(d.count(), 2);
    }

    #[test]
    fn foreign_keys_move_not_valid_and_are_validated_after() {
        let fk = |name: &str, table: &str, self_reference: bool, validated: bool| ForeignKey {
            name: name.into(),
            table: QualifiedName::new("public", table),
            partitioned: false,
            leaves: Vec::new(),
            definition: "FOREIGN KEY (order_id) REFERENCES public.orders(id) ON UPDATE CASCADE".into(),
            comment: None,
            self_reference,
            owned: true,
            validated,
            columns: vec!["order_id".into()],
            referenced_columns: vec!["id".into()],
        };
        let d = Dependents {
            foreign_keys: vec![fk("items_fk", "items", false, true), fk("parent_fk", "orders", true, true), fk("old_fk", "notes", false, false)],
            ..Dependents::default()
        };
        let before = d.before_renames(&t());
        assert_eq!(before.len(), 2, "the self-reference stays on the old table: {before:#?}");
        let after = d.after_renames(&t()).unwrap();
        assert!(after[0].ends_with("ON UPDATE CASCADE NOT VALID"), "{after:#?}");
        assert!(!after[2].ends_with("NOT VALID NOT VALID") && after[2].ends_with("ON UPDATE CASCADE"), "{after:#?}");
        let v: Vec<String> = d.validations().iter().map(Validation::sql).collect();
        assert_eq!(v.len(), 2);
        assert_eq!(d.referencing_tables(), vec![QualifiedName::new("public", "items"), QualifiedName::new("public", "notes")]);
    }

    #[test]
    fn a_partitioned_tables_key_moves_through_its_partitions() {
        let leaf = |name: &str| (QualifiedName::new("public", name), "events_order".to_string());
        let d = Dependents {
            foreign_keys: vec![ForeignKey {
                name: "events_order".into(),
                table: QualifiedName::new("public", "events"),
                partitioned: true,
                leaves: vec![leaf("events_2025"), leaf("events_2026")],
                definition: "FOREIGN KEY (order_id) REFERENCES public.orders(id) ON DELETE CASCADE".into(),
                comment: Some("by order".into()),
                self_reference: false,
                owned: true,
                validated: true,
                columns: vec!["order_id".into()],
                referenced_columns: vec!["id".into()],
            }],
            ..Dependents::default()
        };
        assert_eq!(d.before_renames(&t()), vec!["ALTER TABLE \"public\".\"events\" DROP CONSTRAINT \"events_order\"".to_string()]);
        assert_eq!(
            d.after_renames(&t()).unwrap(),
            vec![
                "ALTER TABLE \"public\".\"events_2025\" ADD CONSTRAINT \"events_order\" FOREIGN KEY (order_id) REFERENCES public.orders(id) ON DELETE CASCADE NOT VALID".to_string(),
                "ALTER TABLE \"public\".\"events_2026\" ADD CONSTRAINT \"events_order\" FOREIGN KEY (order_id) REFERENCES public.orders(id) ON DELETE CASCADE NOT VALID".to_string(),
            ]
        );
        let v = d.validations();
        let p = v[0].partitioned.as_ref().expect("partitioned");
        assert_eq!(p.leaves.iter().map(Validation::sql).collect::<Vec<_>>(), vec![
            "ALTER TABLE \"public\".\"events_2025\" VALIDATE CONSTRAINT \"events_order\"".to_string(),
            "ALTER TABLE \"public\".\"events_2026\" VALIDATE CONSTRAINT \"events_order\"".to_string(),
        ]);
    }
}
