//! `onad-stream demo`: runs the whole flow on the embedded mock cluster (no broker needed),
//! ends by itself and reports what it found.

use std::process::Command;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_onad-stream");

/// The number after `label` on the summary line that starts with it.
fn field(summary: &str, label: &str) -> u64 {
    let line = summary.lines().find(|l| l.starts_with(label)).unwrap_or_else(|| panic!("no `{label}` line in:\n{summary}"));
    line[label.len()..].split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("bad line `{line}`"))
}

#[test]
fn demo_runs_to_completion_and_catches_injected_spikes() {
    let started = Instant::now();
    let out = Command::new(BIN)
        // 2,000 readings per sensor: the calibrated score needs ~80 of a sensor's readings
        // before it can flag anything, and spikes must stay rare to be surprising.
        .args(["demo", "--seconds", "8", "--rate", "1000", "--sensors", "4", "--spike-rate", "0.004", "--seed", "3"])
        .env_remove("RUST_LOG")
        .output()
        .expect("run onad-stream demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed: {}\nstdout:\n{stdout}\nstderr:\n{stderr}", out.status);
    assert!(started.elapsed() < Duration::from_secs(60), "demo took {:?} for 8 s of data", started.elapsed());

    // The live view refreshed while producing.
    assert!(stdout.lines().filter(|l| l.starts_with('[') && l.contains("scored")).count() >= 3, "no live view:\n{stdout}");
    let summary = stdout.split("== onad-stream demo summary ==").nth(1).unwrap_or_else(|| panic!("no summary:\n{stdout}"));
    let produced = field(summary, "readings produced");
    let scored = field(summary, "readings scored");
    let dead = field(summary, "dead letters");
    let alerts = field(summary, "alerts");
    assert!(produced >= 6000, "8 s at 1000/s should produce ~8000 readings, got {produced}");
    assert_eq!(scored, produced, "every synthetic reading is valid and must be scored exactly once");
    assert_eq!(dead, 0);
    assert!(alerts > 0, "the injected spikes must raise alerts:\n{summary}");

    // "injected spikes  N  caught C of S scored (P%)"
    let line = summary.lines().find(|l| l.starts_with("injected spikes")).unwrap();
    let nums: Vec<u64> = line.split(|c: char| !c.is_ascii_digit()).filter_map(|t| t.parse().ok()).collect();
    let (injected, caught, spikes_scored) = (nums[0], nums[1], nums[2]);
    assert!(injected >= 15, "0.4% of ~8000 readings should carry spikes, got {injected}");
    assert_eq!(spikes_scored, injected, "every spiked reading is scored");
    assert!(caught * 3 >= spikes_scored, "8-sigma spikes after warm-up should mostly be flagged: {line}");
    let false_alarms = field(summary, "alarms without a spike");
    assert!(caught > false_alarms, "alerts should be mostly the injected spikes: {line}; {false_alarms} others");
}
