//! The resolver against a nameserver played by the test: answers with chosen addresses and
//! TTLs, SERVFAIL, REFUSED or silence on demand (per address family), and counts the
//! questions it gets.
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU32, Ordering};

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::{
    RData, Record, RecordType,
    rdata::{A, AAAA},
};
use tokio::net::UdpSocket;

use super::*;
use crate::report::error_chain;

/// What the fake nameserver answers for A questions.
#[derive(Clone, Copy)]
enum Script {
    Answer(Ipv4Addr, u32),
    ServFail,
    /// NOERROR without records.
    Empty,
}

/// What it answers for AAAA questions (`FakeNameserver::v6`).
#[derive(Clone, Copy)]
enum V6 {
    /// NOERROR without records (the default).
    Empty,
    Answer(Ipv6Addr, u32),
    /// What dnsmasq without an upstream answers for a name its hosts file has only an A for.
    Refused,
    ServFail,
    /// No answer at all (a firewall or a resolver that drops AAAA questions).
    Silent,
}

struct FakeNameserver {
    addr: SocketAddr,
    script: Arc<Mutex<Script>>,
    a_questions: Arc<AtomicU32>,
    v6: Arc<Mutex<V6>>,
}

impl FakeNameserver {
    async fn start(script: Script) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let script = Arc::new(Mutex::new(script));
        let a_questions = Arc::new(AtomicU32::new(0));
        let v6 = Arc::new(Mutex::new(V6::Empty));
        let (s, count, aaaa) = (
            Arc::clone(&script),
            Arc::clone(&a_questions),
            Arc::clone(&v6),
        );
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok((n, peer)) = socket.recv_from(&mut buf).await {
                let Ok(query) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let mut reply = Message::response(query.metadata.id, query.metadata.op_code);
                reply.metadata.message_type = MessageType::Response;
                reply.metadata.recursion_available = true;
                reply.metadata.recursion_desired = query.metadata.recursion_desired;
                let mut silent = false;
                for q in &query.queries {
                    reply.add_query(q.clone());
                    if q.query_type() == RecordType::AAAA {
                        match *aaaa.lock().unwrap() {
                            V6::Empty => {}
                            V6::Answer(ip, ttl) => {
                                let rdata = RData::AAAA(AAAA(ip));
                                reply.add_answer(Record::from_rdata(q.name().clone(), ttl, rdata));
                            }
                            V6::Refused => reply.metadata.response_code = ResponseCode::Refused,
                            V6::ServFail => reply.metadata.response_code = ResponseCode::ServFail,
                            V6::Silent => silent = true,
                        }
                        continue;
                    }
                    if q.query_type() != RecordType::A {
                        continue;
                    }
                    count.fetch_add(1, Ordering::Relaxed);
                    match *s.lock().unwrap() {
                        Script::Answer(ip, ttl) => {
                            reply.add_answer(Record::from_rdata(
                                q.name().clone(),
                                ttl,
                                RData::A(A(ip)),
                            ));
                        }
                        Script::ServFail => reply.metadata.response_code = ResponseCode::ServFail,
                        Script::Empty => {}
                    }
                }
                if !silent {
                    let _ = socket.send_to(&reply.to_vec().unwrap(), peer).await;
                }
            }
        });
        FakeNameserver {
            addr,
            script,
            a_questions,
            v6,
        }
    }

    fn set(&self, script: Script) {
        *self.script.lock().unwrap() = script;
    }

    fn set_v6(&self, v6: V6) {
        *self.v6.lock().unwrap() = v6;
    }

    fn questions(&self) -> u32 {
        self.a_questions.load(Ordering::Relaxed)
    }
}

fn dns(ns: &FakeNameserver, metrics: &Arc<Metrics>) -> Dns {
    let bounds = DnsTtl {
        min_ttl: Duration::from_secs(1),
        max_ttl: Duration::from_secs(60),
    };
    Dns::new(&[ns.addr], bounds, bounds, Arc::clone(metrics)).unwrap()
}

