//! `onad-stream produce`: send readings to the input topic, from a synthetic fleet or a file.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::Args;

use super::progress::Progress;
use super::readings_file::{FileFormat, ReadingsFile};
use super::synth::{Fleet, FleetSpec};
use super::tools::{now_ms, stop_on_signal, Pacer, ReadingSender};
use super::ConfigArgs;
use crate::proto::SensorReading;

/// Synthetic readings per second when `--rate` is not given.
const DEFAULT_SYNTHETIC_RATE: f64 = 100.0;

/// Arguments of `onad-stream produce`.
#[derive(Debug, Args)]
pub struct ProduceArgs {
    /// Configuration.
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Topic to produce to (default: `kafka.input_topic`).
    #[arg(long, env = "ONAD_PRODUCE_TOPIC")]
    pub topic: Option<String>,
    /// Readings per second; 0 = as fast as the broker takes them. Default: 100 for the
    /// synthetic fleet, unlimited for a file.
    #[arg(long, env = "ONAD_PRODUCE_RATE")]
    pub rate: Option<f64>,
    /// Stop after this many readings (default: the whole file; the fleet runs until
    /// `--seconds` or Ctrl-C).
    #[arg(long, env = "ONAD_PRODUCE_COUNT")]
    pub count: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long, env = "ONAD_PRODUCE_SECONDS")]
    pub seconds: Option<f64>,
    /// Read readings from this file instead of the synthetic fleet: CSV with a header row
    /// (`.csv`) or one JSON object per line (`.jsonl`, `.ndjson`, `.json`).
    #[arg(long, env = "ONAD_PRODUCE_FILE")]
    pub file: Option<PathBuf>,
    /// The file's column (field) holding the sensor id; required with `--file`. Every other
    /// numeric column is a feature, every other text column a label.
    #[arg(long, env = "ONAD_PRODUCE_KEY_COLUMN", requires = "file")]
    pub key_column: Option<String>,
    /// The file's timestamp column: integer milliseconds since the epoch, or RFC 3339
    /// (`2024-05-01T12:00:00Z`). Default: a column named `timestamp_ms` or `timestamp` if
    /// there is one, else the time of sending.
    #[arg(long, env = "ONAD_PRODUCE_TIMESTAMP_COLUMN", requires = "file")]
    pub timestamp_column: Option<String>,
    /// Synthetic fleet: number of sensors (keys).
    #[arg(long, env = "ONAD_PRODUCE_SENSORS", default_value_t = 10)]
    pub sensors: usize,
    /// Synthetic fleet: features per reading.
    #[arg(long, env = "ONAD_PRODUCE_FEATURES", default_value_t = 3)]
    pub features: usize,
    /// Synthetic fleet: probability that a reading carries an injected spike (labelled
    /// `injected=spike`). A calibrated score is a rarity against the sensor's own history
    /// (0.8 = 1 in 10,000), so spikes stand out only while they stay rare.
    #[arg(long, env = "ONAD_PRODUCE_SPIKE_RATE", default_value_t = 0.003)]
    pub spike_rate: f64,
    /// Synthetic fleet: spike size in noise standard deviations.
    #[arg(long, env = "ONAD_PRODUCE_SPIKE_SIGMAS", default_value_t = 8.0)]
    pub spike_sigmas: f64,
    /// Synthetic fleet: drift of the last sensor per reading, in noise standard deviations
    /// (0 = no drifting sensor).
    #[arg(long, env = "ONAD_PRODUCE_DRIFT", default_value_t = 0.002)]
    pub drift: f64,
    /// Synthetic fleet: seed (same seed and settings = same readings).
    #[arg(long, env = "ONAD_PRODUCE_SEED", default_value_t = 42)]
    pub seed: u64,
    /// Print every reading sent as a JSON line on stdout.
    #[arg(long, env = "ONAD_PRODUCE_PRINT")]
    pub print: bool,
    /// No progress bar (it is only drawn when stderr is a terminal anyway).
    #[arg(long, short = 'q', env = "ONAD_QUIET")]
    pub quiet: bool,
}

