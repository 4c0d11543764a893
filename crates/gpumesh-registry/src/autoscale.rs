//! The autoscaler: how many replicas a deployment's region wants, and which to remove.
//!
//! Pure and deterministic: it sees one region's replicas, its queued sessions and the
//! times of its recent changes, with the time passed in, and decides. The rules
//! (docs/services.md):
//! - the answer is always within the region's minimum and maximum;
//! - it adds replicas when sessions queue or the free slots fall under the headroom;
//! - it removes only replicas that hold no session and have been idle for the cool-down,
//!   and only while no session queues and the free slots stay at the headroom or above;
//! - it makes at most `max_changes` changes per `interval_ms`.

/// One replica as the autoscaler sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplicaLoad {
    pub id: u64,
    /// Sessions it holds now.
    pub sessions: u16,
    /// Serving (running and healthy); a replica still starting counts toward the size
    /// but offers no slot yet.
    pub ready: bool,
    /// Since when it has held no session; `None` while it holds one.
    pub idle_since_ms: Option<u64>,
}

/// One region's load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionLoad {
    pub min: u16,
    pub max: u16,
    /// What the autoscaler wanted last time.
    pub desired: u16,
    pub replicas: Vec<ReplicaLoad>,
    /// Sessions waiting for a slot in this region.
    pub queued: u32,
    pub slots_per_replica: u16,
}

/// How eagerly to follow demand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// A replica idle for this long may be removed.
    pub cooldown_ms: u64,
    /// At most this many changes (a replica added or removed) per interval.
    pub max_changes: u16,
    pub interval_ms: u64,
    /// Free slots to keep ready for sessions to come.
    pub headroom_slots: u32,
}

impl Policy {
    /// The public network's: minutes, not seconds.
    pub fn network() -> Policy {
        Policy {
            cooldown_ms: 5 * 60_000,
            max_changes: 4,
            interval_ms: 60_000,
            headroom_slots: 1,
        }
    }

    /// A local network's, fast enough for a demo.
    pub fn local() -> Policy {
        Policy {
            cooldown_ms: 5_000,
            max_changes: 2,
            interval_ms: 2_000,
            headroom_slots: 1,
        }
    }
}

/// What to do in a region.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub desired: u16,
    /// Replicas to remove now (each held no session and was idle for the cool-down).
    pub remove: Vec<u64>,
}

