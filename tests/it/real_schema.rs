//! pg-ghost on a real application's schema that nobody here wrote: DAViCal's (a CalDAV and
//! CardDAV server, GPL-2+), taken at test time from Debian's packages `davical` and
//! `libawl-php` by `scripts/sample-schema.sh` (nothing of it is kept in this repository).
//! It has what real schemas have: 34 tables, a view with INSERT/UPDATE/DELETE rules over two
//! of them, 43 foreign keys (most `ON UPDATE CASCADE ON DELETE CASCADE`, some `SET DEFAULT`,
//! `DEFERRABLE`, `MATCH FULL`, some aimed at a UNIQUE column rather than the key), seven
//! triggers that write other tables, serial and shared sequences, a CHECK calling a function
//! that reads other tables, and some sixty functions.
//!
//! The test loads the schema into a fresh database, generates rows for every table with SQL
//! in foreign-key order, and then changes every table online, one after the other, each
//! under a small concurrent write load on that table (updates, deletes and re-inserts by
//! key). After each table it requires: pg-ghost succeeded; the old table `_<t>_del` drops
//! without CASCADE (nothing points at it any more); and `pg_dump --schema-only` of the whole
//! database equals that of a twin database (restored from a schema-only dump taken before)
//! where the same change ran as a plain `ALTER TABLE`. Tables without any key pg-ghost can
//! use (no primary key, no unique NOT NULL index) must be refused, leaving the database
//! unchanged. Every outcome is printed; the test fails at the end if any table failed.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use tokio::process::Command;
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::binary;
use crate::harness::{Cluster, TestDb, PASSWORD, ROLE};
use crate::oracle::compare::db_message;
use crate::oracle::{assert_no_slots_or_publications, ident, literal, pg_bin, qualified};

/// The change made to every table: a real rewrite (new column, NOT NULL, default) that
/// nothing in the schema depends on.
const ALTER: &str = "ADD COLUMN pg_ghost_probe int NOT NULL DEFAULT 7";

/// Rows for every table, in foreign-key order, with values of the right types that satisfy
/// the constraints (unique names and paths, keys that exist, DAViCal's own privilege
/// function for its bit masks). Run after DAViCal's base data (user 1, roles 1-4, principal
/// types 1-3, relationship types 1-4, attendee e-mail states). The triggers fire as they
/// would in the application. Roughly 300 to 2,400 rows a table.
const GENERATE: &str = r#"
BEGIN;
INSERT INTO supported_locales (locale, locale_name_en, locale_name_locale)
  SELECT 'x-test-' || g, 'Test locale ' || g, 'Locale ' || g FROM generate_series(1, 300) g;

INSERT INTO usr (active, email_ok, joined, updated, last_used, username, password, fullname, email, config_data, date_format_type, locale)
  SELECT g % 7 <> 0, CASE WHEN g % 3 = 0 THEN now() - g * interval '1 hour' END, now() - g * interval '1 day',
         now() - g * interval '1 hour', CASE WHEN g % 2 = 0 THEN now() - g * interval '1 minute' END,
         'user' || g, '**secret' || g, 'User Number ' || g, 'user' || g || '@example.net',
         CASE WHEN g % 5 = 0 THEN repeat('cfg', g % 50) END, (ARRAY['E', 'U', 'I'])[1 + g % 3], 'en'
    FROM generate_series(1, 400) g;

-- Numbered copies of the parents' keys, to pick the i-th parent row.
CREATE TEMP TABLE u AS SELECT user_no, username, row_number() OVER (ORDER BY user_no) - 1 AS i FROM usr;
CREATE TEMP TABLE nu AS SELECT count(*) AS n FROM u;

INSERT INTO usr_setting (user_no, setting_name, setting_value)
  SELECT user_no, s, s || ' of ' || username FROM u, unnest(ARRAY['theme', 'timezone', 'language']) s;

INSERT INTO roles (role_name) SELECT 'Role ' || g FROM generate_series(1, 300) g;
CREATE TEMP TABLE r AS SELECT role_no, row_number() OVER (ORDER BY role_no) - 1 AS i FROM roles;

INSERT INTO role_member (role_no, user_no)
  SELECT r.role_no, u.user_no FROM u JOIN r ON r.i IN (u.i % 4, 4 + u.i % 300)
  ON CONFLICT DO NOTHING;

INSERT INTO session (user_no, session_start, session_end, session_key, session_config)
  SELECT u.user_no, now() - g * interval '1 minute', now() + g * interval '1 minute', md5('key' || g), 'cfg ' || g
    FROM generate_series(1, 1000) g JOIN u ON u.i = (g * 7) % (SELECT n FROM nu);

INSERT INTO tmp_password (user_no, password, valid_until)
  SELECT u.user_no, md5('tmp' || u.i), now() + u.i * interval '1 minute' FROM u WHERE u.i % 2 = 0;

INSERT INTO awl_db_revision (schema_id, schema_major, schema_minor, schema_patch, schema_name, applied_on)
  SELECT 100 + g, 1, g / 100, g % 100, 'generated ' || g, now() - g * interval '1 day' FROM generate_series(1, 300) g;

