//! WebSocket push: a connected device is told when its queue has something new; it then
//! fetches over HTTP. Devices that are offline fetch when they connect.

use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use sotto_proto::DeviceAddr;
use sotto_proto::api::PushEvent;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

use crate::AppState;
use crate::auth::AuthDevice;

/// Wake-up signals per device. A wake with nobody listening is remembered until the device
/// next listens, so nothing sent between a fetch and a subscribe is missed.
#[derive(Default)]
pub struct Push {
    devices: Mutex<HashMap<DeviceAddr, Arc<Notify>>>,
}

impl Push {
    fn signal(&self, device: &DeviceAddr) -> Arc<Notify> {
        let mut map = self
            .devices
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.entry(device.clone()).or_default().clone()
    }

    /// Tells `device` its queue has news.
    pub fn wake(&self, device: &DeviceAddr) {
        self.signal(device).notify_one();
    }
}

/// `GET /v1/ws`: upgrade to a WebSocket that carries [`PushEvent`]s.
pub async fn websocket(
    State(state): State<AppState>,
    AuthDevice(device): AuthDevice,
    ws: WebSocketUpgrade,
) -> Response {
    let signal = state.push.signal(&device);
    ws.on_upgrade(move |socket| serve_socket(socket, signal))
}

async fn serve_socket(mut socket: WebSocket, signal: Arc<Notify>) {
    let event = serde_json::to_string(&PushEvent::NewMessages).unwrap_or_default();
    // Always start with one wake-up: the client fetches whatever queued while it was away.
    if socket
        .send(Message::Text(event.clone().into()))
        .await
        .is_err()
    {
        return;
    }
    loop {
        tokio::select! {
            () = signal.notified() => {
                if socket.send(Message::Text(event.clone().into())).await.is_err() {
                    return;
                }
            }
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
        }
    }
}
