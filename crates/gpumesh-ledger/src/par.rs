//! Work spread over the machine's cores for the large, read-only steps of a block (leaf
//! hashes for the state and reward roots). The result is the same as a plain loop's, in
//! the same order; small inputs run on the calling thread.

use std::collections::HashMap;

/// Below this many items a loop on one thread is faster than starting threads.
pub(crate) const MIN_PARALLEL: usize = 8_192;

/// The cores this process may use.
pub(crate) fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Runs `f` on each of `parts`, one thread per part after the first, which runs on the
/// calling thread.
pub(crate) fn each<P: Send>(parts: Vec<P>, f: impl Fn(P) + Sync) {
    let mut parts = parts.into_iter();
    let Some(first) = parts.next() else {
        return;
    };
    std::thread::scope(|scope| {
        let f = &f;
        for part in parts {
            scope.spawn(move || f(part));
        }
        f(first);
    });
}

/// Sets `out[i] = f(i)` for every i, on every core when `out` is large.
pub(crate) fn fill<R: Send>(out: &mut [R], f: impl Fn(usize) -> R + Sync) {
    let threads = threads();
    if threads == 1 || out.len() < MIN_PARALLEL {
        for (i, slot) in out.iter_mut().enumerate() {
            *slot = f(i);
        }
        return;
    }
    let chunk = out.len().div_ceil(threads);
    let parts: Vec<(usize, &mut [R])> = out
        .chunks_mut(chunk)
        .enumerate()
        .map(|(c, part)| (c * chunk, part))
        .collect();
    each(parts, |(start, part)| {
        for (k, slot) in part.iter_mut().enumerate() {
            *slot = f(start + k);
        }
    });
}

/// `items.iter().map(f).collect()`, on every core when `items` is large.
pub(crate) fn map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = threads();
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
