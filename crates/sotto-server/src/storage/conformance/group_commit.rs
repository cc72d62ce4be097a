//! Group commit over every backend: changes that wait share one transaction, each keeps its
//! own answer, a refused change writes nothing, and a change the storage fails fails alone.

use super::{ROOMY, account, group, queued, send, stats};
use crate::delivery::Submitted;
use crate::group_commit::GroupCommit;
use crate::push::Wake;
use crate::storage::{GroupState, Storage};
use sotto_proto::framing::MessageKind;
use sotto_proto::{DeviceAddr, Username};
use std::sync::{Arc, Mutex};
use tokio::task::JoinHandle;

/// Records whom the committer wakes.
#[derive(Default)]
struct Woken(Mutex<Vec<DeviceAddr>>);

impl Wake for Woken {
    fn wake(&self, device: &DeviceAddr) {
        self.0.lock().expect("not poisoned").push(device.clone());
    }
}

/// Hands `message` to the committer from a task of its own; the task ends with the answer.
fn submit(
    commit: &GroupCommit,
    from: &DeviceAddr,
    message: &super::Message,
) -> JoinHandle<Result<Submitted, crate::storage::StorageError>> {
    let (commit, from, valid) = (commit.clone(), from.clone(), message.valid());
    tokio::spawn(async move { commit.submit(from, valid, 100, ROOMY).await })
}

/// Waits until `n` changes wait for the committer (which is not running yet); a bound only a
/// broken test reaches.
async fn until_waiting(commit: &GroupCommit, n: usize) {
    let waited = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        while commit.waiting() < n {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(waited.is_ok(), "{n} changes never reached the committer");
}

fn accepted_seq(s: &Submitted) -> u64 {
    match s {
        Submitted::Accepted { response, .. } => response.seq,
        other => panic!("refused: {other:?}"),
    }
}

pub async fn changes_that_wait_share_one_transaction_and_each_gets_its_own_answer(
    s: Arc<dyn Storage>,
) {
    let alice = account(&*s, "alice").await;
    let bob = account(&*s, "bob").await;
    let carol = account(&*s, "carol").await;
    let stranger = account(&*s, "stranger").await;
    let g = group(1);
    send(&g, 0, &[&bob]).accepted(&*s, &alice).await;
    let before = stats(&*s).await;

    let woken = Arc::new(Woken::default());
    let (commit, committer) = GroupCommit::new(s.clone(), woken.clone());
    let mut handles = Vec::new();
    for n in 1..=5 {
        handles.push(submit(&commit, &alice, &send(&g, n, &[&bob])));
        until_waiting(&commit, handles.len()).await;
    }
    // The same client id again: the first answer, nothing stored.
    handles.push(submit(&commit, &alice, &send(&g, 5, &[&bob])));
    until_waiting(&commit, handles.len()).await;
    handles.push(submit(&commit, &stranger, &send(&g, 6, &[&bob])));
    until_waiting(&commit, handles.len()).await;
    // A new group whose first message names a device that does not exist is refused whole:
    // it must leave no group and no roster behind.
    let g2 = group(2);
    let ghost = DeviceAddr {
        user: Username::parse("ghost").expect("a valid name"),
        device: bob.device,
    };
    handles.push(submit(&commit, &alice, &send(&g2, 7, &[&ghost])));
    until_waiting(&commit, handles.len()).await;
    handles.push(submit(&commit, &carol, &send(&group(3), 8, &[&bob])));
    until_waiting(&commit, handles.len()).await;
    let ack = {
        let (commit, bob) = (commit.clone(), bob.clone());
        tokio::spawn(async move { commit.ack(bob, vec![1_000_000]).await })
    };
    until_waiting(&commit, handles.len() + 1).await;

    tokio::spawn(committer.run());
    let mut answers = Vec::new();
    for h in handles {
        answers.push(h.await.expect("no panic").expect("storage works"));
    }
    assert_eq!(ack.await.expect("no panic").expect("storage works"), 0);
    let seqs: Vec<u64> = answers.iter().take(6).map(accepted_seq).collect();
    assert_eq!(seqs, [2, 3, 4, 5, 6, 6]);
    assert!(matches!(&answers[5], Submitted::Accepted { wake, .. } if wake.is_empty()));
    assert_eq!(answers[6], Submitted::NotAMember);
    assert_eq!(answers[7], Submitted::UnknownRecipient);
    assert_eq!(accepted_seq(&answers[8]), 1);
    assert_eq!(commit.stats().transactions(), 1);
    assert_eq!(commit.stats().changes(), 10);
    assert_eq!(queued(&*s, &bob).await.len(), 7);
    let after = stats(&*s).await;
    assert_eq!(after.messages, before.messages + 6);
    assert_eq!(after.groups, before.groups + 1);
    let mut tx = s.begin().await.expect("a transaction");
    assert_eq!(tx.group(&g2).await.expect("read"), None);
    assert!(!tx.in_roster(&g2, &alice).await.expect("read"));
    drop(tx);
    // Each accepted send woke bob once it was committed; the repeat and the refusals, no one.
    assert_eq!(*woken.0.lock().expect("not poisoned"), vec![bob; 6]);
}

pub async fn a_change_the_storage_fails_fails_alone_and_the_rest_of_its_batch_commits(
    s: Arc<dyn Storage>,
) {
    let alice = account(&*s, "alice").await;
    let bob = account(&*s, "bob").await;
    let (good, poisoned) = (group(1), group(2));
    send(&good, 0, &[&bob]).accepted(&*s, &alice).await;
    send(&poisoned, 1, &[&bob]).accepted(&*s, &alice).await;
    // The operator edits the second group to the last epoch a database can hold.
    let last = u64::try_from(i64::MAX).expect("fits");
    let mut tx = s.begin().await.expect("a transaction");
    let state = GroupState {
        epoch: last,
        next_seq: 2,
    };
    tx.set_group(&poisoned, state).await.expect("written");
    tx.commit().await.expect("committed");

    let (commit, committer) = GroupCommit::new(s.clone(), Arc::new(Woken::default()));
    let first = submit(&commit, &alice, &send(&good, 2, &[&bob]));
    until_waiting(&commit, 1).await;
    let mut next_epoch = send(&poisoned, 3, &[&bob]);
    (next_epoch.epoch, next_epoch.kind) = (last, MessageKind::Commit);
    let bad = submit(&commit, &alice, &next_epoch);
    until_waiting(&commit, 2).await;
    let second = submit(&commit, &alice, &send(&good, 4, &[&bob]));
    until_waiting(&commit, 3).await;

    tokio::spawn(committer.run());
    let first = first.await.expect("no panic").expect("committed");
    assert!(bad.await.expect("no panic").is_err());
    let second = second.await.expect("no panic").expect("committed");
    assert_eq!((accepted_seq(&first), accepted_seq(&second)), (2, 3));
    assert_eq!(commit.stats().failed(), 1);
    assert_eq!(commit.stats().changes(), 2);
    assert_eq!(queued(&*s, &bob).await.len(), 4);
}
