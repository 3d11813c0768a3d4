//! A scripted walsender on a local socket, for what a real server does not do on demand:
//! EOF in the middle of a stream, an ErrorResponse after data, CopyDone from the server,
//! and the exact bytes of our status updates.

use bytes::{Buf, BufMut, BytesMut};
use pg_ghost::conn::ConnInfo;
use pg_ghost::error::ErrorKind;
use pg_ghost::lsn::Lsn;
use pg_ghost::replication::transport::{ReplicationConnection, ReplicationStream, StreamEvent, StreamOptions};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(10);

struct Fake {
    socket: TcpStream,
}

impl Fake {
    async fn read_exact(&mut self, n: usize) -> Vec<u8> {
        let mut buf = vec![0; n];
        timeout(WAIT, self.socket.read_exact(&mut buf))
            .await
            .expect("client is silent")
            .expect("read");
        buf
    }

    /// A tagged frontend message: (tag, body).
    async fn recv(&mut self) -> (u8, Vec<u8>) {
        let header = self.read_exact(5).await;
        let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        (header[0], self.read_exact(len - 4).await)
    }

    async fn send(&mut self, tag: u8, body: &[u8]) {
        let mut frame = vec![tag];
        frame.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        frame.extend_from_slice(body);
        self.socket.write_all(&frame).await.expect("write");
    }

    async fn ready(&mut self) {
        self.send(b'Z', b"I").await;
    }

    async fn expect_query(&mut self, starts_with: &str) -> String {
        let (tag, body) = self.recv().await;
        assert_eq!(tag, b'Q');
        let text = String::from_utf8_lossy(&body[..body.len() - 1]).into_owned();
        assert!(text.starts_with(starts_with), "{text}");
        text
    }

    /// Startup (trust), the publication check, SHOW wal_sender_timeout, START_REPLICATION.
    async fn accept_until_streaming(listener: &TcpListener, wal_sender_timeout: &str) -> Fake {
        let (socket, _) = timeout(WAIT, listener.accept()).await.expect("no client").expect("accept");
        let mut fake = Fake { socket };
        let mut len = i32::from_be_bytes(fake.read_exact(4).await.try_into().expect("4 bytes")) as usize;
        let mut startup = fake.read_exact(len - 4).await;
        if startup == 80877103i32.to_be_bytes() {
            // sslmode=prefer asks for TLS first; this server, like one with ssl = off, declines.
            fake.socket.write_all(b"N").await.expect("write");
            len = i32::from_be_bytes(fake.read_exact(4).await.try_into().expect("4 bytes")) as usize;
            startup = fake.read_exact(len - 4).await;
        }
        assert!(startup.windows(9).any(|w| w == b"\0database"), "replication=database is sent");
        fake.send(b'R', &0i32.to_be_bytes()).await;
        fake.send(b'K', &[0, 0, 0, 42, 0, 0, 0, 7]).await;
        fake.ready().await;

        fake.expect_query("SELECT n FROM unnest").await;
        fake.send(b'C', b"SELECT 0\0").await;
        fake.ready().await;

        fake.expect_query("SHOW wal_sender_timeout").await;
        let mut desc = BytesMut::new();
        desc.put_i16(1);
        desc.put_slice(b"wal_sender_timeout\0");
        desc.put_slice(&[0; 18]);
        fake.send(b'T', &desc).await;
        let mut row = BytesMut::new();
        row.put_i16(1);
        row.put_i32(wal_sender_timeout.len() as i32);
        row.put_slice(wal_sender_timeout.as_bytes());
        fake.send(b'D', &row).await;
        fake.send(b'C', b"SHOW\0").await;
        fake.ready().await;

        fake.expect_query("START_REPLICATION SLOT \"s\" LOGICAL 0/0").await;
        fake.send(b'W', &[0, 0, 0]).await;
        fake
    }

    async fn keepalive(&mut self, wal_end: u64, reply: bool) {
        let mut b = BytesMut::new();
        b.put_u8(b'k');
        b.put_u64(wal_end);
        b.put_i64(0);
        b.put_u8(reply as u8);
        self.send(b'd', &b).await;
    }

    async fn xlog_data(&mut self, wal_start: u64, payload: &[u8]) {
        let mut b = BytesMut::new();
        b.put_u8(b'w');
        b.put_u64(wal_start);
        b.put_u64(wal_start);
        b.put_i64(0);
        b.put_slice(payload);
        self.send(b'd', &b).await;
    }

    /// The next standby status update: (write, flush, apply, reply requested).
    async fn status_update(&mut self) -> (u64, u64, u64, u8) {
        let (tag, body) = self.recv().await;
        assert_eq!(tag, b'd', "expected CopyData, got {:?}", tag as char);
        assert_eq!(body.len(), 34);
        let mut b = &body[..];
        assert_eq!(b.get_u8(), b'r');
        let (write, flush, apply) = (b.get_u64(), b.get_u64(), b.get_u64());
        let _clock = b.get_i64();
        (write, flush, apply, b.get_u8())
    }
}

async fn listen() -> (TcpListener, ConnInfo) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let info = ConnInfo::parse(&format!("host=127.0.0.1 port={port} user=u dbname=d")).expect("conninfo");
    (listener, info)
}

async fn client_start(info: ConnInfo) -> ReplicationStream {
    ReplicationConnection::connect(&info)
        .await
        .expect("connect")
        .start_replication("s", Lsn::ZERO, &StreamOptions::new(["p"]))
        .await
        .expect("start")
}

