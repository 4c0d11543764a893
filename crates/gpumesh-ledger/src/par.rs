//! Work spread over the machine's cores for the large, read-only steps of a block (leaf
//! hashes for the state and reward roots). The result is the same as a plain loop's, in
//! the same order; small inputs run on the calling thread.

use std::collections::HashMap;

/// Below this many items a loop on one thread is faster than starting threads.
const MIN_PARALLEL: usize = 8_192;

/// `items.iter().map(f).collect()`, on every core when `items` is large.
pub(crate) fn map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if threads == 1 || items.len() < MIN_PARALLEL {
        return items.iter().map(f).collect();
    }
    let chunk = items.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let f = &f;
        let parts: Vec<_> = items
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().map(f).collect::<Vec<R>>()))
            .collect();
        let mut out = Vec::with_capacity(items.len());
        for part in parts {
            out.extend(part.join().expect("a ledger worker panicked"));
        }
        out
    })
}

/// The ledger's maps: a fast hash with a per-process random seed. Nothing the ledger
/// computes depends on their iteration order.
pub type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
