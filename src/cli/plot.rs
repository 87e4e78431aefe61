//! `score --plot FILE.svg|png`: the run drawn, so that misses and false alarms show at a glance.
//!
//! Per sensor (the `--plot-sensors` with the most alerts, by default 4), two panels over the
//! file's row numbers: the features, each scaled to its own range (sensors mix units and
//! magnitudes, e.g. 20 °C beside 1,000 hPa), and the calibrated score over the severity bands
//! of the configuration (medium, high, critical). Flagged readings are red dots on both
//! panels; with `--label`, labelled anomalies are black crosses at the top of the score panel
//! (a cross without a dot is a miss, a dot without a cross a false alarm).
//!
//! Lines are decimated for drawing only (min and max per pixel column), never for scoring, so
//! a 50,000-row sensor draws as fast as a short one and spikes survive; marks are never
//! decimated. Text uses the DejaVu Sans subset in `assets/fonts` through plotters' pure-Rust
//! `ab_glyph` renderer: no system font or fontconfig is needed.

use std::path::Path;
use std::sync::Once;

use anyhow::{bail, Context};
use clap::Args;
use plotters::coord::Shift;
use plotters::prelude::*;

use super::score_run::{Record, Run};
use crate::detect::Thresholds;

/// The bundled font (see assets/fonts/LICENSE.md).
const FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans-subset.ttf");
/// Sensors drawn when `--plot-sensors` is not given.
pub const DEFAULT_PLOT_SENSORS: usize = 4;
/// Points per pixel column a line keeps after decimation (its min and max).
const POINTS_PER_COLUMN: usize = 2;
/// Feature line colours (colour-blind-safe Okabe–Ito order, red kept for flags).
const LINE_COLOURS: [RGBColor; 6] = [
    RGBColor(0, 114, 178),
    RGBColor(230, 159, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(86, 180, 233),
    RGBColor(120, 120, 120),
];
/// Flagged readings.
const FLAG: RGBColor = RGBColor(213, 0, 0);

/// Options of `--plot`.
#[derive(Debug, Clone, Args)]
pub struct PlotOpts {
    /// With `--plot`: how many sensors to draw (those with the most alerts).
    #[arg(long, default_value_t = DEFAULT_PLOT_SENSORS, env = "ONAD_SCORE_PLOT_SENSORS")]
    pub plot_sensors: usize,
    /// With `--plot`: image size in pixels, `WIDTHxHEIGHT`.
    #[arg(long, default_value = "1200x900", value_parser = parse_size, env = "ONAD_SCORE_PLOT_SIZE")]
    pub plot_size: PlotSize,
}

/// Image size in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlotSize {
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
}

fn parse_size(s: &str) -> Result<PlotSize, String> {
    let bad = || format!("`{s}`: expected WIDTHxHEIGHT in pixels, e.g. 1200x900, each 200..=10000");
    let (w, h) = s.split_once(['x', 'X']).ok_or_else(bad)?;
    let (width, height) = (w.trim().parse::<u32>().map_err(|_| bad())?, h.trim().parse::<u32>().map_err(|_| bad())?);
    if !(200..=10_000).contains(&width) || !(200..=10_000).contains(&height) {
        return Err(bad());
    }
    Ok(PlotSize { width, height })
}

/// Refuse a plot path whose type is unknown before the (maybe long) run.
pub fn check_path(path: &Path) -> anyhow::Result<()> {
    match extension(path).as_str() {
        "svg" | "png" => Ok(()),
        _ => bail!("--plot {}: the file must end in .svg or .png", path.display()),
    }
}

fn extension(path: &Path) -> String {
    path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).unwrap_or_default()
}

/// One sensor's rows, in file order.
struct Sensor<'r> {
    key: &'r str,
    rows: Vec<&'r Record>,
    alerts: usize,
}

