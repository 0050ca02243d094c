//! Evaluation: hierarchical zero-shot and geocell geolocation, zero-shot classification, their metrics,
//! reports and plots.

pub mod classification;
pub mod geo_eval;
pub mod geo_model;
pub mod geocell_locate;
pub mod geolocate;
pub mod metrics;
pub mod plots;
pub mod ranker;
pub mod ranking;
pub mod report;
pub mod retrieval_index;
pub mod text;
pub mod text_cache;
