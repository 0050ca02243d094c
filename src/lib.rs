//! streetclip: CLIP for street-level geolocalization, on tch (libtorch).

pub mod commands;
pub mod config;
pub mod data;
pub mod eval;
pub mod geo;
pub mod model;
pub mod pretrained;
pub mod seed;
pub mod shim;
pub mod synth;
pub mod tensor_io;
pub mod text;
pub mod train;
