//! Places on Earth: coordinates, countries and great-circle distance.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Mean Earth radius in kilometres.
pub const EARTH_RADIUS_KM: f64 = 6371.0;

/// A point given by latitude and longitude in degrees.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GeoPoint {
    pub lat: f64,
    pub lon: f64,
}

/// Why coordinates or a country code are not acceptable.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GeoError {
    #[error("latitude {0} is outside -90..=90")]
    Latitude(f64),
    #[error("longitude {0} is outside -180..=180")]
    Longitude(f64),
    #[error("{0:?} is not LAT,LON (for example 48.86,2.35)")]
    Syntax(String),
    #[error("country {0:?} is not an assigned ISO 3166-1 alpha-2 code such as DE or IN")]
    Country(String),
}

impl GeoPoint {
    /// A validated point.
    pub fn new(lat: f64, lon: f64) -> Result<GeoPoint, GeoError> {
        let point = GeoPoint { lat, lon };
        point.validate()?;
        Ok(point)
    }

    /// Checks ranges; NaN and infinities are out of range.
    pub fn validate(&self) -> Result<(), GeoError> {
        if !(-90.0..=90.0).contains(&self.lat) {
            return Err(GeoError::Latitude(self.lat));
        }
        if !(-180.0..=180.0).contains(&self.lon) {
            return Err(GeoError::Longitude(self.lon));
        }
        Ok(())
    }

    /// Great-circle distance by the haversine formula.
    pub fn distance_km(&self, other: &GeoPoint) -> f64 {
        let (lat1, lat2) = (self.lat.to_radians(), other.lat.to_radians());
        let dlat = lat2 - lat1;
        let dlon = (other.lon - self.lon).to_radians();
        let a = (dlat / 2.0).sin().powi(2) + lat1.cos() * lat2.cos() * (dlon / 2.0).sin().powi(2);
        2.0 * EARTH_RADIUS_KM * a.sqrt().min(1.0).asin()
    }
}

impl FromStr for GeoPoint {
    type Err = GeoError;

    /// Parses `LAT,LON`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let syntax = || GeoError::Syntax(s.to_string());
        let (lat, lon) = s.split_once(',').ok_or_else(syntax)?;
        let lat: f64 = lat.trim().parse().map_err(|_| syntax())?;
        let lon: f64 = lon.trim().parse().map_err(|_| syntax())?;
        GeoPoint::new(lat, lon)
    }
}

impl fmt::Display for GeoPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.4},{:.4}", self.lat, self.lon)
    }
}

/// A two-letter ISO 3166-1 alpha-2 country code, upper case.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Country([u8; 2]);

impl Country {
    pub fn as_str(&self) -> &str {
        // Both bytes are ASCII upper-case letters by construction.
        std::str::from_utf8(&self.0).unwrap_or("??")
    }
}

impl Country {
    /// Whether ISO 3166-1 assigns this code. Parsing (`str::parse`) takes only assigned
    /// codes; a decoded record may carry any two letters (a store written before the check
    /// still opens), so the registry checks requests with this.
    pub fn is_assigned(&self) -> bool {
        isocountry::CountryCode::for_alpha2(self.as_str()).is_ok()
    }
}

impl FromStr for Country {
    type Err = GeoError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = s.as_bytes();
        if bytes.len() != 2 || !bytes.iter().all(u8::is_ascii_alphabetic) {
            return Err(GeoError::Country(s.to_string()));
        }
        let country = Country([bytes[0].to_ascii_uppercase(), bytes[1].to_ascii_uppercase()]);
        // Only assigned codes: every place the network keeps per country is bounded by
        // the real world's 249, whatever a signer sends.
        if !country.is_assigned() {
            return Err(GeoError::Country(s.to_string()));
        }
        Ok(country)
    }
}

impl fmt::Display for Country {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Country {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Country {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        match text.as_bytes() {
            &[a, b] if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() => {
                Ok(Country([a.to_ascii_uppercase(), b.to_ascii_uppercase()]))
            }
            _ => Err(serde::de::Error::custom(GeoError::Country(text))),
        }
    }
}

/// Where a host is: a point and the country it is in.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Location {
    #[serde(flatten)]
    pub point: GeoPoint,
    pub country: Country,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances_between_known_cities() {
        let paris: GeoPoint = "48.8566,2.3522".parse().unwrap();
        let frankfurt: GeoPoint = "50.1109,8.6821".parse().unwrap();
        let mumbai: GeoPoint = "19.0760,72.8777".parse().unwrap();
        let singapore: GeoPoint = "1.3521,103.8198".parse().unwrap();
        let near = |got: f64, want: f64| (got - want).abs() < want * 0.01;
        assert!(
            near(paris.distance_km(&frankfurt), 479.0),
            "{}",
            paris.distance_km(&frankfurt)
        );
        assert!(
            near(mumbai.distance_km(&singapore), 3_904.0),
            "{}",
            mumbai.distance_km(&singapore)
        );
        assert_eq!(paris.distance_km(&paris), 0.0);
    }

    #[test]
    fn rejects_out_of_range_and_malformed_points() {
        assert_eq!("91,0".parse::<GeoPoint>(), Err(GeoError::Latitude(91.0)));
        assert_eq!(
            "0,-180.5".parse::<GeoPoint>(),
            Err(GeoError::Longitude(-180.5))
        );
        assert!(matches!(
            "NaN,0".parse::<GeoPoint>(),
            Err(GeoError::Latitude(_))
        ));
        assert!(matches!(
            "48.8".parse::<GeoPoint>(),
            Err(GeoError::Syntax(_))
        ));
        assert!(serde_json::from_str::<Country>("\"DEU\"").is_err());
        assert_eq!(
            serde_json::from_str::<Country>("\"de\"").unwrap().as_str(),
            "DE"
        );
    }
}
