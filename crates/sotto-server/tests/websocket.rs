//! The push WebSocket from the client's side of a real connection: it carries the queue and
//! takes acknowledgements, every open socket of a device gets each message, a device keeps
//! only its newest few sockets, and a client can hold no more than a few KiB of the server's
//! memory or keep a dead connection open.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

mod common;

use common::{TestServer, start, start_shaped, start_with, websocket, with_limits};
use futures_util::{SinkExt as _, StreamExt as _};
use sotto_proto::DeviceAddr;
use sotto_proto::api::{PushEvent, PushRequest};
use sotto_server::Config;
use sotto_server::push::{Push, Wake};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// A bound on waits that only a broken server reaches; never a measurement.
const PATIENCE: Duration = Duration::from_secs(30);

/// The next frame that is not a ping or pong.
async fn next_frame<S>(ws: &mut S) -> Option<Message>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match tokio::time::timeout(PATIENCE, ws.next()).await.unwrap() {
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            Some(Ok(m)) => return Some(m),
            _ => return None,
        }
    }
}

/// The ids of the messages in the next frame, which must carry messages.
async fn next_ids<S>(ws: &mut S) -> Vec<u64>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    match next_frame(ws).await {
        Some(Message::Text(t)) => match serde_json::from_str(t.as_str()).unwrap() {
            PushEvent::Messages(q) => q.messages.iter().map(|m| m.id).collect(),
        },
        other => panic!("expected messages, got {other:?}"),
    }
}

/// Acknowledges `ids` on the socket.
async fn ack<S>(ws: &mut S, ids: Vec<u64>)
where
    S: futures_util::Sink<Message> + Unpin,
    S::Error: std::fmt::Debug,
{
    let ack = serde_json::to_string(&PushRequest::Ack { ids }).unwrap();
    ws.send(Message::Text(ack.into())).await.unwrap();
}

