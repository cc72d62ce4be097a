//! Group commit: the changes to delivery state that arrive while a transaction is being made
//! durable wait, and then go together into the next transaction, so that one commit (one
//! fsync on SQLite, one WAL flush on PostgreSQL) serves many sends and acks. No one hears
//! of a change before the transaction holding it is durable.
//!
//! One task, the committer, owns the writing: it takes every change waiting (up to a bound),
//! applies them in order in one [`DeliveryTx`] by the rules of [`crate::delivery`], commits,
//! and only then answers each. A refused send writes nothing, so it never spoils the others.
//! When the storage fails a shared transaction, each of its changes is tried again in a
//! transaction of its own, so that one poisoned row (an operator's edit) fails only the
//! change that touches it.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use sotto_proto::DeviceAddr;
use sotto_proto::api::ValidSend;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

use crate::delivery::{self, QueueQuota, Submitted};
use crate::storage::{DeliveryStore, DeliveryTx, StorageError};

/// The most changes one transaction carries.
pub const MAX_BATCH: usize = 512;

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
    store: Arc<dyn DeliveryStore + Send + Sync>,
    queue: mpsc::Receiver<Pending>,
    stats: Arc<CommitStats>,
}

impl GroupCommit {
    /// A handle and its committer, not yet running.
    pub fn new(store: Arc<dyn DeliveryStore + Send + Sync>) -> (Self, Committer) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let stats = Arc::new(CommitStats::default());
        (
            GroupCommit {
                queue: tx,
                stats: stats.clone(),
            },
            Committer {
                store,
                queue: rx,
                stats,
            },
        )
    }

    /// A handle with its committer running on the current runtime.
    pub fn start(store: Arc<dyn DeliveryStore + Send + Sync>) -> Self {
        let (handle, committer) = Self::new(store);
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

    /// [`delivery::submit`], answered once durable.
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
        let stopped = || StorageError::new("the committer has stopped");
        self.queue
            .send(Pending { change, answer })
            .await
            .map_err(|_| stopped())?;
        answered.await.map_err(|_| stopped())?
    }
}

impl Committer {
    /// Commits batches until every [`GroupCommit`] handle is gone. A batch runs as a task of
    /// its own, so that a bug that panics fails its changes (their callers hear that the
    /// storage failed) and not the committer.
    pub async fn run(mut self) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while self.queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
            let batch = std::mem::replace(&mut batch, Vec::with_capacity(MAX_BATCH));
            let task = tokio::spawn(commit(self.store.clone(), self.stats.clone(), batch));
            if let Err(e) = task.await {
                tracing::error!(error = %e, "a group commit failed");
            }
        }
    }
}

/// Applies `batch` in one transaction and answers each change; on a storage failure, tries
/// each change alone.
async fn commit(
    store: Arc<dyn DeliveryStore + Send + Sync>,
    stats: Arc<CommitStats>,
    batch: Vec<Pending>,
) {
    let (changes, answers): (Vec<Change>, Vec<_>) =
        batch.into_iter().map(|p| (p.change, p.answer)).unzip();
    let n = changes.len() as u64;
    match shared(store.as_ref(), &changes).await {
        Ok(applied) => {
            stats.committed(n);
            for (answer, applied) in answers.into_iter().zip(applied) {
                // A caller that gave up (its request timed out) needs no answer.
                let _ = answer.send(Ok(applied));
            }
        }
        Err(e) if n == 1 => {
            stats.failed.inc();
            for answer in answers {
                let _ = answer.send(Err(e.clone()));
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, changes = n, "a shared transaction failed; trying each change alone");
            for (change, answer) in changes.iter().zip(answers) {
                let result = shared(store.as_ref(), std::slice::from_ref(change)).await;
                if result.is_ok() {
                    stats.committed(1);
                } else {
                    stats.failed.inc();
                }
                let _ = answer.send(result.and_then(|mut a| {
                    a.pop()
                        .ok_or_else(|| StorageError::new("a change without an answer"))
                }));
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
    for change in changes {
        applied.push(apply(tx.as_mut(), change).await?);
    }
    tx.commit().await?;
    Ok(applied)
}

async fn apply(tx: &mut dyn DeliveryTx, change: &Change) -> Result<Applied, StorageError> {
    Ok(match change {
        Change::Submit {
            sender,
            send,
            now,
            quota,
        } => Applied::Submitted(delivery::submit_in(tx, sender, send, *now, *quota).await?),
        Change::Ack { device, ids } => Applied::Acked(delivery::ack_in(tx, device, ids).await?),
    })
}
