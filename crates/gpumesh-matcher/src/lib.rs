//! The matching engine (DESIGN.md §5), first version.
//!
//! Supply is kept as *groups*: the GPUs of one model on one host, with the host's place,
//! price and whether it is online, and a bitmask of which of the group's GPUs are free.
//! [`Matcher::book`] finds the nearest online group with enough free GPUs of the model at
//! or under the price cap and reserves them in the same call, so a GPU can never be booked
//! twice. A request that cannot be met gets a [`NoMatch`] that says which constraint
//! ran out and how close the nearest miss came.
//!
//! This version scans every group; the network-scale engine replaces the scan with an
//! index while keeping this interface. No I/O, no clock, no randomness.

use gpumesh_types::{Amount, Country, GeoPoint, GpuModel};

/// Handle of a group inside the matcher.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupId(pub u32);

/// The GPUs of one model on one host.
#[derive(Clone, Debug, PartialEq)]
pub struct Group {
    /// The caller's handle for the host (its index in the registry).
    pub host: u32,
    pub model: GpuModel,
    pub point: GeoPoint,
    pub country: Country,
    pub price_per_gpu_hour: Amount,
    /// The host's own indices of the GPUs in this group (at most 64).
    pub gpu_indices: Vec<u16>,
    pub online: bool,
    /// Bit i set: `gpu_indices[i]` is free.
    free: u64,
}

impl Group {
    pub fn new(
        host: u32,
        model: GpuModel,
        point: GeoPoint,
        country: Country,
        price: Amount,
        gpu_indices: Vec<u16>,
    ) -> Group {
        assert!(gpu_indices.len() <= 64, "a group holds at most 64 GPUs");
        let free = if gpu_indices.len() == 64 {
            u64::MAX
        } else {
            (1u64 << gpu_indices.len()) - 1
        };
        Group {
            host,
            model,
            point,
            country,
            price_per_gpu_hour: price,
            gpu_indices,
            online: true,
            free,
        }
    }

    pub fn free_count(&self) -> u16 {
        self.free.count_ones() as u16
    }
}

/// What a buyer asks for.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    pub model: GpuModel,
    pub count: u16,
    pub near: GeoPoint,
    pub max_price_per_gpu_hour: Amount,
}

/// GPUs reserved for a request.
#[derive(Clone, Debug, PartialEq)]
pub struct Booking {
    pub group: GroupId,
    pub host: u32,
    pub gpu_indices: Vec<u16>,
    pub distance_km: f64,
    pub price_per_gpu_hour: Amount,
}

/// Why nothing matched: how many groups passed each constraint in turn, and the best miss.
#[derive(Clone, Debug, PartialEq)]
pub struct NoMatch {
    pub model: GpuModel,
    pub count: u16,
    /// Groups of the model.
    pub of_model: u32,
    /// ... of which online.
    pub online: u32,
    /// ... of which with `count` GPUs free on one host.
    pub with_capacity: u32,
    /// The cheapest price among those with capacity, when the price cap ruled them all out.
    pub cheapest_price: Option<Amount>,
    pub max_price: Amount,
}

/// "1 host offers" or "2 hosts offer".
fn hosts(n: u32, singular_verb: &str, plural_verb: &str) -> String {
    if n == 1 {
        format!("1 host {singular_verb}")
    } else {
        format!("{n} hosts {plural_verb}")
    }
}

impl std::fmt::Display for NoMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (model, count) = (self.model, self.count);
        if self.of_model == 0 {
            return write!(f, "no host offers {model}");
        }
        if self.online == 0 {
            let offer = hosts(self.of_model, "offers", "offer");
            return write!(f, "{offer} {model}, but none is online");
        }
        if self.with_capacity == 0 {
            let offer = hosts(self.online, "offers", "offer").replacen("host", "online host", 1);
            return write!(f, "{offer} {model}, but none has {count} of them free");
        }
        let cheapest = self.cheapest_price.map(Amount::tokens).unwrap_or_default();
        write!(
            f,
            "{} {count} × {model} free, but the cheapest asks {cheapest} per GPU-hour, over your cap of {}",
            hosts(self.with_capacity, "has", "have"),
            self.max_price.tokens()
        )
    }
}

/// Why a reservation could not be released or changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BookingError {
    UnknownGroup(GroupId),
    NotReserved { group: GroupId, gpu_index: u16 },
    AlreadyReserved { group: GroupId, gpu_index: u16 },
}

/// The supply side of the network, as matching sees it.
#[derive(Clone, Debug, Default)]
pub struct Matcher {
    groups: Vec<Group>,
}

