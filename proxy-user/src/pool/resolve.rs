//! A pool's addresses following DNS: every hostname group resolved at start and again when its
//! answer is due, failures retried with a back-off, the addresses applied to the pool.
use std::{
    net::{IpAddr, SocketAddr},
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::{Pool, Server};
use crate::{config::Host, dns::Dns, health, tls::ClientTls};

impl Pool {
    /// Keeps the hostnames resolved and the addresses checked, in background tasks, until
    /// `stop`: each name is resolved at once, then again after its TTL (or its retry back-off);
    /// the active checks start once every name's first resolution has answered or failed.
    /// Returns at once: until a name resolves, connections wait for it (see the module doc of
    /// [`crate::pool`]). `tls`: the backend's TLS, which active checks then complete a
    /// handshake with.
    pub(crate) fn start(
        self: &Arc<Self>,
        dns: Arc<Dns>,
        tls: Option<Arc<ClientTls>>,
        stop: CancellationToken,
    ) {
        let mut firsts = Vec::new();
        for index in 0..self.groups.len() {
            let Host::Name(host) = &self.groups[index].spec.addr.host else {
                continue;
            };
            let (pool, dns, host, stop) = (
                Arc::clone(self),
                Arc::clone(&dns),
                host.clone(),
                stop.clone(),
            );
            let (first_done, first) = oneshot::channel();
            firsts.push(first);
            tokio::spawn(async move {
                pool.keep_resolved(index, &host, &dns, first_done, stop)
                    .await;
            });
        }
        let Some(check) = self.health_check.clone() else {
            return;
        };
        let pool = Arc::clone(self);
        tokio::spawn(async move {
            // The first round of checks probes the addresses of the first answers.
            for first in firsts {
                // An error is a resolver task that stopped before answering: stopping anyway.
                let _ = first.await;
            }
            health::run(pool, check, tls, stop).await;
        });
    }

    /// Resolves one hostname group now and whenever its answer is due again, until `stop`;
    /// `first_done` is sent once the first resolution has answered or failed. After a failed
    /// or empty resolution the next comes after [`crate::config::DnsTtl::retry_after`].
    async fn keep_resolved(
        &self,
        index: usize,
        host: &str,
        dns: &Dns,
        first_done: oneshot::Sender<()>,
        stop: CancellationToken,
    ) {
        let mut first_done = Some(first_done);
        let mut failures = 0;
        loop {
            let resolved = tokio::select! {
                resolved = self.resolve_group(index, host, dns) => resolved,
                () = stop.cancelled() => return,
            };
            if let Some(done) = first_done.take() {
                let _ = done.send(());
            }
            let wait = match resolved {
                Some(ttl) => {
                    failures = 0;
                    ttl
                }
                None => {
                    failures += 1;
                    self.dns_ttl.retry_after(failures)
                }
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = stop.cancelled() => return,
            }
        }
    }

    /// Resolves one hostname group and applies the answer; returns its TTL (clamped to the
    /// backend's bounds), or `None` when it failed or was empty (the addresses stay).
    pub(super) async fn resolve_group(
        &self,
        index: usize,
        host: &str,
        dns: &Dns,
    ) -> Option<Duration> {
        let group = &self.groups[index];
        match dns.lookup(host).await {
            Ok(answer) => {
                if group.stale.swap(false, Ordering::Relaxed) {
                    tracing::info!(backend = %self.name, server = %group.name, "DNS answers again");
                }
                self.metrics.dns_stale.with_label_values(&[host]).set(0);
                self.set_addresses(index, &answer.ips);
                Some(self.dns_ttl.clamp(answer.ttl))
            }
            Err(e) => {
                let known = group
                    .servers
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .len();
                if !group.stale.swap(true, Ordering::Relaxed) {
                    if known == 0 {
                        tracing::warn!(backend = %self.name, server = %group.name, error = %e,
                            connect_timeout = ?self.connect_timeout,
                            "DNS resolution failed; no server address known yet: clients wait \
                             up to connect_timeout for one, then are refused");
                    } else {
                        tracing::warn!(backend = %self.name, server = %group.name, error = %e,
                            addresses = known, "DNS resolution failed; keeping the last good answer");
                    }
                }
                self.metrics.dns_stale.with_label_values(&[host]).set(1);
                None
            }
        }
    }

    /// Replaces the addresses of a group, keeping the state of those that remain.
    pub(super) fn set_addresses(&self, index: usize, ips: &[IpAddr]) {
        let group = &self.groups[index];
        let mut servers = group.servers.lock().unwrap_or_else(|e| e.into_inner());
        let port = group.spec.addr.port;
        let unchanged = servers.len() == ips.len()
            && ips
                .iter()
                .all(|ip| servers.iter().any(|s| s.addr == SocketAddr::new(*ip, port)));
        if unchanged {
            return;
        }
        let next: Vec<Arc<Server>> = ips
            .iter()
            .map(|&ip| {
                let addr = SocketAddr::new(ip, port);
                servers
                    .iter()
                    .find(|s| s.addr == addr)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(Server::new(&group.spec, &group.name, ip)))
            })
            .collect();
        for gone in servers
            .iter()
            .filter(|s| !next.iter().any(|n| n.addr == s.addr))
        {
            let _ = self.metrics.server_up.remove_label_values(&[
                self.name.as_str(),
                gone.name.as_str(),
                &gone.addr.to_string(),
            ]);
        }
        let addresses: Vec<String> = next.iter().map(|s| s.addr.to_string()).collect();
        tracing::info!(backend = %self.name, server = %group.name,
            addresses = %addresses.join(","), "server addresses");
        *servers = next;
        drop(servers);
        self.rebuild_view();
        self.refresh_gauges();
    }
}
