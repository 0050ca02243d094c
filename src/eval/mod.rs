//! Evaluation: hierarchical zero-shot geolocation, zero-shot classification, their metrics,
//! reports and plots.

pub mod classification;
pub mod geolocate;
pub mod metrics;
pub mod plots;
pub mod text;
pub mod text_cache;
