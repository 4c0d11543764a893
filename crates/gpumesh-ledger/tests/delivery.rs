//! Delivery rewards (docs/economics.md): weighed by what buyers paid, capped per
//! container, and never worth leasing to oneself.
//!
//! In `leasing_to_oneself_never_pays`, one actor holds a host key and a buyer key and leases its own GPUs at any price. Its
//! payments are settled as the ledger settles usage (cumulative cost by `usage_cost`,
//! split by `fee_split`), spread over its GPUs and gathered per container as the indexer
//! gathers an epoch's work (`gpumesh_checking::epoch`), and the epoch is closed by the
//! ledger itself beside other hosts whose buyers paid too. Whatever the prices, durations,
//! GPU counts, tiers, other payments, pool sizes and fee parameters, the actor pays the
//! treasury more than the delivery reward gives back, or, where its fee rounds to
//! nothing, earns nothing.

use std::collections::BTreeMap;

use gpumesh_checking::epoch::{Delivered, delivery_list, split_delivery};
use gpumesh_identity::Wallet;
use gpumesh_ledger::{Genesis, Ledger, delivery_cap, fee_split, usage_cost};
use gpumesh_types::{Address, Amount, B256, ContainerRef, EpochClose, SignedTx, Tx, TxKind};
use proptest::prelude::*;

const CHAIN: u64 = 31337;
/// GPUs per host in these worlds.
const GPUS: u16 = 8;

/// One of the actor's leases to itself, as far as it was settled in the epoch.
#[derive(Clone, Debug)]
struct SelfLease {
    /// Base units per GPU-hour, from 1 up.
    price: u128,
    gpus: u16,
    /// Its first GPU; the rest follow, wrapping around the host's GPUs.
    first_gpu: u16,
    /// Wall milliseconds settled before the epoch began (the lease may span epochs).
    before_ms: u64,
    /// Cumulative wall milliseconds at each settlement in the epoch (sorted here).
    settled_ms: Vec<u64>,
}

/// Another host, whose buyers paid for its containers in the epoch.
#[derive(Clone, Debug)]
struct OtherHost {
    /// What its buyers paid per container, in base units.
    paid: Vec<u128>,
    tier: u8,
}

/// A number spread over many orders of magnitude: `mantissa × 10^exp`.
fn magnitude(max_exp: u32) -> impl Strategy<Value = u128> {
    (1u128..10_000, 0..=max_exp).prop_map(|(m, e)| m * 10u128.pow(e))
}

fn self_lease() -> impl Strategy<Value = SelfLease> {
    (
        prop_oneof![Just(1u128), magnitude(20)],
        1..=GPUS,
        0..GPUS,
        prop_oneof![Just(0u64), 0u64..7_200_000],
        proptest::collection::vec(0u64..7_200_000, 1..5),
    )
        .prop_map(
            |(price, gpus, first_gpu, before_ms, settled_ms)| SelfLease {
                price,
                gpus,
                first_gpu,
                before_ms,
                settled_ms,
            },
        )
}

fn other_host() -> impl Strategy<Value = OtherHost> {
    (
        proptest::collection::vec(prop_oneof![Just(0u128), magnitude(24)], 1..4),
        1u8..=3,
    )
        .prop_map(|(paid, tier)| OtherHost { paid, tier })
}

/// A world with the given fee, delivery cap and provider pool: the protocol and faucet
/// keys, and a ledger at genesis.
struct World {
    now: u64,
    ledger: Ledger,
    protocol: Wallet,
    faucet: Wallet,
}

impl World {
    fn new(fee_bps: u32, delivery_cap_bps: u32, provider_pool: u128) -> World {
        let protocol = Wallet::from_label("protocol");
        let faucet = Wallet::from_label("faucet");
        let mut genesis = Genesis::local(CHAIN, 1_000, protocol.address(), faucet.address());
        genesis.fee_bps = fee_bps;
        genesis.economics.delivery_cap_bps = delivery_cap_bps;
        // No larger than the local genesis's, which is all its reward pool can hold.
        let largest = genesis.economics.provider_pool;
        genesis.economics.provider_pool = Amount(provider_pool.min(largest.0));
        World {
            now: 2_000,
            ledger: Ledger::new(genesis).expect("the genesis is valid"),
            protocol,
            faucet,
        }
    }