impl Matcher {
    pub fn new() -> Matcher {
        Matcher::default()
    }

    pub fn add(&mut self, group: Group) -> GroupId {
        self.groups.push(group);
        GroupId(self.groups.len() as u32 - 1)
    }

    pub fn group(&self, id: GroupId) -> Option<&Group> {
        self.groups.get(id.0 as usize)
    }

    pub fn len(&self) -> usize {
        self.groups.len()
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// Marks the given groups online or offline.
    pub fn set_online(&mut self, ids: &[GroupId], online: bool) {
        for id in ids {
            if let Some(g) = self.groups.get_mut(id.0 as usize) {
                g.online = online;
            }
        }
    }

    /// Moves the given groups (their host moved).
    pub fn set_location(&mut self, ids: &[GroupId], point: GeoPoint, country: Country) {
        for id in ids {
            if let Some(g) = self.groups.get_mut(id.0 as usize) {
                g.point = point;
                g.country = country;
            }
        }
    }

    /// Changes the price of the given groups.
    pub fn set_price(&mut self, ids: &[GroupId], price: Amount) {
        for id in ids {
            if let Some(g) = self.groups.get_mut(id.0 as usize) {
                g.price_per_gpu_hour = price;
            }
        }
    }

    /// Finds the nearest eligible group and reserves `count` of its free GPUs.
    /// Ties on distance go to the lower price, then to the lower group id.
    pub fn book(&mut self, request: &Request) -> Result<Booking, NoMatch> {
        let mut miss = NoMatch {
            model: request.model,
            count: request.count,
            of_model: 0,
            online: 0,
            with_capacity: 0,
            cheapest_price: None,
            max_price: request.max_price_per_gpu_hour,
        };
        let mut best: Option<(f64, Amount, usize)> = None;
        for (i, g) in self.groups.iter().enumerate() {
            if g.model != request.model {
                continue;
            }
            miss.of_model += 1;
            if !g.online {
                continue;
            }
            miss.online += 1;
            if g.free_count() < request.count {
                continue;
            }
            miss.with_capacity += 1;
            if g.price_per_gpu_hour > request.max_price_per_gpu_hour {
                miss.cheapest_price = Some(
                    miss.cheapest_price
                        .map_or(g.price_per_gpu_hour, |p| p.min(g.price_per_gpu_hour)),
                );
                continue;
            }
            let d = request.near.distance_km(&g.point);
            let better = match best {
                None => true,
                Some((bd, bp, _)) => d < bd || (d == bd && g.price_per_gpu_hour < bp),
            };
            if better {
                best = Some((d, g.price_per_gpu_hour, i));
            }
        }
        let Some((distance_km, price, i)) = best else {
            return Err(miss);
        };
        let g = &mut self.groups[i];
        let mut taken = Vec::with_capacity(request.count as usize);
        for _ in 0..request.count {
            let bit = g.free.trailing_zeros();
            g.free &= !(1u64 << bit);
            taken.push(g.gpu_indices[bit as usize]);
        }
        Ok(Booking {
            group: GroupId(i as u32),
            host: g.host,
            gpu_indices: taken,
            distance_km,
            price_per_gpu_hour: price,
        })
    }

    /// Marks the given GPUs of a group as reserved (used when restoring from a store).
    pub fn reserve_exact(&mut self, id: GroupId, gpu_indices: &[u16]) -> Result<(), BookingError> {
        self.change(id, gpu_indices, true)
    }

    /// Frees GPUs a booking took.
    pub fn release(&mut self, id: GroupId, gpu_indices: &[u16]) -> Result<(), BookingError> {
        self.change(id, gpu_indices, false)
    }

    fn change(
        &mut self,
        id: GroupId,
        gpu_indices: &[u16],
        reserve: bool,
    ) -> Result<(), BookingError> {
        let g = self
            .groups
            .get_mut(id.0 as usize)
            .ok_or(BookingError::UnknownGroup(id))?;
        let mut mask = 0u64;
        for &gpu_index in gpu_indices {
            let bit = g.gpu_indices.iter().position(|&x| x == gpu_index).ok_or(
                BookingError::NotReserved {
                    group: id,
                    gpu_index,
                },
            )?;
            let is_free = g.free & (1 << bit) != 0;
            if reserve && !is_free {
                return Err(BookingError::AlreadyReserved {
                    group: id,
                    gpu_index,
                });
            }
            if !reserve && is_free {
                return Err(BookingError::NotReserved {
                    group: id,
                    gpu_index,
                });
            }
            mask |= 1 << bit;
        }
        if reserve {
            g.free &= !mask;
        } else {
            g.free |= mask;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::{Expect, expect};

    fn tokens(t: &str) -> Amount {
        Amount::parse_tokens(t).unwrap()
    }

    /// A small world: (name, model, GPUs, lat, lon, price).
    fn world(rows: &[(&str, GpuModel, u16, f64, f64, &str)]) -> (Matcher, Vec<String>) {
        let mut m = Matcher::new();
        let mut names = Vec::new();
        for (i, (name, model, n, lat, lon, price)) in rows.iter().enumerate() {
            let country = "ZZ".parse().unwrap();
            m.add(Group::new(
                i as u32,
                *model,
                GeoPoint::new(*lat, *lon).unwrap(),
                country,
                tokens(price),
                (0..*n).collect(),
            ));
            names.push(name.to_string());
        }
        (m, names)
    }

    fn check(
        m: &mut Matcher,
        names: &[String],
        model: GpuModel,
        count: u16,
        near: (f64, f64),
        cap: &str,
        expected: Expect,
    ) {
        let request = Request {
            model,
            count,
            near: GeoPoint::new(near.0, near.1).unwrap(),
            max_price_per_gpu_hour: tokens(cap),
        };
        let got = match m.book(&request) {
            Ok(b) => format!(
                "{} gpus {:?} at {:.0} km for {}",
                names[b.host as usize],
                b.gpu_indices,
                b.distance_km,
                b.price_per_gpu_hour.tokens()
            ),
            Err(miss) => format!("no match: {miss}"),
        };
        expected.assert_eq(&got);
    }

    #[test]
    fn picks_the_nearest_affordable_host_and_explains_misses() {
        use GpuModel::*;
        let (mut m, names) = world(&[
            ("frankfurt", H100, 8, 50.11, 8.68, "2.50"),
            ("virginia", H100, 8, 39.04, -77.49, "2.00"),
            ("singapore", Rtx4090, 2, 1.35, 103.82, "0.60"),
            ("mumbai", Rtx4090, 1, 19.08, 72.88, "0.90"),
        ]);
        let paris = (48.86, 2.35);
        let mumbai = (19.08, 72.88);
        check(
            &mut m,
            &names,
            H100,
            2,
            paris,
            "3",
            expect!["frankfurt gpus [0, 1] at 478 km for 2.5"],
        );
        check(
            &mut m,
            &names,
            H100,
            2,
            paris,
            "2.2",
            expect!["virginia gpus [0, 1] at 6186 km for 2"],
        );
        check(
            &mut m,
            &names,
            Rtx4090,
            1,
            mumbai,
            "1",
            expect!["mumbai gpus [0] at 0 km for 0.9"],
        );
        check(
            &mut m,
            &names,
            Rtx4090,
            1,
            mumbai,
            "1",
            expect!["singapore gpus [0] at 3904 km for 0.6"],
        );
        check(
            &mut m,
            &names,
            Rtx4090,
            2,
            mumbai,
            "1",
            expect!["no match: 2 online hosts offer RTX4090, but none has 2 of them free"],
        );
        check(
            &mut m,
            &names,
            H100,
            6,
            paris,
            "1",
            expect![
                "no match: 2 hosts have 6 × H100 free, but the cheapest asks 2 per GPU-hour, over your cap of 1"
            ],
        );
        check(
            &mut m,
            &names,
            L40S,
            1,
            paris,
            "9",
            expect!["no match: no host offers L40S"],
        );
        m.set_online(&[GroupId(0), GroupId(1)], false);
        check(
            &mut m,
            &names,
            H100,
            1,
            paris,
            "9",
            expect!["no match: 2 hosts offer H100, but none is online"],
        );
    }

    #[test]
    fn release_frees_exactly_what_was_booked() {
        let (mut m, _) = world(&[("a", GpuModel::A10, 3, 0.0, 0.0, "1")]);
        let request = Request {
            model: GpuModel::A10,
            count: 2,
            near: GeoPoint::new(0.0, 0.0).unwrap(),
            max_price_per_gpu_hour: tokens("1"),
        };
        let b = m.book(&request).unwrap();
        assert!(m.book(&request).is_err(), "only one GPU left");
        assert_eq!(m.release(b.group, &[b.gpu_indices[0]]), Ok(()));
        assert!(
            m.release(b.group, &[b.gpu_indices[0]]).is_err(),
            "double release"
        );
        assert_eq!(m.book(&request).unwrap().gpu_indices.len(), 2);
    }
}
