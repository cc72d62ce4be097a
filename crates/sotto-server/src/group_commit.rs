//! Group commit: the changes to delivery state that arrive while a transaction is being made
//! durable wait, and then go together into the next transaction, so that one commit (one
//! fsync on SQLite, one WAL flush on PostgreSQL) serves many sends and acks. No one hears
//! of a change before the transaction holding it is durable.
//!
//! One task, the committer, owns the writing: it takes every change waiting (up to a count
//! and a size), applies them in order in one [`DeliveryTx`](crate::storage::DeliveryTx) by
//! the rules of [`crate::delivery`] (a run of acks in one call), commits, wakes the devices
//! that got something, and only then answers each. A change whose caller gave up before its
//! batch began (a request that timed out) is left out. A refused send writes nothing, so it
//! never spoils the others. When the storage fails a shared transaction, each of its changes
//! is tried again in a transaction of its own, so that one poisoned row (an operator's edit)
//! fails only the change that touches it; when the storage cannot be reached, every change
//! of the batch hears so at once.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use sotto_proto::DeviceAddr;
use sotto_proto::api::ValidSend;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

use crate::delivery::{self, QueueQuota, Submitted};
use crate::push::Wake;
use crate::storage::{DeliveryStore, StorageError};

/// The most changes one transaction carries.
pub const MAX_BATCH: usize = 512;

/// The most bytes of messages one transaction carries (a single larger send goes alone).
pub const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;

/// How many changes may wait for the committer before callers wait to hand theirs over.
const QUEUE: usize = 8 * MAX_BATCH;

/// One change to delivery state.
enum Change {
    Submit {
        sender: DeviceAddr,
        send: Box<ValidSend>,
        now: u64,
        quota: QueueQuota,
    },
    Ack {
        device: DeviceAddr,
        ids: Vec<u64>,
    },
}

/// What a change came to.
enum Applied {
    Submitted(Submitted),
    Acked(u64),
}

impl Change {
    /// Bytes of messages the change stores.
    fn bytes(&self) -> usize {
        match self {
            Change::Submit { send, .. } => send
                .request
                .message
                .len()
                .saturating_add(send.request.welcome.as_ref().map_or(0, |w| w.message.len())),
            // Each id is work for the storage (a statement or two, or a row of one bulk
            // statement): a batch of huge acks is as heavy as a big send.
            Change::Ack { ids, .. } => ids.len().saturating_mul(1024),
        }
    }
}

/// A change and where its answer goes.
struct Pending {
    change: Change,
    answer: oneshot::Sender<Result<Applied, StorageError>>,
}

/// Counts of the committer's work, for operators.
#[derive(Debug)]
pub struct CommitStats {
    transactions: Counter,
    changes: Counter,
    failed: Counter,
    batch_sizes: Histogram,
}

impl Default for CommitStats {
    fn default() -> Self {
        CommitStats {
            transactions: Counter::default(),
            changes: Counter::default(),
            failed: Counter::default(),
            // 1 to 512 changes.
            batch_sizes: Histogram::new(exponential_buckets(1.0, 2.0, 10)),
        }
    }
}

impl CommitStats {
    /// Transactions committed (on SQLite, one fsync each).
    pub fn transactions(&self) -> u64 {
        self.transactions.get()
    }

    /// Changes committed in them.
    pub fn changes(&self) -> u64 {
        self.changes.get()
    }

    /// Changes answered with a storage failure.
    pub fn failed(&self) -> u64 {
        self.failed.get()
    }

    fn committed(&self, changes: u64) {
        self.transactions.inc();
        self.changes.inc_by(changes);
        self.batch_sizes.observe(changes as f64);
    }

    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register(
            "commit_transactions",
            "Delivery transactions committed (on SQLite, one fsync each)",
            self.transactions.clone(),
        );
        registry.register(
            "commit_changes",
            "Sends and acks committed",
            self.changes.clone(),
        );
        registry.register(
            "commit_failed_changes",
            "Sends and acks answered with a storage failure",
            self.failed.clone(),
        );
        registry.register(
            "commit_batch_size",
            "Sends and acks per committed transaction",
            self.batch_sizes.clone(),
        );
    }
}

/// The handle through which requests change delivery state. Cheap to clone; the committer
/// stops once every handle is gone.
#[derive(Clone)]
pub struct GroupCommit {
    queue: mpsc::Sender<Pending>,
    stats: Arc<CommitStats>,
}

/// The committer, before it is started.
pub struct Committer {
    world: World,
    queue: mpsc::Receiver<Pending>,
    /// A change taken from the queue that did not fit in the last batch.
    carried: Option<Pending>,
}

/// What a batch needs: the storage, whom to wake, what to count.
#[derive(Clone)]
struct World {
    store: Arc<dyn DeliveryStore + Send + Sync>,
    wake: Arc<dyn Wake>,
    stats: Arc<CommitStats>,
}

