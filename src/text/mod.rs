//! Text: the CLIP tokenizer and caption templates.

pub mod caption;
pub mod tokenizer;
pub use caption::{CaptionConfig, Captioner, PlaceNames};
pub use tokenizer::ClipTokenizer;
