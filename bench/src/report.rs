//! Tables of a run: the same cells rendered for the terminal and as Markdown.
use crate::results::{Results, ScenarioResult};
use crate::rows::Row;
use crate::stats::Stat;
use crate::targets::Status;

/// A table: header and rows of cells.
pub(crate) struct Table {
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

/// A number with a precision that suits its size.
pub(crate) fn num(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// "median (min-max)", or the median alone for a single run.
pub(crate) fn cell(stat: Option<Stat>) -> String {
    match stat {
        None => "-".to_owned(),
        Some(s) if s.n == 1 || s.min == s.max => num(s.median),
        Some(s) => format!("{} ({}-{})", num(s.median), num(s.min), num(s.max)),
    }
}

/// One scenario: a row per proxy, a column per figure (median and range), then the headline
/// figure as a ratio to HAProxy and to direct.
pub(crate) fn scenario_table(sc: &ScenarioResult) -> Table {
    let s = sc.scenario;
    let unit = s.unit();
    let headline = s.headline();
    let mut header = vec!["row".to_owned(), "runs".to_owned()];
    header.extend(s.metrics().iter().map(|m| m.header(unit)));
    let h = headline.header(unit);
    header.push(format!("{h} x HAProxy"));
    header.push(format!("{h} x direct"));
    let rows = sc
        .rows
        .iter()
        .filter(|r| !r.samples.is_empty())
        .map(|r| {
            let mut cells = vec![s.row_title(r.row).to_owned(), r.samples.len().to_string()];
            cells.extend(s.metrics().iter().map(|m| cell(r.stat(*m))));
            for base in [Row::Haproxy, Row::Direct] {
                cells.push(
                    sc.ratio(r.row, base, headline)
                        .map_or("-".to_owned(), |x| format!("{x:.2}x")),
                );
            }
            cells
        })
        .collect();
    Table { header, rows }
}

pub(crate) fn targets_table(results: &Results) -> Table {
    Table {
        header: ["workload", "target", "figures (medians)", "status"]
            .map(str::to_owned)
            .to_vec(),
        rows: results
            .targets
            .iter()
            .map(|v| {
                let status = match v.status {
                    Status::NotMet => "**NOT MET**".to_owned(),
                    other => other.label().to_owned(),
                };
                vec![
                    v.workload.clone(),
                    v.target.clone(),
                    v.figures.clone(),
                    status,
                ]
            })
            .collect(),
    }
}

impl Table {
    pub(crate) fn markdown(&self) -> String {
        let line = |cells: &[String]| format!("| {} |\n", cells.join(" | "));
        let mut out = line(&self.header);
        out += &line(&vec!["---".to_owned(); self.header.len()]);
        for r in &self.rows {
            out += &line(r);
        }
        out
    }

    /// Aligned columns for the terminal.
    pub(crate) fn text(&self) -> String {
        let mut width: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (w, c) in width.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |cells: &[String]| {
            let padded: Vec<String> = cells
                .iter()
                .zip(&width)
                .map(|(c, w)| format!("{c}{}", " ".repeat(w - c.chars().count())))
                .collect();
            padded.join("  ").trim_end().to_owned() + "\n"
        };
        let mut out = line(&self.header);
        out += &line(&width.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>());
        for r in &self.rows {
            out += &line(r);
        }
        out
    }
}

/// The whole run for the terminal.
pub(crate) fn terminal(results: &Results) -> String {
    let mut out = String::new();
    for sc in &results.scenarios {
        out += &format!("\n== {} ({})\n", sc.scenario.title(), sc.scenario.name());
        out += &scenario_table(sc).text();
    }
    out += "\n== Targets for the kernel path (medians, same run)\n";
    out += &targets_table(results)
        .text()
        .replace("**NOT MET**", "NOT MET");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_cells() {
        assert_eq!(num(12345.6), "12346");
        assert_eq!(num(42.42), "42.4");
        assert_eq!(num(2.5), "2.50");
        assert_eq!(num(0.0), "0");
        assert_eq!(num(3.0), "3");
        assert_eq!(num(0.1234), "0.123");
        assert_eq!(cell(None), "-");
        assert_eq!(cell(Stat::of([3.5])), "3.50");
        assert_eq!(cell(Stat::of([1.5, 3.5, 2.5])), "2.50 (1.50-3.50)");
    }

    #[test]
    fn text_and_markdown_tables() {
        let t = Table {
            header: vec!["a".into(), "long header".into()],
            rows: vec![vec!["xyz".into(), "1".into()]],
        };
        assert_eq!(
            t.markdown(),
            "| a | long header |\n| --- | --- |\n| xyz | 1 |\n"
        );
        assert_eq!(t.text(), "a    long header\n---  -----------\nxyz  1\n");
    }
}