/// Draw `run` (which kept its rows' values) into `path`.
pub fn draw(path: &Path, opts: &PlotOpts, run: &Run, features: &[String], thresholds: &Thresholds, labelled: bool) -> anyhow::Result<()> {
    static FONT_ONCE: Once = Once::new();
    FONT_ONCE.call_once(|| {
        // The font is a constant of the binary: it either always loads or never does, and
        // without it plotters draws no text, which the plot test would catch.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
    let mut sensors: Vec<Sensor> = run.keys.iter().map(|k| Sensor { key: k, rows: Vec::new(), alerts: 0 }).collect();
    for r in &run.records {
        if let Some(s) = sensors.get_mut(r.key) {
            s.alerts += usize::from(r.is_anomaly);
            s.rows.push(r);
        }
    }
    // Most alerts first; first seen first among equals (a stable sort keeps file order).
    sensors.sort_by_key(|s| std::cmp::Reverse(s.alerts));
    sensors.truncate(opts.plot_sensors.max(1));
    let size = (opts.plot_size.width, opts.plot_size.height);
    let plot = Plot { sensors: &sensors, features, thresholds, labelled };
    let drawn = match extension(path).as_str() {
        "svg" => {
            let root = SVGBackend::new(path, size).into_drawing_area();
            plot.render(&root).and_then(|()| root.present().map_err(drawing))
        }
        "png" => {
            let root = BitMapBackend::new(path, size).into_drawing_area();
            plot.render(&root).and_then(|()| root.present().map_err(drawing))
        }
        _ => return check_path(path),
    };
    drawn.with_context(|| format!("cannot draw {}", path.display()))
}

/// Plotters' errors carry the backend's error type; they are reported, not matched on.
fn drawing<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("{e:?}")
}

struct Plot<'a, 'r> {
    sensors: &'a [Sensor<'r>],
    features: &'a [String],
    thresholds: &'a Thresholds,
    labelled: bool,
}

impl Plot<'_, '_> {
    fn render<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> anyhow::Result<()> {
        root.fill(&WHITE).map_err(drawing)?;
        let panels = root.split_evenly((self.sensors.len().max(1), 1));
        for (sensor, area) in self.sensors.iter().zip(&panels) {
            let (_, h) = area.dim_in_pixel();
            let (top, bottom) = area.split_vertically(h * 11 / 20);
            self.features_panel(sensor, &top)?;
            self.score_panel(sensor, &bottom)?;
        }
        Ok(())
    }

    fn x_range(sensor: &Sensor) -> std::ops::Range<f64> {
        let first = sensor.rows.first().map_or(0.0, |r| r.row as f64);
        let last = sensor.rows.last().map_or(1.0, |r| r.row as f64);
        first..last.max(first + 1.0)
    }

    fn features_panel<DB: DrawingBackend>(&self, sensor: &Sensor, area: &DrawingArea<DB, Shift>) -> anyhow::Result<()> {
        let columns = area.dim_in_pixel().0 as usize;
        let mut chart = ChartBuilder::on(area)
            .caption(
                format!("{}: features, each scaled to its range ({} alerts)", display_key(sensor.key), sensor.alerts),
                ("sans-serif", 15),
            )
            .margin(4)
            .x_label_area_size(18)
            .y_label_area_size(40)
            .build_cartesian_2d(Self::x_range(sensor), -0.05f64..1.05f64)
            .map_err(drawing)?;
        chart.configure_mesh().light_line_style(WHITE).y_labels(3).x_labels(8).x_label_formatter(&row_label).draw().map_err(drawing)?;
        let width = sensor.rows.first().map_or(0, |r| r.values.len());
        for k in 0..width {
            let (lo, hi) = sensor.rows.iter().fold((f64::MAX, f64::MIN), |(lo, hi), r| (lo.min(r.values[k]), hi.max(r.values[k])));
            let span = if hi > lo { hi - lo } else { 1.0 };
            let scaled = |r: &Record| (r.row as f64, (r.values[k] - lo) / span);
            let points: Vec<(f64, f64)> = sensor.rows.iter().map(|r| scaled(r)).collect();
            let colour = LINE_COLOURS[k % LINE_COLOURS.len()];
            let name = self.features.get(k).map_or_else(|| format!("feature {k}"), Clone::clone);
            chart
                .draw_series(LineSeries::new(decimate(&points, columns * POINTS_PER_COLUMN), colour.stroke_width(1)))
                .map_err(drawing)?
                .label(format!("{name} [{}, {}]", short(lo), short(hi)))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 14, y)], colour.stroke_width(2)));
            let flagged = sensor.rows.iter().filter(|r| r.is_anomaly).map(|r| Circle::new(scaled(r), 3, FLAG.filled()));
            chart.draw_series(flagged).map_err(drawing)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .label_font(("sans-serif", 11))
            .background_style(WHITE.mix(0.7))
            .border_style(BLACK.mix(0.3))
            .draw()
            .map_err(drawing)?;
        Ok(())
    }

    fn score_panel<DB: DrawingBackend>(&self, sensor: &Sensor, area: &DrawingArea<DB, Shift>) -> anyhow::Result<()> {
        let columns = area.dim_in_pixel().0 as usize;
        let x = Self::x_range(sensor);
        let t = self.thresholds;
        let mut caption = format!(
            "calibrated score; bands: medium > {}, high > {}, critical > {}; red dot: flagged",
            short(t.medium),
            short(t.high),
            short(t.critical)
        );
        if self.labelled {
            caption.push_str("; x: labelled anomaly");
        }
        let mut chart = ChartBuilder::on(area)
            .caption(caption, ("sans-serif", 13))
            .margin(4)
            .x_label_area_size(18)
            .y_label_area_size(40)
            .build_cartesian_2d(x.clone(), 0f64..1.08f64)
            .map_err(drawing)?;
        let bands = [
            (t.medium, t.high, RGBColor(255, 214, 0).mix(0.25)),
            (t.high, t.critical, RGBColor(255, 140, 0).mix(0.3)),
            (t.critical, 1.0, RGBColor(213, 0, 0).mix(0.3)),
        ];
        for (lo, hi, colour) in bands {
            chart.draw_series(std::iter::once(Rectangle::new([(x.start, lo), (x.end, hi.max(lo))], colour.filled()))).map_err(drawing)?;
        }
        chart.configure_mesh().light_line_style(WHITE).y_labels(3).x_labels(8).x_label_formatter(&row_label).draw().map_err(drawing)?;
        let points: Vec<(f64, f64)> = sensor.rows.iter().map(|r| (r.row as f64, r.score)).collect();
        let line = RGBColor(0, 90, 160).stroke_width(1);
        chart.draw_series(LineSeries::new(decimate(&points, columns * POINTS_PER_COLUMN), line)).map_err(drawing)?;
        let flagged = sensor.rows.iter().filter(|r| r.is_anomaly).map(|r| Circle::new((r.row as f64, r.score), 3, FLAG.filled()));
        chart.draw_series(flagged).map_err(drawing)?;
        if self.labelled {
            let truth = sensor.rows.iter().filter(|r| r.label == Some(true));
            chart.draw_series(truth.map(|r| Cross::new((r.row as f64, 1.04), 4, BLACK.stroke_width(2)))).map_err(drawing)?;
        }
        Ok(())
    }
}

