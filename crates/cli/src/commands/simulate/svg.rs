//! `simulate --svg`: pending pods and idle slices over the trace's time, one
//! line per policy, drawn with plotters' SVG backend (no fonts are loaded:
//! the SVG names a font family and the viewer draws the text).

use std::path::Path;

use plotters::prelude::*;

use super::Run;

const COLORS: [RGBColor; 3] = [
    RGBColor(200, 60, 40),
    RGBColor(40, 110, 200),
    RGBColor(30, 150, 70),
];

/// The SVG could not be drawn or written (plotters' error, as text: its
/// error type is generic over the backend).
#[derive(Debug, thiserror::Error)]
#[error("{file}: cannot draw the SVG: {reason}")]
pub struct SvgError {
    file: String,
    reason: String,
}

pub fn draw(path: &Path, runs: &[Run], title: &str) -> Result<(), SvgError> {
    let file = path.display().to_string();
    let fail = |e: &dyn std::fmt::Display| SvgError {
        file: file.clone(),
        reason: e.to_string(),
    };
    let root = SVGBackend::new(path, (960, 720)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let (top, bottom) = root.split_vertically(360);
    let minutes = |s: u64| s as f64 / 60.0;
    let end = runs
        .iter()
        .flat_map(|r| r.samples.last())
        .map(|s| minutes(s.at_seconds))
        .fold(1.0, f64::max);
    let panels: [(
        &DrawingArea<SVGBackend<'_>, _>,
        String,
        &str,
        fn(&super::Sample) -> f64,
    ); 2] = [
        (
            &top,
            format!("Pending pods: {title}"),
            "pods pending",
            |s| s.pending as f64,
        ),
        (
            &bottom,
            "Idle compute slices (MIG GPUs, no pod running)".to_string(),
            "idle slices",
            |s| f64::from(s.idle_slices),
        ),
    ];
    for (area, caption, y_desc, value) in panels {
        let top_value = runs
            .iter()
            .flat_map(|r| &r.samples)
            .map(value)
            .fold(1.0, f64::max)
            * 1.1;
        let mut chart = ChartBuilder::on(area)
            .caption(caption, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(0.0..end, 0.0..top_value)
            .map_err(|e| fail(&e))?;
        chart
            .configure_mesh()
            .x_desc("minutes")
            .y_desc(y_desc)
            .draw()
            .map_err(|e| fail(&e))?;
        for (i, run) in runs.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            // Earlier lines wider, so one that coincides with a later one
            // still shows at its edges.
            let width = [5, 3, 2][i.min(2)];
            chart
                .draw_series(LineSeries::new(
                    steps(&run.samples, value, minutes),
                    color.stroke_width(width),
                ))
                .map_err(|e| fail(&e))?
                .label(run.policy)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(width))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| fail(&e))?;
    }
    root.present().map_err(|e| fail(&e))?;
    Ok(())
}

/// The samples as a step line with a point only where the value changes
/// (a trace of hours holds thousands of steps; the picture needs far fewer).
fn steps(
    samples: &[super::Sample],
    value: fn(&super::Sample) -> f64,
    x: impl Fn(u64) -> f64,
) -> Vec<(f64, f64)> {
    let mut points: Vec<(f64, f64)> = Vec::new();
    for s in samples {
        let v = value(s);
        match points.last() {
            Some(&(_, last)) if last == v => {}
            Some(&(_, last)) => {
                points.push((x(s.at_seconds), last));
                points.push((x(s.at_seconds), v));
            }
            None => points.push((x(s.at_seconds), v)),
        }
    }
    if let (Some(s), Some(&(_, last))) = (samples.last(), points.last()) {
        points.push((x(s.at_seconds), last));
    }
    points
}
