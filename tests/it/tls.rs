//! TLS on both kinds of connection pg-ghost opens, against clusters that accept only TLS
//! (`hostssl` in pg_hba.conf): one with scram-sha-256, one with client certificates. The CA,
//! the server's certificate (for `localhost` only) and a client certificate are made here.

use crate::binary;
use crate::harness::{Cluster, PASSWORD, ROLE};
use crate::oracle::*;
use crate::run_faults::{flag_path, wait_for_state, Running};
use pg_ghost::conn::{ChannelBindingMode, ConnInfo, Endpoint, RootCert, SslMode, SslSettings};
use pg_ghost::lsn::Lsn;
use pg_ghost::replication::transport::{AuthMethod, ReplicationConnection, SlotKind, SlotSnapshot, StreamEvent, StreamOptions};
use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, CertificateRevocationListParams, CertifiedIssuer, DnType, IsCa, KeyIdMethod, KeyPair,
    KeyUsagePurpose, RevokedCertParams, SerialNumber,
};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

/// Certificates and keys, written once for the whole test binary.
pub struct Pki {
    _dir: tempfile::TempDir,
    pub ca: PathBuf,
    /// A CA that signed nothing the servers present.
    pub other_ca: PathBuf,
    pub server_cert: String,
    pub server_key: String,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// A revocation list of the CA that revokes the server's certificate.
    pub crl_revoking_server: PathBuf,
    /// One that revokes another certificate only.
    pub crl_revoking_other: PathBuf,
}

/// The server certificate's serial number, for the revocation lists.
const SERVER_SERIAL: u64 = 4242;

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

pub fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let ca_issuer = ca("pg-ghost test CA");
        let other = ca("another CA");

        let server_key = KeyPair::generate().unwrap();
        let mut server = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        server.distinguished_name.push(DnType::CommonName, "localhost");
        server.serial_number = Some(SerialNumber::from(SERVER_SERIAL));
        let server_cert = server.signed_by(&server_key, &ca_issuer).unwrap();

        // `cert` authentication maps the certificate's CN to the role.
        let client_key = KeyPair::generate().unwrap();
        let mut client = CertificateParams::new(Vec::<String>::new()).unwrap();
        client.distinguished_name.push(DnType::CommonName, ROLE);
        let client_cert = client.signed_by(&client_key, &ca_issuer).unwrap();

        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            set_mode(&path, 0o600);
            path
        };
        let crl = |serial: u64| {
            CertificateRevocationListParams {
                this_update: date_time_ymd(2024, 1, 1),
                next_update: date_time_ymd(2099, 1, 1),
                crl_number: SerialNumber::from(1u64),
                issuing_distribution_point: None,
                revoked_certs: vec![RevokedCertParams {
                    serial_number: SerialNumber::from(serial),
                    revocation_time: date_time_ymd(2024, 1, 1),
                    reason_code: None,
                    invalidity_date: None,
                }],
                key_identifier_method: KeyIdMethod::Sha256,
            }
            .signed_by(&ca_issuer)
            .unwrap()
            .pem()
            .unwrap()
        };
        Pki {
            crl_revoking_server: write("revoked.crl", &crl(SERVER_SERIAL)),
            crl_revoking_other: write("other.crl", &crl(7)),
            ca: write("ca.pem", &ca_issuer.pem()),
            other_ca: write("other-ca.pem", &other.pem()),
            server_cert: server_cert.pem(),
            server_key: server_key.serialize_pem(),
            client_cert: write("client.pem", &client_cert.pem()),
            client_key: write("client.key", &client_key.serialize_pem()),
            _dir: dir,
        }
    })
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A cluster of its own that accepts TLS connections only, authenticated by `method`.
fn tls_cluster(name: &str, method: &str) -> Cluster {
    let pki = pki();
    let cluster = Cluster::start(name);
    for (file, text) in [("server.crt", &pki.server_cert), ("server.key", &pki.server_key), ("root.crt", &std::fs::read_to_string(&pki.ca).unwrap())] {
        let path = cluster.dir.join(file);
        std::fs::write(&path, text).unwrap();
        set_mode(&path, 0o600);
        // The server refuses a key that is not its own.
        let is_root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"));
        if is_root {
            assert!(Command::new("chown").args(["postgres:postgres"]).arg(&path).status().unwrap().success());
        }
    }
    let mut conf = std::fs::OpenOptions::new().append(true).open(cluster.dir.join("postgresql.conf")).unwrap();
    use std::io::Write;
    writeln!(conf, "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\nssl_ca_file = 'root.crt'").unwrap();
    let hba = format!(
        "local all all trust\nlocal replication all trust\n\
         hostssl all,replication all 127.0.0.1/32 {method}\nhostssl all,replication all ::1/128 {method}\n"
    );
    std::fs::write(cluster.dir.join("pg_hba.conf"), hba).unwrap();
    cluster.restart();
    let mut cluster = cluster;
    cluster.socket_clients = true;
    cluster
}

