//! The CLI's subcommands, one file each: its clap `Args` and an `exec` that loads, runs and
//! prints (cargo's `src/bin/cargo/commands/`). `main.rs` only parses and reports errors.

pub mod args;
pub mod bench;
pub mod captions;
pub mod classify;
pub mod config;
pub mod convert;
pub mod embed;
pub mod eval;
pub mod eval_geo;
pub mod export;
pub mod finetune;
pub mod geocells;
pub mod geolocate;
pub mod manifest;
pub mod predict;
pub mod results_out;
pub mod serve;
pub mod synth_data;
pub mod train;

use anyhow::Result;

#[derive(clap::Subcommand)]
pub enum Command {
    Predict(predict::Args),
    Captions(captions::Args),
    Train(train::Args),
    Finetune(finetune::Args),
    Export(export::Args),
    Convert(convert::Args),
    Geolocate(geolocate::Args),
    /// Evaluate a model.
    #[command(subcommand)]
    Eval(eval::Command),
    SynthData(synth_data::Args),
    Embed(embed::Args),
    /// The configuration reference.
    #[command(subcommand)]
    Config(config::Command),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(bench::Command),
    Geocells(geocells::Args),
    Manifest(manifest::Args),
    Serve(serve::Args),
}

impl Command {
    pub fn exec(self) -> Result<()> {
        match self {
            Command::Predict(args) => predict::exec(args),
            Command::Captions(args) => captions::exec(args),
            Command::Train(args) => train::exec(args),
            Command::Finetune(args) => finetune::exec(args),
            Command::Export(args) => export::exec(args),
            Command::Convert(args) => convert::exec(args),
            Command::Geolocate(args) => geolocate::exec(args),
            Command::Eval(command) => command.exec(),
            Command::SynthData(args) => synth_data::exec(args),
            Command::Embed(args) => embed::exec(args),
            Command::Config(command) => command.exec(),
            Command::Bench(command) => command.exec(),
            Command::Geocells(args) => geocells::exec(args),
            Command::Manifest(args) => manifest::exec(args),
            Command::Serve(args) => serve::exec(args),
        }
    }
}