impl GroupCommit {
    /// A handle and its committer, not yet running. The committer wakes through `wake` the
    /// devices each committed send queued something for.
    pub fn new(
        store: Arc<dyn DeliveryStore + Send + Sync>,
        wake: Arc<dyn Wake>,
    ) -> (Self, Committer) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let stats = Arc::new(CommitStats::default());
        (
            GroupCommit {
                queue: tx,
                stats: stats.clone(),
            },
            Committer {
                world: World { store, wake, stats },
                queue: rx,
                carried: None,
            },
        )
    }

    /// A handle with its committer running on the current runtime.
    pub fn start(store: Arc<dyn DeliveryStore + Send + Sync>, wake: Arc<dyn Wake>) -> Self {
        let (handle, committer) = Self::new(store, wake);
        tokio::spawn(committer.run());
        handle
    }

    /// The committer's counts.
    pub fn stats(&self) -> &CommitStats {
        &self.stats
    }

    /// How many changes wait for the committer.
    pub fn waiting(&self) -> usize {
        self.queue
            .max_capacity()
            .saturating_sub(self.queue.capacity())
    }

    /// [`delivery::submit`], answered once durable (and its recipients woken).
    pub async fn submit(
        &self,
        sender: DeviceAddr,
        send: ValidSend,
        now: u64,
        quota: QueueQuota,
    ) -> Result<Submitted, StorageError> {
        let change = Change::Submit {
            sender,
            send: Box::new(send),
            now,
            quota,
        };
        match self.apply(change).await? {
            Applied::Submitted(s) => Ok(s),
            Applied::Acked(_) => Err(StorageError::new("a send answered as an ack")),
        }
    }

    /// [`delivery::ack`], answered once durable.
    pub async fn ack(&self, device: DeviceAddr, ids: Vec<u64>) -> Result<u64, StorageError> {
        match self.apply(Change::Ack { device, ids }).await? {
            Applied::Acked(n) => Ok(n),
            Applied::Submitted(_) => Err(StorageError::new("an ack answered as a send")),
        }
    }

    async fn apply(&self, change: Change) -> Result<Applied, StorageError> {
        let (answer, answered) = oneshot::channel();
        self.queue
            .send(Pending { change, answer })
            .await
            .map_err(|_| StorageError::new("the committer has stopped"))?;
        answered
            .await
            .map_err(|_| StorageError::new("the batch of this change failed (a bug)"))?
    }
}

impl Committer {
    /// Commits batches until every [`GroupCommit`] handle is gone. A batch runs on a thread
    /// of the blocking pool: a backend may run its statements in place (SQLite does), and a
    /// batch of hundreds of sends must not hold one of the runtime's few worker threads. A
    /// bug that panics fails that batch's changes (their callers hear that the storage
    /// failed), not the committer.
    pub async fn run(mut self) {
        let runtime = tokio::runtime::Handle::current();
        while let Some(batch) = self.next_batch().await {
            let (runtime, world) = (runtime.clone(), self.world.clone());
            let task = tokio::task::spawn_blocking(move || runtime.block_on(commit(world, batch)));
            if let Err(e) = task.await {
                tracing::error!(error = %e, "a group commit failed");
            }
        }
    }

    /// The changes waiting, oldest first, at most [`MAX_BATCH`] of them and
    /// [`MAX_BATCH_BYTES`] of messages (but always one), leaving out those whose caller has
    /// gone. `None` once every handle is gone.
    async fn next_batch(&mut self) -> Option<Vec<Pending>> {
        let mut batch = Vec::new();
        let mut bytes = 0usize;
        while batch.is_empty() {
            let first = match self.carried.take() {
                Some(p) => p,
                None => self.queue.recv().await?,
            };
            let mut next = Some(first);
            while let Some(p) = next.take() {
                let size = p.change.bytes();
                if !batch.is_empty()
                    && (batch.len() >= MAX_BATCH || bytes.saturating_add(size) > MAX_BATCH_BYTES)
                {
                    self.carried = Some(p);
                    break;
                }
                if !p.answer.is_closed() {
                    bytes = bytes.saturating_add(size);
                    batch.push(p);
                }
                next = self.queue.try_recv().ok();
            }
        }
        Some(batch)
    }
}