fn scram_cluster() -> &'static Cluster {
    static C: OnceLock<Cluster> = OnceLock::new();
    C.get_or_init(|| tls_cluster("tls-scram", "scram-sha-256"))
}

fn cert_cluster() -> &'static Cluster {
    static C: OnceLock<Cluster> = OnceLock::new();
    C.get_or_init(|| tls_cluster("tls-cert", "cert"))
}

/// `cluster`'s database `db` as `host`, with `ssl`.
fn info(cluster: &Cluster, db: &str, host: &str, ssl: SslSettings) -> ConnInfo {
    let mut info = ConnInfo::parse(&cluster.conninfo(db)).unwrap();
    info.endpoint = Endpoint::Tcp { host: host.to_string(), port: cluster.port };
    info.ssl = ssl;
    info
}

fn ssl(mode: SslMode, root: Option<&Path>) -> SslSettings {
    SslSettings { mode, root_cert: root.map(|p| RootCert::File(p.to_path_buf())), ..SslSettings::default() }
}

fn verify_full() -> SslSettings {
    ssl(SslMode::VerifyFull, Some(&pki().ca))
}

/// Whether the server sees session `pid` encrypted.
async fn encrypted(client: &tokio_postgres::Client, pid: i32) -> bool {
    client.query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = $1", &[&pid]).await.unwrap().get(0)
}

async fn own_pid(client: &tokio_postgres::Client) -> i32 {
    client.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0)
}