#[tokio::test]
async fn a_new_socket_carries_the_queue_from_its_start_and_an_ack_on_it_empties_the_queue() {
    let s = start().await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let mut sent = Vec::new();
    for n in 0..3 {
        sent.push(s.send_small(&alice, [0x45; 16], n, &[&bob]).await);
    }
    let mut ws = websocket(&s, &bob.token).await;
    let mut got = Vec::new();
    while got.len() < sent.len() {
        got.extend(next_ids(&mut ws).await);
    }
    assert_eq!(got, sent);
    // What is queued from now on comes as it is queued, once.
    let later = s.send_small(&alice, [0x45; 16], 3, &[&bob]).await;
    assert_eq!(next_ids(&mut ws).await, [later]);
    got.push(later);
    ack(&mut ws, got).await;
    tokio::time::timeout(PATIENCE, async {
        while !s.queue(&bob).await.messages.is_empty() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the acknowledgement on the socket emptied the queue");
}

#[tokio::test]
async fn a_socket_keeps_at_most_a_window_unacknowledged_and_sends_the_rest_after_acks() {
    let s = start().await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let window = sotto_proto::limits::MAX_SOCKET_ACK;
    let mut sent = Vec::new();
    for n in 0..window + 2 {
        sent.push(s.send_small(&alice, [0x46; 16], n, &[&bob]).await);
    }
    let mut ws = websocket(&s, &bob.token).await;
    let mut got = Vec::new();
    while got.len() < window {
        got.extend(next_ids(&mut ws).await);
    }
    assert_eq!(got, sent[..window]);
    // The last two wait for room, which each acknowledgement makes for one: a socket without
    // a window would have sent both in one page.
    ack(&mut ws, vec![got[0]]).await;
    assert_eq!(next_ids(&mut ws).await, [sent[window]]);
    ack(&mut ws, vec![got[1]]).await;
    assert_eq!(next_ids(&mut ws).await, [sent[window + 1]]);
}

#[tokio::test]
async fn a_malformed_request_on_a_socket_closes_it_as_invalid() {
    let s = start().await;
    let bob = s.user("bob").await;
    let mut ws = websocket(&s, &bob.token).await;
    ws.send(Message::Text("{\"type\":\"ack\"}".into()))
        .await
        .unwrap();
    match next_frame(&mut ws).await {
        Some(Message::Close(Some(frame))) => assert_eq!(frame.code, CloseCode::Invalid),
        other => panic!("expected a close frame, got {other:?}"),
    }
}

#[tokio::test]
async fn a_device_keeps_its_newest_sockets_and_every_one_gets_each_message() {
    let s = start().await; // at most 3 sockets per device
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let mut oldest = websocket(&s, &bob.token).await;
    let mut newer = Vec::new();
    for _ in 0..3 {
        newer.push(websocket(&s, &bob.token).await);
    }
    // The fourth socket closed the first, saying why.
    match next_frame(&mut oldest).await {
        Some(Message::Close(Some(frame))) => assert_eq!(frame.code, CloseCode::from(4000)),
        other => panic!("expected a close frame, got {other:?}"),
    }
    // Each of the three (say `recv --follow` and the web app) gets the new message.
    let id = s.send_small(&alice, [0x44; 16], 1, &[&bob]).await;
    for ws in &mut newer {
        assert_eq!(next_ids(ws).await, [id]);
    }
}

#[tokio::test]
async fn a_client_frame_over_a_few_kib_closes_the_socket() {
    let s = start().await;
    let bob = s.user("bob").await;
    let mut ws = websocket(&s, &bob.token).await;
    ws.send(Message::Text("x".repeat(64 * 1024).into()))
        .await
        .unwrap();
    assert!(
        !matches!(next_frame(&mut ws).await, Some(Message::Text(_))),
        "the socket stays open"
    );
    // The socket is gone: nothing more arrives, not even a push.
    assert!(next_frame(&mut ws).await.is_none());
}

/// Opens a WebSocket by hand on a raw TCP stream, so that nothing answers pings.
async fn raw_websocket(s: &TestServer, token: &str) -> tokio::net::TcpStream {
    let mut tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let request = format!(
        "GET /v1/ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Authorization: Bearer {token}\r\n\r\n",
        s.addr
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        tcp.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    tcp
}

/// Reads until the server closes the connection; panics if it never does.
async fn until_closed(tcp: &mut tokio::net::TcpStream) {
    let mut buf = [0u8; 1024];
    tokio::time::timeout(PATIENCE, async {
        while tcp.read(&mut buf).await.is_ok_and(|n| n > 0) {}
    })
    .await
    .expect("the server kept the connection open");
}

#[tokio::test]
async fn a_socket_that_never_answers_pings_is_closed() {
    let s = start_with(with_limits(&["websocket_ping=1s"])).await;
    let bob = s.user("bob").await;
    let mut tcp = raw_websocket(&s, &bob.token).await;
    until_closed(&mut tcp).await;
}

#[tokio::test]
async fn a_half_sent_huge_frame_closes_the_socket() {
    // Pings an hour apart: only the frame cap can close this socket within the wait.
    let s = start_with(with_limits(&["websocket_ping=1h"])).await;
    let bob = s.user("bob").await;
    let mut tcp = raw_websocket(&s, &bob.token).await;
    // A masked text frame announcing 60 MiB, then nothing more.
    let mut header = vec![0x81, 0x80 | 127];
    header.extend_from_slice(&(60u64 << 20).to_be_bytes());
    header.extend_from_slice(&[1, 2, 3, 4]);
    tcp.write_all(&header).await.unwrap();
    until_closed(&mut tcp).await;
}

/// A bus in front of this process's sockets, as several server processes would share one: it
/// records every wake-up and passes it on.
struct RecordingWake {
    woken: Mutex<Vec<DeviceAddr>>,
    sockets: Arc<Push>,
}

impl Wake for RecordingWake {
    fn wake(&self, device: &DeviceAddr) {
        self.woken.lock().unwrap().push(device.clone());
        self.sockets.wake(device);
    }
}

#[tokio::test]
async fn sends_wake_their_recipients_through_the_wake_the_server_was_given() {
    let bus: Arc<Mutex<Option<Arc<RecordingWake>>>> = Arc::default();
    let installed = bus.clone();
    let s = start_shaped(Config::default(), move |state| {
        let wake = Arc::new(RecordingWake {
            woken: Mutex::default(),
            sockets: state.push().clone(),
        });
        *installed.lock().unwrap() = Some(wake.clone());
        state.with_wake(wake)
    })
    .await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let mut ws = websocket(&s, &bob.token).await;
    s.send_small(&alice, [0x77; 16], 0, &[&bob]).await;
    let bus = bus.lock().unwrap().clone().unwrap();
    assert_eq!(*bus.woken.lock().unwrap(), [bob.device.addr().clone()]);
    // ...and what it passed on reached bob's socket.
    assert_eq!(next_ids(&mut ws).await.len(), 1);
}
