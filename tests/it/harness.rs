//! Throwaway PostgreSQL clusters for the integration tests.
//!
//! One primary per test binary, started on first use through `scripts/pg-local.sh` (the same
//! script the README and the demo use) and destroyed by a watcher once this process exits,
//! however it exits. Every test gets a fresh database, dropped with its replication slots
//! and publications afterwards. Standbys and extra clusters are started on demand.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

pub const ROLE: &str = "ghost";
pub const PASSWORD: &str = "ghost";

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn pg_local(args: &[&str]) -> String {
    let out = Command::new("bash")
        .arg(repo_root().join("scripts/pg-local.sh"))
        .args(args)
        .output()
        .expect("cannot run scripts/pg-local.sh (is bash installed?)");
    if !out.status.success() {
        panic!(
            "scripts/pg-local.sh {} failed:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Whether the tests run as root (then the server binaries run as `postgres`).
pub fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// A directory for clusters that no other test binary uses.
pub fn scratch_root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let base = std::env::var_os("PG_GHOST_TEST_DIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
        let dir = base.join(format!("pg-ghost-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create test scratch dir");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755));
        }
        dir
    })
}

/// Binds port 0 to let the kernel pick a port no other process holds right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0").local_addr().unwrap().port()
}

pub struct Cluster {
    pub dir: PathBuf,
    pub port: u16,
    /// The test's own sessions (`client()`) go through the Unix socket: for clusters whose
    /// pg_hba.conf accepts TCP only with TLS.
    pub socket_clients: bool,
    /// Extra clusters are destroyed on drop; the shared primary lives as long as the process.
    owned: bool,
}

