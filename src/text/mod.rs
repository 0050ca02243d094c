//! Text: the CLIP tokenizer (caption templates arrive with the data pipeline).

pub mod tokenizer;
pub use tokenizer::ClipTokenizer;
