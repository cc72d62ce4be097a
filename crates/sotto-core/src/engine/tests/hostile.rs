//! What a malicious member or the server's operator can do, past the engine: commits no
//! honest engine would post, and reading the server's queues.

use super::local::Device;
use crate::{ClientError, Transport as _};
use sotto_proto::api::SendRequest;
use sotto_proto::{DeviceAddr, GroupId};

/// `by`, a member of `group`, adds `new` with a real commit that it posts past its own
/// engine, naming `recipients` and declaring `roster` to the server, whatever the group holds:
/// what a malicious member can do.
pub async fn add_declaring(
    by: &Device,
    group: &GroupId,
    new: &Device,
    recipients: Vec<DeviceAddr>,
    roster: Vec<DeviceAddr>,
) {
    use crate::store::{ClientStore as _, StoreTx as _};
    let suite = crate::suite::ciphersuite(crate::suite::XWING).unwrap();
    let token = by.token().await.unwrap();
    let claimed = by.transport().claim(&token, &new.me().user).await.unwrap();
    let key = by.fetch_device_list(&new.me().user).await.unwrap().devices[0]
        .signature_key
        .clone();
    let (commit, welcome) = by
        .store()
        .transaction(|tx| {
            let p = tx.mls();
            let mut g = crate::group::load(&p, group.as_bytes())?;
            let kp = crate::group::verify_key_package(
                &p,
                claimed.key_packages[0].key_package.as_slice(),
                new.me(),
                key.as_slice(),
                suite,
            )?;
            let out = crate::group::add(&p, &by.device, &mut g, &[kp], 1)?;
            Ok::<_, ClientError>((out.commit, out.welcome.unwrap()))
        })
        .unwrap();
    let request = SendRequest {
        client_id: hex::encode(rand::random::<[u8; 16]>()),
        message: commit.into(),
        recipients,
        to_roster: false,
        roster: Some(roster),
        welcome: Some(sotto_proto::api::WelcomeOut {
            message: welcome.into(),
            recipients: vec![new.me().clone()],
        }),
    };
    by.transport().send(&token, group, &request).await.unwrap();
}

/// What the server holds in `device`'s queue, as its operator sees it.
pub async fn queued(device: &Device) -> Vec<sotto_proto::api::QueuedMessage> {
    use sotto_server::storage::DeliveryStore as _;
    device
        .transport()
        .storage()
        .fetch(device.me(), 0, 100, sotto_proto::limits::MAX_FETCH_BYTES)
        .await
        .unwrap()
        .messages
}