    fn send(&mut self, wallet: &Wallet, kind: TxKind) {
        let nonce = self.ledger.account(&wallet.address()).nonce;
        let stx: SignedTx = wallet.sign_tx(Tx {
            chain_id: CHAIN,
            from: wallet.address(),
            nonce,
            kind,
        });
        self.now += 1;
        self.ledger
            .apply(&stx, self.now)
            .expect("the transaction applies");
    }

    /// Funds a host and stakes a token on each of its GPUs: any stake qualifies a
    /// container's delivery.
    fn stake_host(&mut self, host: &Wallet) {
        let faucet = self.faucet.clone();
        self.send(
            &faucet,
            TxKind::Transfer {
                to: host.address(),
                amount: Amount::from_tokens(GPUS as u64),
            },
        );
        let stakes = (0..GPUS).map(|i| (i, Amount::from_tokens(1))).collect();
        self.send(host, TxKind::StakeMany { stakes });
    }
}

/// What the actor paid for its own leases in the epoch, settled as the ledger settles:
/// the cumulative cost at each record, split into host and treasury parts, of which the
/// epoch holds the growth since the last record before it. Returns the payment and the
/// fee, and adds each settlement's growth to the actor's containers.
fn settle(
    leases: &[SelfLease],
    fee_bps: u32,
    actor: Address,
    work: &mut BTreeMap<ContainerRef, Delivered>,
) -> (u128, u128) {
    let (mut paid, mut fee) = (0u128, 0u128);
    for lease in leases {
        let gpus: Vec<u16> = (0..lease.gpus)
            .map(|i| (lease.first_gpu + i) % GPUS)
            .collect();
        let charged_at = |wall_ms: u64| {
            let gpu_ms = wall_ms * lease.gpus as u64;
            let charged = usage_cost(Amount(lease.price), gpu_ms).expect("a cost fits");
            (gpu_ms, charged, fee_split(charged, fee_bps).1)
        };
        let mut settled_ms = lease.settled_ms.clone();
        settled_ms.sort_unstable();
        let mut last = charged_at(lease.before_ms);
        for wall_ms in settled_ms.into_iter().map(|ms| lease.before_ms + ms) {
            let now = charged_at(wall_ms);
            let growth = Delivered {
                gpu_ms: now.0 - last.0,
                paid: Amount(now.1.0 - last.1.0),
                fee: Amount(now.2.0 - last.2.0),
            };
            paid += growth.paid.0;
            fee += growth.fee.0;
            for (index, part) in split_delivery(growth, &gpus) {
                work.entry(ContainerRef { host: actor, index })
                    .or_default()
                    .add(part);
            }
            last = now;
        }
    }
    (paid, fee)
}

