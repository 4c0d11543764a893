//! Wake-ups per host and per lease.
//!
//! A host's long poll for work waits on its host's topic, a lease's log stream on its
//! lease's. Once a batch is durable the indexer wakes the topics the batch touched (a
//! lease record names its lease and its host, a log line its lease), so a commit wakes
//! the waiters it concerns and no others, and a topic exists only while someone waits on
//! it: nothing is kept or run for the hosts and leases nobody watches.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

/// The waiters of one kind of topic (hosts, leases), by key.
#[derive(Debug)]
pub(crate) struct Topics<K>(Arc<Mutex<HashMap<K, Topic>>>);

#[derive(Debug)]
struct Topic {
    notify: Arc<Notify>,
    subscribers: usize,
}

impl<K> Clone for Topics<K> {
    fn clone(&self) -> Self {
        Topics(self.0.clone())
    }
}

impl<K: Eq + Hash + Copy> Topics<K> {
    pub(crate) fn new() -> Self {
        Topics(Arc::new(Mutex::new(HashMap::new())))
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<K, Topic>> {
        // The map is consistent after every statement; a panic elsewhere cannot break it.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts waiting on `key`; the topic lasts while a subscription to it does.
    pub(crate) fn subscribe(&self, key: K) -> Subscription<K> {
        let mut map = self.lock();
        let topic = map.entry(key).or_insert_with(|| Topic {
            notify: Arc::new(Notify::new()),
            subscribers: 0,
        });
        topic.subscribers += 1;
        Subscription {
            topics: self.clone(),
            key,
            notify: topic.notify.clone(),
        }
    }

    /// Wakes every waiter of each of `keys` (keys nobody waits on cost a lookup).
    pub(crate) fn wake(&self, keys: impl IntoIterator<Item = K>) {
        let map = self.lock();
        if map.is_empty() {
            return;
        }
        for key in keys {
            if let Some(topic) = map.get(&key) {
                topic.notify.notify_waiters();
            }
        }
    }

    /// Whether nobody waits on any topic (then a commit need not say whom it concerns).
    pub(crate) fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Topics with at least one subscriber.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

/// A waiter's hold on one topic.
#[derive(Debug)]
pub(crate) struct Subscription<K: Eq + Hash + Copy> {
    topics: Topics<K>,
    key: K,
    notify: Arc<Notify>,
}

impl<K: Eq + Hash + Copy> Subscription<K> {
    /// The topic's bell. A `notified()` future made from it before the state is read
    /// completes on any wake after that (tokio's `Notify::notify_waiters` reaches every
    /// future already made, polled or not), so no change between the read and the wait
    /// is missed.
    pub(crate) fn bell(&self) -> Arc<Notify> {
        self.notify.clone()
    }
}

impl<K: Eq + Hash + Copy> Drop for Subscription<K> {
    fn drop(&mut self) {
        let mut map = self.topics.lock();
        if let Some(topic) = map.get_mut(&self.key) {
            topic.subscribers -= 1;
            if topic.subscribers == 0 {
                map.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_wake_reaches_the_waiters_of_its_key_only_and_topics_end_with_their_waiters() {
        let topics: Topics<u64> = Topics::new();
        let (one, two) = (topics.subscribe(1), topics.subscribe(2));
        let also_one = topics.subscribe(1);
        assert_eq!(topics.len(), 2);
        let (bell_one, bell_two, bell_also) = (one.bell(), two.bell(), also_one.bell());
        let (n1, n2, n3) = (
            bell_one.notified(),
            bell_two.notified(),
            bell_also.notified(),
        );
        // Made before the wake, not yet polled: still woken.
        topics.wake([1, 7]);
        let short = Duration::from_millis(50);
        assert!(tokio::time::timeout(short, n1).await.is_ok());
        assert!(tokio::time::timeout(short, n3).await.is_ok());
        assert!(
            tokio::time::timeout(short, n2).await.is_err(),
            "key 2 was not woken"
        );
        drop(one);
        assert_eq!(topics.len(), 2, "key 1 still has a waiter");
        drop((also_one, two));
        assert_eq!(topics.len(), 0);
        topics.wake([1, 2]);
    }
}
