//! Synthetic worlds at the scale of the network gpumesh copies: hosts in 95 countries with
//! a realistic mix of GPU models, sizes and prices, most of them busy, and a stream of AI
//! and gaming requests. Deterministic for a seed (ChaCha8), so benchmarks and the
//! simulator can be rerun exactly.

pub mod countries;

use gpumesh_matcher::{
    GpuSelector, GroupSpec, HostSpec, ImagePolicy, Matcher, RankPolicy, Request, ReservationId,
};
use gpumesh_types::{Amount, Country, GeoPoint, GpuClass, GpuModel, ONE_TOKEN};
use rand::distributions::{Distribution, WeightedIndex};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub use countries::COUNTRIES;

/// One model's share of the network's GPUs, its price in thousandths of a token per
/// GPU-hour, and the GPU counts hosts of it have (with weights).
struct ModelMix {
    model: GpuModel,
    share: f64,
    price_milli: u64,
    sizes: &'static [(u8, f64)],
}

const SERVER: &[(u8, f64)] = &[(8, 0.8), (4, 0.2)];
const WORKSTATION: &[(u8, f64)] = &[(1, 0.4), (2, 0.3), (4, 0.3)];
const GAMING: &[(u8, f64)] = &[(1, 0.55), (2, 0.2), (4, 0.15), (8, 0.1)];
const SMALL: &[(u8, f64)] = &[(1, 0.7), (2, 0.3)];

const MIX: &[ModelMix] = &[
    ModelMix {
        model: GpuModel::Rtx4090,
        share: 0.25,
        price_milli: 450,
        sizes: GAMING,
    },
    ModelMix {
        model: GpuModel::Rtx3090,
        share: 0.13,
        price_milli: 250,
        sizes: WORKSTATION,
    },
    ModelMix {
        model: GpuModel::Rtx4080,
        share: 0.07,
        price_milli: 300,
        sizes: SMALL,
    },
    ModelMix {
        model: GpuModel::Rtx3080,
        share: 0.06,
        price_milli: 180,
        sizes: SMALL,
    },
    ModelMix {
        model: GpuModel::H100,
        share: 0.14,
        price_milli: 2_200,
        sizes: SERVER,
    },
    ModelMix {
        model: GpuModel::H200,
        share: 0.03,
        price_milli: 3_200,
        sizes: SERVER,
    },
    ModelMix {
        model: GpuModel::A100_80,
        share: 0.09,
        price_milli: 1_400,
        sizes: SERVER,
    },
    ModelMix {
        model: GpuModel::A100_40,
        share: 0.05,
        price_milli: 1_000,
        sizes: SERVER,
    },
    ModelMix {
        model: GpuModel::L40S,
        share: 0.06,
        price_milli: 950,
        sizes: &[(4, 0.5), (8, 0.5)],
    },
    ModelMix {
        model: GpuModel::A10,
        share: 0.04,
        price_milli: 550,
        sizes: WORKSTATION,
    },
    ModelMix {
        model: GpuModel::T4,
        share: 0.04,
        price_milli: 300,
        sizes: WORKSTATION,
    },
    ModelMix {
        model: GpuModel::RtxA6000,
        share: 0.04,
        price_milli: 650,
        sizes: WORKSTATION,
    },
];

/// Images of games hosts keep ready for instant starts; a few are far more popular.
pub const GAME_IMAGES: usize = 30;

pub fn game_image(i: usize) -> String {
    format!("games/title-{i:02}:latest")
}

fn milli_tokens(milli: f64) -> Amount {
    Amount((milli.max(1.0) as u128) * (ONE_TOKEN / 1_000))
}

/// Where GPUs and buyers are, and how to draw points there.
#[derive(Clone)]
struct Geography {
    countries: Vec<(Country, f64, f64, f64)>,
    pick: WeightedIndex<f64>,
}

impl Geography {
    fn new() -> Geography {
        let countries = COUNTRIES
            .iter()
            .map(|(code, lat, lon, spread, _)| {
                (
                    code.parse().expect("the table holds ISO codes"),
                    *lat,
                    *lon,
                    *spread,
                )
            })
            .collect();
        let pick = WeightedIndex::new(COUNTRIES.iter().map(|c| c.4)).expect("weights are positive");
        Geography { countries, pick }
    }

