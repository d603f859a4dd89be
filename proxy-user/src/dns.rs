//! DNS for upstream pools and destinations, with hickory-resolver.
//!
//! [`Dns::lookup`] asks the nameservers (`global.nameservers`, else `/etc/resolv.conf`) for the
//! A and the AAAA records of a name, as two concurrent queries, and merges what they give:
//! **a failure of one family never discards the other's addresses** (a resolver that answers A
//! but REFUSED or SERVFAIL for AAAA, as dnsmasq without an upstream does, still resolves the
//! name). The merged answer's TTL is the smallest of the families that gave addresses. A
//! lookup is an error only when neither family gave an address; it is `empty` when both said
//! the name has no such records, `error` when either failed. Once one family has addresses,
//! the other gets [`FAMILY_GRACE`] more: a resolver that never answers AAAA does not hold every
//! resolution for its whole timeout (~6 s), and the late family is taken as failed this time.
//!
//! Pools re-resolve their hostnames when the TTL (clamped per backend) has passed.
//! [`Dns::resolve`] is the cache shared by the modes that resolve destinations per connection
//! (CONNECT, transparent): answers live for their TTL clamped to `global.dns`, and when a
//! refresh fails the last good answer is served and says so; the name is asked again after
//! [`DnsTtl::retry_after`] (`min_ttl`, doubling with each failure in a row, up to `max_ttl`).
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
    config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts},
    net::{NetError, runtime::TokioRuntimeProvider},
    proto::rr::RecordType,
};

use crate::{config::DnsTtl, metrics::Metrics};

/// Entries in the destination cache; past it, expired entries are dropped, then all.
const CACHE_LIMIT: usize = 10_000;

/// How long the second address family may take once the first has given addresses. Both
/// queries go to the same nameservers at once, so a healthy resolver answers them within a
/// few milliseconds of each other (a recursive one may need a round trip further away for
/// one of them); a family later than this is taken as failed for this resolution, and the
/// next resolution asks for it again.
pub(crate) const FAMILY_GRACE: Duration = Duration::from_millis(500);

/// The answer to one lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Every A address, then every AAAA address, in the order the nameserver gave them; never
    /// empty.
    pub ips: Vec<IpAddr>,
    /// The smallest TTL of the records of the families that gave addresses, as the resolver
    /// reports it (not clamped).
    pub ttl: Duration,
}

/// Why a lookup gave no address.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LookupError {
    /// The name exists but has no A/AAAA record, or does not exist (NXDOMAIN).
    #[error("no A or AAAA record")]
    Empty,
    /// Timeout, refused, SERVFAIL, no nameserver... (hickory's message says which). For a
    /// whole lookup: no family gave an address and at least one of them failed (this is its
    /// error, the A query's when both failed).
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
    /// Failed refreshes in a row since the last good answer (the retry back-off).
    failures: u32,
}

/// What one family's query gave: its addresses (possibly none) and until when they are valid.
type Family = Result<(Vec<IpAddr>, Instant), LookupError>;

pub struct Dns {
    resolver: TokioResolver,
    metrics: Arc<Metrics>,
    /// TTL bounds of the destination cache.
    ttl: DnsTtl,
    cache: Mutex<HashMap<String, Cached>>,
}