fn message(r: Result<impl Sized, pg_ghost::Error>) -> String {
    match r {
        Ok(_) => panic!("the connection was expected to be refused"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn both_kinds_of_session_verify_the_server_and_bind_scram_to_the_channel() {
    let cluster = scram_cluster();
    let mut settings = verify_full();
    settings.channel_binding = ChannelBindingMode::Require;
    let info = info(cluster, "postgres", "localhost", settings);

    let client = info.connect().await.expect("SQL session over verify-full");
    let pid = own_pid(&client).await;
    assert!(encrypted(&client, pid).await);

    let mut repl = ReplicationConnection::connect(&info).await.expect("walsender over verify-full");
    assert!(repl.is_tls());
    assert_eq!(repl.auth_method(), AuthMethod::ScramSha256Plus);
    assert!(encrypted(&client, repl.backend_pid()).await, "pg_stat_ssl says the walsender is not encrypted");
    repl.identify_system().await.expect("IDENTIFY_SYSTEM over TLS");
    repl.close().await.unwrap();
}

#[tokio::test]
async fn a_stream_over_tls_goes_to_the_threads_and_comes_back() {
    let cluster = scram_cluster();
    let db = cluster.fresh_db("tls_stream");
    db.psql("CREATE TABLE t (id int PRIMARY KEY, v text); CREATE PUBLICATION p FOR TABLE t");
    let info = info(cluster, &db.name, "localhost", verify_full());
    let client = info.connect().await.unwrap();
    let mut conn = ReplicationConnection::connect(&info).await.unwrap();
    let slot = "tls_stream_slot";
    conn.create_slot(slot, SlotKind::Persistent, SlotSnapshot::Nothing).await.unwrap();
    let mut stream = conn.start_replication(slot, Lsn::ZERO, &StreamOptions::new(["p"])).await.unwrap();
    // Several megabytes: many TLS records, more than rustls holds decrypted at once.
    client.batch_execute("INSERT INTO t SELECT g, repeat(md5(g::text), 8) FROM generate_series(1, 20000) g").await.unwrap();
    client.batch_execute("INSERT INTO t VALUES (0, 'last')").await.unwrap();
    let (mut inserts, mut last_seen) = (0, false);
    tokio::time::timeout(Duration::from_secs(60), async {
        while !last_seen {
            let batch = stream.recv().await.expect("stream").expect("stream open");
            for event in batch {
                if let StreamEvent::XLogData { data, .. } = event {
                    if data.first() == Some(&b'I') {
                        inserts += 1;
                        last_seen |= data.windows(4).any(|w| w == b"last");
                    }
                }
            }
        }
    })
    .await
    .expect("the stream did not deliver the inserts within 60 s");
    assert_eq!(inserts, 20_001);
    let mut conn = tokio::time::timeout(Duration::from_secs(30), stream.stop()).await.unwrap().expect("stop over TLS");
    assert!(conn.is_tls());
    conn.drop_slot(slot, true).await.expect("DROP_REPLICATION_SLOT on the connection given back");
    conn.identify_system().await.expect("command mode after the stream");
}

#[tokio::test]
async fn certificates_that_do_not_fit_are_refused_with_the_reason() {
    let cluster = scram_cluster();
    // The certificate names localhost, not the address.
    let wrong_host = info(cluster, "postgres", "127.0.0.1", verify_full());
    for m in [message(wrong_host.connect().await), message(ReplicationConnection::connect(&wrong_host).await)] {
        assert!(m.contains("does not name the host"), "{m}");
    }
    let unknown_ca = info(cluster, "postgres", "localhost", ssl(SslMode::VerifyFull, Some(&pki().other_ca)));
    for m in [message(unknown_ca.connect().await), message(ReplicationConnection::connect(&unknown_ca).await)] {
        assert!(m.contains("not signed by a trusted CA"), "{m}");
    }
    // require with a root certificate checks the chain, as libpq does.
    let require = info(cluster, "postgres", "localhost", ssl(SslMode::Require, Some(&pki().other_ca)));
    assert!(message(require.connect().await).contains("not signed by a trusted CA"));

    // sslcrl: a revoked server certificate is refused; a list that revokes others is no bar.
    let mut revoked = verify_full();
    revoked.crl = Some(pki().crl_revoking_server.clone());
    let revoked = info(cluster, "postgres", "localhost", revoked);
    for m in [message(revoked.connect().await), message(ReplicationConnection::connect(&revoked).await)] {
        assert!(m.contains("revoked"), "{m}");
    }
    let mut fine = verify_full();
    fine.crl = Some(pki().crl_revoking_other.clone());
    info(cluster, "postgres", "localhost", fine).connect().await.expect("a list that does not name the server's certificate");

    let system = info(cluster, "postgres", "localhost", SslSettings { mode: SslMode::Require, root_cert: Some(RootCert::System), ..SslSettings::default() });
    assert!(message(system.connect().await).contains("sslrootcert=system needs sslmode=verify-full"));
}

#[tokio::test]
async fn a_server_without_tls_is_refused_where_tls_is_required() {
    let primary = Cluster::primary();
    let require = info(primary, "postgres", "127.0.0.1", ssl(SslMode::Require, None));
    for m in [message(require.connect().await), message(ReplicationConnection::connect(&require).await)] {
        assert!(m.contains("does not accept TLS"), "{m}");
    }
    let mut binding = ssl(SslMode::Disable, None);
    binding.channel_binding = ChannelBindingMode::Require;
    let binding = info(primary, "postgres", "127.0.0.1", binding);
    let m = message(ReplicationConnection::connect(&binding).await);
    assert!(m.contains("channel_binding=require needs a TLS connection"), "{m}");
    let m = message(binding.connect().await);
    assert!(m.contains("channel binding"), "{m}");

    // prefer (the default) speaks plain text to it.
    let prefer = info(primary, "postgres", "127.0.0.1", SslSettings::default());
    let client = prefer.connect().await.unwrap();
    assert!(!encrypted(&client, own_pid(&client).await).await);
    let repl = ReplicationConnection::connect(&prefer).await.unwrap();
    assert!(!repl.is_tls());
}

#[tokio::test]
async fn weaker_modes_encrypt_without_checking_what_they_do_not_promise() {
    let cluster = scram_cluster();
    // verify-ca checks the chain only: the address does not have to be in the certificate.
    let checks = [
        ssl(SslMode::VerifyCa, Some(&pki().ca)),
        ssl(SslMode::Require, None),
        ssl(SslMode::Prefer, None),
        // allow tries plain text first; the server (hostssl only) refuses it.
        ssl(SslMode::Allow, None),
    ];
    for settings in checks {
        let mode = settings.mode;
        let info = info(cluster, "postgres", "127.0.0.1", settings);
        let client = info.connect().await.unwrap_or_else(|e| panic!("{mode:?}: {e}"));
        assert!(encrypted(&client, own_pid(&client).await).await, "{mode:?}");
        let repl = ReplicationConnection::connect(&info).await.unwrap_or_else(|e| panic!("{mode:?} walsender: {e}"));
        assert!(repl.is_tls(), "{mode:?}");
        assert!(encrypted(&client, repl.backend_pid()).await, "{mode:?}");
    }
}

#[tokio::test]
async fn client_certificates_authenticate_both_kinds_of_session() {
    let cluster = cert_cluster();
    let pki = pki();
    let mut settings = verify_full();
    settings.cert = Some(pki.client_cert.clone());
    settings.key = Some(pki.client_key.clone());
    let mut with_cert = info(cluster, "postgres", "localhost", settings);
    with_cert.password = None;
    let client = with_cert.connect().await.expect("SQL session with a client certificate");
    assert!(encrypted(&client, own_pid(&client).await).await);
    let repl = ReplicationConnection::connect(&with_cert).await.expect("walsender with a client certificate");
    assert_eq!(repl.auth_method(), AuthMethod::Trust);

    let mut without = info(cluster, "postgres", "localhost", verify_full());
    without.password = None;
    for m in [message(without.connect().await), message(ReplicationConnection::connect(&without).await)] {
        assert!(m.contains("certificate"), "{m}");
    }

    // A key others can read is refused before anything is sent, as libpq does.
    let loose = tempfile::tempdir().unwrap();
    let key = loose.path().join("client.key");
    std::fs::copy(&pki.client_key, &key).unwrap();
    set_mode(&key, 0o644);
    let mut settings = verify_full();
    settings.cert = Some(pki.client_cert.clone());
    settings.key = Some(key);
    let m = message(info(cluster, "postgres", "localhost", settings).connect().await);
    assert!(m.contains("group or world access"), "{m}");
}

/// The whole job over TLS: copy, apply under the control-table workload, cut-over, with
/// verify-full and channel binding required; every session pg-ghost opens (the walsender
/// included) is encrypted while it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_run_over_verify_full_with_channel_binding() {
    let cluster = scram_cluster();
    let db = cluster.fresh_db("tls_run");
    let table = OracleTable::create(&db, "orders", KeyKind::Identity, 3_000).await;
    let workload = Workload::start(&db, &table, WorkloadOptions::new(2).rate(Some(50))).await;
    workload.wait_for_more_commits(20, Duration::from_secs(30)).await;

    let conn = format!(
        "host=localhost port={} user={ROLE} password={PASSWORD} dbname={} sslmode=verify-full sslrootcert={} channel_binding=require",
        cluster.port,
        db.name,
        pki().ca.display()
    );
    let flag = flag_path(&db, "postpone");
    std::fs::write(&flag, b"").unwrap();
    let args = ["--table", "orders", "--alter", "ALTER COLUMN n TYPE bigint", "--execute", "--postpone-cut-over-flag-file", flag.to_str().unwrap()];
    let mut run = Running::spawn_command(binary::command_with_conn(&conn, "run", &args));
    let watcher = db.client().await;
    wait_for_state(&watcher, &mut run, "orders", "postponed", Duration::from_secs(60)).await;
    let sessions = watcher
        .query(
            "SELECT a.backend_type, s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
              WHERE a.application_name LIKE 'pg-ghost%' AND a.datname = current_database()",
            &[],
        )
        .await
        .unwrap();
    let kinds: Vec<(String, bool)> = sessions.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert!(kinds.iter().any(|(k, _)| k == "walsender"), "no walsender among {kinds:?}");
    assert!(kinds.len() >= 3 && kinds.iter().all(|(_, ssl)| *ssl), "a pg-ghost session without TLS: {kinds:?}");
    std::fs::remove_file(&flag).unwrap();
    binary::assert_success(&run.wait(Duration::from_secs(120)).await);

    workload.wait_for_more_commits(20, Duration::from_secs(30)).await;
    let report = workload.stop().await;
    assert!(report.errors.is_empty(), "workload errors (seed {}): {:#?}", report.seed, report.errors);
    let client = db.client().await;
    table.assert_matches_control(&client, &table.projection().map("n", "n::bigint")).await;
    assert_no_slots_or_publications(&client).await;
}

/// Refused before anything is created, with the reason a DBA needs.
#[tokio::test]
async fn a_run_that_cannot_trust_the_server_changes_nothing() {
    let cluster = scram_cluster();
    let db = cluster.fresh_db("tls_refused");
    db.psql("CREATE TABLE t (id int PRIMARY KEY, n int)");
    let base = format!("port={} user={ROLE} password={PASSWORD} dbname={}", cluster.port, db.name);
    let cases = [
        (format!("host=127.0.0.1 {base} sslmode=verify-full sslrootcert={}", pki().ca.display()), "does not name the host"),
        (format!("host=localhost {base} sslmode=verify-full sslrootcert={}", pki().other_ca.display()), "not signed by a trusted CA"),
        (format!("host=127.0.0.1 port={} user={ROLE} password={PASSWORD} dbname=postgres sslmode=require", Cluster::primary().port), "does not accept TLS"),
    ];
    for (conn, reason) in cases {
        let out = binary::command_with_conn(&conn, "run", &["--table", "t", "--alter", "ADD COLUMN x int", "--execute"]).output().await.unwrap();
        let log = binary::stderr(&out);
        assert!(!out.status.success(), "{log}");
        assert!(log.lines().rev().find(|l| l.starts_with("pg-ghost: ")).is_some_and(|l| l.contains(reason)), "{reason}: {log}");
        assert!(!log.contains(PASSWORD_MARKER), "{log}");
    }
    assert_eq!(db.psql("SELECT count(*) FROM pg_class WHERE relname LIKE '%gho%' OR relname LIKE '%pg_ghost%'"), "0");
    assert_eq!(db.psql("SELECT count(*) FROM pg_replication_slots WHERE database = current_database()"), "0");
}

/// The harness's password, as it would appear in a leaked connection string.
const PASSWORD_MARKER: &str = "password=";
