//! Data: image preprocessing (manifests, shards and the loader arrive with the data pipeline).

pub mod preprocess;
pub use preprocess::PreprocessConfig;
