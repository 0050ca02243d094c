//! `streetclip eval geo` and `streetclip eval classify`.

use super::{classify, eval_geo};
use anyhow::Result;

#[derive(clap::Subcommand)]
pub enum Command {
    Geo(eval_geo::Args),
    Classify(classify::Args),
}

impl Command {
    pub fn exec(self) -> Result<()> {
        match self {
            Command::Geo(args) => eval_geo::exec(args),
            Command::Classify(args) => classify::exec(args),
        }
    }
}