/// Settles the actor's leases and the other hosts' payments, closes the epoch, and
/// returns (what the actor paid, its fee, its delivery reward, the caps of its
/// containers), checking the ledger's own accounting on the way.
fn run_epoch(
    fee_bps: u32,
    delivery_cap_bps: u32,
    provider_pool: u128,
    leases: &[SelfLease],
    actor_tier: u8,
    others: &[OtherHost],
) -> (u128, u128, u128, u128) {
    let mut w = World::new(fee_bps, delivery_cap_bps, provider_pool);
    let actor = Wallet::from_label("self-dealer");
    let other_wallets: Vec<Wallet> = (0..others.len())
        .map(|i| Wallet::from_label(&format!("other host {i}")))
        .collect();
    w.stake_host(&actor);
    for host in &other_wallets {
        w.stake_host(host);
    }

    let mut work: BTreeMap<ContainerRef, Delivered> = BTreeMap::new();
    let (paid, fee) = settle(leases, fee_bps, actor.address(), &mut work);
    let mut tiers: BTreeMap<Address, u8> = BTreeMap::from([(actor.address(), actor_tier)]);
    for (host, other) in other_wallets.iter().zip(others) {
        tiers.insert(host.address(), other.tier);
        for (index, &p) in (0..).zip(&other.paid) {
            let paid = Amount(p);
            let fee = fee_split(paid, fee_bps).1;
            let c = ContainerRef {
                host: host.address(),
                index,
            };
            work.entry(c).or_default().add(Delivered {
                gpu_ms: 3_600_000,
                paid,
                fee,
            });
        }
    }
    let delivery = delivery_list(work, |h| tiers[h]);
    let caps: u128 = delivery
        .iter()
        .filter(|(h, _)| *h == actor.address())
        .flat_map(|(_, gpus)| gpus)
        .map(|d| delivery_cap(d.paid, d.fee, delivery_cap_bps, fee_bps).0)
        .sum();

    let before = w.ledger.totals();
    let pool_before = w.ledger.balance(&w.ledger.genesis().reward_pool);
    w.now += w.ledger.genesis().economics.epoch_ms;
    let close = EpochClose {
        epoch: before.next_epoch,
        end_ms: w.now,
        evidence: B256::ZERO,
        capacity: vec![],
        delivery,
        checkers: vec![],
        quarter_bonus: false,
    };
    let protocol = w.protocol.clone();
    w.send(&protocol, TxKind::Epoch(Box::new(close)));

    // The ledger's own accounting: the pool shrank by exactly what it says it emitted,
    // and every base unit is still somewhere.
    let after = w.ledger.totals();
    let pool_after = w.ledger.balance(&w.ledger.genesis().reward_pool);
    assert_eq!(
        pool_before.0 - pool_after.0,
        after.provider_emitted.0 - before.provider_emitted.0
    );
    assert!(w.ledger.supply_conserved());
    let reward = w.ledger.cumulative_reward(&actor.address()).0;
    (paid, fee, reward, caps)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The property of docs/economics.md: an actor that is both buyer and host ends the
    /// epoch with no more than it started with (what it paid as buyer, less what it got
    /// back as host, less its delivery reward, is never negative), and with less whenever
    /// the treasury took a fee.
    #[test]
    fn leasing_to_oneself_never_pays(
        fee_bps in 1u32..=10_000,
        cap_of_fee in 0u32..10_000,
        pool in prop_oneof![magnitude(25), Just(u128::MAX)],
        leases in proptest::collection::vec(self_lease(), 1..4),
        actor_tier in 1u8..=3,
        others in proptest::collection::vec(other_host(), 0..4),
    ) {
        // Any cap the genesis accepts: zero, or below the fee.
        let delivery_cap_bps = cap_of_fee * fee_bps / 10_000;
        let (paid, fee, reward, caps) =
            run_epoch(fee_bps, delivery_cap_bps, pool, &leases, actor_tier, &others);
        let host_share = paid - fee;
        prop_assert!(reward <= caps, "reward {reward} above the caps {caps}");
        let kept = paid - host_share;
        prop_assert!(kept >= reward, "paid {paid}, got back {host_share} + {reward}");
        if fee > 0 {
            prop_assert!(kept > reward, "paid {paid}, fee {fee}, got back {host_share} + {reward}");
        } else {
            prop_assert_eq!(reward, 0);
        }
    }
}

/// At the default parameters with a pool far larger than the payment, the cap is what
/// binds: 100 tokens paid, 20 to the treasury, 10 back as the delivery reward.
#[test]
fn at_the_defaults_a_self_dealer_loses_half_its_fee() {
    let genesis = Genesis::local(CHAIN, 0, Address::ZERO, Address::repeat_byte(1));
    let (fee_bps, cap_bps, pool) = (
        genesis.fee_bps,
        genesis.economics.delivery_cap_bps,
        genesis.economics.provider_pool.0,
    );
    // 100 tokens an hour for one GPU-hour.
    let lease = SelfLease {
        price: Amount::from_tokens(100).0,
        gpus: 1,
        first_gpu: 0,
        before_ms: 0,
        settled_ms: vec![3_600_000],
    };
    let (paid, fee, reward, _) = run_epoch(fee_bps, cap_bps, pool, &[lease], 1, &[]);
    assert_eq!(paid, Amount::from_tokens(100).0);
    assert_eq!(fee, Amount::from_tokens(20).0);
    assert_eq!(reward, Amount::from_tokens(10).0);
}