/// Row numbers as integers (the axis is f64 only to share the coordinate type).
fn row_label(x: &f64) -> String {
    format!("{x:.0}")
}

fn display_key(key: &str) -> &str {
    if key.is_empty() {
        "all rows"
    } else {
        key
    }
}

/// A number in 4 significant digits, for legends.
fn short(v: f64) -> String {
    if v != 0.0 && (v.abs() >= 1e5 || v.abs() < 1e-3) {
        format!("{v:.3e}")
    } else {
        format!("{}", (v * 1e4).round() / 1e4)
    }
}

/// At most about `budget` points of `points` (sorted by x) that draw the same line: the first
/// and last point, and per bucket its minimum and maximum in x order, so that every spike
/// keeps its height. Drawing only; scores are never computed on decimated data.
pub fn decimate(points: &[(f64, f64)], budget: usize) -> Vec<(f64, f64)> {
    if points.len() <= budget.max(4) {
        return points.to_vec();
    }
    let buckets = (budget / 2).max(2);
    let per = points.len().div_ceil(buckets);
    let mut out = Vec::with_capacity(buckets * 2 + 2);
    out.push(points[0]);
    for chunk in points.chunks(per) {
        let min = chunk.iter().copied().fold((f64::NAN, f64::INFINITY), |m, p| if p.1 < m.1 { p } else { m });
        let max = chunk.iter().copied().fold((f64::NAN, f64::NEG_INFINITY), |m, p| if p.1 > m.1 { p } else { m });
        let (a, b) = if min.0 <= max.0 { (min, max) } else { (max, min) };
        out.push(a);
        if b != a {
            out.push(b);
        }
    }
    if let Some(&last) = points.last() {
        out.push(last);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimation_keeps_spikes_and_ends_within_budget() {
        let mut points: Vec<(f64, f64)> = (0..50_000).map(|i| (i as f64, (i % 7) as f64 * 0.1)).collect();
        points[31_337].1 = 9.0;
        points[12_345].1 = -4.0;
        let d = decimate(&points, 2_400);
        assert!(d.len() <= 2_404, "{}", d.len());
        assert!(d.contains(&(31_337.0, 9.0)) && d.contains(&(12_345.0, -4.0)), "spikes survive");
        assert_eq!((d[0], d[d.len() - 1]), (points[0], points[49_999]));
        assert!(d.windows(2).all(|w| w[0].0 <= w[1].0), "x stays in order");
        assert_eq!(decimate(&points[..100], 2_400).len(), 100, "short lines are drawn whole");
    }

    #[test]
    fn sizes_parse_and_bad_ones_name_the_format() {
        assert_eq!(parse_size("800x600"), Ok(PlotSize { width: 800, height: 600 }));
        assert!(parse_size("800").unwrap_err().contains("WIDTHxHEIGHT"));
        assert!(parse_size("10x10").is_err());
    }
}
