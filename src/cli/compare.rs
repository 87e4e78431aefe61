//! `onad-stream compare`: several configurations over the same file in one pass, as a table.
//!
//! Each row of the file is read once and scored by every configuration's own pipelines (per
//! `--key`, as `score` does), so a large history is parsed once however many candidates there
//! are. The table (Markdown, on stdout) has per configuration: ROC-AUC and PR-AUC of the
//! calibrated score against `--label`, the alerts it raised by severity, points/s (time in
//! its pipelines only, so the candidates are compared on the same rows, not on parsing), and
//! the serialized state bytes per sensor, what the state store and memory budget hold. With
//! `--all-detectors`, every `model_type` at its defaults joins the table.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use super::score_input::{read_input, InputArgs};
use super::score_run::{Keep, Run};
use crate::config::Config;
use crate::detect::pipeline::MODEL_TYPES;

/// Arguments of `onad-stream compare`.
#[derive(Debug, Args)]
pub struct CompareArgs {
    /// The readings and their column roles.
    #[command(flatten)]
    pub input: InputArgs,
    /// A configuration to compare (TOML, as for `run`); repeat for each candidate.
    #[arg(long = "config", short = 'c', value_name = "FILE")]
    pub configs: Vec<PathBuf>,
    /// Add every detector (`model_type`) at its default parameters, without preprocessing.
    #[arg(long)]
    pub all_detectors: bool,
    /// Override a config key in every candidate: `--set thresholds.anomaly=0.6` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
}

/// One candidate: its name in the table and its checked configuration.
struct Candidate {
    name: String,
    config: Config,
}

/// Run the subcommand.
pub fn main(args: CompareArgs) -> anyhow::Result<()> {
    let mut candidates = Vec::new();
    for path in &args.configs {
        let config = Config::load(Some(path), &args.overrides).with_context(|| format!("{}", path.display()))?;
        let name = path.file_stem().map_or_else(|| path.display().to_string(), |s| s.to_string_lossy().into_owned());
        candidates.push(Candidate { name, config });
    }
    if args.all_detectors {
        for model in MODEL_TYPES {
            let mut overrides = vec![format!("model_type=\"{model}\"")];
            overrides.extend(args.overrides.iter().cloned());
            let config = Config::load(None, &overrides).with_context(|| format!("model_type {model}"))?;
            candidates.push(Candidate { name: format!("{model} (defaults)"), config });
        }
    }
    anyhow::ensure!(!candidates.is_empty(), "nothing to compare: give --config FILE (repeatable) or --all-detectors");
    let mut runs: Vec<(Run, Option<String>)> = candidates.iter().map(|c| (Run::new(&c.config.pipeline, Keep::Nothing), None)).collect();
    read_input(&args.input, |row| {
        for (run, failed) in runs.iter_mut().filter(|(_, f)| f.is_none()) {
            // One candidate that cannot score this file (e.g. too few features for its PCA)
            // leaves the table with its reason; the others go on.
            if let Err(e) = run.process(&row) {
                *failed = Some(format!("row {}: {e:#}", run.rows));
            }
        }
        Ok(())
    })?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "| config | model | ROC-AUC | PR-AUC | alerts (low / medium / high / critical) | points/s | state bytes per sensor |")?;
    writeln!(out, "|---|---|---:|---:|---:|---:|---:|")?;
    for (c, (run, failed)) in candidates.iter().zip(&runs) {
        let model = &c.config.raw.model_type;
        if let Some(why) = failed {
            writeln!(out, "| {} | {model} | failed: {why} | | | | |", c.name)?;
            continue;
        }
        let (roc, pr) = match run.aucs(args.input.eval_after) {
            Some(a) => (format!("{:.4}", a.score.0), format!("{:.4}", a.score.1)),
            None => ("n/a".into(), "n/a".into()),
        };
        let [low, medium, high, critical] = run.alerts;
        let per_sensor = run.state_bytes()? / run.keys.len().max(1);
        writeln!(
            out,
            "| {} | {model} | {roc} | {pr} | {} ({low} / {medium} / {high} / {critical}) | {:.0} | {per_sensor} |",
            c.name,
            low + medium + high + critical,
            run.points_per_sec(),
        )?;
    }
    let rows = runs.first().map_or(0, |(r, _)| r.rows);
    writeln!(
        out,
        "\n{rows} rows of {}, {} sensors; AUCs of the calibrated score{}",
        args.input.input.display(),
        runs.first().map_or(0, |(r, _)| r.keys.len()),
        if args.input.eval_after > 0 { format!(" after the first {} rows", args.input.eval_after) } else { String::new() },
    )?;
    Ok(())
}