    /// A country by weight and a point around its centre.
    fn point(&self, rng: &mut ChaCha8Rng) -> (Country, GeoPoint) {
        let (country, lat, lon, spread) = self.countries[self.pick.sample(rng)];
        // A rough normal spread: the mean of three uniforms, scaled.
        let mut jitter =
            || (rng.r#gen::<f64>() + rng.r#gen::<f64>() + rng.r#gen::<f64>() - 1.5) * 2.0 * spread;
        let dlat = jitter() / 111.0;
        let dlon = jitter() / (111.0 * lat.to_radians().cos().max(0.2));
        let lat = (lat + dlat).clamp(-89.0, 89.0);
        let lon = (lon + dlon + 540.0).rem_euclid(360.0) - 180.0;
        (country, GeoPoint { lat, lon })
    }

    /// The price factor of a country: cheaper far from the main markets.
    fn price_factor(country: Country) -> f64 {
        match country.as_str() {
            "US" | "CA" | "GB" | "DE" | "FR" | "NL" | "CH" | "JP" | "SG" | "AU" | "KR" => 1.1,
            "IN" | "VN" | "PK" | "BD" | "NG" | "KE" | "EG" | "ID" | "PH" => 0.75,
            _ => 0.95,
        }
    }
}

/// What to build.
#[derive(Clone, Copy, Debug)]
pub struct WorldConfig {
    pub containers: usize,
    /// Fraction of GPUs busy with committed leases at the start.
    pub busy: f64,
    pub seed: u64,
}

/// A built world: the matcher and what was put in it.
pub struct World {
    pub matcher: Matcher,
    pub containers: usize,
    /// The reservations that make GPUs busy.
    pub busy: Vec<ReservationId>,
}

/// One synthetic host: where it is, its GPUs (one model), its price and tier, and the
/// images it has cached.
#[derive(Clone, Debug)]
pub struct SimHost {
    pub spec: HostSpec,
    pub model: GpuModel,
    pub count: u8,
}

/// The random stream and the weighted tables that hosts and requests are drawn with.
struct Draws {
    rng: ChaCha8Rng,
    geo: Geography,
    pick_model: WeightedIndex<f64>,
    popular: WeightedIndex<f64>,
}

impl Draws {
    fn new(seed: u64) -> Draws {
        Draws {
            rng: ChaCha8Rng::seed_from_u64(seed),
            geo: Geography::new(),
            pick_model: WeightedIndex::new(MIX.iter().map(|m| m.share))
                .expect("shares are positive"),
            popular: WeightedIndex::new((0..GAME_IMAGES).map(|i| 1.0 / (i as f64 + 1.0)))
                .expect("weights are positive"),
        }
    }
}

/// Hosts shaped like the network's, one after another, deterministic for a seed.
pub struct Hosts(Draws);

impl Hosts {
    pub fn new(seed: u64) -> Hosts {
        Hosts(Draws::new(seed))
    }

    pub fn next_host(&mut self) -> SimHost {
        let rng = &mut self.0.rng;
        let mix = &MIX[self.0.pick_model.sample(rng)];
        let sizes =
            WeightedIndex::new(mix.sizes.iter().map(|s| s.1)).expect("weights are positive");
        let count = mix.sizes[sizes.sample(rng)].0;
        let (country, point) = self.0.geo.point(rng);
        let price =
            mix.price_milli as f64 * Geography::price_factor(country) * rng.gen_range(0.85..1.15);
        let tier = match rng.gen_range(0..10) {
            0..=2 => 1,
            3..=7 => 2,
            _ => 3,
        };
        let images = if mix.model.class() == GpuClass::Consumer {
            let n = rng.gen_range(2..10);
            (0..n)
                .map(|_| game_image(self.0.popular.sample(rng)))
                .collect()
        } else {
            vec![
                "pytorch/pytorch:2.5".to_string(),
                "vllm/vllm-openai:latest".to_string(),
            ]
        };
        SimHost {
            spec: HostSpec {
                point,
                country,
                price_per_gpu_hour: milli_tokens(price),
                tier,
                images,
            },
            model: mix.model,
            count,
        }
    }
}

/// Builds a world of about `config.containers` GPUs.
pub fn build(config: WorldConfig) -> World {
    let mut hosts = Hosts::new(config.seed);
    let mut matcher = Matcher::default();
    let mut containers = 0;
    let mut groups = Vec::new();
    while containers < config.containers {
        let host = hosts.next_host();
        let group = GroupSpec {
            model: host.model,
            vram_mib: host.model.spec().vram_mib,
            first_index: 0,
            count: host.count,
        };
        let (_, ids) = matcher
            .add_host(&host.spec, &[group])
            .expect("synthetic hosts fit the matcher");
        groups.push((ids[0], host.count));
        containers += host.count as usize;
    }
    let mut rng = hosts.0.rng;
    // Busy GPUs: random groups take random leases until the busy share is reached.
    let target = (containers as f64 * config.busy) as usize;
    let mut busy = Vec::new();
    let mut taken = 0;
    let mut used = vec![0u8; groups.len()];
    while taken < target {
        let i = rng.gen_range(0..groups.len());
        let (group, count) = groups[i];
        let left = count - used[i];
        if left == 0 {
            continue;
        }
        let n = (rng.gen_range(1..=left) as usize).min(target - taken) as u8;
        let mask = ((1u64 << n) - 1) << used[i];
        let id = matcher
            .reserve_exact(group, mask, None)
            .expect("free GPUs reserve");
        used[i] += n;
        taken += n as usize;
        busy.push(id);
    }
    World {
        matcher,
        containers,
        busy,
    }
}

/// A stream of requests shaped like the network's: AI jobs and gaming sessions.
pub struct Requests(Draws);

const EU: &[&str] = &[
    "DE", "FR", "NL", "IE", "SE", "FI", "PL", "IT", "ES", "BE", "AT", "DK", "CZ", "PT",
];

impl Requests {
    pub fn new(seed: u64) -> Requests {
        Requests(Draws::new(seed))
    }