/// Decides one region's size. `recent_changes` holds the times of its changes so far
/// (older ones are ignored).
pub fn decide(load: &RegionLoad, policy: &Policy, recent_changes: &[u64], now_ms: u64) -> Decision {
    let min = load.min.min(load.max);
    let max = load.max;
    let clamped = load.desired.clamp(min, max);
    // Moving into the bounds is not a change of the autoscaler's: bounds are the owner's.
    let since = now_ms.saturating_sub(policy.interval_ms);
    let used = recent_changes.iter().filter(|&&t| t > since).count();
    let budget = (policy.max_changes as usize).saturating_sub(used) as u16;
    let slots = load.slots_per_replica as u32;
    let free: u32 = load
        .replicas
        .iter()
        .filter(|r| r.ready)
        .map(|r| slots.saturating_sub(r.sessions as u32))
        .sum();
    // Replicas asked for but not serving yet will bring their slots.
    let coming = (clamped as u32).saturating_sub(load.replicas.len() as u32) * slots
        + load
            .replicas
            .iter()
            .filter(|r| !r.ready)
            .map(|_| slots)
            .sum::<u32>();
    let short = load.queued + policy.headroom_slots;
    if slots > 0 && free + coming < short {
        let need = (short - free - coming).div_ceil(slots);
        let add = need.min(budget as u32).min((max - clamped) as u32) as u16;
        return Decision {
            desired: clamped + add,
            remove: Vec::new(),
        };
    }
    if load.queued > 0 || clamped <= min {
        return Decision {
            desired: clamped,
            remove: Vec::new(),
        };
    }
    // Idle longest first, then by id, so the choice is deterministic.
    let mut idle: Vec<&ReplicaLoad> = load
        .replicas
        .iter()
        .filter(|r| {
            r.sessions == 0
                && r.idle_since_ms
                    .is_some_and(|t| t.saturating_add(policy.cooldown_ms) <= now_ms)
        })
        .collect();
    idle.sort_by_key(|r| (r.idle_since_ms, r.id));
    let mut remove = Vec::new();
    let mut desired = clamped;
    let mut free_left = free;
    for r in idle {
        if remove.len() as u16 >= budget || desired <= min {
            break;
        }
        let gives = if r.ready { slots } else { 0 };
        if free_left.saturating_sub(gives) < policy.headroom_slots && slots > 0 {
            break;
        }
        free_left -= gives.min(free_left);
        desired -= 1;
        remove.push(r.id);
    }
    Decision { desired, remove }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn replica(id: u64, sessions: u16, idle_since_ms: Option<u64>) -> ReplicaLoad {
        ReplicaLoad {
            id,
            sessions,
            ready: true,
            idle_since_ms,
        }
    }

    #[test]
    fn queued_sessions_add_replicas_and_idle_ones_go_after_the_cooldown() {
        let policy = Policy::local();
        let busy = RegionLoad {
            min: 1,
            max: 4,
            desired: 1,
            replicas: vec![replica(1, 2, None)],
            queued: 3,
            slots_per_replica: 2,
        };
        // 3 queued + 1 headroom, no free slot: 2 replicas needed, within the budget of 2.
        assert_eq!(decide(&busy, &policy, &[], 10_000).desired, 3);
        // With both changes of the interval used, nothing moves.
        assert_eq!(decide(&busy, &policy, &[9_000, 9_500], 10_000).desired, 1);

        let quiet = RegionLoad {
            min: 1,
            max: 4,
            desired: 3,
            replicas: vec![
                replica(1, 1, None),
                replica(2, 0, Some(1_000)),
                replica(3, 0, Some(9_000)),
            ],
            queued: 0,
            slots_per_replica: 2,
        };
        // Replica 2 was idle for the cool-down; 3 was not.
        let d = decide(&quiet, &policy, &[], 10_000);
        assert_eq!(
            d,
            Decision {
                desired: 2,
                remove: vec![2]
            }
        );
        // Later both may go, but replica 1 holds a session and the region keeps its
        // headroom.
        let d = decide(&quiet, &policy, &[], 20_000);
        assert_eq!(
            d,
            Decision {
                desired: 1,
                remove: vec![2, 3]
            }
        );
    }

    fn load() -> impl Strategy<Value = (RegionLoad, Vec<u64>, u64)> {
        (0u16..6, 0u16..8, 0u16..10, 1u16..4, 0u32..20, 0u64..100_000).prop_flat_map(
            |(min, extra, desired, slots, queued, now)| {
                let max = min + extra;
                let replicas = proptest::collection::vec(
                    (
                        0u16..=slots,
                        any::<bool>(),
                        proptest::option::of(0u64..100_000),
                    ),
                    0..(max as usize + 2),
                )
                .prop_map(|rs| {
                    rs.into_iter()
                        .enumerate()
                        .map(|(i, (sessions, ready, idle))| ReplicaLoad {
                            id: i as u64,
                            sessions,
                            ready,
                            idle_since_ms: if sessions == 0 { idle } else { None },
                        })
                        .collect::<Vec<_>>()
                });
                let changes = proptest::collection::vec(0u64..100_000, 0..6);
                (replicas, changes).prop_map(move |(replicas, changes)| {
                    (
                        RegionLoad {
                            min,
                            max,
                            desired,
                            replicas,
                            queued,
                            slots_per_replica: slots,
                        },
                        changes,
                        now,
                    )
                })
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        /// Never below the minimum or above the maximum; never removes a replica that
        /// holds a session (or one not idle for the cool-down); at most the interval's
        /// budget of changes.
        #[test]
        fn decisions_keep_their_bounds((load, changes, now) in load()) {
            let policy = Policy::local();
            let d = decide(&load, &policy, &changes, now);
            prop_assert!(d.desired >= load.min.min(load.max) && d.desired <= load.max, "{d:?}");
            for id in &d.remove {
                let r = load.replicas.iter().find(|r| r.id == *id).expect("a known replica");
                prop_assert_eq!(r.sessions, 0);
                prop_assert!(r.idle_since_ms.is_some_and(|t| t + policy.cooldown_ms <= now));
            }
            let mut unique = d.remove.clone();
            unique.sort_unstable();
            unique.dedup();
            prop_assert_eq!(unique.len(), d.remove.len());
            let clamped = load.desired.clamp(load.min.min(load.max), load.max);
            let used = changes.iter().filter(|&&t| t > now.saturating_sub(policy.interval_ms)).count();
            let budget = (policy.max_changes as usize).saturating_sub(used);
            let changed = (d.desired as i32 - clamped as i32).unsigned_abs() as usize;
            prop_assert!(changed <= budget, "{changed} changes, budget {budget}");
            prop_assert!(d.remove.len() <= changed);
            if load.queued > 0 {
                prop_assert!(d.remove.is_empty(), "nothing is removed while sessions queue");
            }
        }

        /// The same inputs give the same decision.
        #[test]
        fn decisions_are_deterministic((load, changes, now) in load()) {
            let policy = Policy::local();
            prop_assert_eq!(decide(&load, &policy, &changes, now), decide(&load, &policy, &changes, now));
        }
    }
}