/// At the minimum price, an hour of eight GPUs costs 8 base units: the treasury's fee is 1,
/// and the cap (10% of 8, half of 1) rounds down to nothing.
#[test]
fn at_the_minimum_price_a_self_dealer_earns_nothing() {
    let genesis = Genesis::local(CHAIN, 0, Address::ZERO, Address::repeat_byte(1));
    let lease = SelfLease {
        price: 1,
        gpus: 8,
        first_gpu: 0,
        before_ms: 0,
        settled_ms: vec![3_600_000],
    };
    let (paid, fee, reward, _) = run_epoch(
        genesis.fee_bps,
        genesis.economics.delivery_cap_bps,
        genesis.economics.provider_pool.0,
        &[lease],
        1,
        &[],
    );
    assert_eq!((paid, fee, reward), (8, 1, 0));
}

/// A container's reward stops at its cap; what the cap holds back is not emitted and stays
/// in the reward pool for later epochs, and nothing of it reaches the treasury.
#[test]
fn a_capped_reward_leaves_the_rest_in_the_pool() {
    let genesis = Genesis::local(CHAIN, 0, Address::ZERO, Address::repeat_byte(1));
    let (fee_bps, cap_bps) = (genesis.fee_bps, genesis.economics.delivery_cap_bps);
    let mut w = World::new(fee_bps, cap_bps, genesis.economics.provider_pool.0);
    let host = Wallet::from_label("host");
    w.stake_host(&host);
    let (treasury, reward_pool) = (w.ledger.genesis().treasury, w.ledger.genesis().reward_pool);
    let (treasury_before, pool_before) =
        (w.ledger.balance(&treasury), w.ledger.balance(&reward_pool));
    let paid = Amount::from_tokens(100);
    let fee = fee_split(paid, fee_bps).1;
    let delivered = Delivered {
        gpu_ms: 3_600_000,
        paid,
        fee,
    };
    let c = ContainerRef {
        host: host.address(),
        index: 0,
    };
    w.now += w.ledger.genesis().economics.epoch_ms;
    let close = EpochClose {
        epoch: 0,
        end_ms: w.now,
        evidence: B256::ZERO,
        capacity: vec![],
        delivery: delivery_list([(c, delivered)], |_| 1),
        checkers: vec![],
        quarter_bonus: false,
    };
    let protocol = w.protocol.clone();
    w.send(&protocol, TxKind::Epoch(Box::new(close)));
    // The whole delivery pool was this container's share, far more than its cap.
    let cap = Amount::from_tokens(10);
    assert_eq!(delivery_cap(paid, fee, cap_bps, fee_bps), cap);
    assert_eq!(w.ledger.cumulative_reward(&host.address()), cap);
    assert_eq!(w.ledger.totals().provider_emitted, cap);
    assert_eq!(w.ledger.balance(&reward_pool).0, pool_before.0 - cap.0);
    assert_eq!(w.ledger.balance(&treasury), treasury_before);
    assert!(w.ledger.supply_conserved());
}

/// A genesis whose delivery cap is not below its fee would let a self-dealer earn back
/// what it paid the treasury: refused. A zero cap (no delivery rewards) is always allowed.
#[test]
fn a_delivery_cap_at_or_above_the_fee_is_refused() {
    let mut genesis = Genesis::local(CHAIN, 0, Address::ZERO, Address::repeat_byte(1));
    for (fee_bps, cap_bps, ok) in [
        (2_000, 1_000, true),
        (2_000, 1_999, true),
        (2_000, 2_000, false),
        (2_000, 3_000, false),
        (0, 1, false),
        (0, 0, true),
        (2_000, 0, true),
    ] {
        genesis.fee_bps = fee_bps;
        genesis.economics.delivery_cap_bps = cap_bps;
        assert_eq!(
            genesis.validate().is_ok(),
            ok,
            "fee {fee_bps}, cap {cap_bps}"
        );
    }
}