INSERT INTO timezones (tzid, olson_name, active, last_modified, etag, vtimezone)
  SELECT 'Test/Zone_' || g, 'Olson/Zone_' || g, g % 3 <> 0, now() - g * interval '1 hour', md5('tz' || g),
         'BEGIN:VTIMEZONE' || chr(10) || 'TZID:Test/Zone_' || g || chr(10) || 'END:VTIMEZONE'
    FROM generate_series(1, 300) g;
CREATE TEMP TABLE tz AS SELECT our_tzno, tzid, row_number() OVER (ORDER BY our_tzno) - 1 AS i FROM timezones;

INSERT INTO tz_aliases (our_tzno, tzalias)
  SELECT tz.our_tzno, 'Alias/' || tz.i || '_' || k FROM tz, generate_series(1, 3) k WHERE tz.i < 150;
INSERT INTO tz_localnames (our_tzno, locale, localised_name, preferred)
  SELECT tz.our_tzno, l, 'Zone ' || tz.i || ' (' || l || ')', l = 'en' FROM tz, unnest(ARRAY['en', 'de_DE', 'fr_FR']) l WHERE tz.i < 150;

INSERT INTO collection (user_no, parent_container, dav_name, dav_etag, dav_displayname, is_calendar, created, modified,
                        public_events_only, publicly_readable, default_privileges, is_addressbook, resourcetypes,
                        schedule_transp, timezone, description)
  SELECT u.user_no, '/' || u.username || '/', '/' || u.username || '/' || kind || '/', md5(u.username || kind),
         initcap(kind) || ' of ' || u.username, kind = 'calendar', now() - u.i * interval '1 day', now(),
         false, u.i % 10 = 0, privilege_to_bits(ARRAY['DAV::read']), kind = 'addresses',
         CASE kind WHEN 'calendar' THEN '<DAV::collection/><urn:ietf:params:xml:ns:caldav:calendar/>'
                   ELSE '<DAV::collection/><urn:ietf:params:xml:ns:carddav:addressbook/>' END,
         'opaque', CASE WHEN kind = 'calendar' AND u.i % 4 <> 0 THEN (SELECT tzid FROM tz WHERE tz.i = u.i % 300) END,
         'generated ' || kind
    FROM u, unnest(ARRAY['calendar', 'addresses']) kind;
CREATE TEMP TABLE c AS SELECT collection_id, user_no, dav_name, is_calendar, row_number() OVER (ORDER BY collection_id) - 1 AS i FROM collection;
CREATE TEMP TABLE nc AS SELECT count(*) AS n FROM c;

INSERT INTO caldav_data (user_no, dav_name, dav_etag, created, modified, caldav_data, caldav_type, logged_user, collection_id, weak_etag)
  SELECT c.user_no, c.dav_name || 'item' || k || CASE WHEN c.is_calendar THEN '.ics' ELSE '.vcf' END,
         md5(c.dav_name || k), now() - k * interval '1 hour', now(),
         CASE WHEN c.is_calendar
              THEN 'BEGIN:VCALENDAR' || chr(10) || 'BEGIN:VEVENT' || chr(10) || 'UID:' || c.collection_id || '-' || k || chr(10)
                   || 'SUMMARY:Event ' || k || chr(10) || 'END:VEVENT' || chr(10) || 'END:VCALENDAR'
              ELSE 'BEGIN:VCARD' || chr(10) || 'VERSION:3.0' || chr(10) || 'FN:Contact ' || k || chr(10) || 'END:VCARD' END,
         CASE WHEN c.is_calendar THEN 'VEVENT' ELSE 'VCARD' END,
         c.user_no, c.collection_id, CASE WHEN k % 2 = 0 THEN md5('weak' || c.collection_id || k) END
    FROM c, generate_series(1, 3) k;
CREATE TEMP TABLE d AS
  SELECT dav_id, user_no, dav_name, collection_id, caldav_type, row_number() OVER (PARTITION BY caldav_type ORDER BY dav_id) - 1 AS i
    FROM caldav_data;

INSERT INTO calendar_item (user_no, dav_name, dav_etag, uid, created, last_modified, dtstamp, dtstart, dtstart_orig, dtend, dtend_orig,
                           due, summary, location, description, priority, class, transp, rrule, url, percent_complete, tz_id,
                           status, completed, dav_id, collection_id, first_instance_start, last_instance_end)
  SELECT d.user_no, d.dav_name, md5(d.dav_name), d.dav_id || '@example.net', now() - d.i * interval '1 hour', now(), now(),
         now() + d.i * interval '1 hour', now() + d.i * interval '1 hour', now() + d.i * interval '1 hour' + interval '30 minutes',
         now() + d.i * interval '1 hour' + interval '30 minutes', NULL, 'Event ' || d.i, 'Room ' || d.i % 20, 'Generated event ' || d.i,
         d.i % 10, 'PUBLIC', 'OPAQUE', CASE WHEN d.i % 5 = 0 THEN 'FREQ=WEEKLY;COUNT=' || (d.i % 9 + 1) END,
         NULL, (d.i % 100)::numeric, CASE WHEN d.i % 3 = 0 THEN (SELECT tzid FROM tz WHERE tz.i = d.i % 300) END,
         'CONFIRMED', NULL, d.dav_id, d.collection_id, now() + d.i * interval '1 hour', now() + d.i * interval '1 hour' + interval '30 minutes'
    FROM d WHERE d.caldav_type = 'VEVENT';

