//! The server's own connection handling (issue 16, findings 4 and 8), over real TCP: half-sent requests are cut
//! off while complete ones are answered, heads past the size limit get 431, and the connection limit queues rather
//! than refuses.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tally::connections::{serve, ConnectionLimits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::app;

async fn start(pool: PgPool, limits: ConnectionLimits) -> SocketAddr {
    let app = app(pool);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(serve(listener, app.router, limits, std::future::pending(), Duration::from_secs(20)));
    address
}

/// Sends a complete request and returns the status line of the answer.
async fn status_line(address: SocketAddr, extra_header: &str) -> String {
    let mut stream = TcpStream::connect(address).await.unwrap();
    let request = format!("GET /login HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra_header}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).lines().next().unwrap_or_default().to_owned()
}

/// Opens a connection and sends half a request head, never the rest.
async fn half_sent(address: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream.write_all(b"GET /login HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ").await.unwrap();
    stream
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn half_sent_requests_are_cut_off_while_complete_ones_are_answered(pool: PgPool) {
    let limits = ConnectionLimits {
        header_read_timeout: Duration::from_secs(1),
        max_header_bytes: 16_384,
        max_connections: 1_000,
    };
    let address = start(pool, limits).await;
    let mut slow = Vec::new();
    for _ in 0..200 {
        slow.push(half_sent(address).await);
    }
    // While they hang, complete requests are answered.
    for _ in 0..5 {
        assert_eq!(status_line(address, "").await, "HTTP/1.1 200 OK");
    }
    // Every half-sent one is closed by the server soon after the header timeout (before: never).
    let started = Instant::now();
    for mut stream in slow {
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "a half-sent request is still open after {:?}", started.elapsed());
    }
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn an_oversized_head_gets_431(pool: PgPool) {
    let limits = ConnectionLimits {
        header_read_timeout: Duration::from_secs(5),
        max_header_bytes: 16_384,
        max_connections: 100,
    };
    let address = start(pool, limits).await;
    let big = format!("X-Big: {}\r\n", "a".repeat(64 * 1024));
    assert_eq!(status_line(address, &big).await, "HTTP/1.1 431 Request Header Fields Too Large");
    let fits = format!("X-Fits: {}\r\n", "a".repeat(4 * 1024));
    assert_eq!(status_line(address, &fits).await, "HTTP/1.1 200 OK");
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn at_the_connection_limit_new_requests_wait_and_are_then_answered(pool: PgPool) {
    let limits =
        ConnectionLimits { header_read_timeout: Duration::from_secs(1), max_header_bytes: 16_384, max_connections: 10 };
    let address = start(pool, limits).await;
    let mut slow = Vec::new();
    for _ in 0..10 {
        slow.push(half_sent(address).await);
    }
    // All ten slots are taken by clients that never finish: the next request waits for a slot, which the header
    // timeout frees, and is answered.
    let started = Instant::now();
    assert_eq!(status_line(address, "").await, "HTTP/1.1 200 OK");
    assert!(started.elapsed() < Duration::from_secs(5), "answered after {:?}", started.elapsed());
    drop(slow);
}
