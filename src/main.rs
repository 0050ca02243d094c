//! The `streetclip` command line: parses the arguments and hands them to their command
//! (`streetclip::commands`), then reports an error on one line with its exit status.

use clap::Parser;
use streetclip::commands::Command;

#[derive(Parser)]
#[command(
    name = "streetclip",
    version,
    about = "CLIP for street-level image geolocalization (StreetCLIP), on libtorch"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

fn main() {
    if let Err(e) = Cli::parse().command.exec() {
        eprintln!("error: {}", one_line(&e));
        std::process::exit(exit_code(&e));
    }
}

/// 130 (or the signal's) for an interrupted run, as the signal would have made it; 3 when no
/// input could be used; 1 for any other error.
fn exit_code(e: &anyhow::Error) -> i32 {
    if let Some(i) = e.downcast_ref::<streetclip::interrupt::Interrupted>() {
        return i.exit_code();
    }
    match e.downcast_ref::<streetclip::encode::NothingUsable>() {
        Some(_) => streetclip::encode::NothingUsable::EXIT_CODE,
        None => 1,
    }
}

/// The error and its causes on one line; a cause already quoted by the message before it is
/// not repeated (several libraries embed their source's text in their own).
fn one_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let text = cause
            .to_string()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        if !parts.last().is_some_and(|prev| prev.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::CommandFactory;

    /// Every flag and argument has a sentence of help, and every command an example.
    #[test]
    fn every_flag_is_described_and_every_command_has_an_example() {
        fn check(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id != "help" && id != "version" && arg.get_help().is_none() {
                    missing.push(format!("{path} {id}: no help"));
                }
            }
            let subcommands: Vec<_> = cmd.get_subcommands().collect();
            if subcommands.is_empty() {
                let example = cmd.get_after_help().map(|h| h.to_string());
                if !example.is_some_and(|h| h.contains(&format!("{path} "))) {
                    missing.push(format!("{path}: no example"));
                }
            }
            for sub in subcommands {
                check(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        check(&Cli::command(), "streetclip", &mut missing);
        assert!(missing.is_empty(), "{missing:#?}");
    }

    #[test]
    fn the_cli_is_well_formed() {
        Cli::command().debug_assert();
    }
}
