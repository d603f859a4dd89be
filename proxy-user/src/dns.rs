//! DNS for upstream pools and destinations, with hickory-resolver.
//!
//! [`Dns::lookup`] asks the nameservers (`global.nameservers`, else `/etc/resolv.conf`) for every
//! A and AAAA record of a name and returns them with the answer's TTL; pools re-resolve their
//! hostnames when that TTL (clamped per backend) has passed. [`Dns::resolve`] is the cache shared
//! by the modes that resolve destinations per connection (CONNECT, transparent): answers live
//! for their TTL clamped to the global bounds, and when a refresh fails the last good answer is
//! served and says so.
//!
//! hickory keeps its own cache; its positive TTL is capped at the smallest `max_ttl` of the
//! config so that a re-resolution at `max_ttl` really asks the nameservers, and failures are
//! cached for at most the smallest `min_ttl`, so a recovered nameserver is noticed.
use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use hickory_resolver::{
    TokioResolver,
    config::{ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolverConfig, ResolverOpts},
    net::{NetError, runtime::TokioRuntimeProvider},
};

use crate::{config::DnsTtl, metrics::Metrics};

/// Entries in the destination cache; past it, expired entries are dropped, then all.
const CACHE_LIMIT: usize = 10_000;

/// The answer to one lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Every A and AAAA address, in the order the nameserver gave them; never empty.
    pub ips: Vec<IpAddr>,
    /// The smallest TTL of the records, as the resolver reports it (not clamped).
    pub ttl: Duration,
}

/// Why a lookup gave no address.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LookupError {
    /// The name exists but has no A/AAAA record, or does not exist (NXDOMAIN).
    #[error("no A or AAAA record")]
    Empty,
    /// Timeout, refused, SERVFAIL, no nameserver... (hickory's message says which).
    #[error(transparent)]
    Failed(NetError),
}

impl LookupError {
    /// The `result` label of `agent_proxy_dns_resolutions_total`.
    pub fn label(&self) -> &'static str {
        match self {
            LookupError::Empty => "empty",
            LookupError::Failed(_) => "error",
        }
    }
}