fn count(metrics: &Metrics, host: &str, result: &str) -> u64 {
    metrics
        .dns_resolutions_total
        .with_label_values(&[host, result])
        .get()
}

#[tokio::test]
async fn lookup_returns_the_addresses_and_the_ttl() {
    let ns = FakeNameserver::start(Script::Answer(Ipv4Addr::new(10, 1, 2, 3), 7)).await;
    let metrics = Arc::new(Metrics::new());
    let dns = dns(&ns, &metrics);
    let answer = dns.lookup("intake.example.").await.unwrap();
    assert_eq!(answer.ips, [IpAddr::from([10, 1, 2, 3])]);
    assert!(
        answer.ttl > Duration::from_secs(5) && answer.ttl <= Duration::from_secs(7),
        "ttl {:?}",
        answer.ttl
    );
    assert_eq!(count(&metrics, "intake.example.", "ok"), 1);

    ns.set(Script::ServFail);
    let err = dns.lookup("other.example.").await.unwrap_err();
    assert!(matches!(err, LookupError::Failed(_)), "{err:?}");
    assert_eq!(count(&metrics, "other.example.", "error"), 1);
}

#[tokio::test]
async fn resolve_caches_for_the_ttl_then_asks_again_and_keeps_the_last_good_answer() {
    let ns = FakeNameserver::start(Script::Answer(Ipv4Addr::new(10, 0, 0, 1), 1)).await;
    let metrics = Arc::new(Metrics::new());
    let dns = dns(&ns, &metrics);
    let first = dns.resolve("intake.example.", 443).await.unwrap();
    assert_eq!(first, ["10.0.0.1:443".parse::<SocketAddr>().unwrap()]);
    let asked = ns.questions();
    assert_eq!(
        dns.resolve("INTAKE.example.", 8443).await.unwrap(),
        ["10.0.0.1:8443".parse::<SocketAddr>().unwrap()],
        "cached: any port, any case"
    );
    assert_eq!(ns.questions(), asked, "a cached answer asks nobody");

    // The record moves; after its TTL, the next resolve sees it.
    ns.set(Script::Answer(Ipv4Addr::new(10, 0, 0, 2), 1));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        dns.resolve("intake.example.", 443).await.unwrap(),
        ["10.0.0.2:443".parse::<SocketAddr>().unwrap()]
    );
    assert!(ns.questions() > asked);

    // The nameserver fails: the last good answer is served.
    ns.set(Script::ServFail);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        dns.resolve("intake.example.", 443).await.unwrap(),
        ["10.0.0.2:443".parse::<SocketAddr>().unwrap()]
    );
    // Destinations share one series, whatever the name: clients cannot add series.
    assert!(count(&metrics, DESTINATIONS, "error") >= 1);
    assert!(count(&metrics, DESTINATIONS, "ok") >= 2);
    let families = metrics.render();
    assert!(
        !families.contains("intake.example."),
        "a destination name became a label:\n{families}"
    );

    // A name never resolved has no last answer; the 502's text reads as it did as a string.
    let err = dns.resolve("unknown.example.", 443).await.unwrap_err();
    assert!(matches!(err.source, LookupError::Failed(_)), "{err:?}");
    assert_eq!(
        error_chain(&err),
        format!("cannot resolve unknown.example.: {}", err.source)
    );
    // IP literals never reach DNS.
    let before = ns.questions();
    assert_eq!(
        dns.resolve("[::1]", 80).await.unwrap(),
        ["[::1]:80".parse::<SocketAddr>().unwrap()]
    );
    assert_eq!(
        dns.resolve("192.0.2.7", 80).await.unwrap(),
        ["192.0.2.7:80".parse::<SocketAddr>().unwrap()]
    );
    assert_eq!(ns.questions(), before);
}