impl Dns {
    /// A resolver asking `nameservers` (empty: the system configuration). `bounds` are the
    /// tightest TTL bounds any user of this resolver needs (see the module doc);
    /// `destinations` those of the destination cache ([`Dns::resolve`], `global.dns`).
    pub fn new(
        nameservers: &[SocketAddr],
        bounds: DnsTtl,
        destinations: DnsTtl,
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
        options.positive_max_ttl = Some(bounds.max_ttl);
        options.negative_max_ttl = Some(bounds.min_ttl);
        options.timeout = Duration::from_secs(2);
        options.attempts = 2;
        let resolver = builder.build().map_err(DnsError::Build)?;
        Ok(Dns {
            resolver,
            metrics,
            ttl: destinations,
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
        let (v4, v6) = self.families(host).await;
        for (family, result) in [("A", &v4), ("AAAA", &v6)] {
            if let Err(e) = result {
                tracing::debug!(host, family, error = %e, "one address family gave no address");
            }
        }
        let result = merge(v4, v6, Instant::now());
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

    /// The A and the AAAA query of `host`, concurrently; once one has addresses, the other
    /// gets [`FAMILY_GRACE`] more (see the module doc).
    async fn families(&self, host: &str) -> (Family, Family) {
        let v4 = self.family(host, RecordType::A);
        let v6 = self.family(host, RecordType::AAAA);
        tokio::pin!(v4, v6);
        tokio::select! {
            first = &mut v4 => {
                let second = rest(&first, v6).await;
                (first, second)
            }
            first = &mut v6 => {
                let second = rest(&first, v4).await;
                (second, first)
            }
        }
    }

    /// One family's query.
    async fn family(&self, host: &str, record_type: RecordType) -> Family {
        match self.resolver.lookup(host, record_type).await {
            Ok(lookup) => {
                let ips = lookup
                    .answers()
                    .iter()
                    .filter_map(|record| record.data.ip_addr())
                    .collect();
                Ok((ips, lookup.valid_until()))
            }
            Err(e) if e.is_no_records_found() => Err(LookupError::Empty),
            Err(e) => Err(LookupError::Failed(e)),
        }
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
                Some(entry) => Some((entry.ips.clone(), entry.failures)),
                None => None,
            }
        };
        match self.lookup_as(&key, DESTINATIONS).await {
            Ok(answer) => {
                let addrs = with_port(&answer.ips, port);
                self.store(key, answer.ips, self.ttl.clamp(answer.ttl), 0);
                Ok(addrs)
            }
            Err(e) => match stale {
                Some((ips, failures)) => {
                    tracing::warn!(host, error = %e, "DNS refresh failed; using the last good answer");
                    // Keep serving it without asking again for a while, longer with each
                    // failure in a row.
                    let failures = failures.saturating_add(1);
                    self.store(key, ips.clone(), self.ttl.retry_after(failures), failures);
                    Ok(with_port(&ips, port))
                }
                None => Err(ResolveError {
                    host: host.to_owned(),
                    source: e,
                }),
            },
        }
    }

    fn store(&self, key: String, ips: Vec<IpAddr>, ttl: Duration, failures: u32) {
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
                failures,
            },
        );
    }
}

/// The `host` label of every lookup of a destination a client named (CONNECT, transparent).
pub(crate) const DESTINATIONS: &str = "(destinations)";

/// The second family to answer: within [`FAMILY_GRACE`] when the first gave addresses (a
/// family later than that counts as timed out), else however long the resolver takes.
async fn rest(first: &Family, second: impl Future<Output = Family>) -> Family {
    if first.as_ref().is_ok_and(|(ips, _)| !ips.is_empty()) {
        tokio::time::timeout(FAMILY_GRACE, second)
            .await
            .unwrap_or(Err(LookupError::Failed(NetError::Timeout)))
    } else {
        second.await
    }
}

/// One answer from the two families' (see the module doc): the addresses of both, A first,
/// without repeats; the TTL of the earliest to expire of those that gave addresses. `now` is
/// when the TTL is counted from.
fn merge(v4: Family, v6: Family, now: Instant) -> Result<Answer, LookupError> {
    let mut ips: Vec<IpAddr> = Vec::new();
    let mut valid_until: Option<Instant> = None;
    let mut failed = None;
    for family in [v4, v6] {
        match family {
            Ok((found, until)) if !found.is_empty() => {
                for ip in found {
                    if !ips.contains(&ip) {
                        ips.push(ip);
                    }
                }
                valid_until = Some(valid_until.map_or(until, |v| v.min(until)));
            }
            Ok(_) | Err(LookupError::Empty) => {}
            Err(e @ LookupError::Failed(_)) => {
                failed.get_or_insert(e);
            }
        }
    }
    match valid_until {
        Some(until) => Ok(Answer {
            ips,
            ttl: until.saturating_duration_since(now),
        }),
        None => Err(failed.unwrap_or(LookupError::Empty)),
    }
}

fn with_port(ips: &[IpAddr], port: u16) -> Vec<SocketAddr> {
    ips.iter().map(|&ip| SocketAddr::new(ip, port)).collect()
}

#[cfg(test)]
mod tests;
