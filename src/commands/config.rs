//! `streetclip config`: the configuration reference.

use anyhow::Result;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Print the complete default config, a comment above every key.
    #[command(after_help = "Example:\n  streetclip config defaults > my-run.yaml")]
    Defaults,
}

impl Command {
    pub fn exec(self) -> Result<()> {
        match self {
            Command::Defaults => print!("{}", crate::config::commented_defaults()),
        }
        Ok(())
    }
}
