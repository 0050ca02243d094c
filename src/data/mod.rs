//! Data: manifests and WebDataset shards, labels, image preprocessing, the loader.

pub mod classes;
pub mod dataset;
pub mod decode;
pub mod image_ref;
pub mod levels;
pub mod loader;
pub mod manifest;
pub mod places;
pub mod preprocess;
pub mod resample;
pub mod webdataset;
pub use dataset::{DataConfig, Dataset, OnError, Sample};
pub use image_ref::ImageRef;
pub use preprocess::PreprocessConfig;