INSERT INTO relationship_type (rt_name, rt_togroup, confers, rt_fromgroup)
  SELECT 'Relationship ' || g, g % 2 = 0, (ARRAY['RW', 'R', 'F', 'A'])[1 + g % 4], g % 3 = 0 FROM generate_series(1, 300) g;
CREATE TEMP TABLE rt AS SELECT rt_id, row_number() OVER (ORDER BY rt_id) - 1 AS i FROM relationship_type;

INSERT INTO relationship (from_user, to_user, rt_id, confers)
  SELECT a.user_no, b.user_no, rt.rt_id, privilege_to_bits('DAV::read')
    FROM u a, generate_series(1, 2) k, u b, rt
   WHERE b.i = (a.i + k) % (SELECT n FROM nu) AND rt.i = (a.i * 2 + k) % 304;

INSERT INTO locks (dav_name, opaquelocktoken, type, scope, depth, owner, timeout, start)
  SELECT c.dav_name, 'opaquelocktoken:' || md5('lock' || g), 'write', 'exclusive', g % 2, 'owner ' || g, g * interval '1 second', now()
    FROM generate_series(1, 300) g JOIN c ON c.i = g;

INSERT INTO property (dav_name, property_name, property_value, changed_on, changed_by)
  SELECT c.dav_name, 'http://apple.com/ns/ical/:calendar-color', '#' || left(md5(c.dav_name), 6), now(), c.user_no FROM c;

INSERT INTO freebusy_ticket (ticket_id, user_no, created)
  SELECT md5('fb' || g), u.user_no, now() - g * interval '1 minute' FROM generate_series(1, 300) g JOIN u ON u.i = g;

INSERT INTO principal_type (principal_type_id, principal_type_desc)
  SELECT 3 + g, 'Type ' || g FROM generate_series(1, 300) g;

INSERT INTO principal (type_id, user_no, displayname, default_privileges)
  SELECT 1, u.user_no, 'Principal of ' || u.username, privilege_to_bits(ARRAY['DAV::read', 'caldav:read-free-busy'])
    FROM u WHERE NOT EXISTS (SELECT FROM principal p WHERE p.user_no = u.user_no);
INSERT INTO principal (type_id, user_no, displayname, default_privileges)
  SELECT CASE WHEN g <= 100 THEN 3 ELSE 2 END, NULL, CASE WHEN g <= 100 THEN 'Group ' ELSE 'Resource ' END || g, 0::bit(24)
    FROM generate_series(1, 150) g;
CREATE TEMP TABLE p AS SELECT principal_id, type_id, row_number() OVER (ORDER BY principal_id) - 1 AS i FROM principal;
CREATE TEMP TABLE np AS SELECT count(*) AS n FROM p;

INSERT INTO group_member (group_id, member_id)
  SELECT grp.principal_id, m.principal_id
    FROM (SELECT principal_id, row_number() OVER (ORDER BY principal_id) - 1 AS gi FROM p WHERE type_id = 3) grp,
         generate_series(1, 6) k, p m
   WHERE m.i = (grp.gi * 6 + k) % 400;

INSERT INTO grants (by_principal, by_collection, to_principal, privileges, is_group)
  SELECT a.principal_id, NULL, b.principal_id, privilege_to_bits('DAV::read'), b.type_id = 3
    FROM p a JOIN p b ON b.i = (a.i + 1) % (SELECT n FROM np) WHERE a.i < 500;
INSERT INTO grants (by_principal, by_collection, to_principal, privileges, is_group)
  SELECT NULL, c.collection_id, p.principal_id, privilege_to_bits(ARRAY['DAV::read', 'DAV::write']), p.type_id = 3
    FROM c JOIN p ON p.i = (c.i * 3) % (SELECT n FROM np) WHERE c.i < 500;

INSERT INTO sync_tokens (collection_id, modification_time)
  SELECT c.collection_id, now() - k * interval '1 hour' FROM c, generate_series(1, 2) k WHERE c.i < 300;

INSERT INTO sync_changes (sync_time, collection_id, sync_status, dav_id, dav_name)
  SELECT now() - d.i * interval '1 minute', d.collection_id, CASE WHEN d.i % 10 = 0 THEN 404 ELSE 201 END, d.dav_id, d.dav_name
    FROM d WHERE d.i < 600;

INSERT INTO access_ticket (ticket_id, dav_owner_id, privileges, target_collection_id, target_resource_id, expires)
  SELECT md5('ticket' || g), p.principal_id, privilege_to_bits('DAV::read'), c.collection_id,
         CASE WHEN g % 3 = 0 THEN (SELECT dav_id FROM caldav_data x WHERE x.collection_id = c.collection_id ORDER BY dav_id LIMIT 1) END,
         now() + g * interval '1 day'
    FROM generate_series(1, 300) g JOIN p ON p.i = g JOIN c ON c.i = g;