#[tokio::test]
async fn a_and_aaaa_answers_are_all_addresses() {
    let ns = FakeNameserver::start(Script::Answer(Ipv4Addr::new(10, 0, 0, 9), 30)).await;
    ns.set_v6(V6::Answer("2001:db8::9".parse().unwrap(), 30));
    let metrics = Arc::new(Metrics::new());
    let answer = dns(&ns, &metrics).lookup("dual.example.").await.unwrap();
    let mut ips = answer.ips.clone();
    ips.sort();
    assert_eq!(
        ips,
        [
            "10.0.0.9".parse::<IpAddr>().unwrap(),
            "2001:db8::9".parse().unwrap()
        ]
    );
}

#[test]
fn set_up_errors_render_as_before() {
    let cause = || NetError::from(std::io::Error::other("no nameservers found in config"));
    assert_eq!(
        error_chain(&DnsError::SystemConfig(cause())),
        format!(
            "cannot set up the DNS resolver: /etc/resolv.conf: {}",
            cause()
        )
    );
    assert_eq!(
        error_chain(&DnsError::Build(cause())),
        format!("cannot set up the DNS resolver: {}", cause())
    );
    assert_eq!(
        error_chain(&ResolveError {
            host: "a.example".into(),
            source: LookupError::Empty,
        }),
        "cannot resolve a.example: no A or AAAA record"
    );
}

/// A resolver that answers A but REFUSED or SERVFAIL for AAAA (dnsmasq without an upstream)
/// still resolves the name, at once, to its A addresses with the A answer's TTL.
#[tokio::test]
async fn a_failed_aaaa_keeps_the_a_answer() {
    let ns = FakeNameserver::start(Script::Answer(Ipv4Addr::new(10, 0, 0, 4), 7)).await;
    let metrics = Arc::new(Metrics::new());
    let dns = dns(&ns, &metrics);
    for (v6, host) in [
        (V6::Refused, "refused.example."),
        (V6::ServFail, "servfail.example."),
    ] {
        ns.set_v6(v6);
        let started = Instant::now();
        let answer = dns.lookup(host).await.unwrap();
        assert_eq!(answer.ips, [IpAddr::from([10, 0, 0, 4])], "{host}");
        assert!(
            answer.ttl > Duration::from_secs(5) && answer.ttl <= Duration::from_secs(7),
            "{host}: ttl {:?}",
            answer.ttl
        );
        assert!(
            started.elapsed() < FAMILY_GRACE,
            "{host}: took {:?}: an answered family is not waited for",
            started.elapsed()
        );
        assert_eq!(count(&metrics, host, "ok"), 1, "{host}");
        assert_eq!(count(&metrics, host, "error"), 0, "{host}");
    }
}

/// A failed A query keeps the AAAA answer, the same way round.
#[tokio::test]
async fn a_failed_a_keeps_the_aaaa_answer() {
    let ns = FakeNameserver::start(Script::ServFail).await;
    ns.set_v6(V6::Answer("2001:db8::4".parse().unwrap(), 20));
    let metrics = Arc::new(Metrics::new());
    let answer = dns(&ns, &metrics).lookup("v6.example.").await.unwrap();
    assert_eq!(answer.ips, ["2001:db8::4".parse::<IpAddr>().unwrap()]);
    assert!(answer.ttl > Duration::from_secs(18), "ttl {:?}", answer.ttl);
    assert_eq!(count(&metrics, "v6.example.", "ok"), 1);
}

