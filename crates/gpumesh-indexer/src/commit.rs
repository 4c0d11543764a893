//! Group commit: every change to the state goes through one committer thread, which runs
//! the operations waiting for it one after another under the state lock and writes all
//! their changes in one durable store transaction. Each operation is answered only once
//! that transaction has committed, so nothing is acknowledged before it is on disk, and
//! one fsync serves every request that arrived while the previous group was writing.
//!
//! What is expensive and needs no state (a request's signature, a transaction's
//! signature) is checked before an operation is queued, on the async workers of every
//! core; what runs here is the operations themselves, in memory, and the write.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Weak};
use std::time::Instant;

use gpumesh_store::Batch;
use gpumesh_types::{Address, LeaseId};

use crate::core::Core;
use crate::error::Failure;
use crate::{Shared, now_ms, telemetry};

/// The most operations written in one transaction; more wait for the next one.
pub const MAX_GROUP: usize = 4096;

/// A group that holds the state lock this long is logged, with how long its operations
/// ran and its write took.
const SLOW_GROUP: std::time::Duration = std::time::Duration::from_millis(100);

/// Requests that may wait for the committer by default: two full groups. Past it a
/// request is refused at once as `overloaded` rather than queued for a wait its caller
/// would give up on.
pub const QUEUE_LIMIT: usize = 2 * MAX_GROUP;

/// A request's place in the bounded queue, given back when it leaves the queue (it runs,
/// or is answered without running).
pub(crate) struct Slot(Arc<AtomicUsize>);

