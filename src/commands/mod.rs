//! What the CLI subcommands do, as library functions, and how their results are printed;
//! `main.rs` only parses arguments.

pub mod bench;
pub mod captions;
pub mod classify;
pub mod convert;
pub mod embed;
pub mod export;
pub mod geo;
pub mod geocells;
pub mod guesses_out;
pub mod predict;
pub mod train;
