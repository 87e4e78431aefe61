//! The subcommands of the `onad-stream` binary. Each lives in its own file; this one only
//! parses the command line and dispatches.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::Config;

mod budget;
mod compare;
mod demo;
mod plot;
mod produce;
mod progress;
mod readings_file;
mod replay;
mod run;
mod score;
mod score_input;
#[cfg(feature = "parquet")]
mod score_parquet;
mod score_run;
mod snapshot;
mod synth;
mod synth_file;
mod tail;
mod tools;
mod topics;

/// Online anomaly detection on Kafka sensor streams.
#[derive(Debug, Parser)]
#[command(name = "onad-stream", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Where the configuration comes from (shared by every subcommand that needs one).
#[derive(Debug, Clone, Args)]
pub struct ConfigArgs {
    /// TOML config file (see config/example.toml). Optional: defaults apply without it.
    #[arg(long, short = 'c', env = "ONAD_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Override any config key: `--set kafka.bootstrap=host:9092` (repeatable; wins over
    /// the file and ONAD__* env vars).
    #[arg(long = "set", value_name = "KEY=VALUE", global = true)]
    pub overrides: Vec<String>,
    /// Shorthand for `--set kafka.bootstrap=...`.
    #[arg(long, env = "ONAD_BOOTSTRAP", global = true)]
    pub bootstrap: Option<String>,
}

impl ConfigArgs {
    /// Load and check the configuration these arguments describe.
    pub fn load(&self) -> Result<Config, crate::config::ConfigError> {
        let mut overrides = Vec::new();
        if let Some(b) = &self.bootstrap {
            overrides.push(format!("kafka.bootstrap=\"{b}\""));
        }
        overrides.extend(self.overrides.iter().cloned());
        Config::load(self.config.as_deref(), &overrides)
    }
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the worker: consume readings, score them, publish scores, alerts and dead letters.
    Run(run::RunArgs),
    /// Run the whole flow in one process on an embedded mock cluster, with a live view.
    Demo(demo::DemoArgs),
    /// Produce readings: a synthetic fleet, or a CSV / JSON-lines file.
    Produce(produce::ProduceArgs),
    /// Print the scores, alerts or dead-letter topic as JSON lines.
    Tail(tail::TailArgs),
    /// Manage the worker's topics.
    Topics(topics::TopicsArgs),
    /// Score a file of readings offline with the configured pipeline (backtesting).
    Score(score::ScoreArgs),
    /// Score a file with several configurations in one pass and print a comparison table.
    Compare(compare::CompareArgs),
    /// Write the synthetic fleet, labelled, to a CSV file (for `score` and `compare`).
    Synth(synth_file::SynthArgs),
    /// Reset the group's offsets to an offset or a timestamp, choosing what happens to state.
    Replay(replay::ReplayArgs),
    /// Inspect the state store.
    Snapshot(snapshot::SnapshotArgs),
}

/// Entry point of the binary.
pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(a) => run::main(a),
        Command::Demo(a) => demo::main(a),
        Command::Produce(a) => produce::main(a),
        Command::Tail(a) => tail::main(a),
        Command::Topics(a) => topics::main(a),
        Command::Score(a) => score::main(a),
        Command::Compare(a) => compare::main(a),
        Command::Synth(a) => synth_file::main(a),
        Command::Replay(a) => replay::main(a),
        Command::Snapshot(a) => snapshot::main(a),
    }
}
