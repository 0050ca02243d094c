//! Evaluation: hierarchical zero-shot geolocation and its metrics.

pub mod geolocate;
pub mod metrics;