-- The CHECK (NOT real_path_exists(dav_name)): a binding's path is no user's and no collection's.
INSERT INTO dav_binding (bound_source_id, access_ticket_id, dav_owner_id, parent_container, dav_name, dav_displayname, external_url, type)
  SELECT c.collection_id, CASE WHEN g % 2 = 0 THEN md5('ticket' || g) END, p.principal_id, '/' || u.username || '/',
         '/' || u.username || '/bound' || g || '/', 'Binding ' || g, NULL, 'calendar'
    FROM generate_series(1, 300) g JOIN c ON c.i = (g * 2) % (SELECT n FROM nc) JOIN p ON p.i = g JOIN u ON u.i = g;

INSERT INTO addressbook_resource (dav_id, version, uid, nickname, fn, n, note, org, url, fburl, caladruri, caluri)
  SELECT d.dav_id, '3.0', 'card-' || d.dav_id, 'nick' || d.i, 'Contact ' || d.i, 'Surname ' || d.i || ';Given', NULL,
         'Org ' || d.i % 17, NULL, NULL, NULL, NULL
    FROM d WHERE d.caldav_type = 'VCARD';
INSERT INTO addressbook_address_adr (dav_id, count, type, box_no, unit_no, street_address, locality, region, postcode, country, property)
  SELECT d.dav_id, 1, 'HOME', NULL, NULL, d.i || ' Main Street', 'Town ' || d.i % 50, NULL, lpad((d.i % 99999)::text, 5, '0'), 'NZ',
         'ADR;TYPE=HOME:;;' || d.i || ' Main Street'
    FROM d WHERE d.caldav_type = 'VCARD' AND d.i < 600;
INSERT INTO addressbook_address_tel (dav_id, count, type, tel, property)
  SELECT d.dav_id, 1, 'CELL', '+64 21 ' || lpad(d.i::text, 6, '0'), 'TEL;TYPE=CELL:+64 21 ' || lpad(d.i::text, 6, '0')
    FROM d WHERE d.caldav_type = 'VCARD' AND d.i < 600;
INSERT INTO addressbook_address_email (dav_id, count, type, email, property)
  SELECT d.dav_id, 1, 'INTERNET', 'contact' || d.i || '@example.org', 'EMAIL;TYPE=INTERNET:contact' || d.i || '@example.org'
    FROM d WHERE d.caldav_type = 'VCARD' AND d.i < 600;

INSERT INTO calendar_alarm (dav_id, count, action, trigger, summary, description, next_trigger, component, trigger_state)
  SELECT d.dav_id, 1, 'DISPLAY', '-PT15M', 'Alarm ' || d.i, 'Reminder ' || d.i, now() + d.i * interval '1 hour',
         'BEGIN:VALARM' || chr(10) || 'ACTION:DISPLAY' || chr(10) || 'TRIGGER:-PT15M' || chr(10) || 'END:VALARM', 'N'
    FROM d WHERE d.caldav_type = 'VEVENT';

INSERT INTO calendar_attendee_email_status (email_status_id, description)
  SELECT 100 + g, 'generated status ' || g FROM generate_series(1, 300) g;

INSERT INTO calendar_attendee (dav_id, status, partstat, cn, attendee, role, rsvp, property, attendee_state, weak_etag, email_status, is_remote)
  SELECT d.dav_id, NULL, (ARRAY['NEEDS-ACTION', 'ACCEPTED', 'DECLINED'])[1 + (d.i + k) % 3], 'Attendee ' || k,
         'mailto:attendee' || k || '.' || d.i || '@example.org', 'REQ-PARTICIPANT', k = 1,
         'ATTENDEE;CN=Attendee ' || k || ':mailto:attendee' || k || '.' || d.i || '@example.org', NULL, NULL,
         (ARRAY[1, 2, 3, 4, 11, 12, 13])[1 + (d.i + k) % 7], d.i % 4 = 0
    FROM d, generate_series(1, 2) k WHERE d.caldav_type = 'VEVENT';

DROP TABLE u, nu, r, tz, c, nc, d, rt, p, np;
COMMIT;
ANALYZE;
"#;

