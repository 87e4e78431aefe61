//! `onad-stream synth`: the synthetic fleet of `produce` written to a CSV file instead of a
//! topic, labelled, for `score` and `compare` (and the README's pictures) to work on without a
//! broker.
//!
//! Columns: `timestamp_ms`, `sensor`, the features, and `label` (1 on a reading with an
//! injected spike). Timestamps advance by `--interval-ms` per reading from 2026-01-01T00:00Z,
//! so that `score --alerts-per-day` sees days of history; the same seed and settings give the
//! same file.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use super::synth::{Fleet, FleetSpec};

/// The first reading's time: 2026-01-01T00:00:00Z.
const START_MS: i64 = 1_767_225_600_000;

/// Arguments of `onad-stream synth`.
#[derive(Debug, Args)]
pub struct SynthArgs {
    /// Where to write the CSV.
    #[arg(long, short = 'o')]
    pub output: PathBuf,
    /// Readings (rows) in all.
    #[arg(long, default_value_t = 50_000)]
    pub rows: u64,
    /// Milliseconds between consecutive readings of the fleet (6,000 with 10 sensors: each
    /// reads once a minute, and 50,000 rows span ~3.5 days).
    #[arg(long, default_value_t = 6_000)]
    pub interval_ms: i64,
    /// Number of sensors (keys).
    #[arg(long, default_value_t = 10)]
    pub sensors: usize,
    /// Features per reading.
    #[arg(long, default_value_t = 3)]
    pub features: usize,
    /// Probability that a reading carries an injected spike (label 1).
    #[arg(long, default_value_t = 0.003)]
    pub spike_rate: f64,
    /// Spike size in noise standard deviations.
    #[arg(long, default_value_t = 8.0)]
    pub spike_sigmas: f64,
    /// Drift of the last sensor per reading, in noise standard deviations.
    #[arg(long, default_value_t = 0.002)]
    pub drift: f64,
    /// Seed (same seed and settings = same file).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

/// Run the subcommand.
pub fn main(args: SynthArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.interval_ms >= 0, "--interval-ms must not be negative");
    let spec = FleetSpec {
        sensors: args.sensors,
        features: args.features,
        spike_rate: args.spike_rate,
        spike_sigmas: args.spike_sigmas,
        drift_sigmas_per_reading: args.drift,
        seed: args.seed,
    };
    spec.check().map_err(|e| anyhow::anyhow!(e))?;
    let mut fleet = Fleet::new(spec);
    let file = File::create(&args.output).with_context(|| format!("cannot create {}", args.output.display()))?;
    let mut out = csv::Writer::from_writer(BufWriter::new(file));
    let mut spikes = 0u64;
    for i in 0..args.rows {
        let ts = START_MS.saturating_add(args.interval_ms.saturating_mul(i as i64));
        let g = fleet.next_reading(ts);
        if i == 0 {
            let mut header = vec!["timestamp_ms".to_string(), "sensor".into()];
            header.extend(g.reading.values.keys().cloned());
            header.push("label".into());
            out.write_record(&header)?;
        }
        let mut record = vec![ts.to_string(), g.reading.sensor_id.clone()];
        record.extend(g.reading.values.values().map(f64::to_string));
        record.push(u8::from(g.spike).to_string());
        out.write_record(&record)?;
        spikes += u64::from(g.spike);
    }
    out.into_inner().map_err(|e| anyhow::anyhow!("{}: {}", args.output.display(), e.error()))?.flush()?;
    eprintln!("wrote {} readings of {} sensors ({spikes} spikes, label 1) to {}", args.rows, args.sensors, args.output.display());
    Ok(())
}
