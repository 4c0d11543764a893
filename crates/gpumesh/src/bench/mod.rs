//! `gpumesh bench …`: measurements that print one JSON object.

mod checker;
mod ledger;
mod matching;
mod startup;

use std::process::ExitCode;

use crate::cli::BenchCommand;
use crate::commands::runtime_choice;

pub async fn run(command: BenchCommand) -> anyhow::Result<ExitCode> {
    match command {
        BenchCommand::Startup {
            runtime,
            runs,
            docker_socket,
        } => startup::startup(runtime_choice(runtime), runs, docker_socket).await,
        BenchCommand::Match(args) => matching::run(args),
        BenchCommand::Ledger(args) => ledger::run(args),
        BenchCommand::Checker(args) => checker::run(args),
    }
}