/// Runs `scripts/sample-schema.sh` (which fetches the packages once, then reuses them) and
/// returns the path of the schema file it prints.
fn sample_schema() -> PathBuf {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/sample-schema.sh");
    let out = std::process::Command::new("bash").arg(&script).output().expect("cannot run scripts/sample-schema.sh (is bash installed?)");
    assert!(
        out.status.success(),
        "scripts/sample-schema.sh could not provide DAViCal's schema ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(path.is_file(), "scripts/sample-schema.sh printed {path:?}, which is no file");
    path
}

fn pg_command(program: &str, port: u16) -> Command {
    let mut cmd = Command::new(pg_bin(program));
    cmd.arg("-h").arg("127.0.0.1").arg("-p").arg(port.to_string()).arg("-U").arg(ROLE);
    cmd.env("PGPASSWORD", PASSWORD).env_remove("PGDATABASE").env_remove("PGSERVICE").env_remove("PGOPTIONS");
    cmd.kill_on_drop(true);
    cmd
}

async fn run_ok(mut cmd: Command, what: &str) -> String {
    let out = cmd.output().await.unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    assert!(out.status.success(), "{what} failed ({}):\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap_or_else(|e| panic!("{what}: output is not UTF-8: {e}"))
}

/// Runs an SQL file with psql, stopping at the first error.
async fn psql_file(db: &TestDb<'_>, file: &std::path::Path) {
    let mut cmd = pg_command("psql", db.cluster.port);
    cmd.args(["-X", "-q", "-o", "/dev/null", "-v", "ON_ERROR_STOP=1", "-d", &db.name, "-f"]).arg(file);
    cmd.env("PGOPTIONS", "--client-min-messages=warning");
    run_ok(cmd, &format!("psql -f {} into {}", file.display(), db.name)).await;
}

/// Where two dumps differ, briefly: the lines between their common start and common end,
/// as `- expected` and `+ actual` for lines only one side has there. Empty when equal.
fn dump_diff(expected: &str, actual: &str) -> Vec<String> {
    if expected == actual {
        return Vec::new();
    }
    let (a, b): (Vec<&str>, Vec<&str>) = (expected.lines().collect(), actual.lines().collect());
    let prefix = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let suffix = a[prefix..].iter().rev().zip(b[prefix..].iter().rev()).take_while(|(x, y)| x == y).count();
    let (mid_a, mid_b) = (&a[prefix..a.len() - suffix], &b[prefix..b.len() - suffix]);
    let count = |lines: &[&str]| {
        let mut m: HashMap<String, i64> = HashMap::new();
        for l in lines {
            *m.entry(l.to_string()).or_default() += 1;
        }
        m
    };
    let (mut in_a, mut in_b) = (count(mid_a), count(mid_b));
    let mut out = vec![format!("(from line {}; - plain ALTER twin, + after pg-ghost)", prefix + 1)];
    for l in mid_a {
        if in_b.get(*l).copied().unwrap_or(0) > 0 {
            *in_b.get_mut(*l).unwrap() -= 1;
        } else {
            out.push(format!("- {l}"));
        }
    }
    for l in mid_b {
        if in_a.get(*l).copied().unwrap_or(0) > 0 {
            *in_a.get_mut(*l).unwrap() -= 1;
        } else {
            out.push(format!("+ {l}"));
        }
    }
    if out.len() == 1 {
        out.push(format!("the same lines in another order, e.g. line {}: - {:?} + {:?}", prefix + 1, mid_a.first(), mid_b.first()));
    }
    const MAX: usize = 60;
    if out.len() > MAX {
        let more = out.len() - MAX;
        out.truncate(MAX);
        out.push(format!("... and {more} more lines"));
    }
    out
}

/// A twin of `source`'s schema, without its rows: a fresh database restored from
/// `pg_dump --schema-only` of `source`.
async fn twin_of<'c>(source: &TestDb<'c>) -> TestDb<'c> {
    let file = tempfile::NamedTempFile::new().expect("temporary file for the schema dump");
    let mut dump = pg_command("pg_dump", source.cluster.port);
    dump.args(["--schema-only", "-d", &source.name, "-f"]).arg(file.path());
    run_ok(dump, &format!("pg_dump --schema-only of {}", source.name)).await;
    let twin = source.cluster.fresh_db("real_schema_twin");
    psql_file(&twin, file.path()).await;
    twin
}

/// How pg-ghost may copy and apply a table's rows.
#[derive(Clone, Debug)]
enum Key {
    Primary,
    /// A unique index on NOT NULL columns, given with `--key`.
    Index(String),
    /// None: pg-ghost must refuse the table.
    None,
}

#[derive(Debug)]
struct TableInfo {
    name: String,
    key: Key,
    key_columns: Vec<String>,
    /// Every column, in order (the rows the workload deletes are inserted again with them).
    columns: Vec<String>,
    /// A column no index or constraint uses: the workload's updates change it.
    free: Option<String>,
}

