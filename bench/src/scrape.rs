//! What a scrape of agent-proxy's admin endpoint costs: `GET /metrics` and `GET /stats` timed
//! from a thread inside the proxy's namespace (the admin listens on its 127.0.0.1), alone or
//! every [`SCRAPE_PERIOD`] while a load runs.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use agent_proxy_tests::admin::http_get;
use agent_proxy_tests::netns::run_in;
use anyhow::{Context as _, ensure};

use crate::stats::Stat;

/// How often a scraper asks, like a Prometheus with a short interval (issue 19: every 100 ms).
pub(crate) const SCRAPE_PERIOD: Duration = Duration::from_millis(100);
/// Scrapes of each path whose median is reported when timing a proxy at rest.
pub(crate) const SCRAPES_AT_REST: usize = 5;

/// A daemon's admin endpoint and the namespace it listens in.
#[derive(Clone, Debug)]
pub(crate) struct Admin {
    pub ns: PathBuf,
    pub addr: SocketAddr,
}

/// Medians of the two paths' times, in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct ScrapeTimes {
    pub metrics_ms: f64,
    pub stats_ms: f64,
}

impl Admin {
    /// `n` scrapes of `/metrics` then `/stats`, one after the other; their median times.
    pub(crate) fn median_times(&self, n: usize) -> anyhow::Result<ScrapeTimes> {
        let addr = self.addr;
        let (metrics, stats) = run_in(&self.ns, move || -> anyhow::Result<_> {
            let (mut metrics, mut stats) = (Vec::new(), Vec::new());
            for _ in 0..n {
                metrics.push(timed_get(addr, "/metrics")?);
                stats.push(timed_get(addr, "/stats")?);
            }
            Ok((metrics, stats))
        })?;
        medians(&metrics, &stats).context("no scrape")
    }

    /// Runs `load` while a thread scrapes `/metrics` and `/stats` every [`SCRAPE_PERIOD`];
    /// returns the load's result and the scrapes' median times (an error if a scrape failed).
    pub(crate) fn scraping<R: Send>(
        &self,
        load: impl FnOnce() -> R + Send,
    ) -> (R, anyhow::Result<ScrapeTimes>) {
        let stop = AtomicBool::new(false);
        let addr = self.addr;
        std::thread::scope(|s| {
            let stop = &stop;
            let ns = &self.ns;
            let scraper = s.spawn(move || {
                run_in(ns, || -> anyhow::Result<ScrapeTimes> {
                    let (mut metrics, mut stats) = (Vec::new(), Vec::new());
                    let mut next = Instant::now();
                    while !stop.load(Ordering::Relaxed) {
                        metrics.push(timed_get(addr, "/metrics")?);
                        stats.push(timed_get(addr, "/stats")?);
                        next += SCRAPE_PERIOD;
                        let now = Instant::now();
                        if next > now {
                            std::thread::sleep(next - now);
                        } else {
                            next = now;
                        }
                    }
                    medians(&metrics, &stats).context("no scrape during the load")
                })
            });
            let r = load();
            stop.store(true, Ordering::Relaxed);
            let times = scraper
                .join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("the scraper panicked")));
            (r, times)
        })
    }
}

/// One GET that must answer 200; its time in milliseconds (connect to last byte).
fn timed_get(addr: SocketAddr, path: &str) -> anyhow::Result<f64> {
    let t = Instant::now();
    let (code, body) = http_get(addr, path)?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    ensure!(code == 200, "GET {path}: {code}");
    ensure!(!body.is_empty(), "GET {path}: empty body");
    Ok(ms)
}

fn medians(metrics: &[f64], stats: &[f64]) -> Option<ScrapeTimes> {
    Some(ScrapeTimes {
        metrics_ms: Stat::of(metrics.iter().copied())?.median,
        stats_ms: Stat::of(stats.iter().copied())?.median,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_of_both_paths() {
        let t = medians(&[3.0, 1.0, 2.0], &[5.0, 4.0]).unwrap();
        assert_eq!(t.metrics_ms, 2.0);
        assert_eq!(t.stats_ms, 4.5);
        assert_eq!(medians(&[], &[1.0]), None);
    }
}
