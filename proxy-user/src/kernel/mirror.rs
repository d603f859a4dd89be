//! [`KernelMirror`]: the kernel's counters as Prometheus counters, copied at each scrape.
use std::{collections::HashMap, sync::Mutex};

use super::{Kernel, LocalAgents};
use crate::metrics::Metrics;

/// Names of the kernel's error kinds, by index (`proxy_common::KERNEL_ERROR_*`).
const KERNEL_ERROR_NAMES: [&str; proxy_common::KERNEL_ERROR_KINDS as usize] = [
    "no_conn",
    "no_peer",
    "event_lost",
    "bad_route",
    "no_limit",
    "local_insert",
    "local_no_target",
    "overlap",
    "overlap_kept",
];

/// Mirrors the kernel's monotonic counters into the Prometheus counters, by delta, at scrape.
#[derive(Default)]
pub struct KernelMirror {
    last: Mutex<MirrorState>,
}

#[derive(Default)]
struct MirrorState {
    routes: HashMap<(u32, u32), (u64, u64)>,
    local: HashMap<u32, u64>,
    errors: Vec<u64>,
    unknown_events: u64,
}

impl KernelMirror {
    /// Copies the kernel's counters into `metrics` (`names`: the frontends' names by id), and
    /// the map entries of `kernel` and of the sets adopted from a predecessor (`adopted`,
    /// whose counters their own mirrors copy with [`Self::counters`]).
    pub fn refresh(
        &self,
        kernel: &Kernel,
        metrics: &Metrics,
        names: &[String],
        adopted: &[&Kernel],
    ) {
        self.counters(kernel, metrics, names);
        let local_entries = kernel.local.as_ref().map(LocalAgents::entries);
        let mut entries = kernel.registry.entries();
        for set in adopted {
            for (sum, (_, count)) in entries.iter_mut().zip(set.registry.entries()) {
                sum.1 += count;
            }
        }
        for (map, count) in entries.iter().chain(local_entries.iter().flatten()) {
            metrics
                .kernel_map_entries
                .with_label_values(&[map])
                .set(*count as i64);
        }
    }

    /// Copies the kernel's counters into `metrics` (`names`: the frontends' names by id).
    pub fn counters(&self, kernel: &Kernel, metrics: &Metrics, names: &[String]) {
        let totals = kernel.registry.totals();
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        for (frontend, direction, counters) in totals.routes {
            let Some(name) = names.get(frontend as usize) else {
                continue;
            };
            let dir = if direction == proxy_common::DIRECTION_UPSTREAM {
                "upstream"
            } else {
                "downstream"
            };
            let seen = last.routes.entry((frontend, direction)).or_default();
            metrics
                .bytes_total
                .with_label_values(&[name.as_str(), dir, "kernel"])
                .inc_by(counters.bytes.saturating_sub(seen.0));
            metrics
                .kernel_redirects_total
                .with_label_values(&[name.as_str(), dir])
                .inc_by(counters.segments.saturating_sub(seen.1));
            *seen = (counters.bytes, counters.segments);
        }
        let unknown = kernel.events.unknown_events();
        metrics
            .kernel_errors_total
            .with_label_values(&["event_unknown"])
            .inc_by(unknown.saturating_sub(last.unknown_events));
        last.unknown_events = unknown;
        last.errors.resize(totals.errors.len(), 0);
        for (kind, (now, seen)) in totals.errors.iter().zip(last.errors.iter_mut()).enumerate() {
            let name = KERNEL_ERROR_NAMES.get(kind).copied().unwrap_or("unknown");
            metrics
                .kernel_errors_total
                .with_label_values(&[name])
                .inc_by(now.saturating_sub(*seen));
            *seen = *now;
        }
        if let Some(local) = &kernel.local {
            for (frontend, counters) in local.totals() {
                let Some(name) = names.get(frontend as usize) else {
                    continue;
                };
                let seen = last.local.entry(frontend).or_default();
                metrics
                    .local_agent_bytes_total
                    .with_label_values(&[name.as_str()])
                    .inc_by(counters.bytes.saturating_sub(*seen));
                *seen = counters.bytes;
            }
        }
    }
}
