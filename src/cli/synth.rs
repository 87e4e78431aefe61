//! A synthetic sensor fleet: the data of `onad-stream produce` (without `--file`) and of the
//! demo.
//!
//! Each sensor has a few features, each a constant level plus Gaussian noise. At a configurable
//! rate a reading carries an injected spike (one feature moved by `spike_sigmas` standard
//! deviations, up or down); such readings are labelled `injected=spike` so that a consumer of
//! the alerts topic can tell a caught spike from a false alarm (the detector sees only the
//! values, never the labels). One sensor (the last) drifts: its levels move by a small
//! fraction of a standard deviation per reading, the slow change a streaming model must follow
//! without calling it an anomaly.
//!
//! Everything is drawn from one seeded `Pcg64Mcg`: the same seed and settings give the same
//! sensor ids, values and spikes, in the same order.

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;

use crate::proto::SensorReading;

/// Label set on readings that carry an injected spike.
pub const SPIKE_LABEL: (&str, &str) = ("injected", "spike");
/// Label set on every reading of the drifting sensor.
pub const DRIFT_LABEL: (&str, &str) = ("drifting", "true");
/// `SensorReading.source` of synthetic readings.
pub const SOURCE: &str = "onad-stream-synth";

/// Feature names, in order; fleets with more features use `f<k>` beyond these.
const FEATURE_NAMES: [&str; 6] = ["temperature", "pressure", "vibration", "humidity", "current", "rpm"];

/// Settings of a synthetic fleet.
#[derive(Debug, Clone)]
pub struct FleetSpec {
    /// Number of sensors (keys).
    pub sensors: usize,
    /// Features per reading.
    pub features: usize,
    /// Probability that a reading carries an injected spike.
    pub spike_rate: f64,
    /// Size of a spike, in standard deviations of the feature's noise.
    pub spike_sigmas: f64,
    /// Drift of the drifting sensor per reading of it, in standard deviations (0 disables it).
    pub drift_sigmas_per_reading: f64,
    /// Seed of every random choice.
    pub seed: u64,
}

impl FleetSpec {
    /// Check the settings; the error names the flag.
    pub fn check(&self) -> Result<(), String> {
        if self.sensors == 0 {
            return Err("--sensors must be at least 1".into());
        }
        if self.features == 0 || self.features > 1000 {
            return Err("--features must be in 1..=1000".into());
        }
        if !(0.0..=1.0).contains(&self.spike_rate) {
            return Err("--spike-rate must be in [0, 1]".into());
        }
        if !self.spike_sigmas.is_finite() || self.spike_sigmas <= 0.0 {
            return Err("--spike-sigmas must be a positive number".into());
        }
        if !self.drift_sigmas_per_reading.is_finite() || self.drift_sigmas_per_reading < 0.0 {
            return Err("--drift must be a non-negative number".into());
        }
        Ok(())
    }
}

/// One sensor's generator state.
#[derive(Debug, Clone)]
struct Sensor {
    /// Sensor id (the Kafka key).
    id: String,
    /// Current level of each feature.
    level: Vec<f64>,
    /// Noise standard deviation of each feature.
    sigma: Vec<f64>,
    /// Whether the levels drift.
    drifts: bool,
}

/// One generated reading and what was injected into it.
#[derive(Debug, Clone)]
pub struct Generated {
    /// The reading.
    pub reading: SensorReading,
    /// Whether it carries an injected spike.
    pub spike: bool,
}

/// The fleet: yields readings round-robin over the sensors.
#[derive(Debug, Clone)]
pub struct Fleet {
    /// Settings.
    spec: FleetSpec,
    /// Feature names, shared by every sensor.
    names: Vec<String>,
    /// Per-sensor state.
    sensors: Vec<Sensor>,
    /// The one source of randomness.
    rng: Pcg64Mcg,
    /// Readings generated so far (decides the next sensor).
    produced: u64,
}

impl Fleet {
    /// A fleet as `spec` describes (call [`FleetSpec::check`] first).
    pub fn new(spec: FleetSpec) -> Self {
        let mut rng = Pcg64Mcg::seed_from_u64(spec.seed);
        let names: Vec<String> =
            (0..spec.features).map(|k| FEATURE_NAMES.get(k).map_or_else(|| format!("f{k}"), |n| (*n).to_string())).collect();
        let width = (spec.sensors - 1).max(1).to_string().len().max(3);
        let sensors = (0..spec.sensors)
            .map(|i| {
                // Levels of different magnitudes per feature, so that scaling matters.
                let level: Vec<f64> = (0..spec.features).map(|k| 10f64.powi((k % 4) as i32) * (1.0 + rng.random::<f64>())).collect();
                let sigma: Vec<f64> = level.iter().map(|l| l * (0.01 + 0.02 * rng.random::<f64>())).collect();
                let drifts = spec.drift_sigmas_per_reading > 0.0 && spec.sensors > 1 && i == spec.sensors - 1;
                Sensor { id: format!("sensor-{i:0width$}"), level, sigma, drifts }
            })
            .collect();
        Self { spec, names, sensors, rng, produced: 0 }
    }

