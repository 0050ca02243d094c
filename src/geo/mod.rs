//! Geography: great-circle distance, the GeoNames gazetteer, reverse geocoding, geocells.

pub mod cell_targets;
pub mod distance;
pub mod gazetteer;
pub mod geocells;
pub mod outlines;

pub use distance::{haversine_km, EARTH_RADIUS_KM};
pub use gazetteer::{City, Country, Gazetteer, Region};