async fn tables(client: &Client) -> Vec<TableInfo> {
    let rows = client
        .query(
            "SELECT c.oid, c.relname::text FROM pg_class c
              WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r' ORDER BY c.relname",
            &[],
        )
        .await
        .unwrap();
    let mut out = Vec::new();
    for row in rows {
        let (oid, name): (u32, String) = (row.get(0), row.get(1));
        // The primary key, or else the first unique, non-partial, plain-column index whose
        // columns are all NOT NULL.
        let key = client
            .query_opt(
                "SELECT i.indisprimary, ic.relname::text,
                        array(SELECT a.attname::text FROM unnest(i.indkey::int2[]) WITH ORDINALITY k(n, o)
                               JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.n ORDER BY k.o)
                   FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
                  WHERE i.indrelid = $1 AND i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL
                    AND NOT EXISTS (SELECT FROM unnest(i.indkey::int2[]) k(n)
                                      JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.n
                                     WHERE NOT a.attnotnull)
                  ORDER BY i.indisprimary DESC, ic.relname LIMIT 1",
                &[&oid],
            )
            .await
            .unwrap();
        let (key, key_columns) = match key {
            Some(k) if k.get::<_, bool>(0) => (Key::Primary, k.get(2)),
            Some(k) => (Key::Index(k.get(1)), k.get(2)),
            None => (Key::None, Vec::new()),
        };
        let columns: Vec<String> = client
            .query(
                "SELECT attname::text FROM pg_attribute WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped AND attgenerated = ''
                  ORDER BY attnum",
                &[&oid],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let free: Option<String> = client
            .query_opt(
                "SELECT a.attname::text FROM pg_attribute a
                  WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
                    AND NOT EXISTS (SELECT FROM pg_depend d
                                     WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid = a.attrelid AND d.refobjsubid = a.attnum
                                       AND (d.classid = 'pg_constraint'::regclass
                                            OR (d.classid = 'pg_class'::regclass AND d.objid IN (SELECT indexrelid FROM pg_index))))
                    AND NOT EXISTS (SELECT FROM pg_constraint k WHERE k.conrelid = a.attrelid AND a.attnum = ANY (k.conkey))
                    AND NOT EXISTS (SELECT FROM pg_index i WHERE i.indrelid = a.attrelid AND a.attnum = ANY (i.indkey::int2[]))
                  ORDER BY a.attnum LIMIT 1",
                &[&oid],
            )
            .await
            .unwrap()
            .map(|r| r.get(0));
        out.push(TableInfo { name, key, key_columns, columns, free });
    }
    out
}

async fn count_rows(client: &Client, table: &str) -> i64 {
    client.query_one(&format!("SELECT count(*) FROM {}", qualified("public", table)), &[]).await.unwrap().get(0)
}

#[derive(Default)]
struct Counters {
    committed: AtomicU64,
    updates: AtomicU64,
    deletes: AtomicU64,
    /// Deletes a foreign key without a cascade refused (23503): the row is still referenced.
    deletes_refused: AtomicU64,
    inserts: AtomicU64,
}

/// A small write load on one table, by key: updates of a column nothing constrains, deletes
/// (cascading where the schema says so), and inserts of the deleted rows again. One session,
/// simple query protocol only (nothing prepared survives the swap), every statement its own
/// transaction.
struct Writer {
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    errors: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

struct WriterReport {
    updates: u64,
    deletes: u64,
    deletes_refused: u64,
    inserts: u64,
    errors: Vec<String>,
}

impl Writer {
    async fn start(db: &TestDb<'_>, table: &TableInfo, seed: u64) -> Writer {
        let client = db.client().await;
        let t = qualified("public", &table.name);
        let keys = table.key_columns.iter().map(|c| ident(c)).collect::<Vec<_>>().join(", ");
        let cols = table.columns.iter().map(|c| ident(c)).collect::<Vec<_>>().join(", ");
        let pick = format!("(SELECT {keys} FROM {t} ORDER BY random() LIMIT 1)");
        let set = match &table.free {
            Some(f) => format!("{f} = (SELECT {f} FROM {t} ORDER BY random() LIMIT 1)", f = ident(f)),
            None => format!("{k} = {k}", k = ident(&table.key_columns[0])),
        };
        let update = format!("UPDATE {t} SET {set} WHERE ({keys}) = {pick}");
        let delete = format!("DELETE FROM {t} AS x WHERE ({keys}) = {pick} RETURNING to_jsonb(x)::text");
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let errors = Arc::new(Mutex::new(Vec::new()));
        let (stop2, counters2, errors2) = (stop.clone(), counters.clone(), errors.clone());
        let task = tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut deleted: Vec<String> = Vec::new();
            while !stop2.load(Ordering::SeqCst) {
                let roll: u32 = rng.gen_range(0..100);
                let result = if roll < 25 && !deleted.is_empty() {
                    let row = deleted.swap_remove(rng.gen_range(0..deleted.len()));
                    let insert =
                        format!("INSERT INTO {t} ({cols}) SELECT {cols} FROM jsonb_populate_record(NULL::{t}, {}::jsonb)", literal(&row));
                    client.simple_query(&insert).await.map(|m| (&counters2.inserts, affected(&m)))
                } else if roll < 50 {
                    match client.simple_query(&delete).await {
                        Ok(m) => {
                            deleted.extend(m.iter().filter_map(|m| match m {
                                SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                                _ => None,
                            }));
                            Ok((&counters2.deletes, affected(&m)))
                        }
                        Err(e) if e.as_db_error().is_some_and(|d| d.code().code() == "23503") => Ok((&counters2.deletes_refused, 1)),
                        Err(e) => Err(e),
                    }
                } else {
                    client.simple_query(&update).await.map(|m| (&counters2.updates, affected(&m)))
                };
                match result {
                    Ok((counter, n)) => {
                        counter.fetch_add(n, Ordering::SeqCst);
                        counters2.committed.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) => errors2.lock().unwrap().push(db_message(&e)),
                }
                tokio::time::sleep(Duration::from_millis(4)).await;
            }
        });
        Writer { stop, counters, errors, task }
    }

    /// Waits until `n` more statements have committed (at most 30 s).
    async fn wait_for_commits(&self, n: u64) {
        let target = self.counters.committed.load(Ordering::SeqCst) + n;
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.counters.committed.load(Ordering::SeqCst) < target {
            assert!(Instant::now() < deadline, "the write load did not commit {n} statements in 30 s: {:?}", self.errors.lock().unwrap());
            assert!(!self.task.is_finished(), "the write load stopped");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn stop(self) -> WriterReport {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("the write load panicked");
        let c = &self.counters;
        WriterReport {
            updates: c.updates.load(Ordering::SeqCst),
            deletes: c.deletes.load(Ordering::SeqCst),
            deletes_refused: c.deletes_refused.load(Ordering::SeqCst),
            inserts: c.inserts.load(Ordering::SeqCst),
            errors: std::mem::take(&mut *self.errors.lock().unwrap()),
        }
    }
}

/// Rows a simple-query statement reports it touched.
fn affected(messages: &[SimpleQueryMessage]) -> u64 {
    messages.iter().filter_map(|m| if let SimpleQueryMessage::CommandComplete(n) = m { Some(*n) } else { None }).sum()
}

/// pg-ghost's one-line reason (the last `pg-ghost: ` line), or the end of its log.
fn reason(stderr: &str) -> String {
    match stderr.lines().rev().find(|l| l.starts_with("pg-ghost: ")) {
        Some(l) => l.to_string(),
        None => stderr.lines().rev().take(5).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n"),
    }
}

#[derive(Debug)]
enum Outcome {
    Migrated,
    /// A table without a key, refused as it must be.
    RefusedWithoutKey(String),
    Failed(Vec<String>),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_table_of_a_real_schema_changes_online() {
    let started = Instant::now();
    let schema = sample_schema();
    let db = Cluster::primary().fresh_db("real_schema");
    psql_file(&db, &schema).await;
    let client = db.client().await;
    client.batch_execute(GENERATE).await.unwrap_or_else(|e| panic!("generating rows: {}", db_message(&e)));

    let tables = tables(&client).await;
    assert!(
        tables.len() >= 30,
        "DAViCal's schema has 34 tables; this one has {}: {:?}",
        tables.len(),
        tables.iter().map(|t| &t.name).collect::<Vec<_>>()
    );
    for t in &tables {
        let n = count_rows(&client, &t.name).await;
        assert!(n >= 200, "no rows generated for {} ({n}): did the packaged schema change?", t.name);
    }
    // What pg-ghost asks of a table whose key is a unique index rather than the primary key
    // (DAViCal's `locks`): the index as its replica identity, so that the change stream
    // carries the old key of updates and deletes. Done before the twin is made, so both have it.
    for t in &tables {
        if let Key::Index(index) = &t.key {
            let sql = format!("ALTER TABLE {} REPLICA IDENTITY USING INDEX {}", qualified("public", &t.name), ident(index));
            client.batch_execute(&sql).await.unwrap_or_else(|e| panic!("{sql}: {}", db_message(&e)));
        }
    }
    println!("real schema: {} tables loaded from {} and filled in {:.1?}", tables.len(), schema.display(), started.elapsed());

    let mut twin = twin_of(&db).await;
    let mut dump = crate::oracle::dump::whole_schema_dump(&db).await;
    let mut twin_dump = crate::oracle::dump::whole_schema_dump(&twin).await;
    let diff = dump_diff(&twin_dump, &dump);
    assert!(diff.is_empty(), "the twin restored from a schema-only dump differs before any change:\n{}", diff.join("\n"));

    let mut outcomes: BTreeMap<String, Outcome> = BTreeMap::new();
    for (n, table) in tables.iter().enumerate() {
        let t0 = Instant::now();
        let q = qualified("public", &table.name);
        let mut problems = Vec::new();

        let mut args = vec!["--table", q.as_str(), "--alter", ALTER, "--execute", "--chunk-size", "500", "--status-interval", "1s"];
        if let Key::Index(index) = &table.key {
            args.extend(["--key", index.as_str()]);
        }
        let (out, writes, rows) = if let Key::None = table.key {
            (binary::run(&db, &args).await, None, None)
        } else {
            let before = count_rows(&client, &table.name).await;
            let writer = Writer::start(&db, table, 0x5eed + n as u64).await;
            writer.wait_for_commits(20).await;
            let out = binary::run(&db, &args).await;
            writer.wait_for_commits(20).await;
            let report = writer.stop().await;
            let after = count_rows(&client, &table.name).await;
            (out, Some(report), Some((before, after)))
        };
        let stderr = binary::stderr(&out);
        let migrated = out.status.success();

        match (&table.key, migrated) {
            (_, true) => {
                let old = qualified("public", &format!("_{}_del", table.name));
                if let Err(e) = client.batch_execute(&format!("DROP TABLE {old}")).await {
                    problems.push(format!("the old table does not drop without CASCADE: {}", db_message(&e)));
                }
                let twin_client = twin.client().await;
                twin_client
                    .batch_execute(&format!("ALTER TABLE {q} {ALTER}"))
                    .await
                    .unwrap_or_else(|e| panic!("the plain ALTER TABLE {q} {ALTER} failed in the twin: {}", db_message(&e)));
                twin_dump = crate::oracle::dump::whole_schema_dump(&twin).await;
            }
            (Key::None, false) if out.status.code() == Some(3) => {}
            (_, false) => {
                problems.push(format!("pg-ghost exited with {}: {}", out.status, reason(&stderr)));
                let cleanup = binary::cleanup(&db, &["--table", q.as_str()]).await;
                if !cleanup.status.success() {
                    problems.push(format!("pg-ghost cleanup failed: {}", reason(&binary::stderr(&cleanup))));
                }
            }
        }
        if let Some(report) = &writes {
            if !report.errors.is_empty() {
                problems.push(format!("the write load failed: {:?}", report.errors));
            }
            let (before, after) = rows.unwrap();
            let expected = before - report.deletes as i64 + report.inserts as i64;
            if migrated && after != expected {
                problems.push(format!(
                    "{after} rows after the run; {before} before, {} deleted, {} inserted: {expected} expected",
                    report.deletes, report.inserts
                ));
            }
        }
        if migrated {
            let sql = format!("SELECT count(*) FROM {q} WHERE pg_ghost_probe IS DISTINCT FROM 7");
            match client.query_one(&sql, &[]).await {
                Ok(r) if r.get::<_, i64>(0) == 0 => {}
                Ok(r) => problems.push(format!("{} rows lack the new column's default", r.get::<_, i64>(0))),
                Err(e) => problems.push(format!("{sql}: {}", db_message(&e))),
            }
        }

        // The whole database against the twin where the plain ALTER ran (or nothing, when
        // pg-ghost did not change the table).
        dump = crate::oracle::dump::whole_schema_dump(&db).await;
        let diff = dump_diff(&twin_dump, &dump);
        if !diff.is_empty() {
            problems.push(format!("pg_dump --schema-only of the database differs from the plain ALTER's:\n    {}", diff.join("\n    ")));
            // Judge the next tables on their own: a new twin from where the database is now.
            twin = twin_of(&db).await;
            twin_dump = crate::oracle::dump::whole_schema_dump(&twin).await;
        }

        let writes_line = writes.as_ref().map_or(String::new(), |r| {
            format!(
                "; writes meanwhile: {} updates, {} deletes ({} refused by a foreign key), {} inserts",
                r.updates, r.deletes, r.deletes_refused, r.inserts
            )
        });
        let outcome = if !problems.is_empty() {
            Outcome::Failed(problems)
        } else if migrated {
            Outcome::Migrated
        } else {
            Outcome::RefusedWithoutKey(reason(&stderr))
        };
        println!("real schema: {} ({:?} key) in {:.1?}: {outcome:?}{writes_line}", table.name, table.key, t0.elapsed());
        outcomes.insert(table.name.clone(), outcome);
    }

    let migrated: Vec<&String> = outcomes.iter().filter(|(_, o)| matches!(o, Outcome::Migrated)).map(|(t, _)| t).collect();
    let keyless: Vec<String> =
        outcomes.iter().filter_map(|(t, o)| if let Outcome::RefusedWithoutKey(r) = o { Some(format!("{t}: {r}")) } else { None }).collect();
    let failed: Vec<String> = outcomes
        .iter()
        .filter_map(|(t, o)| if let Outcome::Failed(p) = o { Some(format!("{t}:\n  {}", p.join("\n  "))) } else { None })
        .collect();
    println!("real schema: {} tables in {:.1?}", outcomes.len(), started.elapsed());
    println!("real schema: migrated online ({}): {}", migrated.len(), migrated.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "));
    println!("real schema: refused for want of a key ({}):\n  {}", keyless.len(), keyless.join("\n  "));
    assert_no_slots_or_publications(&client).await;
    assert!(
        failed.is_empty(),
        "{} of the {} tables of DAViCal's schema did not change online:\n{}",
        failed.len(),
        outcomes.len(),
        failed.join("\n")
    );
}

#[test]
fn dump_helpers_normalize_and_show_differences() {
    let dump = "\\restrict k1\nCREATE TABLE public.t (id int);\n-- db_7\n\\unrestrict k1";
    assert_eq!(crate::oracle::dump::normalize(dump, "db_7"), "\\restrict <key>\nCREATE TABLE public.t (id int);\n-- <database>\n\\unrestrict <key>");
    assert!(dump_diff("a\nb\nc", "a\nb\nc").is_empty());
    assert_eq!(dump_diff("a\nb\nb\nc\nz", "a\nb\nx\nc\nz"), vec!["(from line 3; - plain ALTER twin, + after pg-ghost)", "- b", "+ x"]);
    assert_eq!(dump_diff("a\nb\nc\nz", "a\nc\nb\nz")[1], "the same lines in another order, e.g. line 2: - Some(\"b\") + Some(\"c\")");
}