    /// The sensor ids, in generation order.
    #[cfg(test)]
    pub fn sensor_ids(&self) -> impl Iterator<Item = &str> {
        self.sensors.iter().map(|s| s.id.as_str())
    }

    /// The id of the drifting sensor, if any.
    pub fn drifting_sensor(&self) -> Option<&str> {
        self.sensors.iter().find(|s| s.drifts).map(|s| s.id.as_str())
    }

    /// The next reading, stamped `timestamp_ms`.
    pub fn next_reading(&mut self, timestamp_ms: i64) -> Generated {
        let n = self.sensors.len();
        let idx = (self.produced % n as u64) as usize;
        self.produced += 1;
        let spike = self.spec.spike_rate > 0.0 && self.rng.random::<f64>() < self.spec.spike_rate;
        let spiked_feature = if spike { Some(self.rng.random_range(0..self.spec.features)) } else { None };
        let sign = if self.rng.random::<bool>() { 1.0 } else { -1.0 };
        let sensor = &mut self.sensors[idx];
        let mut values = BTreeMap::new();
        for (k, name) in self.names.iter().enumerate() {
            let mut v = sensor.level[k] + sensor.sigma[k] * standard_normal(&mut self.rng);
            if spiked_feature == Some(k) {
                v += sign * self.spec.spike_sigmas * sensor.sigma[k];
            }
            values.insert(name.clone(), v);
        }
        if sensor.drifts {
            for (level, sigma) in sensor.level.iter_mut().zip(&sensor.sigma) {
                *level += self.spec.drift_sigmas_per_reading * sigma;
            }
        }
        let mut labels = BTreeMap::new();
        if spike {
            labels.insert(SPIKE_LABEL.0.to_string(), SPIKE_LABEL.1.to_string());
        }
        if sensor.drifts {
            labels.insert(DRIFT_LABEL.0.to_string(), DRIFT_LABEL.1.to_string());
        }
        let reading = SensorReading { sensor_id: sensor.id.clone(), timestamp_ms, values, source: SOURCE.into(), labels };
        Generated { reading, spike }
    }
}

/// A standard normal draw (Box–Muller; one of the pair is discarded to keep the generator
/// state a plain function of the draws so far).
fn standard_normal(rng: &mut Pcg64Mcg) -> f64 {
    // 1 - u is in (0, 1], so the logarithm is finite.
    let u1 = 1.0 - rng.random::<f64>();
    let u2 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(seed: u64) -> FleetSpec {
        FleetSpec { sensors: 5, features: 3, spike_rate: 0.05, spike_sigmas: 8.0, drift_sigmas_per_reading: 0.01, seed }
    }

    #[test]
    fn same_seed_gives_the_same_readings() {
        let mut a = Fleet::new(spec(7));
        let mut b = Fleet::new(spec(7));
        for _ in 0..500 {
            let (x, y) = (a.next_reading(1), b.next_reading(1));
            assert_eq!(x.reading, y.reading);
            assert_eq!(x.spike, y.spike);
        }
        let mut c = Fleet::new(spec(8));
        let differs = (0..10).any(|_| a.next_reading(1).reading != c.next_reading(1).reading);
        assert!(differs, "a different seed must give different readings");
    }

    #[test]
    fn readings_cycle_over_sensors_with_fixed_features_and_labelled_spikes() {
        let mut f = Fleet::new(spec(1));
        let ids: Vec<String> = f.sensor_ids().map(String::from).collect();
        assert_eq!(ids, ["sensor-000", "sensor-001", "sensor-002", "sensor-003", "sensor-004"]);
        assert_eq!(f.drifting_sensor(), Some("sensor-004"));
        let mut spikes = 0;
        for i in 0..10_000 {
            let g = f.next_reading(i);
            assert_eq!(g.reading.sensor_id, ids[i as usize % 5]);
            let names: Vec<&str> = g.reading.values.keys().map(String::as_str).collect();
            assert_eq!(names, ["pressure", "temperature", "vibration"]);
            assert!(g.reading.values.values().all(|v| v.is_finite()));
            assert_eq!(g.reading.labels.get("injected").map(String::as_str) == Some("spike"), g.spike);
            spikes += usize::from(g.spike);
        }
        // 5% of 10,000 = 500, binomial sd ~ 22.
        assert!((400..600).contains(&spikes), "{spikes} spikes");
    }

    #[test]
    fn drifting_sensor_moves_and_the_others_do_not() {
        let mut f = Fleet::new(FleetSpec { spike_rate: 0.0, ..spec(3) });
        let mut first = [0.0; 5];
        let mut last = [0.0; 5];
        for i in 0..5000 {
            let g = f.next_reading(0);
            let t = g.reading.values["temperature"];
            let s = i % 5;
            if i < 500 {
                first[s] += t / 100.0;
            } else if i >= 4500 {
                last[s] += t / 100.0;
            }
        }
        for s in 0..4 {
            assert!((last[s] / first[s] - 1.0).abs() < 0.01, "sensor {s} moved: {} -> {}", first[s], last[s]);
        }
        // 800 readings apart at 0.01 sigma each = 8 sigma, and sigma >= 1% of the level.
        assert!(last[4] / first[4] - 1.0 > 0.05, "drifting sensor did not drift: {} -> {}", first[4], last[4]);
    }
}