impl Cluster {
    /// The primary shared by every test in this binary.
    pub fn primary() -> &'static Cluster {
        static PRIMARY: OnceLock<Cluster> = OnceLock::new();
        PRIMARY.get_or_init(|| {
            let mut c = Cluster::start("primary");
            c.owned = false;
            c
        })
    }

    /// A new primary of its own, destroyed when dropped.
    pub fn start(name: &str) -> Cluster {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let dir = scratch_root().join(format!("{name}-{}", SEQ.fetch_add(1, Ordering::Relaxed)));
        let port = free_port();
        pg_local(&["start", dir.to_str().unwrap(), &port.to_string()]);
        pg_local(&["watch", dir.to_str().unwrap(), &std::process::id().to_string()]);
        Cluster { dir, port, socket_clients: false, owned: true }
    }

    /// A physical standby of this cluster (`pg_basebackup -R`), destroyed when dropped.
    pub fn standby(&self, name: &str) -> Cluster {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let dir = scratch_root().join(format!("{name}-standby-{}", SEQ.fetch_add(1, Ordering::Relaxed)));
        let port = free_port();
        pg_local(&["standby", self.dir.to_str().unwrap(), dir.to_str().unwrap(), &port.to_string()]);
        pg_local(&["watch", dir.to_str().unwrap(), &std::process::id().to_string()]);
        Cluster { dir, port, socket_clients: false, owned: true }
    }

    /// Restarts the server (e.g. after a change to `postgresql.conf` that needs one).
    pub fn restart(&self) {
        let log = self.dir.join("server.log");
        // -l: without a log file the server would inherit our stdout pipe and output() would
        // wait for it forever.
        self.pg_ctl(&["-l", log.to_str().unwrap(), "-w", "-t", "60", "restart"]);
    }

    /// Stops the server as a crash would (`-m immediate`): what it had not sent to its
    /// standbys is lost to them.
    pub fn stop_immediately(&self) {
        self.pg_ctl(&["-m", "immediate", "-w", "stop"]);
    }

    /// Starts the server again after a stop (it comes up as it was: a standby stays one).
    pub fn start_again(&self) {
        let log = self.dir.join("server.log");
        self.pg_ctl(&["-l", log.to_str().unwrap(), "-w", "-t", "60", "start"]);
    }

    /// Stops the server and starts it again listening on `port` (the address of a server
    /// that is gone, say).
    pub fn move_to_port(&mut self, port: u16) {
        self.pg_ctl(&["-m", "fast", "-w", "stop"]);
        let conf = self.dir.join("postgresql.conf");
        let text = std::fs::read_to_string(&conf).expect("read postgresql.conf");
        std::fs::write(&conf, format!("{text}\nport = {port}\n")).expect("write postgresql.conf");
        std::fs::write(self.dir.join("pg-local.port"), port.to_string()).expect("write pg-local.port");
        // A standby's directory holds its primary's socket lock file (pg_basebackup copies it),
        // which would keep the server off that port's socket.
        let _ = std::fs::remove_file(self.dir.join(format!(".s.PGSQL.{port}.lock")));
        let log = self.dir.join("server.log");
        self.pg_ctl(&["-l", log.to_str().unwrap(), "-w", "-t", "60", "start"]);
        self.port = port;
    }

    /// Runs `pg_ctl -D <dir> <args>` as the cluster's owner: `postgres` when the tests run as
    /// root.
    fn pg_ctl(&self, args: &[&str]) {
        let bindir = std::env::var("PG_BINDIR").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".to_string());
        let pg_ctl = Path::new(&bindir).join("pg_ctl");
        let mut command = match is_root() {
            true => {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(&pg_ctl);
                c
            }
            false => Command::new(&pg_ctl),
        };
        let out = command.arg("-D").arg(&self.dir).args(args).output().expect("cannot run pg_ctl");
        if !out.status.success() {
            panic!(
                "pg_ctl {} of {} failed:\n{}{}",
                args.join(" "),
                self.dir.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    pub fn conninfo(&self, db: &str) -> String {
        format!("host=127.0.0.1 port={} user={ROLE} password={PASSWORD} dbname={db}", self.port)
    }

    pub fn conninfo_as(&self, user: &str, password: &str, db: &str) -> String {
        format!("host=127.0.0.1 port={} user={user} password={password} dbname={db}", self.port)
    }

    /// What the test's own sessions connect with (see `socket_clients`).
    pub fn client_conninfo(&self, db: &str) -> String {
        match self.socket_clients {
            true => format!("host={} port={} user={ROLE} dbname={db}", self.dir.display(), self.port),
            false => self.conninfo(db),
        }
    }

    pub async fn client(&self, db: &str) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.client_conninfo(db), tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("connect to {db} on port {}: {e}", self.port));
        tokio::spawn(async move {
            let _ = conn.await;
        });
        client
    }

    /// Runs SQL through psql, outside any async runtime (usable from Drop). Returns stdout.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = Command::new("psql")
            .args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U", ROLE, "-d", db])
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-c")
            .arg(sql)
            .env("PGPASSWORD", PASSWORD)
            .output()
            .expect("cannot run psql");
        if !out.status.success() {
            panic!("psql on port {} failed for {sql:?}:\n{}", self.port, String::from_utf8_lossy(&out.stderr));
        }
        String::from_utf8_lossy(&out.stdout).trim_end().to_string()
    }

    /// A fresh database on this cluster, dropped (with its slots and publications) on drop.
    pub fn fresh_db(&self, prefix: &str) -> TestDb<'_> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let name = format!("{prefix}_{}", SEQ.fetch_add(1, Ordering::Relaxed));
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\""));
        TestDb { cluster: self, name }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.owned {
            let _ = Command::new("bash")
                .arg(repo_root().join("scripts/pg-local.sh"))
                .args(["destroy", self.dir.to_str().unwrap_or_default()])
                .output();
        }
    }
}

pub struct TestDb<'c> {
    pub cluster: &'c Cluster,
    pub name: String,
}

impl TestDb<'_> {
    pub fn conninfo(&self) -> String {
        self.cluster.conninfo(&self.name)
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        self.cluster.client(&self.name).await
    }

    pub fn client_conninfo(&self) -> String {
        self.cluster.client_conninfo(&self.name)
    }

    pub fn psql(&self, sql: &str) -> String {
        self.cluster.psql(&self.name, sql)
    }
}

impl Drop for TestDb<'_> {
    fn drop(&mut self) {
        let db = self.name.replace('\'', "''");
        // Slots keep WAL forever: remove them even when the test failed.
        let _ = std::panic::catch_unwind(|| {
            self.cluster.psql(
                "postgres",
                &format!(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}' AND pid <> pg_backend_pid();
                     SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE database = '{db}' AND active_pid IS NOT NULL;"
                ),
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
            self.cluster.psql(
                "postgres",
                &format!("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = '{db}' AND NOT active"),
            );
            self.cluster.psql("postgres", &format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name));
        });
    }
}