/// A resolver that never answers AAAA costs a resolution [`FAMILY_GRACE`] once A has
/// answered, not the resolver's whole timeout (2 s x 2 attempts, about 6 s in hickory 0.26).
#[tokio::test]
async fn a_silent_aaaa_costs_at_most_the_grace() {
    let ns = FakeNameserver::start(Script::Answer(Ipv4Addr::new(10, 0, 0, 5), 30)).await;
    ns.set_v6(V6::Silent);
    let metrics = Arc::new(Metrics::new());
    let started = Instant::now();
    let answer = dns(&ns, &metrics).lookup("quiet.example.").await.unwrap();
    let took = started.elapsed();
    assert_eq!(answer.ips, [IpAddr::from([10, 0, 0, 5])]);
    assert!(
        took >= FAMILY_GRACE && took < FAMILY_GRACE + Duration::from_millis(500),
        "took {took:?} (grace {FAMILY_GRACE:?})"
    );
    assert_eq!(count(&metrics, "quiet.example.", "ok"), 1);
}

/// The TTL of a dual answer is the smaller of the two families'.
#[tokio::test]
async fn the_ttl_is_the_smallest_of_the_families() {
    let ns = FakeNameserver::start(Script::Answer(Ipv4Addr::new(10, 0, 0, 6), 40)).await;
    ns.set_v6(V6::Answer("2001:db8::6".parse().unwrap(), 9));
    let metrics = Arc::new(Metrics::new());
    let answer = dns(&ns, &metrics).lookup("ttl.example.").await.unwrap();
    assert_eq!(answer.ips.len(), 2);
    assert!(
        answer.ttl > Duration::from_secs(7) && answer.ttl <= Duration::from_secs(9),
        "ttl {:?}",
        answer.ttl
    );
}

/// No address from either family: `error` when one failed, `empty` when both had none.
#[tokio::test]
async fn no_address_from_either_family_is_an_error_or_empty() {
    let ns = FakeNameserver::start(Script::ServFail).await;
    let metrics = Arc::new(Metrics::new());
    let dns = dns(&ns, &metrics);
    for (a, v6, host, label) in [
        (
            Script::ServFail,
            V6::Refused,
            "both-failed.example.",
            "error",
        ),
        (
            Script::Empty,
            V6::Refused,
            "empty-and-failed.example.",
            "error",
        ),
        (Script::Empty, V6::Empty, "both-empty.example.", "empty"),
    ] {
        ns.set(a);
        ns.set_v6(v6);
        let err = dns.lookup(host).await.unwrap_err();
        assert_eq!(err.label(), label, "{host}: {err:?}");
        assert_eq!(count(&metrics, host, label), 1, "{host}");
        assert_eq!(count(&metrics, host, "ok"), 0, "{host}");
    }
}

/// The merge on its own: order (A first), repeats, TTL, and which error wins.
#[test]
fn merge_keeps_every_family_that_gave_addresses() {
    let now = Instant::now();
    let v4: IpAddr = "10.0.0.7".parse().unwrap();
    let v6: IpAddr = "2001:db8::7".parse().unwrap();
    let at = |secs| now + Duration::from_secs(secs);
    let failed = || Err(LookupError::Failed(NetError::Timeout));

    let answer = merge(Ok((vec![v4, v4], at(30))), Ok((vec![v6], at(10))), now).unwrap();
    assert_eq!(answer.ips, [v4, v6]);
    assert_eq!(answer.ttl, Duration::from_secs(10));

    let answer = merge(failed(), Ok((vec![v6], at(10))), now).unwrap();
    assert_eq!(answer.ips, [v6]);
    let answer = merge(Ok((vec![v4], at(5))), Err(LookupError::Empty), now).unwrap();
    assert_eq!((answer.ips, answer.ttl), (vec![v4], Duration::from_secs(5)));
    // A family that answered without addresses says nothing about the TTL.
    let answer = merge(Ok((vec![], at(1))), Ok((vec![v6], at(20))), now).unwrap();
    assert_eq!(answer.ttl, Duration::from_secs(20));

    assert!(matches!(
        merge(Ok((vec![], at(1))), Err(LookupError::Empty), now),
        Err(LookupError::Empty)
    ));
    assert!(matches!(
        merge(Err(LookupError::Empty), failed(), now),
        Err(LookupError::Failed(_))
    ));
    assert!(matches!(
        merge(failed(), failed(), now),
        Err(LookupError::Failed(_))
    ));
}

