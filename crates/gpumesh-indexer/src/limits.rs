//! Per-key rate limits on the routes where one signer could crowd out everyone else:
//! host registration, the faucet, and job submission (with deployments and session
//! requests, which cost alike). Counted after the signature is
//! checked, so a limit is always some key's own; refused requests change nothing and say
//! `rate_limited` (HTTP 429). Keys cost nothing to make, so these bound what one key
//! does, not what a swarm of keys does; the route timeouts and the body limit bound that.

use std::num::NonZeroU32;

use alloy_primitives::Address;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use gpumesh_types::ErrorCode;

use crate::error::Failure;

/// How often each key may call the limited routes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimits {
    pub registrations_per_minute: u32,
    pub faucet_per_minute: u32,
    pub jobs_per_second: u32,
    /// Jobs a key may send at once before the per-second rate applies.
    pub job_burst: u32,
}

impl Default for RateLimits {
    fn default() -> RateLimits {
        RateLimits {
            registrations_per_minute: 30,
            faucet_per_minute: 20,
            jobs_per_second: 100,
            job_burst: 500,
        }
    }
}

/// The routes that are limited per key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limited {
    Registration,
    Faucet,
    Job,
}

#[derive(Debug)]
pub struct Limits {
    registration: DefaultKeyedRateLimiter<Address>,
    faucet: DefaultKeyedRateLimiter<Address>,
    jobs: DefaultKeyedRateLimiter<Address>,
    config: RateLimits,
}

fn at_least_one(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
}

impl Limits {
    pub fn new(config: RateLimits) -> Limits {
        let per_minute = |n: u32| Quota::per_minute(at_least_one(n));
        Limits {
            registration: RateLimiter::keyed(per_minute(config.registrations_per_minute)),
            faucet: RateLimiter::keyed(per_minute(config.faucet_per_minute)),
            jobs: RateLimiter::keyed(
                Quota::per_second(at_least_one(config.jobs_per_second))
                    .allow_burst(at_least_one(config.job_burst)),
            ),
            config,
        }
    }

    /// Counts one request of `signer`'s, or refuses it.
    pub fn check(&self, kind: Limited, signer: Address) -> Result<(), Failure> {
        let (limiter, what) = match kind {
            Limited::Registration => (
                &self.registration,
                format!(
                    "{} registrations a minute",
                    self.config.registrations_per_minute
                ),
            ),
            Limited::Faucet => (
                &self.faucet,
                format!("{} faucet requests a minute", self.config.faucet_per_minute),
            ),
            Limited::Job => (
                &self.jobs,
                format!(
                    "{} jobs a second (bursts of {})",
                    self.config.jobs_per_second, self.config.job_burst
                ),
            ),
        };
        limiter.check_key(&signer).map_err(|_| {
            Failure::new(
                ErrorCode::RateLimited,
                format!("{signer} is over its limit of {what}; retry later"),
            )
        })
    }

    /// Forgets keys whose allowance is full again, so memory follows recent signers only.
    pub fn prune(&self) {
        for limiter in [&self.registration, &self.faucet, &self.jobs] {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_key_has_its_own_allowance() {
        let limits = Limits::new(RateLimits {
            registrations_per_minute: 3,
            ..RateLimits::default()
        });
        let (a, b) = (Address::with_last_byte(1), Address::with_last_byte(2));
        for _ in 0..3 {
            limits.check(Limited::Registration, a).unwrap();
        }
        let refused = limits.check(Limited::Registration, a).unwrap_err();
        assert_eq!(refused.code, ErrorCode::RateLimited);
        assert!(
            refused.message.contains("3 registrations a minute"),
            "{refused}"
        );
        limits.check(Limited::Registration, b).unwrap();
        limits.check(Limited::Job, a).unwrap();
    }
}
