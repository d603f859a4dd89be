//! Parsers of the peers' reports: `hey` (DataKit workload), `sockperf ping-pong` (latency) and
//! `iperf3 -J` (bulk). Each keeps what the tables need and fails on a report it does not
//! understand rather than reporting zeros.
use anyhow::{Context as _, bail};

/// Latency figures in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Latency {
    pub avg: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    /// Not every tool gives it (hey stops at p99).
    pub p999: Option<f64>,
}

/// What `hey` printed.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct HeyReport {
    pub requests_per_second: f64,
    pub latency: Latency,
    /// Responses with status 200.
    pub ok: u64,
    /// Responses with another status plus transport errors.
    pub errors: u64,
}

/// Parses hey's default text summary. hey prints seconds with 4 decimals, so its latencies
/// are quantised to 100 us.
pub(crate) fn hey(text: &str) -> anyhow::Result<HeyReport> {
    let secs = |value: &str| -> anyhow::Result<f64> {
        Ok(value
            .split_whitespace()
            .next()
            .context("empty value")?
            .parse::<f64>()
            .with_context(|| format!("bad number {value:?}"))?
            * 1e6)
    };
    let mut rps = None;
    let mut avg = None;
    let mut pct = [None; 3];
    let (mut ok, mut errors) = (0, 0);
    #[derive(PartialEq)]
    enum Section {
        Other,
        Status,
        Errors,
    }
    let mut section = Section::Other;
    for line in text.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            rps = Some(v.trim().parse::<f64>().context("bad Requests/sec")?);
        } else if let Some(v) = line.strip_prefix("Average:") {
            avg = Some(secs(v)?);
        } else if let Some((p, v)) = line.split_once("% in ") {
            let slot = match p {
                "50" => 0,
                "90" => 1,
                "99" => 2,
                _ => continue,
            };
            pct[slot] = Some(secs(v)?);
        } else if line.starts_with("Status code distribution:") {
            section = Section::Status;
        } else if line.starts_with("Error distribution:") {
            section = Section::Errors;
        } else if let Some(rest) = line.strip_prefix('[') {
            // "[200]	1600 responses" or "[3]	Post ...: connection reset by peer"
            let (key, tail) = rest.split_once(']').context("bad [..] line")?;
            let key: u64 = key.trim().parse().with_context(|| format!("bad [{key}]"))?;
            match section {
                Section::Status => {
                    let n: u64 = tail
                        .split_whitespace()
                        .next()
                        .context("no response count")?
                        .parse()
                        .context("bad response count")?;
                    if key == 200 {
                        ok += n;
                    } else {
                        errors += n;
                    }
                }
                Section::Errors => errors += key,
                Section::Other => {}
            }
        }
    }
    let (Some(rps), Some(avg), [Some(p50), Some(p90), Some(p99)]) = (rps, avg, pct) else {
        bail!("hey output lacks Requests/sec, Average or the 50/90/99% lines:\n{text}");
    };
    Ok(HeyReport {
        requests_per_second: rps,
        latency: Latency {
            avg,
            p50,
            p90,
            p99,
            p999: None,
        },
        ok,
        errors,
    })
}

/// What `sockperf ping-pong` printed: half round trip latencies and the message rate.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct SockperfReport {
    pub latency: Latency,
    /// Messages received over the whole run, sockperf's warm-up included (the bytes that the
    /// CPU measurement, which spans the whole client process, saw moving).
    pub total_messages: u64,
    /// Round trips measured (after sockperf's own warm-up).
    pub observations: u64,
    /// Round trips per second over the measured duration.
    pub round_trips_per_second: f64,
}

pub(crate) fn sockperf(text: &str) -> anyhow::Result<SockperfReport> {
    let text = strip_ansi(text);
    let mut avg = None;
    let mut pct = [None; 4];
    let mut valid = None;
    let mut total = None;
    for line in text.lines() {
        let line = line.trim().trim_start_matches("sockperf:").trim();
        if let Some(v) = line.strip_prefix("====> avg-latency=") {
            avg = Some(number_prefix(v)?);
        } else if let Some(v) = line.strip_prefix("---> percentile ") {
            let (p, value) = v.split_once('=').context("bad percentile line")?;
            let slot = match p.trim() {
                "50.000" => 0,
                "90.000" => 1,
                "99.000" => 2,
                "99.900" => 3,
                _ => continue,
            };
            pct[slot] = Some(number_prefix(value.trim())?);
        } else if let Some(v) = line.strip_prefix("[Total Run] ") {
            let at = v
                .find("ReceivedMessages=")
                .context("no ReceivedMessages in [Total Run]")?;
            total = Some(number_prefix(&v[at + "ReceivedMessages=".len()..])? as u64);
        } else if let Some(v) = line.strip_prefix("[Valid Duration] ") {
            // "RunTime=0.545 sec; SentMessages=60020; ReceivedMessages=60020"
            let field = |key: &str| -> anyhow::Result<f64> {
                let at = v.find(key).with_context(|| format!("no {key} in {v:?}"))?;
                number_prefix(&v[at + key.len()..])
            };
            valid = Some((field("RunTime=")?, field("ReceivedMessages=")?));
        }
    }
    let (
        Some(avg),
        [Some(p50), Some(p90), Some(p99), Some(p999)],
        Some((secs, received)),
        Some(total_messages),
    ) = (avg, pct, valid, total)
    else {
        bail!(
            "sockperf output lacks avg-latency, the 50/90/99/99.9 percentiles, the total run \
             or the valid duration:\n{text}"
        );
    };
    if secs <= 0.0 || received <= 0.0 {
        bail!("sockperf measured nothing ({received} messages in {secs} s)");
    }
    Ok(SockperfReport {
        latency: Latency {
            avg,
            p50,
            p90,
            p99,
            p999: Some(p999),
        },
        total_messages,
        observations: received as u64,
        round_trips_per_second: received / secs,
    })
}

/// What `iperf3 -c ... -J` reported, as the receiver saw it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct IperfReport {
    pub bytes: u64,
    pub seconds: f64,
}

impl IperfReport {
    /// 10^9 bytes per second.
    pub(crate) fn gigabytes_per_second(&self) -> f64 {
        self.bytes as f64 / self.seconds / 1e9
    }
}

pub(crate) fn iperf3(json: &str) -> anyhow::Result<IperfReport> {
    let v: serde_json::Value =
        serde_json::from_str(json).context("iperf3 -J output is not JSON")?;
    if let Some(err) = v.get("error").and_then(|e| e.as_str()) {
        bail!("iperf3: {err}");
    }
    let sum = v
        .pointer("/end/sum_received")
        .context("iperf3 report has no end.sum_received")?;
    let bytes = sum
        .get("bytes")
        .and_then(serde_json::Value::as_u64)
        .context("end.sum_received.bytes")?;
    let seconds = sum
        .get("seconds")
        .and_then(serde_json::Value::as_f64)
        .context("end.sum_received.seconds")?;
    if seconds <= 0.0 {
        bail!("iperf3 reported a run of {seconds} s");
    }
    Ok(IperfReport { bytes, seconds })
}

/// The leading decimal number of `s` ("4.524 (std-dev=...)" -> 4.524).
fn number_prefix(s: &str) -> anyhow::Result<f64> {
    let s = s.trim_start();
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-'))
        .unwrap_or(s.len());
    s[..end]
        .parse()
        .with_context(|| format!("no number at the start of {s:?}"))
}

/// Removes ANSI colour sequences (sockperf colours some lines even into a pipe).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ ... final byte in @..~
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
#[path = "parse_tests.rs"]
mod tests;
