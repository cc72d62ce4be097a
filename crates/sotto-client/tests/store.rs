//! The engine's store promises the same thing whatever keeps it: these checks run against
//! the SQLCipher store and the in-memory one alike.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

use sotto_client::store::SqlCipherStore;
use sotto_core::events::{Event, MemberChange, NewDevice};
use sotto_core::store::memory::MemoryStore;
use sotto_core::store::{
    ClientStore, Contact, ConversationRecord, HistoryItem, HistoryRecord, KeptRoot, LOG_ROOTS_KEPT,
    OutboxEntry, OutboxRecord, Outgoing, Setting, StoreTx, Unshown,
};
use sotto_core::{ClientError, Content, StoreError};
use sotto_proto::api::SendRequest;
use sotto_proto::{Bytes, DeviceAddr, DeviceId, GroupId, Username};

fn group(n: u8) -> GroupId {
    GroupId::from_bytes(&[n; 16]).unwrap()
}

fn entry(id: &str, item: HistoryItem) -> HistoryRecord {
    HistoryRecord {
        id: id.into(),
        group: Some(group(1)),
        sender: None,
        sent_at: 10,
        received_at: 20,
        item,
        outgoing: false,
    }
}

fn outbox(client_id: &str, at: u64, outgoing: Outgoing) -> OutboxRecord {
    OutboxRecord {
        client_id: client_id.into(),
        group: group(1),
        request: SendRequest {
            client_id: client_id.into(),
            message: Bytes(vec![1, 2, 3]),
            recipients: Vec::new(),
            to_roster: true,
            roster: None,
            welcome: None,
        },
        outgoing,
        created_at: at,
        counter: Some(at + 100),
    }
}

