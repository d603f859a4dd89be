//! The chart of docs/benchmarks.md: each row's median relative to HAProxy 2.6 tcp for the
//! headline figures, as an SVG (plotters, SVG backend only).
use plotters::prelude::*;

use crate::results::{Metric, Results};
use crate::rows::Row;
use crate::scenarios::Scenario;

/// The bars: label, scenario, figure.
const ITEMS: &[(&str, Scenario, Metric)] = &[
    // Agents on other hosts (the veth family): the headline.
    (
        "remote DataKit req/s",
        Scenario::DatakitVeth,
        Metric::Throughput,
    ),
    ("remote DataKit p99", Scenario::DatakitVeth, Metric::LatP99),
    ("remote ping 64 B avg", Scenario::Ping64Veth, Metric::LatAvg),
    ("remote conn/s", Scenario::ConnRateVeth, Metric::Throughput),
    ("remote bulk 1", Scenario::Bulk1Veth, Metric::Throughput),
    (
        "remote CPU/GB DataKit",
        Scenario::DatakitVeth,
        Metric::CpuPerGb,
    ),
    ("DataKit req/s", Scenario::Datakit, Metric::Throughput),
    ("DataKit p99", Scenario::Datakit, Metric::LatP99),
    ("10k agents p99", Scenario::Agents10k, Metric::LatP99),
    ("ping 64 B avg", Scenario::Ping64, Metric::LatAvg),
    ("ping 64 B p99", Scenario::Ping64, Metric::LatP99),
    ("ping 16 KiB avg", Scenario::Ping16k, Metric::LatAvg),
    ("bulk 1 stream", Scenario::Bulk1, Metric::Throughput),
    ("bulk 8 streams", Scenario::Bulk8, Metric::Throughput),
    ("CPU/GB DataKit", Scenario::Datakit, Metric::CpuPerGb),
    ("CPU/GB bulk 1", Scenario::Bulk1, Metric::CpuPerGb),
    ("conn/s", Scenario::ConnRate, Metric::Throughput),
    ("CPU/conn", Scenario::ConnRate, Metric::CpuPerConn),
    // HAProxy with `ssl` there; agent-proxy's rows both use its userspace relay.
    (
        "TLS orig. req/s",
        Scenario::DatakitTlsOrigination,
        Metric::Throughput,
    ),
    (
        "TLS front req/s",
        Scenario::DatakitTlsFrontend,
        Metric::Throughput,
    ),
];

/// One per row of [`Row::ALL`], in that order.
const COLORS: [RGBColor; Row::ALL.len()] = [
    RGBColor(120, 120, 120),
    RGBColor(31, 119, 180),
    RGBColor(140, 190, 230),
    RGBColor(214, 39, 40),
    RGBColor(240, 120, 170),
    RGBColor(255, 152, 80),
    RGBColor(200, 170, 60),
    RGBColor(150, 100, 190),
    RGBColor(23, 190, 207),
    RGBColor(44, 160, 44),
    RGBColor(150, 220, 130),
];

/// Relative-to-HAProxy values (higher is better) per item present in `results`.
pub(crate) fn bars(results: &Results) -> Vec<(&'static str, Vec<(Row, f64)>)> {
    ITEMS
        .iter()
        .filter_map(|&(label, scenario, metric)| {
            let sc = results.scenario(scenario)?;
            let values: Vec<(Row, f64)> = Row::ALL
                .iter()
                .filter_map(|&row| {
                    let r = sc.ratio(row, Row::Haproxy, metric)?;
                    let r = if metric.higher_is_better() {
                        r
                    } else {
                        1.0 / r
                    };
                    r.is_finite().then_some((row, r))
                })
                .collect();
            (!values.is_empty()).then_some((label, values))
        })
        .collect()
}

