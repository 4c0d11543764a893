//! Why a request matched nothing: free GPUs passing each constraint in turn, and the
//! nearest miss at the first constraint nothing passed.

use gpumesh_types::{Amount, Country};

use crate::{GpuSelector, HostId, ImagePolicy, Matcher, Request};

/// The constraints, in the order they are applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stage {
    /// GPUs of the model or class, busy or not.
    Offered,
    Online,
    /// Free (in standby).
    Standby,
    /// On a host with enough free GPUs of the kind.
    Count,
    Memory,
    Price,
    Tier,
    Country,
    Image,
    RoundTrip,
}

/// The closest thing to a match at the failing stage.
#[derive(Clone, Debug, PartialEq)]
pub enum NearMiss {
    MostFree {
        host: HostId,
        free: u8,
    },
    MostMemory {
        host: HostId,
        vram_mib: u32,
    },
    Cheapest {
        host: HostId,
        price: Amount,
    },
    BestTier {
        host: HostId,
        tier: u8,
    },
    Fastest {
        host: HostId,
        country: Country,
        rtt_ms: f64,
    },
}

/// Counts of free GPUs after each applicable constraint.
#[derive(Clone, Debug, PartialEq)]
pub struct Explanation {
    pub request: Request,
    pub stages: Vec<(Stage, u64)>,
    pub failed: Option<Stage>,
    pub near_miss: Option<NearMiss>,
}

fn wanted(w: GpuSelector) -> String {
    match w {
        GpuSelector::Model(m) => m.to_string(),
        GpuSelector::Class(c) => format!("{}-class GPUs", format!("{c:?}").to_lowercase()),
    }
}

impl Explanation {
    /// A sentence for a person; `name` turns a host into something readable.
    pub fn describe(&self, name: impl Fn(HostId) -> String) -> String {
        let r = &self.request;
        let what = wanted(r.gpu);
        let mut parts = Vec::new();
        for &(stage, n) in &self.stages {
            let text = match stage {
                Stage::Offered if n == 0 => format!("no host offers {what}"),
                Stage::Offered => format!("{n} {what} registered"),
                Stage::Online => format!("{n} online"),
                Stage::Standby => format!("{n} in standby"),
                Stage::Count => format!("{n} on hosts with {} free", r.count),
                Stage::Memory => format!("{n} with at least {} MiB", r.min_vram_mib),
                Stage::Price => format!(
                    "{n} at or under {} per GPU-hour",
                    r.max_price_per_gpu_hour.tokens()
                ),
                Stage::Tier => format!("{n} of tier {} or better", r.max_tier),
                Stage::Country => format!("{n} in allowed countries"),
                Stage::Image => format!(
                    "{n} with {} present",
                    r.image.as_deref().unwrap_or("the image")
                ),
                Stage::RoundTrip => format!(
                    "{n} within {:.0} ms of {:.2},{:.2}",
                    r.max_rtt_ms.unwrap_or(f64::INFINITY),
                    r.near.lat,
                    r.near.lon
                ),
            };
            parts.push(text);
        }
        let mut text = parts.join("; ");
        if let Some(miss) = &self.near_miss {
            let clause = match miss {
                NearMiss::MostFree { host, free } => {
                    format!("the most free on one host is {free} ({})", name(*host))
                }
                NearMiss::MostMemory { host, vram_mib } => {
                    format!("the most memory is {vram_mib} MiB ({})", name(*host))
                }
                NearMiss::Cheapest { host, price } => {
                    format!("the cheapest is {} ({})", price.tokens(), name(*host))
                }
                NearMiss::BestTier { host, tier } => {
                    format!("the best tier is {tier} ({})", name(*host))
                }
                NearMiss::Fastest { host, rtt_ms, .. } => {
                    format!("nearest is {rtt_ms:.0} ms away ({})", name(*host))
                }
            };
            text.push_str("; ");
            text.push_str(&clause);
        }
        text
    }
}

