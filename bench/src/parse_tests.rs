//! The parsers against output captured from the Debian 12 builds of hey 0.1.4, sockperf 3.7
//! and iperf3 3.12.
use super::*;

const HEY: &str = "
Summary:
  Total:\t0.2514 secs
  Slowest:\t0.0409 secs
  Fastest:\t0.0000 secs
  Average:\t0.0023 secs
  Requests/sec:\t6365.0666
  
  Total data:\t4800 bytes
  Size/request:\t3 bytes

Response time histogram:
  0.000 [1]\t|
  0.004 [1408]\t|■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■

Latency distribution:
  10% in 0.0001 secs
  25% in 0.0004 secs
  50% in 0.0009 secs
  75% in 0.0025 secs
  90% in 0.0047 secs
  95% in 0.0077 secs
  99% in 0.0294 secs

Details (average, fastest, slowest):
  DNS+dialup:\t0.0000 secs, 0.0000 secs, 0.0409 secs

Status code distribution:
  [200]\t1597 responses
  [502]\t1 responses

Error distribution:
  [2]\tPost \"http://127.0.0.1:7000/v1/write\": read: connection reset by peer
";

#[test]
fn hey_summary() {
    let r = hey(HEY).unwrap();
    assert!((r.requests_per_second - 6365.0666).abs() < 1e-9);
    assert!((r.latency.avg - 2300.0).abs() < 1e-6);
    assert!((r.latency.p50 - 900.0).abs() < 1e-6);
    assert!((r.latency.p90 - 4700.0).abs() < 1e-6);
    assert!((r.latency.p99 - 29400.0).abs() < 1e-6);
    assert_eq!(r.latency.p999, None);
    assert_eq!(r.ok, 1597);
    assert_eq!(r.errors, 3);
}

#[test]
fn hey_without_results_is_an_error() {
    let err = hey("Error: unable to connect\n").unwrap_err();
    assert!(format!("{err:#}").contains("Requests/sec"), "{err:#}");
}

const SOCKPERF: &str = "sockperf: \u{1b}[2;35m== version #3.7-no.git == \u{1b}[0m
sockperf: [Total Run] RunTime=1.000 sec; Warm up time=400 msec; SentMessages=81429; ReceivedMessages=81428
sockperf: ========= Printing statistics for Server No: 0
sockperf: [Valid Duration] RunTime=0.545 sec; SentMessages=60020; ReceivedMessages=60020
sockperf: \u{1b}[2;35m====> avg-latency=4.524 (std-dev=68.686)\u{1b}[0m
sockperf: # dropped messages = 0; # duplicated messages = 0; # out-of-order messages = 0
sockperf: Summary: Latency is 4.524 usec
sockperf: \u{1b}[2;35mTotal 60020 observations\u{1b}[0m; each percentile contains 600.20 observations
sockperf: ---> <MAX> observation = 5467.028
sockperf: ---> percentile 99.999 = 4009.685
sockperf: ---> percentile 99.990 = 3470.831
sockperf: ---> percentile 99.900 =  155.550
sockperf: ---> percentile 99.000 =    3.357
sockperf: ---> percentile 90.000 =    3.041
sockperf: ---> percentile 75.000 =    2.732
sockperf: ---> percentile 50.000 =    2.580
sockperf: ---> percentile 25.000 =    2.535
sockperf: ---> <MIN> observation =    2.279
";

#[test]
fn sockperf_ping_pong() {
    let r = sockperf(SOCKPERF).unwrap();
    assert_eq!(
        r.latency,
        Latency {
            avg: 4.524,
            p50: 2.580,
            p90: 3.041,
            p99: 3.357,
            p999: Some(155.550),
        }
    );
    assert_eq!(r.observations, 60020);
    assert_eq!(r.total_messages, 81428);
    assert!((r.round_trips_per_second - 60020.0 / 0.545).abs() < 1e-6);
}

#[test]
fn sockperf_that_measured_nothing_is_an_error() {
    let cut = SOCKPERF.replace("---> percentile 99.900", "---> percentile 99.800");
    assert!(sockperf(&cut).is_err());
    assert!(sockperf("sockperf: ERROR: connect failed\n").is_err());
    assert_eq!(strip_ansi("a\u{1b}[2;35mb\u{1b}[0mc"), "abc");
}

#[test]
fn iperf3_json() {
    let json = r#"{"start":{"version":"iperf 3.12"},"intervals":[],
        "end":{"sum_sent":{"seconds":1.000277,"bytes":3749969920,"sender":true},
               "sum_received":{"start":0,"end":1.007129,"seconds":1.007129,"bytes":3747348480,
                               "bits_per_second":29766581877.793213,"sender":true}}}"#;
    let r = iperf3(json).unwrap();
    assert_eq!(r.bytes, 3_747_348_480);
    assert!((r.gigabytes_per_second() - 3_747_348_480.0 / 1.007129 / 1e9).abs() < 1e-9);
    let err = iperf3(
        r#"{"start":{},"end":{},"error":"unable to connect to server: Connection refused"}"#,
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("Connection refused"));
    assert!(iperf3("not json").is_err());
}