/// Applies `batch` in one transaction, wakes whom it queued something for, and answers each
/// change; on a storage failure, tries each change alone unless the storage is unreachable.
async fn commit(world: World, batch: Vec<Pending>) {
    let World { store, wake, stats } = &world;
    let (changes, answers): (Vec<Change>, Vec<_>) =
        batch.into_iter().map(|p| (p.change, p.answer)).unzip();
    let n = changes.len() as u64;
    let answer = |answer: oneshot::Sender<_>, result: Result<Applied, StorageError>| {
        if let Ok(Applied::Submitted(Submitted::Accepted { wake: devices, .. })) = &result {
            for d in devices {
                wake.wake(d);
            }
        }
        // A caller that gave up (its request timed out) needs no answer.
        let _ = answer.send(result);
    };
    match shared(store.as_ref(), &changes).await {
        Ok(applied) => {
            stats.committed(n);
            for (a, applied) in answers.into_iter().zip(applied) {
                answer(a, Ok(applied));
            }
        }
        Err(e) if n == 1 || e.is_unavailable() => {
            stats.failed.inc_by(n);
            for a in answers {
                answer(a, Err(e.clone()));
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, changes = n, "a shared transaction failed; trying each change alone");
            for (change, a) in changes.iter().zip(answers) {
                let result = shared(store.as_ref(), std::slice::from_ref(change)).await;
                if result.is_ok() {
                    stats.committed(1);
                } else {
                    stats.failed.inc();
                }
                answer(
                    a,
                    result.and_then(|mut a| {
                        a.pop()
                            .ok_or_else(|| StorageError::new("a change without an answer"))
                    }),
                );
            }
        }
    }
}

/// Applies `changes` in order in one transaction and commits it.
async fn shared(
    store: &(dyn DeliveryStore + Send + Sync),
    changes: &[Change],
) -> Result<Vec<Applied>, StorageError> {
    let mut tx = store.begin().await?;
    let mut applied = Vec::with_capacity(changes.len());
    let mut rest = changes;
    while let Some((change, after)) = rest.split_first() {
        match change {
            Change::Submit {
                sender,
                send,
                now,
                quota,
            } => {
                let submitted = delivery::submit_in(tx.as_mut(), sender, send, *now, *quota);
                applied.push(Applied::Submitted(submitted.await?));
                rest = after;
            }
            Change::Ack { .. } => {
                // A run of acks goes to the storage in one call.
                let acks: Vec<(&DeviceAddr, &[u64])> = rest
                    .iter()
                    .map_while(|c| match c {
                        Change::Ack { device, ids } => Some((device, ids.as_slice())),
                        Change::Submit { .. } => None,
                    })
                    .collect();
                let counts = delivery::ack_all_in(tx.as_mut(), &acks).await?;
                applied.extend(counts.into_iter().map(Applied::Acked));
                rest = rest.get(acks.len()..).unwrap_or_default();
            }
        }
    }
    tx.commit().await?;
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::DeliveryTx;
    use crate::storage::memory::MemoryStorage;
    use async_trait::async_trait;
    use sotto_proto::api::QueueResponse;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// The in-memory storage behind a database connection that is down: every transaction
    /// fails to begin, as unreachable.
    #[derive(Default)]
    struct Down {
        inner: MemoryStorage,
        begins: AtomicUsize,
    }

    #[async_trait]
    impl DeliveryStore for Down {
        async fn begin(&self) -> Result<Box<dyn DeliveryTx + '_>, StorageError> {
            self.begins.fetch_add(1, Ordering::SeqCst);
            Err(StorageError::unavailable("the database is down"))
        }

        async fn fetch(
            &self,
            device: &DeviceAddr,
            after: u64,
            limit: u32,
            max_bytes: usize,
        ) -> Result<QueueResponse, StorageError> {
            self.inner.fetch(device, after, limit, max_bytes).await
        }

        async fn purge(&self, cutoff: u64, now: u64) -> Result<u64, StorageError> {
            self.inner.purge(cutoff, now).await
        }
    }

    #[derive(Default)]
    struct NoOne;

    impl Wake for NoOne {
        fn wake(&self, _: &DeviceAddr) {}
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn with_the_storage_unreachable_a_batch_is_answered_unavailable_at_once() {
        let down = Arc::new(Down::default());
        let (commit, committer) = GroupCommit::new(down.clone(), Arc::new(NoOne));
        let device =
            DeviceAddr::from_credential_identity(b"alice/0000000000000001").expect("an address");
        let acks: Vec<_> = (0..3u64)
            .map(|id| {
                let (commit, device) = (commit.clone(), device.clone());
                tokio::spawn(async move { commit.ack(device, vec![id]).await })
            })
            .collect();
        let waited = tokio::time::timeout(std::time::Duration::from_secs(30), async {
            while commit.waiting() < 3 {
                tokio::task::yield_now().await;
            }
        })
        .await;
        assert!(waited.is_ok(), "the acks never reached the committer");
        tokio::spawn(committer.run());
        for ack in acks {
            let answer = ack.await.expect("no panic");
            assert!(answer.is_err_and(|e| e.is_unavailable()));
        }
        // One attempt for the whole batch: no change was tried alone against a database
        // that is down.
        assert_eq!(down.begins.load(Ordering::SeqCst), 1);
        assert_eq!(commit.stats().failed(), 3);
    }
}