impl Matcher {
    /// Explains why `request` matches nothing (or, if it would match, how many passed).
    pub fn explain(&self, request: &Request) -> Explanation {
        let required = request.image_policy == ImagePolicy::Require;
        let c = self.compile(request, required);
        let mut counts = [0u64; 10];
        let mut miss: [Option<NearMiss>; 10] = Default::default();
        let better = |new: &NearMiss, old: &Option<NearMiss>| match (new, old) {
            (_, None) => true,
            (NearMiss::MostFree { free: a, .. }, Some(NearMiss::MostFree { free: b, .. })) => a > b,
            (
                NearMiss::MostMemory { vram_mib: a, .. },
                Some(NearMiss::MostMemory { vram_mib: b, .. }),
            ) => a > b,
            (NearMiss::Cheapest { price: a, .. }, Some(NearMiss::Cheapest { price: b, .. })) => {
                a < b
            }
            (NearMiss::BestTier { tier: a, .. }, Some(NearMiss::BestTier { tier: b, .. })) => a < b,
            (NearMiss::Fastest { rtt_ms: a, .. }, Some(NearMiss::Fastest { rtt_ms: b, .. })) => {
                a < b
            }
            _ => false,
        };
        for g in &self.groups {
            if c.models & (1 << g.model as usize) == 0 {
                continue;
            }
            let host = HostId(g.host);
            counts[0] += g.gpus as u64;
            if !g.online {
                continue;
            }
            counts[1] += g.gpus as u64;
            let free = g.free_count() as u64;
            if free == 0 {
                continue;
            }
            counts[2] += free;
            // Each stage records the near miss among those that reached it.
            let stages: [(bool, Option<NearMiss>); 6] = [
                (
                    g.free_count() >= c.count,
                    Some(NearMiss::MostFree {
                        host,
                        free: g.free_count(),
                    }),
                ),
                (
                    g.vram_mib >= c.min_vram,
                    Some(NearMiss::MostMemory {
                        host,
                        vram_mib: g.vram_mib,
                    }),
                ),
                (
                    g.price <= c.cap,
                    Some(NearMiss::Cheapest {
                        host,
                        price: Amount(g.price),
                    }),
                ),
                (
                    g.tier <= c.max_tier,
                    Some(NearMiss::BestTier { host, tier: g.tier }),
                ),
                (
                    c.allow.is_none_or(|a| {
                        a[(g.country >> 6) as usize] & (1 << (g.country & 63)) != 0
                    }) && c.deny[(g.country >> 6) as usize] & (1 << (g.country & 63)) == 0,
                    None,
                ),
                (
                    match c.image {
                        None => true,
                        Some(None) => false,
                        Some(Some(img)) => self.hosts[g.host as usize]
                            .images
                            .binary_search(&img)
                            .is_ok(),
                    },
                    None,
                ),
            ];
            let mut passed_all = true;
            for (i, (pass, near)) in stages.into_iter().enumerate() {
                if !pass {
                    if let Some(near) = near.filter(|n| better(n, &miss[3 + i])) {
                        miss[3 + i] = Some(near);
                    }
                    passed_all = false;
                    break;
                }
                counts[3 + i] += free;
            }
            if !passed_all {
                continue;
            }
            let (_, rtt) = self.rtt(&c, g);
            let near = NearMiss::Fastest {
                host,
                country: self.countries[g.country as usize],
                rtt_ms: rtt,
            };
            if rtt <= c.max_rtt {
                counts[9] += free;
            } else if better(&near, &miss[9]) {
                miss[9] = Some(near);
            }
        }
        let all = [
            Stage::Offered,
            Stage::Online,
            Stage::Standby,
            Stage::Count,
            Stage::Memory,
            Stage::Price,
            Stage::Tier,
            Stage::Country,
            Stage::Image,
            Stage::RoundTrip,
        ];
        let applies = |s: Stage| match s {
            Stage::Memory => request.min_vram_mib > 0,
            Stage::Tier => request.max_tier < 3,
            Stage::Country => {
                !request.countries.is_empty() || !request.exclude_countries.is_empty()
            }
            Stage::Image => required,
            Stage::RoundTrip => request.max_rtt_ms.is_some(),
            _ => true,
        };
        let mut stages = Vec::new();
        let mut failed = None;
        let mut near_miss = None;
        for (i, stage) in all.into_iter().enumerate() {
            if !applies(stage) {
                continue;
            }
            stages.push((stage, counts[i]));
            if counts[i] == 0 {
                failed = Some(stage);
                near_miss = miss[i].clone();
                break;
            }
        }
        Explanation {
            request: request.clone(),
            stages,
            failed,
            near_miss,
        }
    }
}