/// The SVG text, or `None` when no item was measured against HAProxy.
pub(crate) fn svg(results: &Results) -> anyhow::Result<Option<String>> {
    let items = bars(results);
    if items.is_empty() {
        return Ok(None);
    }
    let n = items.len() as f64;
    let top = items
        .iter()
        .flat_map(|(_, v)| v.iter().map(|(_, x)| *x))
        .fold(1.0_f64, f64::max)
        * 1.15;
    let mut text = String::new();
    {
        let root = SVGBackend::with_string(&mut text, (1300, 520)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_error)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "Relative to HAProxy 2.6 tcp (= 1.0), higher is better",
                ("sans-serif", 20),
            )
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(0.0..n, 0.0..top)
            .map_err(draw_error)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_desc("x HAProxy")
            .draw()
            .map_err(draw_error)?;
        let width = 0.8 / Row::ALL.len() as f64;
        for (k, &row) in Row::ALL.iter().enumerate() {
            let color = COLORS[k];
            let rects = items.iter().enumerate().filter_map(|(i, (_, values))| {
                let v = values.iter().find(|(r, _)| *r == row)?.1;
                let x0 = i as f64 + 0.1 + k as f64 * width;
                Some(Rectangle::new(
                    [(x0, 0.0), (x0 + width * 0.9, v)],
                    color.filled(),
                ))
            });
            chart
                .draw_series(rects)
                .map_err(draw_error)?
                .label(row.title())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled())
                });
        }
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(0.0, 1.0), (n, 1.0)],
                BLACK,
            )))
            .map_err(draw_error)?;
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(draw_error)?;
        for (i, (label, _)) in items.iter().enumerate() {
            let (x, y) = chart.backend_coord(&(i as f64 + 0.5, 0.0));
            let style = ("sans-serif", 14).into_text_style(&root).pos(
                plotters::style::text_anchor::Pos::new(
                    plotters::style::text_anchor::HPos::Center,
                    plotters::style::text_anchor::VPos::Top,
                ),
            );
            root.draw(&Text::new(*label, (x, y + 8), style))
                .map_err(draw_error)?;
        }
        root.present().map_err(draw_error)?;
    }
    Ok(Some(text))
}

fn draw_error<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("drawing the chart: {e:?}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::{RowResult, Sample, ScenarioResult};

    fn results() -> Results {
        let row = |row, throughput, machine_cpu_seconds| RowResult {
            row,
            samples: vec![Sample {
                throughput,
                bytes: 1_000_000_000,
                machine_cpu_seconds,
                ..Sample::default()
            }],
        };
        Results::of(vec![ScenarioResult {
            scenario: Scenario::Bulk1,
            rows: vec![row(Row::Haproxy, 2.0, 1.0), row(Row::Kernel, 3.0, 0.5)],
        }])
    }

    #[test]
    fn bars_are_relative_to_haproxy_and_inverted_where_lower_is_better() {
        let bars = bars(&results());
        assert_eq!(bars.len(), 2, "{bars:?}");
        assert_eq!(bars[0].0, "bulk 1 stream");
        assert_eq!(bars[0].1, vec![(Row::Haproxy, 1.0), (Row::Kernel, 1.5)]);
        // CPU per GB: 0.5 against 1.0 is twice as good.
        assert_eq!(bars[1].0, "CPU/GB bulk 1");
        assert_eq!(bars[1].1, vec![(Row::Haproxy, 1.0), (Row::Kernel, 2.0)]);
    }

    #[test]
    fn svg_has_the_labels_and_legend() {
        let svg = svg(&results()).unwrap().unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..100]);
        for text in [
            "bulk 1 stream",
            "CPU/GB bulk 1",
            "agent-proxy kernel",
            "HAProxy 2.6 tcp",
        ] {
            assert!(svg.contains(text), "{text} missing from the chart");
        }
        let mut empty = results();
        empty.scenarios.clear();
        assert!(chart_is_none(&empty));
    }

    fn chart_is_none(r: &Results) -> bool {
        svg(r).unwrap().is_none()
    }
}
