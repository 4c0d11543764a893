//! `gpumesh bench …`: measurements that print one JSON object.

mod checker;
mod ledger;
mod load;
mod matching;
mod proof;
mod restart;
mod services;
mod signatures;
mod startup;

use std::process::ExitCode;

use indicatif::{ProgressBar, ProgressFinish, ProgressStyle};

use crate::cli::BenchCommand;
use crate::commands::runtime_choice;

pub async fn run(command: BenchCommand) -> anyhow::Result<ExitCode> {
    match command {
        BenchCommand::Startup {
            runtime,
            runs,
            docker_socket,
        } => startup::startup(runtime_choice(runtime), runs, docker_socket).await,
        BenchCommand::Services {
            runtime,
            runs,
            sessions,
            docker_socket,
        } => services::services(runtime_choice(runtime), runs, sessions, docker_socket).await,
        BenchCommand::Match(args) => matching::run(args),
        BenchCommand::Ledger(args) => ledger::run(args),
        BenchCommand::Checker(args) => checker::run(args),
        BenchCommand::Restart(args) => restart::run(args).await,
        BenchCommand::Load(args) => load::run(args).await,
        BenchCommand::Proof(args) => proof::run(args),
        BenchCommand::Signatures(args) => signatures::run(args),
    }
}

/// A progress bar on standard error for a benchmark's long loop, drawn only on a terminal
/// (so the JSON on standard output, and logs, stay clean).
pub(crate) fn progress(len: u64, what: &str) -> ProgressBar {
    let style =
        ProgressStyle::with_template(&format!("{what} {{bar:40}} {{pos}}/{{len}}, {{eta}} left"))
            .unwrap_or_else(|_| ProgressStyle::default_bar());
    // Cleared when dropped, at the loop's end.
    ProgressBar::new(len)
        .with_style(style)
        .with_finish(ProgressFinish::AndClear)
}

/// Prints a benchmark's report: one JSON object, or a line per field for people.
pub(crate) fn print_report(report: &serde_json::Value, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        for (k, v) in report.as_object().into_iter().flatten() {
            println!("{k:>30}  {v}");
        }
    }
    Ok(())
}

/// `x` rounded to `digits` decimals, for reports.
pub(crate) fn round(x: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (x * scale).round() / scale
}
