//! A parser for the Prometheus text format the daemon serves on /metrics, and look-ups by
//! name and labels.
use std::collections::BTreeMap;

use anyhow::{Context as _, bail};

/// One sample line: `name{label="value",...} value`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A whole scrape.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    pub samples: Vec<Sample>,
}

impl Metrics {
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let samples = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| parse_line(l).with_context(|| format!("bad metrics line {l:?}")))
            .collect::<anyhow::Result<_>>()?;
        Ok(Self { samples })
    }

    /// Samples named `name` whose labels include all of `labels`.
    pub fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).is_some_and(|x| x == v))
        })
    }

    /// The value of the one sample matching `name` and `labels`; `None` if there is none.
    /// Several matches are an error in the caller's selection.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let found: Vec<&Sample> = self.matching(name, labels).collect();
        assert!(
            found.len() <= 1,
            "{name}{labels:?} matches {} samples: {found:?}",
            found.len()
        );
        found.first().map(|s| s.value)
    }

    /// Sum of the samples matching (0 when there are none: an absent counter has counted
    /// nothing).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|s| s.value).sum()
    }

    /// `sum` as an integer, for byte and connection counts (exact below 2^53).
    pub fn count(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.sum(name, labels) as u64
    }

    /// True when any sample has this name.
    pub fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|s| s.name == name)
    }
}

fn parse_line(line: &str) -> anyhow::Result<Sample> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .context("no value")?;
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(mut s) = rest.strip_prefix('{') {
        loop {
            s = s.trim_start_matches([',', ' ']);
            if let Some(after) = s.strip_prefix('}') {
                rest = after;
                break;
            }
            let (key, after) = s.split_once('=').context("label without =")?;
            let after = after.strip_prefix('"').context("label value not quoted")?;
            let mut value = String::new();
            let mut chars = after.char_indices();
            let consumed = loop {
                match chars.next() {
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, c)) => value.push(c),
                        None => bail!("dangling escape"),
                    },
                    Some((i, '"')) => break i + 1,
                    Some((_, c)) => value.push(c),
                    None => bail!("unterminated label value"),
                }
            };
            labels.insert(key.trim().to_owned(), value);
            s = &after[consumed..];
        }
    }
    let value_text = rest
        .split_whitespace()
        .next()
        .context("no value after the labels")?;
    let value = match value_text {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().with_context(|| format!("bad value {v:?}"))?,
    };
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_labels_values() {
        let text = r#"
# HELP agent_proxy_bytes_total Bytes.
# TYPE agent_proxy_bytes_total counter
agent_proxy_bytes_total{direction="upstream",frontend="fe",path="kernel"} 1073741824
agent_proxy_bytes_total{direction="downstream",frontend="fe",path="kernel"} 5
agent_proxy_kernel_map_entries{map="SPLICE_SOCKS"} 0
agent_proxy_up 1
agent_proxy_odd{a="x\"y\\z,}",b="2"} +Inf
agent_proxy_seconds_bucket{le="0.5"} 3 1700000000
"#;
        let m = Metrics::parse(text).unwrap();
        assert_eq!(
            m.get(
                "agent_proxy_bytes_total",
                &[("direction", "upstream"), ("path", "kernel")]
            ),
            Some(1_073_741_824.0)
        );
        assert_eq!(
            m.count("agent_proxy_bytes_total", &[("frontend", "fe")]),
            1_073_741_829
        );
        assert_eq!(m.get("agent_proxy_up", &[]), Some(1.0));
        assert_eq!(m.get("agent_proxy_missing", &[]), None);
        let odd = m.matching("agent_proxy_odd", &[]).next().unwrap();
        assert_eq!(odd.labels["a"], "x\"y\\z,}");
        assert_eq!(odd.labels["b"], "2");
        assert!(odd.value.is_infinite());
        assert_eq!(
            m.get("agent_proxy_seconds_bucket", &[("le", "0.5")]),
            Some(3.0)
        );
        assert_eq!(
            m.get("agent_proxy_kernel_map_entries", &[("map", "SPLICE_SOCKS")]),
            Some(0.0)
        );
    }
}