/// The retry back-off: `min_ttl`, doubling, capped at `max_ttl`, without overflow.
#[test]
fn retries_back_off_from_min_ttl_to_max_ttl() {
    let bounds = DnsTtl {
        min_ttl: Duration::from_secs(1),
        max_ttl: Duration::from_secs(60),
    };
    let waits: Vec<u64> = (1..=8).map(|n| bounds.retry_after(n).as_secs()).collect();
    assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60]);
    assert_eq!(bounds.retry_after(0), bounds.min_ttl);
    assert_eq!(bounds.retry_after(u32::MAX), bounds.max_ttl);
}

/// A destination whose refreshes keep failing is served its last good answer and asked again
/// after 1 s, then 2 s (min_ttl 1 s, doubling), not every min_ttl.
#[tokio::test]
async fn failed_destination_refreshes_back_off() {
    let ns = FakeNameserver::start(Script::Answer(Ipv4Addr::new(10, 0, 0, 8), 1)).await;
    let metrics = Arc::new(Metrics::new());
    let dns = dns(&ns, &metrics);
    let good = ["10.0.0.8:443".parse::<SocketAddr>().unwrap()];
    assert_eq!(dns.resolve("backoff.example.", 443).await.unwrap(), good);
    ns.set(Script::ServFail);
    let errors = || count(&metrics, DESTINATIONS, "error");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Failure 1: the last good answer, kept for 1 s.
    assert_eq!(dns.resolve("backoff.example.", 443).await.unwrap(), good);
    assert_eq!(errors(), 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Failure 2: kept for 2 s.
    assert_eq!(dns.resolve("backoff.example.", 443).await.unwrap(), good);
    assert_eq!(errors(), 2);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(dns.resolve("backoff.example.", 443).await.unwrap(), good);
    assert_eq!(errors(), 2, "asked again within the 2 s back-off");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(dns.resolve("backoff.example.", 443).await.unwrap(), good);
    assert_eq!(errors(), 3, "not asked again after the back-off");
}

/// The destination cache's bound ([`CACHE_LIMIT`]): a new name in a full cache first makes
/// room by dropping expired answers, and drops every answer only when none had expired. No
/// number of names grows it past the bound.
#[tokio::test]
async fn the_destination_cache_is_bounded() {
    let ns = FakeNameserver::start(Script::ServFail).await;
    let metrics = Arc::new(Metrics::new());
    let dns = dns(&ns, &metrics);
    let ip = vec![IpAddr::from([10, 0, 0, 1])];
    let len = || dns.cache.lock().unwrap().len();
    let long = Duration::from_secs(60);
    // Half expired (TTL 0), half live.
    for i in 0..CACHE_LIMIT {
        let ttl = if i % 2 == 0 { Duration::ZERO } else { long };
        dns.store(format!("name-{i}.example."), ip.clone(), ttl, 0);
    }
    assert_eq!(len(), CACHE_LIMIT);
    dns.store("one-more.example.".into(), ip.clone(), long, 0);
    assert_eq!(len(), CACHE_LIMIT / 2 + 1, "the expired half made room");
    // Fill it with live answers: the first new name that finds it full with nothing expired
    // starts it over.
    let mut smallest = usize::MAX;
    for i in 0..CACHE_LIMIT {
        dns.store(format!("live-{i}.example."), ip.clone(), long, 0);
        assert!(len() <= CACHE_LIMIT);
        smallest = smallest.min(len());
    }
    assert_eq!(smallest, 1, "a full cache of live answers starts over");
    // A name already cached is replaced in place, however full.
    let before = len();
    let last = format!("live-{}.example.", CACHE_LIMIT - 1);
    dns.store(last, ip.clone(), long, 0);
    assert_eq!(len(), before);
}