/// Why the resolver could not be built (at start).
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// No nameservers configured and the system's configuration is unusable.
    #[error("cannot set up the DNS resolver: /etc/resolv.conf")]
    SystemConfig(#[source] NetError),
    #[error("cannot set up the DNS resolver")]
    Build(#[source] NetError),
}

/// Why a destination has no address for a new connection: its lookup failed and no earlier
/// answer is kept.
#[derive(Debug, thiserror::Error)]
#[error("cannot resolve {host}")]
pub struct ResolveError {
    pub host: String,
    #[source]
    pub source: LookupError,
}

struct Cached {
    ips: Vec<IpAddr>,
    expires: Instant,
}

pub struct Dns {
    resolver: TokioResolver,
    metrics: Arc<Metrics>,
    /// TTL bounds of the destination cache.
    ttl: DnsTtl,
    cache: Mutex<HashMap<String, Cached>>,
}

impl Dns {
    /// A resolver asking `nameservers` (empty: the system configuration). `bounds` are the
    /// tightest TTL bounds any user of this resolver needs (see the module doc).
    pub fn new(
        nameservers: &[SocketAddr],
        bounds: DnsTtl,
        metrics: Arc<Metrics>,
    ) -> Result<Self, DnsError> {
        let provider = TokioRuntimeProvider::default();
        let mut builder = if nameservers.is_empty() {
            TokioResolver::builder(provider).map_err(DnsError::SystemConfig)?
        } else {
            let servers = nameservers
                .iter()
                .map(|addr| {
                    let connections = [ConnectionConfig::udp(), ConnectionConfig::tcp()]
                        .into_iter()
                        .map(|mut c| {
                            c.port = addr.port();
                            c
                        })
                        .collect();
                    NameServerConfig::new(addr.ip(), true, connections)
                })
                .collect();
            TokioResolver::builder_with_config(ResolverConfig::from_name_servers(servers), provider)
        };
        let options: &mut ResolverOpts = builder.options_mut();
        options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        options.positive_max_ttl = Some(bounds.max_ttl);
        options.negative_max_ttl = Some(bounds.min_ttl);
        options.timeout = Duration::from_secs(2);
        options.attempts = 2;
        let resolver = builder.build().map_err(DnsError::Build)?;
        Ok(Dns {
            resolver,
            metrics,
            ttl: DnsTtl::default(),
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// Asks for every A and AAAA record of `host` (a configured backend host); counted in
    /// `agent_proxy_dns_resolutions_total{host,result}`.
    pub async fn lookup(&self, host: &str) -> Result<Answer, LookupError> {
        self.lookup_as(host, host).await
    }

    /// [`Dns::lookup`], counted under `host = label`: names clients choose (CONNECT and
    /// transparent destinations) share [`DESTINATIONS`], so that no client can add a series.
    async fn lookup_as(&self, host: &str, label: &str) -> Result<Answer, LookupError> {
        let result = match self.resolver.lookup_ip(host).await {
            Ok(lookup) => {
                let mut ips: Vec<IpAddr> = Vec::new();
                for ip in lookup.iter() {
                    if !ips.contains(&ip) {
                        ips.push(ip);
                    }
                }
                let ttl = lookup
                    .valid_until()
                    .saturating_duration_since(Instant::now());
                if ips.is_empty() {
                    Err(LookupError::Empty)
                } else {
                    Ok(Answer { ips, ttl })
                }
            }
            Err(e) if e.is_no_records_found() => Err(LookupError::Empty),
            Err(e) => Err(LookupError::Failed(e)),
        };
        let result_label = match &result {
            Ok(_) => "ok",
            Err(e) => e.label(),
        };
        self.metrics
            .dns_resolutions_total
            .with_label_values(&[label, result_label])
            .inc();
        result
    }

    /// The addresses of `host:port` for a new connection, from the cache while the answer's
    /// TTL lasts. When a refresh fails, the last good answer is served (and logged); an IP
    /// literal is returned as is.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, ResolveError> {
        let literal = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if let Ok(ip) = literal.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let key = host.to_ascii_lowercase();
        let now = Instant::now();
        let stale = {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            match cache.get(&key) {
                Some(entry) if entry.expires > now => {
                    return Ok(with_port(&entry.ips, port));
                }
                Some(entry) => Some(entry.ips.clone()),
                None => None,
            }
        };
        match self.lookup_as(&key, DESTINATIONS).await {
            Ok(answer) => {
                let addrs = with_port(&answer.ips, port);
                self.store(key, answer.ips, self.ttl.clamp(answer.ttl));
                Ok(addrs)
            }
            Err(e) => match stale {
                Some(ips) => {
                    tracing::warn!(host, error = %e, "DNS refresh failed; using the last good answer");
                    // Keep serving it without asking again for a while.
                    self.store(key, ips.clone(), self.ttl.min_ttl);
                    Ok(with_port(&ips, port))
                }
                None => Err(ResolveError {
                    host: host.to_owned(),
                    source: e,
                }),
            },
        }
    }

    fn store(&self, key: String, ips: Vec<IpAddr>, ttl: Duration) {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_LIMIT && !cache.contains_key(&key) {
            let now = Instant::now();
            cache.retain(|_, entry| entry.expires > now);
            if cache.len() >= CACHE_LIMIT {
                cache.clear();
            }
        }
        cache.insert(
            key,
            Cached {
                ips,
                expires: Instant::now() + ttl,
            },
        );
    }
}

/// The `host` label of every lookup of a destination a client named (CONNECT, transparent).
pub(crate) const DESTINATIONS: &str = "(destinations)";

fn with_port(ips: &[IpAddr], port: u16) -> Vec<SocketAddr> {
    ips.iter().map(|&ip| SocketAddr::new(ip, port)).collect()
}

#[cfg(test)]
mod tests;