impl ProduceArgs {
    /// The fleet these arguments describe.
    pub fn fleet_spec(&self) -> FleetSpec {
        FleetSpec {
            sensors: self.sensors,
            features: self.features,
            spike_rate: self.spike_rate,
            spike_sigmas: self.spike_sigmas,
            drift_sigmas_per_reading: self.drift,
            seed: self.seed,
        }
    }
}

/// Where readings come from.
enum Source {
    /// The synthetic fleet.
    Fleet(Box<Fleet>),
    /// A file, read lazily.
    File(ReadingsFile),
}

/// Run the subcommand.
pub fn main(args: ProduceArgs) -> anyhow::Result<()> {
    let config = args.config.load()?;
    crate::telemetry::init(&config.telemetry);
    let topic = args.topic.clone().unwrap_or_else(|| config.kafka.input_topic.clone());
    if let Some(r) = args.rate {
        anyhow::ensure!(r.is_finite() && r >= 0.0, "--rate must be a non-negative number");
    }
    if let Some(s) = args.seconds {
        anyhow::ensure!(s.is_finite() && s > 0.0, "--seconds must be a positive number");
    }
    let (mut source, rate) = match &args.file {
        Some(path) => {
            let key = args.key_column.as_deref().ok_or_else(|| anyhow::anyhow!("--file needs --key-column"))?;
            let format = FileFormat::from_path(path)?;
            let file = ReadingsFile::open(path, format, key, args.timestamp_column.as_deref())?;
            (Source::File(file), args.rate)
        }
        None => {
            let spec = args.fleet_spec();
            spec.check().map_err(|e| anyhow::anyhow!(e))?;
            (Source::Fleet(Box::new(Fleet::new(spec))), Some(args.rate.unwrap_or(DEFAULT_SYNTHETIC_RATE)))
        }
    };
    let mut sender = ReadingSender::new(&config.kafka, &topic)?;
    let stop = stop_on_signal();
    let pacer = Pacer::new(rate);
    let deadline = args.seconds.map(|s| Instant::now() + Duration::from_secs_f64(s));
    let started = Instant::now();
    let mut spikes = 0u64;
    let mut keys = std::collections::BTreeSet::new();
    // Rows of a file are not counted in advance: the bar runs to `--count` when given, and
    // is a spinner with the count and rate otherwise.
    let progress = Progress::new(args.count, "readings", args.quiet);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut i = 0u64;
    loop {
        if stop.load(Ordering::Relaxed) || args.count.is_some_and(|c| i >= c) || deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        pacer.wait_for(i);
        let reading: SensorReading = match &mut source {
            Source::Fleet(f) => {
                let g = f.next_reading(now_ms());
                spikes += u64::from(g.spike);
                g.reading
            }
            Source::File(f) => match f.next_reading() {
                Some(r) => r?,
                None => break,
            },
        };
        sender.send(&reading)?;
        if keys.len() < 100_000 {
            keys.insert(reading.sensor_id.clone());
        }
        if args.print {
            use std::io::Write;
            let written = serde_json::to_writer(&mut out, &reading).map_err(std::io::Error::from).and_then(|()| out.write_all(b"\n"));
            match written {
                Ok(()) => {}
                // The reader went away (`produce --print | head`): stop producing, still flush.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => break,
                Err(e) => return Err(e.into()),
            }
        }
        i += 1;
        progress.inc(1);
        if i % 256 == 0 {
            progress.set_count(i, i as f64 / started.elapsed().as_secs_f64().max(1e-9));
        }
    }
    progress.finish();
    drop(out);
    let delivered = sender.finish()?;
    let secs = started.elapsed().as_secs_f64();
    let mut summary = format!(
        "produced {delivered} readings of {} sensors to `{topic}` in {secs:.1} s ({:.0}/s)",
        keys.len(),
        delivered as f64 / secs.max(1e-9)
    );
    if let Source::Fleet(f) = &source {
        summary.push_str(&format!(", {spikes} with an injected spike (label injected=spike)"));
        if let Some(d) = f.drifting_sensor() {
            summary.push_str(&format!(", drifting sensor {d}"));
        }
    }
    println!("{summary}");
    Ok(())
}