#[tokio::test]
async fn keepalive_is_answered_and_flushed_never_goes_back() {
    let (listener, info) = listen().await;
    let client = tokio::spawn(client_start(info));
    let mut fake = Fake::accept_until_streaming(&listener, "4s").await;
    let mut stream = client.await.expect("client task");
    assert_eq!(stream.status_interval(), Duration::from_secs(2), "half of wal_sender_timeout");

    fake.keepalive(0x500, true).await;
    assert_eq!(
        fake.status_update().await,
        (0, 0, 0, 0),
        "answered at once, with nothing acknowledged"
    );

    stream.set_flushed(Lsn(100));
    stream.set_flushed(Lsn(50));
    stream.set_written(Lsn(40));
    stream.set_applied(Lsn(90));
    stream.send_status_now();
    assert_eq!(fake.status_update().await, (100, 100, 90, 0));

    // The periodic update comes by itself (2 s here) with the same positions.
    let started = tokio::time::Instant::now();
    assert_eq!(fake.status_update().await, (100, 100, 90, 0));
    assert!(started.elapsed() >= Duration::from_millis(1500), "{:?}", started.elapsed());

    let batch = stream.recv().await.expect("recv").expect("open");
    assert_eq!(
        batch.first().map(|e| matches!(
            e,
            StreamEvent::Keepalive {
                wal_end: Lsn(0x500),
                reply_requested: true,
                ..
            }
        )),
        Some(true)
    );

    // EOF in the middle of the stream.
    fake.xlog_data(0x600, b"B-before-eof").await;
    drop(fake);
    let mut events = Vec::new();
    let err = timeout(WAIT, async {
        loop {
            match stream.recv().await {
                Ok(Some(b)) => events.extend(b),
                Ok(None) => panic!("EOF is not a clean end"),
                Err(e) => return e,
            }
        }
    })
    .await
    .expect("EOF must surface, not hang");
    assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
    assert!(err.to_string().contains("EOF") && err.to_string().contains("slot \"s\""), "{err}");
    assert!(
        matches!(events.as_slice(), [StreamEvent::XLogData { data, .. }] if &data[..] == b"B-before-eof"),
        "data read before the EOF is delivered first"
    );
}

#[tokio::test]
async fn error_response_mid_stream_is_mapped() {
    let (listener, info) = listen().await;
    let client = tokio::spawn(client_start(info));
    let mut fake = Fake::accept_until_streaming(&listener, "0").await;
    let mut stream = client.await.expect("client task");
    assert_eq!(
        stream.status_interval(),
        Duration::from_secs(10),
        "no timeout: the configured interval"
    );

    fake.xlog_data(0x10, b"I-data").await;
    fake.send(
        b'E',
        b"SFATAL\0VFATAL\0C57P01\0Mterminating connection due to administrator command\0\0",
    )
    .await;
    let first = stream.recv().await.expect("data first");
    assert_eq!(first.map(|b| b.len()), Some(1));
    let err = stream.recv().await.expect_err("then the error");
    assert_eq!(err.kind(), ErrorKind::Connection);
    assert_eq!(err.sqlstate(), Some("57P01"));
    assert!(err.to_string().contains("administrator command"), "{err}");
}

#[tokio::test]
async fn server_copy_done_ends_the_stream_cleanly() {
    let (listener, info) = listen().await;
    let client = tokio::spawn(client_start(info));
    let mut fake = Fake::accept_until_streaming(&listener, "1min").await;
    let mut stream = client.await.expect("client task");

    fake.xlog_data(0x10, b"C-last").await;
    fake.send(b'c', b"").await;
    let (tag, _) = fake.recv().await;
    assert_eq!(tag, b'c', "CopyDone is answered with CopyDone");
    fake.send(b'C', b"START_REPLICATION\0").await;
    fake.ready().await;

    assert_eq!(stream.recv().await.expect("recv").map(|b| b.len()), Some(1));
    assert!(stream.recv().await.expect("clean end").is_none());
    assert!(stream.recv().await.expect("still ended").is_none());
    let mut conn = stream.stop().await.expect("the connection comes back");

    let (sent, served) = tokio::join!(conn.drop_slot("s", true), async {
        fake.expect_query("DROP_REPLICATION_SLOT \"s\" WAIT").await;
        fake.send(b'C', b"DROP_REPLICATION_SLOT\0").await;
        fake.ready().await;
    });
    let () = served;
    sent.expect("command mode again");
}

#[tokio::test]
async fn stop_sends_final_status_then_copy_done() {
    let (listener, info) = listen().await;
    let client = tokio::spawn(client_start(info));
    let mut fake = Fake::accept_until_streaming(&listener, "1min").await;
    let stream = client.await.expect("client task");
    stream.set_flushed(Lsn(0x77));
    let (conn, ()) = tokio::join!(stream.stop(), async {
        assert_eq!(fake.status_update().await, (0x77, 0x77, 0, 0));
        let (tag, _) = fake.recv().await;
        assert_eq!(tag, b'c');
        // What the server still had in flight is discarded.
        fake.xlog_data(0x80, b"late").await;
        fake.send(b'c', b"").await;
        fake.send(b'C', b"START_REPLICATION\0").await;
        fake.ready().await;
    });
    conn.expect("stop");
}
