//! What the others do when a member misbehaves (or is made to): these tests drive one
//! device's engine past its own checks, as a malicious or compromised member would.

use super::local::{LocalServer, add_declaring, added, event, recv, text};
use crate::events::Event;
use crate::store::{ClientStore as _, StoreTx as _};
use crate::{ClientError, Content, DeviceKey, Transport as _, group};
use sotto_proto::Username;
use sotto_proto::api::{ClaimResponse, ClaimedKeyPackage};

fn user(name: &str) -> Username {
    Username::parse(name).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_info_without_a_name_cannot_turn_a_group_into_a_one_to_one() {
    let server = LocalServer::new().await;
    let alice = server.device("alice").await;
    let bob = server.device("bob").await;
    let carol = server.device("carol").await;
    alice
        .create_group("team", &["bob".into(), "carol".into()])
        .await
        .unwrap();
    recv(&bob).await;
    recv(&carol).await;
    // Alice, a member, describes the group as her one-to-one conversation with bob.
    let gid = alice.group_by_name("team").unwrap();
    let unnamed = Content::GroupInfo { name: None };
    alice.send_content(&gid, &unnamed, 1, None).await.unwrap();
    assert_eq!(
        recv(&bob).await,
        [event("alice", Event::GroupStaysGroup { by: user("alice") })]
    );
    assert_eq!(bob.groups().unwrap()[0].name.as_deref(), Some("team"));
    // So bob's message to alice goes to a conversation of their own, not to the group.
    bob.send_text("alice", "just for you").await.unwrap();
    recv(&carol).await;
    assert_eq!(recv(&alice).await, [text("bob", "just for you")]);
    assert!(recv(&carol).await.is_empty());
    assert_ne!(bob.direct_conversation(&user("alice")).unwrap(), Some(gid));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_group_name_from_a_member_is_shown_as_an_event() {
    let server = LocalServer::new().await;
    let alice = server.device("alice").await;
    let bob = server.device("bob").await;
    alice.create_group("team", &["bob".into()]).await.unwrap();
    recv(&bob).await;
    let renamed = Content::GroupInfo {
        name: Some("crew".into()),
    };
    let gid = alice.group_by_name("team").unwrap();
    alice.send_content(&gid, &renamed, 1, None).await.unwrap();
    assert_eq!(
        recv(&bob).await,
        [event(
            "alice",
            Event::Renamed {
                by: user("alice"),
                from: "team".into(),
                to: "crew".into()
            }
        )]
    );
    assert_eq!(bob.groups().unwrap()[0].name.as_deref(), Some("crew"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_refuses_a_one_to_one_conversation_that_holds_a_third_person() {
    let server = LocalServer::new().await;
    let alice = server.device("alice").await;
    let bob = server.device("bob").await;
    let carol = server.device("carol").await;
    alice.send_text("bob", "hi").await.unwrap();
    recv(&bob).await;
    // Bob adds carol to his one-to-one conversation with alice.
    let gid = bob.direct_conversation(&user("alice")).unwrap().unwrap();
    bob.change_members(&gid, &[user("carol")], &[])
        .await
        .unwrap();
    assert_eq!(
        recv(&alice).await,
        [event(
            "bob",
            Event::Added {
                by: user("bob"),
                user: user("carol")
            }
        )]
    );
    let err = alice.send_text("bob", "secret").await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Security(s) if s.contains("includes carol")),
        "{err:?}"
    );
    let seen = recv(&carol).await;
    assert!(!seen.contains(&text("alice", "secret")), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ghost_device_added_by_a_member_is_refused_by_the_others() {
    let server = LocalServer::new().await;
    let alice = server.device("alice").await;
    let bob = server.device("bob").await;
    let _carol = server.device("carol").await;
    alice.create_group("team", &["bob".into()]).await.unwrap();
    recv(&bob).await;

    // The server plants a ghost device for carol and offers alice its KeyPackage; alice's
    // client believes a carol device list that includes it (alice is compromised, or lied
    // to).
    let ghost = DeviceKey::generate(user("carol"));
    let provider = openmls_libcrux_crypto::Provider::new().unwrap();
    let suite = crate::suite::ciphersuite(crate::suite::XWING).unwrap();
    let kps = group::new_key_packages(&provider, &ghost, suite, 1, false).unwrap();
    let transport = alice.transport();
    transport
        .storage()
        .plant_device(ghost.addr(), &ghost.public())
        .await;
    transport.lie_about_claims(
        &user("carol"),
        ClaimResponse {
            key_packages: vec![ClaimedKeyPackage {
                device: ghost.addr().device,
                key_package: kps.one_time[0].clone().into(),
            }],
        },
    );
    let mut believed = alice.fetch_device_list(&user("carol")).await.unwrap();
    believed.devices.push(ghost.entry("ghost", 1));
    alice
        .lists
        .lock()
        .unwrap()
        .insert(user("carol"), Ok(believed));
    let gid = alice.group_by_name("team").unwrap();
    alice
        .change_members(&gid, &[user("carol")], &[])
        .await
        .unwrap();

    // Bob checks every new leaf against carol's real list and refuses the commit (and so
    // cannot read what alice sends in the epoch it made).
    let seen = recv(&bob).await;
    let refused = seen.iter().find_map(|(_, item)| match item {
        crate::store::HistoryItem::Security { reason, .. } => Some(reason.clone()),
        _ => None,
    });
    let reason = refused.expect("a security event");
    assert!(
        reason.contains(&ghost.addr().device.to_string()),
        "{reason}"
    );
    assert!(
        !seen
            .iter()
            .any(|(_, item)| matches!(item, crate::store::HistoryItem::Event(Event::Added { .. }))),
        "{seen:?}"
    );
    let members: Vec<String> = bob
        .members("team")
        .unwrap()
        .into_iter()
        .map(|m| m.user)
        .collect();
    assert_eq!(members, ["alice", "bob"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_welcome_into_an_existing_group_filed_under_another_is_refused() {
    use openmls::prelude::{GroupId as MlsGroupId, MlsGroup, PURE_CIPHERTEXT_WIRE_FORMAT_POLICY};
    let server = LocalServer::new().await;
    let alice = server.device("alice").await;
    let bob = server.device("bob").await;
    let mallory = server.device("mallory").await;
    alice.create_group("team", &["bob".into()]).await.unwrap();
    recv(&bob).await;
    let team = alice.group_by_name("team").unwrap();

    // Mallory makes a group of her own with team's id, adds bob to it, and sends that
    // Welcome with a commit of a second, harmless group of hers.
    let suite = crate::suite::ciphersuite(crate::suite::XWING).unwrap();
    let token = mallory.token().await.unwrap();
    let mut claims = Vec::new();
    for _ in 0..2 {
        let claimed = mallory
            .transport()
            .claim(&token, &user("bob"))
            .await
            .unwrap();
        claims.push(claimed.key_packages[0].key_package.clone());
    }
    let bob_key = mallory
        .fetch_device_list(&user("bob"))
        .await
        .unwrap()
        .devices[0]
        .signature_key
        .clone();
    let (commit, evil_welcome, decoy) = mallory
        .store()
        .transaction(|tx| {
            let p = tx.mls();
            let kp = |i: usize| {
                group::verify_key_package(
                    &p,
                    claims[i].as_slice(),
                    bob.me(),
                    bob_key.as_slice(),
                    suite,
                )
            };
            let mut evil = MlsGroup::builder()
                .with_group_id(MlsGroupId::from_slice(team.as_bytes()))
                .ciphersuite(suite)
                .with_wire_format_policy(PURE_CIPHERTEXT_WIRE_FORMAT_POLICY)
                .use_ratchet_tree_extension(true)
                .build(&p, &mallory.device, mallory.device.credential_with_key())
                .unwrap();
            let evil_welcome = group::add(&p, &mallory.device, &mut evil, &[kp(0)?], 1)?
                .welcome
                .unwrap();
            let mut decoy = group::create(&p, &mallory.device, suite)?;
            let commit = group::add(&p, &mallory.device, &mut decoy, &[kp(1)?], 1)?.commit;
            let decoy = sotto_proto::GroupId::from_bytes(decoy.group_id().as_slice())?;
            Ok::<_, ClientError>((commit, evil_welcome, decoy))
        })
        .unwrap();
    let request = sotto_proto::api::SendRequest {
        client_id: "ab".repeat(16),
        message: commit.into(),
        recipients: Vec::new(),
        to_roster: true,
        roster: Some(vec![mallory.me().clone(), bob.me().clone()]),
        welcome: Some(sotto_proto::api::WelcomeOut {
            message: evil_welcome.into(),
            recipients: vec![bob.me().clone()],
        }),
    };
    mallory
        .transport()
        .send(&token, &decoy, &request)
        .await
        .unwrap();

    // Bob refuses it, and team is still the group alice and he share.
    let seen = recv(&bob).await;
    assert!(
        seen.iter().any(|(_, item)| matches!(
            item,
            crate::store::HistoryItem::Security { reason, .. } if reason.contains("another group")
        )),
        "{seen:?}"
    );
    alice.send_group_text("team", "still ours").await.unwrap();
    assert_eq!(recv(&bob).await, [text("alice", "still ours")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_false_roster_cannot_keep_a_small_groups_messages_from_the_member_it_leaves_out() {
    let server = LocalServer::new().await;
    let alice = server.device("alice").await;
    let bob = server.device("bob").await;
    let mallory = server.device("mallory").await;
    let dave = server.device("dave").await;
    alice
        .create_group("team", &["bob".into(), "mallory".into()])
        .await
        .unwrap();
    recv(&bob).await;
    recv(&mallory).await;
    let team = alice.group_by_name("team").unwrap();

    // Mallory adds dave with a real commit, and tells the server a roster without bob.
    let recipients = vec![alice.me().clone(), bob.me().clone()];
    let roster = vec![alice.me().clone(), mallory.me().clone(), dave.me().clone()];
    add_declaring(&mallory, &team, &dave, recipients, roster).await;
    assert_eq!(recv(&alice).await, [added("mallory", "dave")]);
    assert_eq!(
        recv(&bob).await,
        [added("mallory", "dave")],
        "bob processed the commit"
    );

    // The server now believes bob is not in the group: it refuses his messages, which he
    // sees. Alice's still reach him: she names her recipients.
    let refused = bob.send_group_text("team", "am I here?").await;
    assert!(
        matches!(&refused, Err(e) if e.code() == Some(sotto_proto::ErrorCode::NotAGroupMember)),
        "{refused:?}"
    );
    alice
        .send_group_text("team", "for all of you")
        .await
        .unwrap();
    assert_eq!(recv(&bob).await, [text("alice", "for all of you")]);
}