impl Slot {
    /// Takes a place if fewer than `limit` requests wait.
    pub(crate) fn take(waiting: &Arc<AtomicUsize>, limit: usize) -> Option<Slot> {
        waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(waiting.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An operation on the state, waiting for the committer.
pub(crate) trait Operation: Send {
    /// Runs it, keeping its result for [`Operation::answer`].
    fn run(&mut self, core: &mut Core, now: u64, batch: &mut Batch);
    /// Answers its caller: with its result once the group it ran in is durable (`None`),
    /// or with the failure that stopped the group or kept it from running.
    fn answer(self: Box<Self>, failure: Option<Failure>);
}

pub(crate) type Op = Box<dyn Operation>;

type Answer<T> = tokio::sync::oneshot::Sender<Result<T, Failure>>;

struct Pending<T, F> {
    f: Option<F>,
    result: Option<Result<T, Failure>>,
    answer: Answer<T>,
    /// A request's place in the queue (background steps have none).
    slot: Option<Slot>,
}

impl<T, F> Operation for Pending<T, F>
where
    T: Send + 'static,
    F: FnOnce(&mut Core, u64, &mut Batch) -> Result<T, Failure> + Send,
{
    fn run(&mut self, core: &mut Core, now: u64, batch: &mut Batch) {
        self.slot = None;
        let Some(f) = self.f.take() else {
            return;
        };
        // Its caller gave up waiting (the connection closed, the request timed out):
        // nobody would learn the outcome, so the change is not made.
        if self.answer.is_closed() {
            telemetry::abandoned();
            self.result = Some(Err(Failure::new(
                gpumesh_types::ErrorCode::TimedOut,
                "the caller left before the request ran; nothing was changed",
            )));
            return;
        }
        self.result = Some(f(core, now, batch));
    }

    fn answer(self: Box<Self>, failure: Option<Failure>) {
        let answer = match (failure, self.result) {
            (Some(failure), _) => Err(failure),
            (None, Some(result)) => result,
            (None, None) => Err(Failure::internal("the operation did not run")),
        };
        // The caller may have gone away; the change stands either way.
        let _ = self.answer.send(answer);
    }
}

/// Wraps an operation returning `T` as an [`Op`] whose answer arrives on the returned
/// channel; `slot` is a request's place in the queue.
pub(crate) fn op<T, F>(
    f: F,
    slot: Option<Slot>,
) -> (Op, tokio::sync::oneshot::Receiver<Result<T, Failure>>)
where
    T: Send + 'static,
    F: FnOnce(&mut Core, u64, &mut Batch) -> Result<T, Failure> + Send + 'static,
{
    let (answer, answered) = tokio::sync::oneshot::channel();
    (
        Box::new(Pending {
            f: Some(f),
            result: None,
            answer,
            slot,
        }),
        answered,
    )
}

/// Starts the committer thread. It holds the state only while it runs a group, so the
/// state (and with it the store) is dropped when its last user lets go; the thread ends
/// when the queue's sender goes with it.
pub(crate) fn spawn(state: Weak<Shared>, queue: Receiver<Op>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("gpumesh-commit".into())
        .spawn(move || {
            while let Ok(first) = queue.recv() {
                let Some(shared) = state.upgrade() else {
                    return;
                };
                if shared.failed.load(Ordering::SeqCst) {
                    drop(shared);
                    refuse_all(first, &queue);
                    continue;
                }
                let answers = commit_group(&shared, first, &queue);
                // Let go of the state before answering: a caller that drops the indexer
                // once answered finds the store closed.
                drop(shared);
                for (op, failure) in answers {
                    op.answer(failure);
                }
            }
        })
        .map(drop)
}

/// Runs `first` and whatever else is queued (up to [`MAX_GROUP`]) and writes their
/// changes in one transaction. Returns each operation with the failure it gets, if any,
/// to be answered once the state is let go.
fn commit_group(
    shared: &Arc<Shared>,
    first: Op,
    queue: &Receiver<Op>,
) -> Vec<(Op, Option<Failure>)> {
    let asked = Instant::now();
    let mut core = shared.core();
    let locked = Instant::now();
    let now = now_ms();
    let mut batch = Batch::default();
    // An operation is in `ran` before it runs, so one that panics is answered too.
    let mut ran: Vec<Op> = Vec::new();
    // Everything from the first operation to the write may panic (a bug): the group is
    // then treated as one that failed to write.
    let group = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut next = Some(first);
        while let Some(op) = next.take() {
            ran.push(op);
            ran.last_mut()
                .expect("just pushed")
                .run(&mut core, now, &mut batch);
            if ran.len() < MAX_GROUP {
                next = queue.try_recv().ok();
            }
        }
        core.collect_dirty(&mut batch);
        let batch = std::mem::take(&mut batch);
        if batch.is_empty() {
            return Ok(WakeList::default());
        }
        let woken = wake_list(shared, &batch);
        let writing = Instant::now();
        let written = shared.store.write(batch);
        telemetry::store_commit(writing.elapsed(), written.is_ok());
        if locked.elapsed() >= SLOW_GROUP {
            // What held every request up: the operations' run, or the write.
            tracing::info!(
                operations = ran.len(),
                run_ms = (writing - locked).as_millis() as u64,
                write_ms = writing.elapsed().as_millis() as u64,
                "a slow group held the state lock"
            );
        }
        written.map(|()| woken)
    }));
    telemetry::group_commit(ran.len());
    let failure = match group {
        Ok(Ok(woken)) => {
            drop(core);
            telemetry::lock_times(locked - asked, locked.elapsed());
            shared.host_waiters.wake(woken.hosts);
            shared.lease_waiters.wake(woken.leases);
            None
        }
        Ok(Err(e)) => {
            // What failed to write must not be shown either: back to what is durable,
            // if the store can still be read, and no more changes.
            shared.failed.store(true, Ordering::SeqCst);
            shared.reload(&mut core, now);
            Some(Failure::internal(format!("failed to write the store: {e}")))
        }
        Err(panic) => {
            // A bug: an operation (or the write) stopped halfway, so memory may hold half
            // a change that is on no disk. Write nothing of this group, refuse changes
            // from now on, and put back what the store holds, so that reads show only
            // what is durable.
            shared.failed.store(true, Ordering::SeqCst);
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(panic = %what, "an operation panicked; the indexer stopped taking changes");
            shared.reload(&mut core, now);
            Some(Failure::internal(
                "an operation failed unexpectedly; the indexer stopped taking changes until it is restarted",
            ))
        }
    };
    ran.into_iter().map(|op| (op, failure.clone())).collect()
}

/// Whom a durable batch concerns: the hosts and leases to wake.
#[derive(Default)]
struct WakeList {
    hosts: Vec<Address>,
    leases: Vec<LeaseId>,
}

/// Whom a batch concerns, to wake once it is durable: the hosts and leases its lease
/// records and log lines name. Nothing is collected when nobody waits.
fn wake_list(shared: &Shared, batch: &Batch) -> WakeList {
    let hosts = if shared.host_waiters.is_empty() {
        Vec::new()
    } else {
        batch.leases.iter().map(|l| l.host).collect()
    };
    let leases = if shared.lease_waiters.is_empty() {
        Vec::new()
    } else {
        (batch.leases.iter().map(|l| l.id))
            .chain(batch.logs.iter().map(|(id, _)| *id))
            .collect()
    };
    WakeList { hosts, leases }
}

/// Refuses `first` and everything queued now, running none of them: the indexer stopped
/// taking changes.
pub(crate) fn refuse_all(first: Op, queue: &Receiver<Op>) {
    for op in std::iter::once(first).chain(queue.try_iter()) {
        op.answer(Some(stopped()));
    }
}

pub(crate) fn stopped() -> Failure {
    Failure::internal(
        "the indexer stopped taking changes after a store failure or a failed operation; restart it",
    )
}
