//! Fly's vocabulary, validated at the edge: Machine ids, region codes and the region table.
//!
//! Compiled for both targets: the server routes on these types, the UI shows cities and
//! distances. A `MachineId` or a `RegionCode` that exists has been checked, so nothing
//! unchecked can reach a `fly-replay` header or a Machines API path.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A Fly Machine id: 14 lowercase hex characters, as in every id Fly shows.
///
/// Fly does not document the format formally; accepting only this shape is what keeps an
/// untrusted string out of `fly-replay` (no `;`, `=`, `,`, quotes, spaces or line breaks).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MachineId([u8; 14]);

/// A string that is not a Machine id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a Machine id is 14 lowercase hex characters")]
pub struct InvalidMachineId;

impl MachineId {
    pub fn parse(s: &str) -> Result<Self, InvalidMachineId> {
        let bytes: [u8; 14] = s.as_bytes().try_into().map_err(|_| InvalidMachineId)?;
        if bytes
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
        {
            Ok(MachineId(bytes))
        } else {
            Err(InvalidMachineId)
        }
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII hex digits are ever stored.
        std::str::from_utf8(&self.0).expect("ascii")
    }
}

impl fmt::Display for MachineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for MachineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MachineId({})", self.as_str())
    }
}

impl std::str::FromStr for MachineId {
    type Err = InvalidMachineId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        MachineId::parse(s)
    }
}

impl Serialize for MachineId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for MachineId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        MachineId::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A Fly region code: three lowercase ASCII letters. It may name a region that is not (or no
/// longer) in [`REGIONS`]: headers from older clients carry retired codes, and those must show
/// as the code, never fail.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RegionCode([u8; 3]);

/// A string that is not a region code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a region code is 3 lowercase letters")]
pub struct InvalidRegionCode;

impl RegionCode {
    pub fn parse(s: &str) -> Result<Self, InvalidRegionCode> {
        let bytes: [u8; 3] = s.as_bytes().try_into().map_err(|_| InvalidRegionCode)?;
        if bytes.iter().all(u8::is_ascii_lowercase) {
            Ok(RegionCode(bytes))
        } else {
            Err(InvalidRegionCode)
        }
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("ascii")
    }

    /// The current Fly region with this code, if it is one.
    pub fn region(&self) -> Option<&'static Region> {
        REGIONS.iter().find(|r| r.code == self.as_str())
    }

    /// The city, or the code itself for a region flyby does not know.
    pub fn city(&self) -> &str {
        self.region().map_or(self.as_str(), |r| r.city)
    }
}

impl fmt::Display for RegionCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for RegionCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RegionCode({})", self.as_str())
    }
}

impl std::str::FromStr for RegionCode {
    type Err = InvalidRegionCode;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RegionCode::parse(s)
    }
}

impl Serialize for RegionCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for RegionCode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        RegionCode::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A current Fly region and where it is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Region {
    pub code: &'static str,
    pub city: &'static str,
    pub lat: f64,
    pub lon: f64,
}

impl Region {
    pub fn code(&self) -> RegionCode {
        RegionCode::parse(self.code).expect("REGIONS holds valid codes")
    }

    /// Great-circle distance in km (haversine, mean Earth radius).
    pub fn distance_km(&self, other: &Region) -> f64 {
        const EARTH_RADIUS_KM: f64 = 6371.0;
        let (lat1, lat2) = (self.lat.to_radians(), other.lat.to_radians());
        let dlat = lat2 - lat1;
        let dlon = (other.lon - self.lon).to_radians();
        let a = (dlat / 2.0).sin().powi(2) + lat1.cos() * lat2.cos() * (dlon / 2.0).sin().powi(2);
        2.0 * EARTH_RADIUS_KM * a.sqrt().asin()
    }
}

const fn region(code: &'static str, city: &'static str, lat: f64, lon: f64) -> Region {
    Region {
        code,
        city,
        lat,
        lon,
    }
}

