//! streetclip: CLIP for street-level geolocalization, on tch (libtorch).

pub mod data;
pub mod model;
pub mod tensor_io;
pub mod text;
pub mod train;
