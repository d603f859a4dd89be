//! The resolver against a nameserver played by the test: answers with chosen addresses and
//! TTLs, SERVFAIL on demand, and counts the questions it gets.
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

/// What the fake nameserver answers for A questions; AAAA questions get `FakeNameserver::v6`
/// (or an empty NOERROR).
#[derive(Clone, Copy)]
enum Script {
    Answer(Ipv4Addr, u32),
    ServFail,
}

struct FakeNameserver {
    addr: SocketAddr,
    script: Arc<Mutex<Script>>,
    a_questions: Arc<AtomicU32>,
    v6: Arc<Mutex<Option<Ipv6Addr>>>,
}

impl FakeNameserver {
    async fn start(script: Script) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let script = Arc::new(Mutex::new(script));
        let a_questions = Arc::new(AtomicU32::new(0));
        let v6 = Arc::new(Mutex::new(None));
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
                for q in &query.queries {
                    reply.add_query(q.clone());
                    if q.query_type() == RecordType::AAAA {
                        if let Some(ip) = *aaaa.lock().unwrap() {
                            let rdata = RData::AAAA(AAAA(ip));
                            reply.add_answer(Record::from_rdata(q.name().clone(), 30, rdata));
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
                    }
                }
                let _ = socket.send_to(&reply.to_vec().unwrap(), peer).await;
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

    fn questions(&self) -> u32 {
        self.a_questions.load(Ordering::Relaxed)
    }
}

fn dns(ns: &FakeNameserver, metrics: &Arc<Metrics>) -> Dns {
    let bounds = DnsTtl {
        min_ttl: Duration::from_secs(1),
        max_ttl: Duration::from_secs(60),
    };
    let mut dns = Dns::new(&[ns.addr], bounds, Arc::clone(metrics)).unwrap();
    dns.ttl = bounds;
    dns
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
    *ns.v6.lock().unwrap() = Some("2001:db8::9".parse().unwrap());
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
