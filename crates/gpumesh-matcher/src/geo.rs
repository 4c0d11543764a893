//! Positions as unit vectors, and the distance bounds the search prunes with.

use gpumesh_types::{EARTH_RADIUS_KM, GeoPoint};

/// A point on the unit sphere.
pub type Unit = [f32; 3];

pub fn unit(point: GeoPoint) -> Unit {
    let (lat, lon) = (point.lat.to_radians(), point.lon.to_radians());
    [
        (lat.cos() * lon.cos()) as f32,
        (lat.cos() * lon.sin()) as f32,
        lat.sin() as f32,
    ]
}

pub fn unit64(point: GeoPoint) -> [f64; 3] {
    let (lat, lon) = (point.lat.to_radians(), point.lon.to_radians());
    [lat.cos() * lon.cos(), lat.cos() * lon.sin(), lat.sin()]
}

/// Straight-line distance through the Earth between a query and a stored point (unit sphere).
#[inline]
pub fn chord(q: &[f64; 3], p: &Unit) -> f64 {
    let dx = q[0] - p[0] as f64;
    let dy = q[1] - p[1] as f64;
    let dz = q[2] - p[2] as f64;
    (dx * dx + dy * dy + dz * dz).sqrt()
}

/// The shortest chord from a query to any point of a box, which bounds from below the
/// chord (and so the great-circle distance) to every point inside it.
#[inline]
pub fn box_chord(q: &[f64; 3], lo: &Unit, hi: &Unit) -> f64 {
    let mut sum = 0.0;
    for i in 0..3 {
        let c = q[i].clamp(lo[i] as f64, hi[i] as f64);
        let d = q[i] - c;
        sum += d * d;
    }
    sum.sqrt()
}

/// Great-circle distance in km for a chord of the unit sphere.
#[inline]
pub fn chord_km(chord: f64) -> f64 {
    2.0 * EARTH_RADIUS_KM * (chord / 2.0).min(1.0).asin()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chord_distance_agrees_with_haversine() {
        let pairs = [
            ((48.8566, 2.3522), (50.1109, 8.6821)),
            ((19.076, 72.8777), (1.3521, 103.8198)),
            ((-33.87, 151.21), (51.5, -0.12)),
        ];
        for ((a1, a2), (b1, b2)) in pairs {
            let a = GeoPoint { lat: a1, lon: a2 };
            let b = GeoPoint { lat: b1, lon: b2 };
            let via_chord = chord_km(chord(&unit64(a), &unit(b)));
            let haversine = a.distance_km(&b);
            assert!(
                (via_chord - haversine).abs() < 0.01 * haversine.max(1.0),
                "{via_chord} vs {haversine}"
            );
        }
    }

    #[test]
    fn box_bound_never_exceeds_the_distance_to_a_point_inside() {
        let pts: Vec<Unit> = [(10.0, 20.0), (12.0, 25.0), (-5.0, 22.0)]
            .iter()
            .map(|&(la, lo)| unit(GeoPoint { lat: la, lon: lo }))
            .collect();
        let mut lo = [f32::MAX; 3];
        let mut hi = [f32::MIN; 3];
        for p in &pts {
            for i in 0..3 {
                lo[i] = lo[i].min(p[i]);
                hi[i] = hi[i].max(p[i]);
            }
        }
        for q in [(0.0, 0.0), (80.0, -170.0), (11.0, 21.0), (-89.0, 100.0)] {
            let q = unit64(GeoPoint { lat: q.0, lon: q.1 });
            for p in &pts {
                assert!(box_chord(&q, &lo, &hi) <= chord(&q, p));
            }
        }
    }
}