    /// The next request: 55% AI jobs, 45% gaming sessions.
    pub fn next_request(&mut self) -> Request {
        let rng = &mut self.0.rng;
        let (_, near) = self.0.geo.point(rng);
        if rng.gen_bool(0.55) {
            let mix = &MIX[self.0.pick_model.sample(rng)];
            let datacenter = mix.model.class() != GpuClass::Consumer;
            let count = if datacenter {
                [1, 1, 2, 4, 8][rng.gen_range(0..5)]
            } else if rng.gen_bool(0.8) {
                1
            } else {
                2
            };
            let cap = mix.price_milli as f64 * rng.gen_range(0.9..1.6);
            let mut request = Request::model(mix.model, count, near, milli_tokens(cap));
            request.policy = match rng.gen_range(0..10) {
                0..=2 => RankPolicy::Price,
                3..=4 => RankPolicy::Experience,
                _ => RankPolicy::Balanced,
            };
            request.max_tier = match rng.gen_range(0..20) {
                0 => 1,
                1..=5 => 2,
                _ => 3,
            };
            match rng.gen_range(0..100) {
                0..=5 => {
                    request.countries = EU.iter().map(|c| c.parse().expect("ISO codes")).collect()
                }
                6..=7 => request.countries = vec!["US".parse().expect("ISO code")],
                8..=10 => {
                    request.exclude_countries = vec![
                        "CN".parse().expect("ISO code"),
                        "RU".parse().expect("ISO code"),
                    ]
                }
                _ => {}
            }
            request
        } else {
            let gpu = if rng.gen_bool(0.3) {
                GpuSelector::Model(GpuModel::Rtx4090)
            } else {
                GpuSelector::Class(GpuClass::Consumer)
            };
            let mut request = Request::model(
                GpuModel::Rtx4090,
                1,
                near,
                milli_tokens(rng.gen_range(350.0..1_000.0)),
            );
            request.gpu = gpu;
            request.min_vram_mib = if rng.gen_bool(0.5) { 12_000 } else { 0 };
            request.max_rtt_ms = Some([30.0, 40.0, 60.0, 80.0][rng.gen_range(0..4)]);
            request.policy = RankPolicy::Experience;
            request.image = Some(game_image(self.0.popular.sample(rng)));
            request.image_policy = match rng.gen_range(0..10) {
                0..=3 => ImagePolicy::Require,
                4..=6 => ImagePolicy::Prefer,
                _ => ImagePolicy::Any,
            };
            request
        }
    }

    /// A random number below `n`, from the same stream (for picking what to release).
    pub fn below(&mut self, n: usize) -> usize {
        self.0.rng.gen_range(0..n.max(1))
    }

    /// A price in thousandths of a token, for price updates.
    pub fn price_update(&mut self) -> Amount {
        milli_tokens(self.0.rng.gen_range(150.0..3_500.0))
    }

    pub fn coin(&mut self, p: f64) -> bool {
        self.0.rng.gen_bool(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_world_has_the_size_and_busy_share_asked_for() {
        let world = build(WorldConfig {
            containers: 20_000,
            busy: 0.7,
            seed: 7,
        });
        assert!(world.containers >= 20_000 && world.containers < 20_010);
        assert_eq!(world.matcher.gpu_count(), world.containers);
        let free = world.matcher.free_gpu_count() as f64 / world.containers as f64;
        assert!((free - 0.3).abs() < 0.01, "{free}");
        // The same seed builds the same world.
        let again = build(WorldConfig {
            containers: 20_000,
            busy: 0.7,
            seed: 7,
        });
        assert_eq!(again.matcher.snapshot(), world.matcher.snapshot());
    }

    #[test]
    fn most_requests_match_in_a_realistic_world() {
        let mut world = build(WorldConfig {
            containers: 20_000,
            busy: 0.7,
            seed: 1,
        });
        let mut requests = Requests::new(2);
        let matched = (0..1_000)
            .filter(|_| world.matcher.book(&requests.next_request(), None).is_ok())
            .count();
        assert!(matched > 700, "{matched} of 1000 matched");
    }
}
