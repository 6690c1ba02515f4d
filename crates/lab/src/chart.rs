//! The lab's chart: requests answered per deployment over time, and the
//! requests that failed, one panel per contender, as SVG (no fonts or system
//! libraries needed; any browser shows it).

use std::path::Path;

use plotters::prelude::*;

use super::report::LabReport;

const PANEL_HEIGHT: u32 = 260;
const WIDTH: u32 = 1000;

/// One color per deployment, in scenario order; failures are drawn in red.
const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(23, 190, 207),
];
const FAILED: RGBColor = RGBColor(214, 39, 40);

/// Writes the chart of `report` to `path`.
pub fn write_svg(report: &LabReport, path: &Path) -> Result<(), String> {
    let panels = report.contenders.len().max(1) as u32;
    let root = SVGBackend::new(path, (WIDTH, 50 + PANEL_HEIGHT * panels)).into_drawing_area();
    draw(report, &root).map_err(|e| format!("drawing {}: {e}", path.display()))?;
    root.present()
        .map_err(|e| format!("writing {}: {e}", path.display()))
}

type DrawResult = Result<(), Box<dyn std::error::Error>>;

fn draw(
    report: &LabReport,
    root: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
) -> DrawResult {
    root.fill(&WHITE)?;
    let (title, body) = root.split_vertically(50);
    title.titled(
        &format!(
            "{}: requests answered per deployment, per {} s",
            report.scenario, report.bucket_s
        ),
        ("sans-serif", 20),
    )?;
    let y_max = report
        .contenders
        .iter()
        .flat_map(|c| {
            c.record
                .answered
                .iter()
                .flatten()
                .chain(&c.record.failed_per_bucket)
        })
        .copied()
        .max()
        .unwrap_or(1)
        .max(1);
    let panels = body.split_evenly((report.contenders.len().max(1), 1));
    for (panel, contender) in panels.iter().zip(&report.contenders) {
        let mut chart = ChartBuilder::on(panel)
            .caption(
                format!(
                    "{}: primary {:.0}%, success {:.1}%, {} errors",
                    contender.name,
                    contender.primary_share * 100.0,
                    contender.success_rate * 100.0,
                    contender.client_errors
                ),
                ("sans-serif", 16),
            )
            .margin(8)
            .x_label_area_size(28)
            .y_label_area_size(44)
            .build_cartesian_2d(0..report.duration_s, 0..y_max + y_max / 10 + 1)?;
        chart
            .configure_mesh()
            .x_desc("simulated time (s)")
            .y_desc("requests")
            .light_line_style(WHITE.mix(0.0))
            .draw()?;
        let at = |bucket: usize| bucket as u64 * report.bucket_s;
        // Failures first, so the deployments' lines draw over them at zero.
        chart
            .draw_series(LineSeries::new(
                contender
                    .record
                    .failed_per_bucket
                    .iter()
                    .enumerate()
                    .map(|(b, &n)| (at(b), n)),
                FAILED.stroke_width(2),
            ))?
            .label("failed")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 18, y)], FAILED.stroke_width(2)));
        for (d, series) in contender.record.answered.iter().enumerate() {
            let color = PALETTE[d % PALETTE.len()];
            chart
                .draw_series(LineSeries::new(
                    series.iter().enumerate().map(|(b, &n)| (at(b), n)),
                    color.stroke_width(2),
                ))?
                .label(report.deployments[d].as_str())
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 18, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .draw()?;
    }
    Ok(())
}
