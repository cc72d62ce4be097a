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
                let payload = payload(&devices).into();
                devices.clear();
                if let Err(e) = publisher.publish(SUBJECT, payload).await {
                    tracing::debug!(error = %e, "wake-ups were not published");
                }
            }
        });
        let receiver = local.clone();
        tokio::spawn(async move {
            use futures_util::StreamExt as _;
            while let Some(message) = incoming.next().await {
                let (devices, malformed) = devices(&message.payload);
                for device in &devices {
                    receiver.wake(device);
                }
                if malformed > 0 {
                    tracing::warn!(malformed, "dropping malformed wake-ups from NATS");
                }
            }
        });
        Ok(Arc::new(NatsWake { local, outgoing }))
    }
}

/// One NATS message naming `devices`, a line each.
fn payload(devices: &[DeviceAddr]) -> Vec<u8> {
    let lines: Vec<Vec<u8>> = devices
        .iter()
        .map(DeviceAddr::credential_identity)
        .collect();
    lines.join(&b'\n')
}

/// The devices a NATS message names, at most [`PER_PUBLISH`] (empty lines are skipped), and
/// how many of its lines were not devices. Only nodes publish here, but a wake-up is a hint:
/// a malformed one is dropped, and a message cannot wake more than a node would send.
fn devices(payload: &[u8]) -> (Vec<DeviceAddr>, usize) {
    let mut devices = Vec::new();
    let mut malformed = 0usize;
    for line in payload
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .take(PER_PUBLISH)
    {
        match DeviceAddr::from_credential_identity(line) {
            Ok(device) => devices.push(device),
            Err(_) => malformed = malformed.saturating_add(1),
        }
    }
    (devices, malformed)
}

impl Wake for NatsWake {
    fn wake(&self, device: &DeviceAddr) {
        self.local.wake(device);
        if self.outgoing.try_send(device.clone()).is_err() {
            tracing::debug!("a wake-up was dropped: the publisher is behind");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{PER_PUBLISH, devices, payload};
    use sotto_proto::{DeviceAddr, DeviceId, Username};

    fn device(i: usize) -> DeviceAddr {
        DeviceAddr {
            user: Username::parse(&format!("u{i:06}")).expect("a valid name"),
            device: DeviceId::new(i as u64),
        }
    }

    #[test]
    fn a_payload_names_its_devices_a_line_each_and_reads_back_whole() {
        let one = vec![device(1)];
        assert_eq!(devices(&payload(&one)), (one, 0));
        let many: Vec<DeviceAddr> = (0..PER_PUBLISH).map(device).collect();
        assert_eq!(devices(&payload(&many)), (many, 0));
    }

    #[test]
    fn a_malformed_payload_wakes_only_the_devices_it_names_and_at_most_a_batch() {
        assert_eq!(devices(b""), (Vec::new(), 0));
        let mut raw = payload(&[device(1), device(2)]);
        raw.extend_from_slice(b"\n\nnot a device\n\xff\n");
        assert_eq!(devices(&raw), (vec![device(1), device(2)], 2));
        let too_many: Vec<DeviceAddr> = (0..PER_PUBLISH + 5).map(device).collect();
        let (woken, malformed) = devices(&payload(&too_many));
        assert_eq!((woken.len(), malformed), (PER_PUBLISH, 0));
    }
}
