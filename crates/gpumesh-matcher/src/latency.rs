//! Round-trip time estimates: a geographic model, refined by Vivaldi network coordinates
//! from measured round-trip times.

use serde::{Deserialize, Serialize};

/// How distance becomes round-trip time.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LatencyParams {
    /// Signal speed in fibre, one way.
    pub fibre_km_per_ms: f64,
    /// How much longer routes are than the great circle.
    pub route_inflation: f64,
    /// Last-mile and processing time, added once per round trip.
    pub access_ms: f64,
    /// A request uses the nearest anchor within this distance.
    pub anchor_radius_km: f64,
    /// Coordinates with a relative error above this are not trusted.
    pub max_coordinate_error: f32,
}

impl Default for LatencyParams {
    fn default() -> Self {
        LatencyParams {
            fibre_km_per_ms: 200.0,
            route_inflation: 1.6,
            access_ms: 4.0,
            anchor_radius_km: 300.0,
            max_coordinate_error: 0.35,
        }
    }
}

impl LatencyParams {
    /// The geographic estimate of a round trip over `km`.
    #[inline]
    pub fn geo_rtt_ms(&self, km: f64) -> f64 {
        self.access_ms + 2.0 * km * self.route_inflation / self.fibre_km_per_ms
    }

    /// No round trip over `km` can be faster than light in fibre along the great circle.
    #[inline]
    pub fn physical_rtt_ms(&self, km: f64) -> f64 {
        2.0 * km / self.fibre_km_per_ms
    }
}

/// A Vivaldi coordinate: a point in the plane plus a height (the access link), with an
/// error estimate that starts at 1 (know nothing) and falls as measurements agree.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Coord {
    pub x: f32,
    pub y: f32,
    pub height: f32,
    pub error: f32,
}

impl Default for Coord {
    fn default() -> Self {
        Coord {
            x: 0.0,
            y: 0.0,
            height: 0.0,
            error: 1.0,
        }
    }
}

/// Vivaldi's constants (Dabek et al., 2004).
const CE: f32 = 0.25;
const CC: f32 = 0.25;
const MIN_HEIGHT: f32 = 0.1;

impl Coord {
    /// Predicted round-trip time to `other`, in ms.
    pub fn rtt_ms(&self, other: &Coord) -> f32 {
        let (dx, dy) = (self.x - other.x, self.y - other.y);
        (dx * dx + dy * dy).sqrt() + self.height + other.height
    }

    /// Moves this coordinate after measuring `rtt_ms` to a node at `other`. `tiebreak`
    /// picks a direction when the two coincide, so that updates stay deterministic.
    pub fn observe(&mut self, other: &Coord, rtt_ms: f32, tiebreak: u64) {
        if !(rtt_ms.is_finite() && rtt_ms > 0.0) {
            return;
        }
        let weight = self.error / (self.error + other.error).max(f32::EPSILON);
        let predicted = self.rtt_ms(other);
        let sample_error = (predicted - rtt_ms).abs() / rtt_ms;
        self.error =
            (sample_error * CE * weight + self.error * (1.0 - CE * weight)).clamp(0.0, 1.0);
        let delta = CC * weight;
        let force = delta * (rtt_ms - predicted);
        let (mut dx, mut dy) = (self.x - other.x, self.y - other.y);
        let mut len = (dx * dx + dy * dy).sqrt();
        if len < 1e-6 {
            let angle = (tiebreak % 360) as f32 * std::f32::consts::PI / 180.0;
            dx = angle.cos();
            dy = angle.sin();
            len = 1.0;
        }
        let plane = len;
        let total = plane + self.height + other.height;
        // Split the force between the plane and the height in proportion to their share.
        self.x += force * dx / len * (plane / total.max(f32::EPSILON));
        self.y += force * dy / len * (plane / total.max(f32::EPSILON));
        self.height = (self.height
            + force * (self.height + other.height) / total.max(f32::EPSILON))
        .max(MIN_HEIGHT);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coordinates_converge_to_measured_latencies() {
        // Three nodes with true RTTs 10, 20 and 25 ms between them.
        let truth = [[0.0, 10.0, 20.0], [10.0, 0.0, 25.0], [20.0, 25.0, 0.0]];
        let mut coords = [Coord::default(); 3];
        for round in 0..2_000u64 {
            let (a, b) = match round % 3 {
                0 => (0, 1),
                1 => (1, 2),
                _ => (0, 2),
            };
            let (ca, cb) = (coords[a], coords[b]);
            coords[a].observe(&cb, truth[a][b] as f32, round);
            coords[b].observe(&ca, truth[a][b] as f32, round + 7);
        }
        for a in 0..3 {
            for b in 0..3 {
                if a != b {
                    let est = coords[a].rtt_ms(&coords[b]);
                    assert!(
                        (est - truth[a][b] as f32).abs() < 2.5,
                        "{a}-{b}: {est} vs {}",
                        truth[a][b]
                    );
                }
            }
            assert!(coords[a].error < 0.2, "{:?}", coords[a]);
        }
    }

    #[test]
    fn geographic_model_bounds() {
        let p = LatencyParams::default();
        assert_eq!(p.physical_rtt_ms(1_000.0), 10.0);
        assert!((p.geo_rtt_ms(1_000.0) - 20.0).abs() < 1e-9);
        assert!(p.geo_rtt_ms(0.0) >= p.physical_rtt_ms(0.0));
    }
}
