//! Upstream pools: the servers of a backend, the choice among them, and dialing with retries.
//!
//! Server hostnames are resolved once, when the pool is built; every address they resolve to
//! becomes a server. (Re-resolution that follows DNS TTLs is its own piece of work.) A failed
//! connect is retried on the next server, up to `retries` more attempts, each bounded by
//! `connect_timeout`.
use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use rand::Rng as _;
use tokio::net::TcpStream;

use crate::{
    config::{Backend, Balance, Host},
    metrics::Metrics,
};

/// One address of one configured server.
#[derive(Debug)]
pub struct Server {
    /// The server as configured (`host:port`): the `server` label.
    pub name: String,
    /// The host part as configured (a hostname, or an IP literal): the default TLS SNI.
    pub host: String,
    pub addr: SocketAddr,
    /// Connections currently carried to it (for leastconn).
    active: AtomicUsize,
}

/// Counts a connection against its server while alive.
#[derive(Debug)]
pub struct Lease(Arc<Server>);

impl Lease {
    pub fn server(&self) -> &Server {
        &self.0
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Debug)]
pub struct Pool {
    pub name: String,
    servers: Vec<Arc<Server>>,
    balance: Balance,
    connect_timeout: Duration,
    retries: u32,
    next: AtomicUsize,
}

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("backend {backend:?}: server {server}: cannot resolve")]
    Resolve {
        backend: String,
        server: String,
        #[source]
        source: std::io::Error,
    },
    #[error("backend {backend:?}: server {server} resolved to no address")]
    NoAddress { backend: String, server: String },
}

/// Every attempt failed; `last` says how the last one did.
#[derive(Debug, thiserror::Error)]
#[error(
    "no server of backend {backend:?} accepted the connection after {attempts} attempts (last: {last})"
)]
pub struct ConnectError {
    pub backend: String,
    pub attempts: u32,
    pub last: String,
}

impl Pool {
    /// Resolves every server of the backend.
    pub async fn resolve(backend: &Backend) -> Result<Self, PoolError> {
        let mut servers = Vec::new();
        for server in &backend.servers {
            let name = server.to_string();
            let addrs: Vec<SocketAddr> = match &server.host {
                Host::Ip(ip) => vec![SocketAddr::new(*ip, server.port)],
                Host::Name(host) => tokio::net::lookup_host((host.as_str(), server.port))
                    .await
                    .map_err(|source| PoolError::Resolve {
                        backend: backend.name.clone(),
                        server: name.clone(),
                        source,
                    })?
                    .collect(),
            };
            if addrs.is_empty() {
                return Err(PoolError::NoAddress {
                    backend: backend.name.clone(),
                    server: name,
                });
            }
            servers.extend(addrs.into_iter().map(|addr| {
                Arc::new(Server {
                    name: name.clone(),
                    host: server.host.to_string(),
                    addr,
                    active: AtomicUsize::new(0),
                })
            }));
        }
        Ok(Self {
            name: backend.name.clone(),
            servers,
            balance: backend.balance,
            connect_timeout: backend.connect_timeout,
            retries: backend.retries,
            next: AtomicUsize::new(0),
        })
    }

    pub fn servers(&self) -> &[Arc<Server>] {
        &self.servers
    }

    /// Index of the first server to try.
    fn first(&self) -> usize {
        let n = self.servers.len();
        match self.balance {
            Balance::RoundRobin => self.next.fetch_add(1, Ordering::Relaxed) % n,
            Balance::Random => rand::rng().random_range(0..n),
            Balance::LeastConn => {
                // Ties go round robin so that equal servers share the load.
                let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
                (0..n)
                    .map(|k| (start + k) % n)
                    .min_by_key(|&i| self.servers[i].active.load(Ordering::Relaxed))
                    .unwrap_or(start)
            }
        }
    }

    /// Dials a server, moving to the next one on failure.
    pub async fn connect(&self, metrics: &Metrics) -> Result<(TcpStream, Lease), ConnectError> {
        self.connect_with(metrics, |stream, _server| std::future::ready(Ok(stream)))
            .await
    }

    /// Dials a server and runs `establish` on the new TCP connection (a TLS handshake, say)
    /// before it counts as connected. A failed `establish` counts as a failed connect to that
    /// server - its message is the reason - and the next server is tried, within `retries`.
    pub async fn connect_with<T, F, Fut>(
        &self,
        metrics: &Metrics,
        establish: F,
    ) -> Result<(T, Lease), ConnectError>
    where
        F: Fn(TcpStream, Arc<Server>) -> Fut,
        Fut: Future<Output = Result<T, String>>,
    {
        let n = self.servers.len();
        let first = self.first();
        let attempts = self.retries.saturating_add(1);
        let mut last = String::from("no server");
        for attempt in 0..attempts {
            let server = &self.servers[(first + attempt as usize) % n];
            let started = Instant::now();
            let result =
                tokio::time::timeout(self.connect_timeout, TcpStream::connect(server.addr)).await;
            let labels = [
                self.name.as_str(),
                server.name.as_str(),
                &server.addr.to_string(),
            ];
            let result = match result {
                Ok(Ok(stream)) => establish(stream, Arc::clone(server)).await.map_err(Some),
                Ok(Err(e)) => Err(Some(format!("{}: {e}", server.addr))),
                Err(_) => Err(None),
            };
            match result {
                Ok(stream) => {
                    metrics
                        .backend_connect_seconds
                        .with_label_values(&[self.name.as_str()])
                        .observe(started.elapsed().as_secs_f64());
                    metrics.server_up.with_label_values(&labels).set(1);
                    server.active.fetch_add(1, Ordering::Relaxed);
                    return Ok((stream, Lease(Arc::clone(server))));
                }
                Err(Some(reason)) => last = reason,
                Err(None) => {
                    last = format!(
                        "{}: connect timeout after {:?}",
                        server.addr, self.connect_timeout
                    )
                }
            }
            // Passive health: the gauge reflects the last connect to this address.
            metrics.server_up.with_label_values(&labels).set(0);
            metrics
                .backend_connect_errors_total
                .with_label_values(&[self.name.as_str(), server.name.as_str()])
                .inc();
        }
        Err(ConnectError {
            backend: self.name.clone(),
            attempts,
            last,
        })
    }
}
