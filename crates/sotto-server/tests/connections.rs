//! What one client address can hold of the server: a bounded number of connections, a
//! bounded time to send headers and a whole request, and bodies no larger than the route
//! carries. Raw TCP on loopback; every wait is bounded, none is measured.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

mod common;

use common::{TestServer, code, start, start_with, with_limits};
use reqwest::StatusCode;
use serde_json::Value;
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// A bound on waits that only a broken server reaches; never a measurement.
const PATIENCE: Duration = Duration::from_secs(30);

/// Everything the server sends until it closes the connection.
async fn read_until_closed(tcp: &mut TcpStream) -> String {
    let mut all = Vec::new();
    tokio::time::timeout(PATIENCE, tcp.read_to_end(&mut all))
        .await
        .expect("the server kept the connection open")
        .ok();
    String::from_utf8_lossy(&all).into_owned()
}

/// A connection from 127.0.0.2, an address of its own (the test client uses 127.0.0.1).
async fn connect_from_elsewhere(s: &TestServer) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    socket.connect(s.addr).await.unwrap()
}

/// Serves one keep-alive request on `tcp`; false if the server closed it instead.
async fn served(tcp: &mut TcpStream) -> bool {
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 256];
    tokio::time::timeout(PATIENCE, async {
        while !answer.ends_with(b"ok") {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
        true
    })
    .await
    .expect("the server neither answered nor closed")
}

#[tokio::test]
async fn one_address_holds_at_most_its_connection_cap() {
    let s = start_with(with_limits(&["connections_per_ip=3"])).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut tcp = connect_from_elsewhere(&s).await;
        assert!(served(&mut tcp).await);
        held.push(tcp);
    }
    let mut fourth = connect_from_elsewhere(&s).await;
    assert!(!served(&mut fourth).await, "a fourth connection was served");
    // Closing one makes room (once the server has seen it close).
    drop(held.pop());
    tokio::time::timeout(PATIENCE, async {
        loop {
            if served(&mut connect_from_elsewhere(&s).await).await {
                return;
            }
        }
    })
    .await
    .expect("no room after a connection closed");
}

#[tokio::test]
async fn headers_that_never_finish_are_cut_off() {
    let s = start_with(with_limits(&["header_timeout=1s"])).await;
    let mut tcp = TcpStream::connect(s.addr).await.unwrap();
    tcp.write_all(b"GET /v1/config HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    read_until_closed(&mut tcp).await;
}

#[tokio::test]
async fn a_body_that_never_finishes_gets_408_with_a_code() {
    let s = start_with(with_limits(&["request_timeout=1s"])).await;
    let mut tcp = TcpStream::connect(s.addr).await.unwrap();
    let head = format!(
        "POST /v1/accounts HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Content-Length: 1000000\r\n\r\n{{\"identity_key\":",
        s.addr
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let answer = read_until_closed(&mut tcp).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or("");
    let body: Value = serde_json::from_str(body).unwrap();
    assert_eq!(code(&body), "request_timeout");
}

#[tokio::test]
async fn only_sends_may_carry_large_bodies() {
    let s = start().await;
    let alice = s.user("alice").await;
    let big = vec![b' '; sotto_proto::limits::MAX_SMALL_BODY + 1];
    for path in [
        "/v1/auth/challenge",
        "/v1/auth/token",
        "/v1/keypackages/claim",
        "/v1/queue/ack",
    ] {
        let (status, b) = s.post_raw(path, Some(&alice.token), big.clone()).await;
        assert_eq!(
            (status, code(&b)),
            (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            "{path}"
        );
    }
    let bigger = vec![b' '; sotto_proto::limits::MAX_KEY_PACKAGES_BODY + 1];
    let (status, b) = s.post_raw("/v1/accounts", None, bigger).await;
    assert_eq!(
        (status, code(&b)),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
    );
}