/// Fly's current regions (2026), from Fly's docs (reference/regions); coordinates are the
/// cities'.
pub const REGIONS: &[Region] = &[
    region("ams", "Amsterdam", 52.4, 4.9),
    region("arn", "Stockholm", 59.3, 18.1),
    region("bom", "Mumbai", 19.1, 72.9),
    region("cdg", "Paris", 48.9, 2.4),
    region("dfw", "Dallas", 32.8, -96.8),
    region("ewr", "Secaucus NJ", 40.8, -74.1),
    region("fra", "Frankfurt", 50.1, 8.7),
    region("gru", "São Paulo", -23.5, -46.6),
    region("iad", "Ashburn VA", 39.0, -77.5),
    region("jnb", "Johannesburg", -26.2, 28.0),
    region("lax", "Los Angeles", 34.1, -118.2),
    region("lhr", "London", 51.5, -0.1),
    region("nrt", "Tokyo", 35.7, 139.7),
    region("ord", "Chicago", 41.9, -87.6),
    region("sin", "Singapore", 1.3, 103.8),
    region("sjc", "San Jose", 37.3, -121.9),
    region("syd", "Sydney", -33.9, 151.2),
    region("yyz", "Toronto", 43.7, -79.4),
];

/// Every known region, nearest to `from` first (`from` itself first when it is known).
pub fn nearest_regions(from: RegionCode) -> Vec<RegionCode> {
    let Some(origin) = from.region() else {
        return Vec::new();
    };
    let mut regions: Vec<&Region> = REGIONS.iter().collect();
    regions.sort_by(|a, b| origin.distance_km(a).total_cmp(&origin.distance_km(b)));
    regions.into_iter().map(Region::code).collect()
}

/// Distance in km between two region codes, when both are known regions.
pub fn distance_km(a: RegionCode, b: RegionCode) -> Option<f64> {
    Some(a.region()?.distance_km(b.region()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_ids_are_fourteen_lowercase_hex() {
        assert_eq!(
            MachineId::parse("73d8d46dbee589").unwrap().as_str(),
            "73d8d46dbee589"
        );
        for bad in [
            "",
            "73d8d46dbee58",
            "73d8d46dbee5890",
            "73D8D46DBEE589",
            "73d8d46dbee58g",
            "abc;app=evil00",
            "73d8d46dbee58\n",
            "73d8d46dbee5é",
            " 3d8d46dbee589",
        ] {
            assert_eq!(MachineId::parse(bad), Err(InvalidMachineId), "{bad:?}");
        }
    }

    #[test]
    fn machine_ids_round_trip_through_json() {
        let id: MachineId = serde_json::from_str("\"0123456789abcd\"").unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"0123456789abcd\"");
        assert!(serde_json::from_str::<MachineId>("\"nope\"").is_err());
    }

    #[test]
    fn region_codes_are_three_lowercase_letters() {
        assert_eq!(RegionCode::parse("ams").unwrap().city(), "Amsterdam");
        for bad in ["", "am", "amst", "AMS", "a1s", "ам"] {
            assert!(RegionCode::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn unknown_regions_show_as_their_code() {
        let retired = RegionCode::parse("sea").unwrap();
        assert_eq!(retired.region(), None);
        assert_eq!(retired.city(), "sea");
        assert_eq!(
            distance_km(retired, RegionCode::parse("ams").unwrap()),
            None
        );
    }

    #[test]
    fn every_listed_region_parses_and_distances_are_sane() {
        for r in REGIONS {
            assert_eq!(r.code().region(), Some(r));
            assert_eq!(r.distance_km(r), 0.0);
        }
        let ams = RegionCode::parse("ams").unwrap();
        let lhr = RegionCode::parse("lhr").unwrap();
        let syd = RegionCode::parse("syd").unwrap();
        let d = distance_km(ams, lhr).unwrap();
        assert!((330.0..400.0).contains(&d), "ams-lhr {d}");
        let d = distance_km(ams, syd).unwrap();
        assert!((16_000.0..17_000.0).contains(&d), "ams-syd {d}");
    }
}
