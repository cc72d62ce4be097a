//! Wake-ups between server nodes through NATS. Every node shares one database, the source of
//! truth; NATS carries only "device X has mail". A node wakes its own sockets at once and
//! publishes the device on [`SUBJECT`]; every other node (NATS does not echo a node's own
//! messages back) wakes the sockets it holds for that device, which then read the device's
//! queue from the database. One NATS message names up to 1,024 devices, a line
//! each.
//!
//! A wake-up is a hint, never a message: when NATS is down, or a wake-up is dropped, nothing
//! is lost; a socket finds what was queued for it at its next ping, when it checks its queue
//! anyway (`push.rs`). The node starts without NATS and connects when it can.

use sotto_proto::DeviceAddr;
use std::sync::Arc;
use tokio::sync::mpsc;

use crate::push::{Push, Wake};

/// The subject every node publishes wake-ups on and listens to.
pub const SUBJECT: &str = "sotto.wake";

/// Wake-ups waiting to be published; past this, new ones are dropped (the sockets' own
/// checks catch up).
const BACKLOG: usize = 65_536;

/// Most devices one NATS message names (a line each): a message to a large group wakes its
/// devices in a few publishes, not one each.
const PER_PUBLISH: usize = 1024;

/// [`Wake`] across nodes through NATS.
pub struct NatsWake {
    local: Arc<Push>,
    outgoing: mpsc::Sender<DeviceAddr>,
}

impl NatsWake {
    /// Connects to the NATS server at `url` (in the background, retrying, if it is not
    /// reachable now), publishes this node's wake-ups and wakes `local`'s sockets for every
    /// other node's.
    pub async fn start(url: &str, local: Arc<Push>) -> Result<Arc<NatsWake>, String> {
        let client = async_nats::ConnectOptions::new()
            .no_echo()
            .retry_on_initial_connect()
            .name("sotto-server")
            .connect(url)
            .await
            // The URL may hold a password: never repeated.
            .map_err(|e| format!("NATS: {e}"))?;
        let mut incoming = client
            .subscribe(SUBJECT)
            .await
            .map_err(|e| format!("NATS: {e}"))?;
        // With NATS up, the subscription is in place before this node serves anyone; with
        // it down, the node starts anyway.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), client.flush()).await;
        let (outgoing, mut queued) = mpsc::channel::<DeviceAddr>(BACKLOG);
        let publisher = client.clone();
        tokio::spawn(async move {
            let mut devices = Vec::with_capacity(PER_PUBLISH);
            while queued.recv_many(&mut devices, PER_PUBLISH).await > 0 {
                let lines: Vec<Vec<u8>> =
                    devices.drain(..).map(|d| d.credential_identity()).collect();
                let payload = lines.join(&b'\n').into();
                if let Err(e) = publisher.publish(SUBJECT, payload).await {
                    tracing::debug!(error = %e, "wake-ups were not published");
                }
            }
        });
        let receiver = local.clone();
        tokio::spawn(async move {
            use futures_util::StreamExt as _;
            while let Some(message) = incoming.next().await {
                // Only nodes publish here, but a malformed wake-up is dropped, never trusted.
                for line in message.payload.split(|b| *b == b'\n') {
                    match DeviceAddr::from_credential_identity(line) {
                        Ok(device) => receiver.wake(&device),
                        Err(_) => tracing::warn!("dropping a malformed wake-up from NATS"),
                    }
                }
            }
        });
        Ok(Arc::new(NatsWake { local, outgoing }))
    }
}

impl Wake for NatsWake {
    fn wake(&self, device: &DeviceAddr) {
        self.local.wake(device);
        if self.outgoing.try_send(device.clone()).is_err() {
            tracing::debug!("a wake-up was dropped: the publisher is behind");
        }
    }
}
