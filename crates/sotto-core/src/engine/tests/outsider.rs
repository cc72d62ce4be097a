//! What the operator can inject besides what members send:
//! - a commit adding a member, made by no member (attack f): the operator holds a group's
//!   public state (a GroupInfo, signed by a member: Sotto's server never sees one, but a
//!   member's device could leak it) and has its own account, mallory, make an external commit
//!   that joins her to the group, which it delivers as if a member sent it. openmls takes
//!   such a commit as valid; Sotto refuses it;
//! - an old Welcome, delivered again to a device removed since, to take it back to the
//!   group as it was;
//! - a message under the id of one this device sent, where it would vanish behind it.

use super::local::{Device, LocalServer, queued, recv, removed, shown, text};
use crate::store::{ClientStore as _, HistoryItem, StoreTx as _};
use crate::{ClientError, Clock as _, Transport as _, group};
use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
use openmls::prelude::{
    ExternalCommitBuilder, MlsGroupJoinConfig, MlsMessageBodyIn, MlsMessageIn,
    OpenMlsProvider as _, PURE_CIPHERTEXT_WIRE_FORMAT_POLICY,
};
use sotto_proto::api::{QueuedKind, QueuedMessage, SendRequest};
use sotto_server::delivery::{self, QueueQuota, Submitted};

/// `mallory`'s external commit into the group `gid` of `member`, from the group's public
/// state as `member` would publish it.
fn external_commit(member: &Device, mallory: &Device, gid: &sotto_proto::GroupId) -> Vec<u8> {
    let group_info = member
        .store()
        .transaction(|tx| {
            let p = tx.mls();
            let g = group::load(&p, gid.as_bytes())?;
            let info = g
                .export_group_info(p.crypto(), &member.device, true)
                .unwrap();
            Ok::<_, ClientError>(info.tls_serialize_detached().unwrap())
        })
        .unwrap();
    let MlsMessageBodyIn::GroupInfo(info) = MlsMessageIn::tls_deserialize_exact(group_info)
        .unwrap()
        .extract()
    else {
        panic!("not a GroupInfo");
    };
    mallory
        .store()
        .transaction(|tx| {
            let p = tx.mls();
            let config = MlsGroupJoinConfig::builder()
                .wire_format_policy(PURE_CIPHERTEXT_WIRE_FORMAT_POLICY)
                .use_ratchet_tree_extension(true)
                .build();
            let (_, bundle) = ExternalCommitBuilder::new()
                .with_config(config)
                .build_group(&p, info, mallory.device.credential_with_key())
                .unwrap()
                .load_psks(p.storage())
                .unwrap()
                .build(p.rand(), p.crypto(), &mallory.device, |_| true)
                .unwrap()
                .finalize(&p)
                .unwrap();
            Ok::<_, ClientError>(bundle.commit().tls_serialize_detached().unwrap())
        })
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_adding_a_member_made_by_no_member_is_refused_by_every_member() {
    let server = LocalServer::new().await;
    let alice = server.device("alice").await;
    let bob = server.device("bob").await;
    let mallory = server.device("mallory").await;
    alice
        .create_group("team", &["bob".to_owned()])
        .await
        .unwrap();
    recv(&bob).await;
    let gid = alice.group_by_name("team").unwrap();
    let commit = external_commit(&alice, &mallory, &gid);

    // The operator delivers it to bob as if alice had sent it, with a roster holding mallory.
    let storage = alice.transport().storage();
    let send = SendRequest {
        client_id: hex::encode(rand::random::<[u8; 16]>()),
        message: commit.into(),
        recipients: vec![bob.me().clone()],
        to_roster: false,
        roster: Some(vec![
            alice.me().clone(),
            bob.me().clone(),
            mallory.me().clone(),
        ]),
        welcome: None,
    }
    .validate(&gid)
    .unwrap();
    let quota = QueueQuota {
        messages: 100,
        bytes: 1 << 20,
    };
    let done = delivery::submit(storage, alice.me(), &send, server.clock.now(), quota)
        .await
        .unwrap();
    assert!(matches!(done, Submitted::Accepted { .. }));

    // Bob refuses it as a security failure: mallory is not in his group.
    let seen = recv(&bob).await;
    assert!(
        matches!(&seen[..], [(_, HistoryItem::Security { reason, .. })]
            if reason.contains("a commit made by no member of the group")),
        "{seen:?}"
    );
    let members = bob.members("team").unwrap();
    assert!(members.iter().all(|m| m.user != "mallory"), "{members:?}");
    // Nothing reaches mallory.
    assert!(recv(&mallory).await.is_empty());
}

fn is_refusal(seen: &[super::local::Seen], words: &str) -> bool {
    matches!(seen, [(_, HistoryItem::Security { reason, .. })] if reason.contains(words))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_welcome_delivered_again_to_a_device_removed_since_is_refused() {
    let server = LocalServer::new().await;
    let alice = server.device("alice").await;
    let bob = server.device("bob").await;
    // The operator drains bob's one-time KeyPackages, so that alice adds him with his
    // last-resort one, whose key a device keeps: a Welcome to it can be opened again.
    let carol = server.device("carol").await;
    let token = carol.token().await.unwrap();
    // The last-resort KeyPackage is the one handed out again and again.
    let mut last = None;
    loop {
        let claimed = carol
            .transport()
            .claim(&token, &bob.me().user)
            .await
            .unwrap();
        let kp = claimed.key_packages[0].key_package.clone();
        if last.as_ref() == Some(&kp) {
            break;
        }
        last = Some(kp);
    }
    alice
        .create_group("team", &["bob".to_owned()])
        .await
        .unwrap();
    let welcome = queued(&bob)
        .await
        .into_iter()
        .find(|m| m.kind == QueuedKind::Welcome)
        .unwrap();
    recv(&bob).await;
    alice
        .remove_members("team", &["bob".to_owned()])
        .await
        .unwrap();
    assert_eq!(recv(&bob).await, [removed("alice", "bob")]);

    let again = QueuedMessage {
        id: welcome.id + 1_000,
        ..welcome
    };
    bob.process(&[again]).unwrap();
    let seen = shown(&bob);
    assert!(
        is_refusal(&seen, "an old one, replayed; refused"),
        "{seen:?}"
    );
    assert!(!bob.groups().unwrap()[0].active);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_delivered_under_the_id_of_one_this_device_sent_is_refused() {
    let server = LocalServer::new().await;
    let alice = server.device("alice").await;
    let bob = server.device("bob").await;
    alice.send_text("bob", "hi").await.unwrap();
    assert_eq!(recv(&bob).await, [text("alice", "hi")]);
    let sent = bob.send_text("alice", "mine").await.unwrap();
    alice.send_text("bob", "hidden?").await.unwrap();
    let message = queued(&bob).await.pop().unwrap();

    let renumbered = QueuedMessage {
        id: sent.id,
        ..message
    };
    bob.process(&[renumbered]).unwrap();
    let seen = shown(&bob);
    assert!(
        is_refusal(&seen, "which this device's history already holds"),
        "{seen:?}"
    );
}