fn conformance<S: ClientStore>(store: &S) {
    // A transaction that fails leaves nothing; one that succeeds leaves all.
    let failed: Result<(), ClientError> = store.transaction(|tx| {
        tx.set_setting(Setting::User, b"alice")?;
        Err(ClientError::Usage("changed my mind".into()))
    });
    assert!(failed.is_err());
    let read = |key| {
        store
            .transaction(|tx| tx.setting(key))
            .unwrap_or_else(|e: StoreError| panic!("{e}"))
    };
    assert_eq!(read(Setting::User), None);
    store
        .transaction(|tx| tx.set_setting(Setting::User, b"alice"))
        .unwrap();
    assert_eq!(read(Setting::User), Some(b"alice".to_vec()));

    // A savepoint that fails undoes only what it wrote.
    store
        .transaction(|tx| {
            tx.mark_processed(1)?;
            let inner: Result<(), StoreError> = tx.savepoint(|| {
                tx.mark_processed(2)?;
                Err(StoreError::new("refused"))
            });
            assert!(inner.is_err());
            assert!(tx.is_processed(1)? && !tx.is_processed(2)?);
            Ok::<_, StoreError>(())
        })
        .unwrap();

    // A conversation added back after a removal is active again and undescribed, with its
    // name kept.
    let team = ConversationRecord {
        group: group(1),
        name: Some("team".into()),
        peer: None,
        announced: true,
        active: true,
        created_at: 5,
    };
    store
        .transaction(|tx| {
            tx.upsert_conversation(&team)?;
            tx.deactivate_conversation(&team.group)?;
            tx.upsert_conversation(&ConversationRecord {
                name: None,
                ..team.clone()
            })?;
            let back = tx.conversation(&team.group)?.unwrap();
            assert!(back.active && !back.announced);
            assert_eq!(back.name.as_deref(), Some("team"));
            let bob = Username::parse("bob").unwrap();
            tx.describe_conversation(&team.group, None, Some(&bob))?;
            let described = tx.conversation(&team.group)?.unwrap();
            assert_eq!((described.name, described.peer), (None, Some(bob)));
            Ok::<_, StoreError>(())
        })
        .unwrap();

    // History: an id is stored once; events and security events come back as data;
    // outgoing entries are never unshown; shown entries stay shown.
    let added = HistoryItem::Event(Event::Added {
        by: Username::parse("alice").unwrap(),
        user: Username::parse("bob").unwrap(),
    });
    let refused = HistoryItem::Security {
        from: Some(Username::parse("mallory").unwrap()),
        reason: "a ghost".into(),
    };
    store
        .transaction(|tx| {
            tx.add_history(&entry("1", HistoryItem::Text("hi".into())))?;
            tx.add_history(&entry("1", HistoryItem::Text("again".into())))?;
            tx.add_history(&entry("2", added.clone()))?;
            tx.add_history(&HistoryRecord {
                outgoing: true,
                ..entry("3", HistoryItem::Text("mine".into()))
            })?;
            tx.add_history(&entry("4", refused.clone()))?;
            let all = tx.unshown(Unshown::All)?;
            let items: Vec<_> = all.iter().map(|e| e.record.item.clone()).collect();
            assert_eq!(
                items,
                [
                    HistoryItem::Text("hi".into()),
                    added.clone(),
                    refused.clone()
                ]
            );
            assert_eq!(all[0].peer.as_deref(), Some("bob"));
            let security = tx.unshown(Unshown::Security)?;
            assert_eq!(security.len(), 1);
            // The whole history, outgoing entries included, oldest first.
            let ids: Vec<String> = tx.history()?.into_iter().map(|e| e.id).collect();
            assert_eq!(ids, ["1", "2", "3", "4"]);
            tx.mark_shown(all[1].position)?;
            assert_eq!(tx.unshown(Unshown::All)?.len(), 1);
            Ok::<_, StoreError>(())
        })
        .unwrap();

    // The outbox keeps its order, and gives back when an entry was made as it removes it.
    let text = Outgoing::Message(Content::Text { body: "x".into() });
    let change = Outgoing::Commit(MemberChange {
        add: vec![Username::parse("carol").unwrap()],
        remove: Vec::new(),
        add_devices: vec![NewDevice {
            addr: DeviceAddr {
                user: Username::parse("alice").unwrap(),
                device: DeviceId::new(9),
            },
            key_package: Bytes(vec![1, 2, 3]),
        }],
        remove_devices: vec![DeviceAddr {
            user: Username::parse("alice").unwrap(),
            device: DeviceId::new(8),
        }],
        heal: true,
    });
    store
        .transaction(|tx| {
            tx.put_outbox(&outbox("b", 7, change.clone()))?;
            tx.put_outbox(&outbox("a", 7, text.clone()))?;
            tx.put_outbox(&outbox("c", 3, text.clone()))?;
            let ready: Vec<OutboxRecord> = tx
                .outbox()?
                .into_iter()
                .map(|e| match e {
                    OutboxEntry::Ready(e) => *e,
                    damaged => panic!("{damaged:?}"),
                })
                .collect();
            let ids: Vec<&str> = ready.iter().map(|e| e.client_id.as_str()).collect();
            assert_eq!(ids, ["c", "b", "a"]);
            assert_eq!(ready[1].outgoing, change);
            assert_eq!(ready[0].counter, Some(103));
            assert_eq!(tx.remove_outbox("b")?, Some(7));
            assert_eq!(tx.remove_outbox("b")?, None);
            Ok::<_, StoreError>(())
        })
        .unwrap();

    // Contacts: the first key pinned stays.
    store
        .transaction(|tx| {
            let carol = Username::parse("carol").unwrap();
            tx.pin_identity(&carol, &[1; 32], 1)?;
            tx.pin_identity(&carol, &[2; 32], 2)?;
            assert_eq!(
                tx.contact(&carol)?,
                Some(Contact {
                    identity_key: vec![1; 32],
                    verified: false
                })
            );
            // Verified only for the pinned key; an accepted new key is not verified.
            assert!(!tx.mark_verified(&carol, &[2; 32])?);
            assert!(tx.mark_verified(&carol, &[1; 32])?);
            assert!(tx.contact(&carol)?.is_some_and(|c| c.verified));
            tx.replace_identity(&carol, &[2; 32], 3)?;
            assert_eq!(
                tx.contact(&carol)?,
                Some(Contact {
                    identity_key: vec![2; 32],
                    verified: false
                })
            );
            let dave = Username::parse("dave").unwrap();
            tx.pin_identity(&dave, &[4; 32], 4)?;
            tx.mark_verified(&dave, &[4; 32])?;
            let all = tx.contacts()?;
            assert_eq!(all.len(), 2);
            assert_eq!(all[0].0, carol);
            assert!(all[1].1.verified && all[1].1.identity_key == vec![4; 32]);
            Ok::<_, StoreError>(())
        })
        .unwrap();

    // Counters are kept per group and sending device.
    let bob = |device| DeviceAddr {
        user: Username::parse("bob").unwrap(),
        device: DeviceId::new(device),
    };
    store
        .transaction(|tx| {
            assert_eq!(tx.counter(&group(1), &bob(1))?, None);
            tx.set_counter(&group(1), &bob(1), 5)?;
            tx.set_counter(&group(1), &bob(1), 6)?;
            tx.set_counter(&group(2), &bob(1), 1)?;
            tx.set_counter(&group(1), &bob(2), 9)?;
            assert_eq!(tx.counter(&group(1), &bob(1))?, Some(6));
            assert_eq!(tx.counter(&group(2), &bob(1))?, Some(1));
            assert_eq!(tx.counter(&group(1), &bob(2))?, Some(9));
            tx.forget_counters(&group(1), &bob(2))?;
            assert_eq!(tx.counter(&group(1), &bob(1))?, None);
            assert_eq!(tx.counter(&group(1), &bob(2))?, Some(9));
            assert_eq!(tx.counter(&group(2), &bob(1))?, Some(1));
            Ok::<_, StoreError>(())
        })
        .unwrap();

    // Log roots: the first root kept for an epoch stays, unless it was vouched for and a
    // verified one comes; only the newest epochs of each kind are kept.
    let verified = |root| KeptRoot {
        root,
        vouched_by: None,
    };
    let vouched = |root| KeptRoot {
        root,
        vouched_by: Some(bob(1)),
    };
    store
        .transaction(|tx| {
            tx.put_log_root(1, &[1; 32], None)?;
            tx.put_log_root(1, &[2; 32], None)?;
            tx.put_log_root(1, &[3; 32], Some(&bob(1)))?;
            assert_eq!(tx.log_root(1)?, Some(verified([1; 32])));
            tx.put_log_root(2, &[4; 32], Some(&bob(1)))?;
            tx.put_log_root(2, &[5; 32], Some(&bob(2)))?;
            assert_eq!(tx.log_root(2)?, Some(vouched([4; 32])));
            tx.put_log_root(2, &[6; 32], None)?;
            assert_eq!(tx.log_root(2)?, Some(verified([6; 32])));
            assert_eq!(tx.log_root(3)?, None);
            // Vouched roots not yet compared with the log, up to an epoch, newest first;
            // one marked compared is not returned again.
            tx.put_log_root(3, &[8; 32], Some(&bob(1)))?;
            tx.put_log_root(4, &[8; 32], Some(&bob(1)))?;
            tx.put_log_root(5, &[9; 32], Some(&bob(1)))?;
            let epochs = |up_to, limit| -> Result<Vec<u64>, StoreError> {
                Ok(tx
                    .unchecked_vouched_roots(up_to, limit)?
                    .into_iter()
                    .map(|(e, _)| e)
                    .collect())
            };
            assert_eq!(epochs(4, 10)?, [3, 4], "epoch 2 is verified, 5 is past 4");
            assert_eq!(epochs(9, 1)?, [3]);
            tx.mark_vouched_root_checked(4)?;
            assert_eq!(epochs(9, 10)?, [3, 5]);
            assert_eq!(tx.log_root(4)?, Some(vouched([8; 32])), "kept, to compare");
            // Since when, and how many times, the server has not answered for one; those
            // come after the ones it always answered for.
            // Failures closer than the gap (50 here) count once.
            assert_eq!(tx.vouched_root_unanswered(3, 100, 50)?, (100, 1));
            assert_eq!(tx.vouched_root_unanswered(3, 120, 50)?, (100, 1));
            assert_eq!(tx.vouched_root_unanswered(3, 160, 50)?, (100, 2));
            assert_eq!(tx.vouched_root_unanswered(3, 200, 50)?, (100, 2));
            assert_eq!(epochs(9, 10)?, [5, 3]);
            assert_eq!(tx.vouched_root_unanswered(5, 300, 50)?, (300, 1));
            assert_eq!(epochs(9, 10)?, [3, 5]);
            // Vouched roots for many later epochs push out the oldest vouched ones only.
            let kept = u64::try_from(LOG_ROOTS_KEPT).unwrap();
            for epoch in 10..=kept + 10 {
                tx.put_log_root(epoch, &[7; 32], Some(&bob(1)))?;
            }
            assert_eq!(tx.log_root(1)?, Some(verified([1; 32])));
            assert_eq!(tx.log_root(10)?, None);
            assert_eq!(tx.log_root(11)?, Some(vouched([7; 32])));
            Ok::<_, StoreError>(())
        })
        .unwrap();

    // Device lists proven in the log: the newest kept, with its epoch.
    store
        .transaction(|tx| {
            let carol = Username::parse("carol").unwrap();
            assert_eq!(tx.logged_list(&carol)?, None);
            tx.set_logged_list(&carol, 4, b"list at 4")?;
            tx.set_logged_list(&carol, 9, b"list at 9")?;
            assert_eq!(tx.logged_list(&carol)?, Some((9, b"list at 9".to_vec())));
            Ok::<_, StoreError>(())
        })
        .unwrap();

    // When this device last renewed its leaf in a conversation.
    store
        .transaction(|tx| {
            tx.upsert_conversation(&ConversationRecord {
                group: group(7),
                name: None,
                peer: None,
                announced: false,
                active: true,
                created_at: 1,
            })?;
            let due = |cutoff| Ok::<_, StoreError>(tx.unhealed_since(cutoff)?.contains(&group(7)));
            // Never renewed: its start counts.
            assert!(!due(0)?);
            assert!(due(1)?);
            tx.set_healed_at(&group(7), 50)?;
            assert!(!due(49)?);
            assert!(due(50)?);
            // 0: due at once.
            tx.set_healed_at(&group(7), 0)?;
            assert!(due(0)?);
            // An inactive conversation is never due.
            tx.deactivate_conversation(&group(7))?;
            assert!(!due(u64::MAX)?);
            Ok::<_, StoreError>(())
        })
        .unwrap();
}

#[test]
fn the_sqlcipher_store_keeps_the_store_contract() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqlCipherStore::open(&dir.path().join("store.db"), &[3; 32]).unwrap();
    conformance(&store);
}

#[test]
fn the_memory_store_keeps_the_store_contract() {
    conformance(&MemoryStore::new().unwrap());
}
