//! A commit adding a member, made by no member (attack f): the operator holds a group's
//! public state (a GroupInfo, signed by a member: Sotto's server never sees one, but a
//! member's device could leak it) and has its own account, mallory, make an external commit
//! that joins her to the group, which it delivers as if a member sent it. openmls takes such
//! a commit as valid; Sotto refuses it.

use super::local::{LocalServer, recv};
use crate::engine::tests::local::Device;
use crate::store::{ClientStore as _, HistoryItem, StoreTx as _};
use crate::{ClientError, Clock as _, group};
use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
use openmls::prelude::{
    ExternalCommitBuilder, MlsGroupJoinConfig, MlsMessageBodyIn, MlsMessageIn,
    OpenMlsProvider as _, PURE_CIPHERTEXT_WIRE_FORMAT_POLICY,
};
use sotto_proto::api::SendRequest;
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
