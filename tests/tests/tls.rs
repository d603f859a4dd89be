//! TLS on both sides: a TLS frontend used by curl and openssl (SNI, TLS 1.2 and 1.3), TLS
//! origination to a local intake (verified; untrusted CA, wrong name and expired certificates
//! refused, counted and retried on the next server), mTLS, garbage and silent clients on a TLS
//! port, 1 GiB byte-exact through every TLS combination, and certificate reload on SIGHUP.
//!
//! The daemon runs with the kernel path loaded: TLS connections must go through the relay
//! while plaintext ones in the same process stay in the kernel.
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent_proxy_tests::checks::{CLOSED, check_conn_log};
use agent_proxy_tests::heavy::{bulk_len, heavy};
use agent_proxy_tests::netns::NetNs;
use agent_proxy_tests::peers::{
    ReadEnd, V4, accept, connect, drain_until_end, exchange_expecting, listen, recv_exact,
    send_pattern,
};
use agent_proxy_tests::tls::{
    Ca, Leaf, Validity, cert_dir, client_config, conn_fields, exchange_stream, field, run_in_ns,
    server_config, tls_accept, tls_connect,
};
use agent_proxy_tests::{DaemonConfig, Dataplane, TestEnv, run_scenario};
use anyhow::{Context as _, bail, ensure};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

const SEED_UP: u64 = 0x7150_0001;
const SEED_DOWN: u64 = 0x7150_0002;
const HANDSHAKE_ERRORS: &str = "agent_proxy_tls_handshake_errors_total";

fn handshake_errors(env: &TestEnv, side: &str, name: &str) -> anyhow::Result<u64> {
    Ok(env
        .daemon
        .metrics()?
        .count(HANDSHAKE_ERRORS, &[("side", side), ("name", name)]))
}

fn handshake_reason(env: &TestEnv, side: &str, reason: &str) -> anyhow::Result<u64> {
    Ok(env
        .daemon
        .metrics()?
        .count(HANDSHAKE_ERRORS, &[("side", side), ("reason", reason)]))
}

/// TOML for a frontend's `tls`: `cert`/`key` paths, plus extra keys.
fn frontend_tls(cert: &Path, key: Option<&Path>, extra: &str) -> String {
    let key = key.map_or(String::new(), |k| format!(", key = \"{}\"", k.display()));
    format!("tls = {{ cert = \"{}\"{key}{extra} }}\n", cert.display())
}

/// Serves HTTP/1.1 on `listener`: each request gets `body` and the connection is closed.
fn http_upstream(listener: TcpListener, body: &'static str) {
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
                let _ = s.shutdown().await;
                // Wait for the client's FIN, so our close never resets unread bytes.
                let _ = s.read(&mut buf).await;
            });
        }
    });
}

fn run(name: &str, scenario: fn(Dataplane) -> anyhow::Result<()>) {
    run_scenario(name, Dataplane::Kernel, scenario);
}

/// curl and openssl against a TLS frontend: the default certificate is a single PEM holding
/// chain and key, a second one is chosen by SNI, TLS 1.2 and 1.3 both work; a plaintext
/// frontend of the same daemon stays on the kernel path.
fn frontend_with_curl_and_openssl(dp: Dataplane) -> anyhow::Result<()> {
    const BODY: &str = "hello through tls\n";
    let netns = NetNs::new()?;
    let ns = &netns;
    let dir = cert_dir(ns)?;
    let ca = Ca::new("test ca")?;
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, &ca.pem)?;
    let main_pem = ca
        .server(&["proxy.test", "127.0.0.1"], Validity::Now)?
        .write_combined(&dir, "proxy")?;
    let (other_cert, other_key) = ca
        .server(&["other.test"], Validity::Now)?
        .write(&dir, "other")?;
    ns.block_on(Duration::from_secs(90), move || async move {
        let upstream = listen(V4).await?;
        let upstream_addr = upstream.local_addr()?;
        http_upstream(upstream, BODY);
        let mut config = DaemonConfig::new(dp, vec![upstream_addr]);
        let tls = frontend_tls(
            &main_pem,
            None,
            &format!(
                ", certs = [{{ cert = \"{}\", key = \"{}\" }}]",
                other_cert.display(),
                other_key.display()
            ),
        );
        // The generated config has one frontend; a second, plaintext one is appended.
        config.toml_override = Some(
            config.to_toml().replace(
                "max_connections = 4096\n",
                &format!("max_connections = 4096\n{tls}"),
            ) + "\n[[frontend]]\nname = \"plain\"\nlisten = \"127.0.0.1:7001\"\nbackend = \"be\"\n",
        );
        let env = TestEnv::start(ns, config)?;
        let ca_arg = ca_file.to_str().context("path")?;

        let curl = run_in_ns(
            ns,
            "curl",
            &[
                "-sS",
                "--cacert",
                ca_arg,
                "--resolve",
                "proxy.test:7000:127.0.0.1",
                "https://proxy.test:7000/",
            ],
            b"",
        )?;
        ensure!(
            curl.status.success() && curl.stdout == BODY.as_bytes(),
            "curl: {}; stdout {:?}; stderr {}",
            curl.status,
            String::from_utf8_lossy(&curl.stdout),
            String::from_utf8_lossy(&curl.stderr)
        );

        let request = b"GET / HTTP/1.1\r\nHost: other.test\r\n\r\n";
        for (sni, version) in [("other.test", "-tls1_3"), ("proxy.test", "-tls1_2")] {
            let out = run_in_ns(
                ns,
                "openssl",
                &[
                    "s_client",
                    "-connect",
                    "127.0.0.1:7000",
                    "-servername",
                    sni,
                    "-verify_hostname",
                    sni,
                    "-CAfile",
                    ca_arg,
                    "-verify_return_error",
                    "-ign_eof",
                    version,
                ],
                request,
            )?;
            let stdout = String::from_utf8_lossy(&out.stdout);
            let expect_protocol = if version == "-tls1_3" {
                "TLSv1.3"
            } else {
                "TLSv1.2"
            };
            ensure!(
                out.status.success()
                    && stdout.contains(BODY.trim_end())
                    && stdout.contains("Verify return code: 0 (ok)")
                    && stdout.contains(&format!("CN = {sni}"))
                    && stdout.contains(expect_protocol),
                "openssl s_client -servername {sni} {version}: {}; stdout:\n{stdout}\nstderr:\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }

        // The plaintext frontend of the same daemon: the kernel carries it.
        let mut plain = connect("127.0.0.1:7001".parse()?).await?;
        plain.write_all(request).await?;
        let mut response = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), plain.read_to_end(&mut response))
            .await
            .context("plain response")??;
        ensure!(
            response.ends_with(BODY.as_bytes()),
            "plaintext frontend answered {:?}",
            String::from_utf8_lossy(&response)
        );
        drop(plain);

        let logs = env.daemon.wait_conn_logs(4, Duration::from_secs(5))?;
        let lines = conn_fields(&env.daemon.stderr_text());
        for line in &lines {
            let (frontend, path, tls) = (
                field(line, "frontend"),
                field(line, "path"),
                field(line, "tls"),
            );
            let expected = if frontend == "plain" {
                ("kernel", "none")
            } else {
                ("userspace", "client")
            };
            ensure!(
                (path, tls) == expected && CLOSED.contains(&field(line, "end")),
                "frontend {frontend}: path={path} tls={tls}, expected {expected:?}: {line}"
            );
        }
        ensure!(logs.len() == 4, "{} log lines: {logs:?}", logs.len());
        ensure!(
            handshake_errors(&env, "frontend", "fe")? == 0,
            "handshake errors counted"
        );
        env.finish()
    })
}

/// What a test intake saw of one TLS connection.
#[derive(Debug)]
struct IntakeSaw {
    sni: Option<String>,
    result: Result<(), String>,
}

/// A TLS intake presenting `leaf`: each connection's handshake outcome is recorded, and an
/// established one exchanges `len` bytes each way (hashed on both sides by the client).
async fn tls_intake(
    leaf: &Leaf,
    len: u64,
) -> anyhow::Result<(SocketAddr, Arc<Mutex<Vec<IntakeSaw>>>)> {
    let listener = listen(V4).await?;
    let addr = listener.local_addr()?;
    let config = server_config(leaf, None)?;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&config));
            let record = Arc::clone(&record);
            tokio::spawn(async move {
                match acceptor.accept(tcp).await {
                    Ok(stream) => {
                        let sni = stream.get_ref().1.server_name().map(str::to_owned);
                        let result = exchange_stream(stream, SEED_DOWN, len, len, Some(SEED_UP))
                            .await
                            .map(|_| ())
                            .map_err(|e| format!("{e:#}"));
                        record.lock().unwrap().push(IntakeSaw { sni, result });
                    }
                    Err(e) => record.lock().unwrap().push(IntakeSaw {
                        sni: None,
                        result: Err(e.to_string()),
                    }),
                }
            });
        }
    });
    Ok((addr, seen))
}

/// TLS origination: refused for an untrusted CA, a wrong name and an expired certificate (each
/// counted, and the reason in the log), and the next server tried after a refused one.
fn origination_verifies_the_intake(dp: Dataplane) -> anyhow::Result<()> {
    const LEN: u64 = 1 << 20;
    let netns = NetNs::new()?;
    let ns = &netns;
    let dir = cert_dir(ns)?;
    let ca = Ca::new("intake ca")?;
    let rogue = Ca::new("rogue ca")?;
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, &ca.pem)?;
    let good = ca.server(&["intake.test", "127.0.0.1"], Validity::Now)?;
    let untrusted = rogue.server(&["intake.test", "127.0.0.1"], Validity::Now)?;
    let wrong_name = ca.server(&["elsewhere.test"], Validity::Now)?;
    let expired = ca.server(&["intake.test", "127.0.0.1"], Validity::Expired)?;
    ns.block_on(Duration::from_secs(90), move || async move {
        let (untrusted_addr, untrusted_saw) = tls_intake(&untrusted, LEN).await?;
        let (wrong_addr, wrong_saw) = tls_intake(&wrong_name, LEN).await?;
        let (expired_addr, expired_saw) = tls_intake(&expired, LEN).await?;
        let (good_addr, good_saw) = tls_intake(&good, LEN).await?;

        // 1. Every server refused: three connections, one per server (retries = 0).
        let mut config = DaemonConfig::new(dp, vec![untrusted_addr, wrong_addr, expired_addr]);
        config.retries = 0;
        config.backend_extra = format!(
            "tls = {{ sni = \"intake.test\", ca_file = \"{}\" }}\n",
            ca_file.display()
        );
        let env = TestEnv::start(ns, config)?;
        let listen_addr = env.daemon.config.listen;
        for _ in 0..3 {
            let mut s = connect(listen_addr).await?;
            let (end, got) = drain_until_end(&mut s, Duration::from_secs(10)).await?;
            ensure!(
                got == 0,
                "a refused upstream still gave the client {got} bytes ({end:?})"
            );
        }
        env.daemon.wait_conn_logs(3, Duration::from_secs(5))?;
        let lines = conn_fields(&env.daemon.stderr_text());
        for (line, (addr, reason)) in lines.iter().zip([
            (untrusted_addr, "unknownissuer"),
            (wrong_addr, "not valid for name"),
            (expired_addr, "expired"),
        ]) {
            let detail = field(line, "detail").to_ascii_lowercase();
            ensure!(
                field(line, "end") == "connect_failed"
                    && detail.contains(reason)
                    && detail.contains(&addr.to_string()),
                "expected connect_failed for {addr} because {reason:?}: {line}"
            );
        }
        let errors = handshake_errors(&env, "backend", "be")?;
        ensure!(
            errors == 3,
            "{HANDSHAKE_ERRORS}{{side=backend}} is {errors}, expected 3"
        );
        let refused = handshake_reason(&env, "backend", "certificate")?;
        ensure!(
            refused == 3,
            "{HANDSHAKE_ERRORS}{{side=backend,reason=certificate}} is {refused}, expected 3"
        );
        for (saw, what) in [
            (&untrusted_saw, "untrusted"),
            (&wrong_saw, "wrong name"),
            (&expired_saw, "expired"),
        ] {
            let saw = saw.lock().unwrap();
            ensure!(
                saw.len() == 1 && saw[0].result.is_err() && saw[0].sni.is_none(),
                "{what} intake saw {saw:?}: expected one refused handshake"
            );
        }
        env.finish()?;

        // 2. A refused server, then a good one: the handshake failure moves to the next
        //    server. No `sni`: the servers are IP literals, verified against IP SANs.
        let mut config = DaemonConfig::new(dp, vec![untrusted_addr, good_addr]);
        config.listen = "127.0.0.1:7001".parse()?;
        config.admin = "127.0.0.1:9091".parse()?;
        config.retries = 1;
        config.backend_extra = format!("tls = {{ ca_file = \"{}\" }}\n", ca_file.display());
        let env = TestEnv::start(ns, config)?;
        let s = connect(env.daemon.config.listen).await?;
        let client = exchange_expecting(s, SEED_UP, LEN, LEN, Some(SEED_DOWN)).await?;
        ensure!(
            client.received.len == LEN && client.first_mismatch.is_none(),
            "client received {:?} (first mismatch {:?})",
            client.received,
            client.first_mismatch
        );
        let logs = env.daemon.wait_conn_logs(1, Duration::from_secs(5))?;
        check_conn_log(&logs[0], Dataplane::Userspace, LEN, LEN, CLOSED)?;
        ensure!(
            logs[0].server == good_addr.to_string(),
            "served by {}",
            logs[0].server
        );
        let errors = handshake_errors(&env, "backend", "be")?;
        ensure!(
            errors == 1,
            "{HANDSHAKE_ERRORS}{{side=backend}} is {errors}, expected 1"
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while good_saw.lock().unwrap().is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let saw = good_saw.lock().unwrap();
        ensure!(
            saw.len() == 1 && saw[0].result.is_ok() && saw[0].sni.is_none(),
            "good intake saw {saw:?}: expected one exchange, no SNI for an IP server"
        );
        drop(saw);
        env.finish()
    })
}

/// mTLS required: a client with a certificate of the CA passes, one without is refused. Garbage,
/// a plaintext HTTP request and a silent client on the TLS port are closed, counted and
/// logged with the reason, while a good connection runs at the same time.
fn mtls_and_bad_clients(dp: Dataplane) -> anyhow::Result<()> {
    const LEN: u64 = 256 * 1024;
    let netns = NetNs::new()?;
    let ns = &netns;
    let dir = cert_dir(ns)?;
    let ca = Ca::new("agents ca")?;
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, &ca.pem)?;
    let (cert, key) = ca
        .server(&["proxy.test"], Validity::Now)?
        .write(&dir, "proxy")?;
    let agent = ca.client("agent-1")?;
    let stranger = Ca::new("other ca")?.client("stranger")?;
    ns.block_on(Duration::from_secs(90), move || async move {
        let upstream = listen(V4).await?;
        let mut config = DaemonConfig::new(dp, vec![upstream.local_addr()?]);
        config.frontend_extra = frontend_tls(
            &cert,
            Some(&key),
            &format!(
                ", client_ca = \"{}\", handshake_timeout = \"1s\"",
                ca_file.display()
            ),
        );
        let env = TestEnv::start(ns, config)?;
        let addr = env.daemon.config.listen;

        // A silent client first: its handshake times out in its own task.
        let silent = connect(addr).await?;
        let good = async {
            let stream = tls_connect(addr, "proxy.test", client_config(&ca, Some(&agent))?).await?;
            let up = accept(&upstream).await?;
            let server = tokio::spawn(exchange_expecting(up, SEED_DOWN, LEN, LEN, Some(SEED_UP)));
            let client = exchange_stream(stream, SEED_UP, LEN, LEN, Some(SEED_DOWN)).await?;
            let server = server.await??;
            ensure!(
                client.received == server.sent && server.received == client.sent,
                "mTLS client: sent {:?} received {:?}; upstream sent {:?} received {:?}",
                client.sent,
                client.received,
                server.sent,
                server.received
            );
            anyhow::Ok(())
        };
        good.await.context("client with a good certificate")?;

        let mut silent = silent;
        let (end, got) = drain_until_end(&mut silent, Duration::from_secs(10)).await?;
        ensure!(
            end == ReadEnd::Eof && got == 0,
            "silent client: {end:?}, {got} bytes"
        );

        for (name, client) in [
            ("no certificate", None),
            ("foreign certificate", Some(&stranger)),
        ] {
            let refused = async {
                let config = client_config(&ca, client)?;
                let stream = tls_connect(addr, "proxy.test", config).await?;
                exchange_stream(stream, SEED_UP, 1024, LEN, None).await
            };
            if let Ok(x) = refused.await {
                bail!("client with {name} was served: {x:?}");
            }
        }

        for (name, bytes) in [
            (
                "plaintext HTTP",
                b"GET / HTTP/1.1\r\nHost: proxy.test\r\n\r\n".to_vec(),
            ),
            ("garbage", (0..=255u8).cycle().take(3000).collect()),
        ] {
            let mut s = connect(addr).await?;
            s.write_all(&bytes).await?;
            let (end, got) = drain_until_end(&mut s, Duration::from_secs(10)).await?;
            ensure!(
                end == ReadEnd::Eof,
                "{name}: connection ended with {end:?} after {got} bytes"
            );
            ensure!(
                got < 100,
                "{name}: the proxy answered {got} bytes (expected at most an alert)"
            );
        }

        let logs = env.daemon.wait_conn_logs(6, Duration::from_secs(5))?;
        let lines = conn_fields(&env.daemon.stderr_text());
        let failed: Vec<String> = lines
            .iter()
            .filter(|l| field(l, "end") == "tls_handshake_failed")
            .map(|l| field(l, "detail").to_owned())
            .collect();
        ensure!(
            failed.len() == 5,
            "5 failed handshakes expected in the log: {failed:?} ({logs:?})"
        );
        for (i, reason) in [
            "within 1s",
            "certificate",
            "certificate",
            "corrupt message",
            "corrupt message",
        ]
        .iter()
        .enumerate()
        {
            ensure!(
                failed[i].to_ascii_lowercase().contains(reason),
                "failed handshake {i} says {:?}, expected {reason:?}",
                failed[i]
            );
        }
        let errors = handshake_errors(&env, "frontend", "fe")?;
        ensure!(
            errors == 5,
            "{HANDSHAKE_ERRORS}{{side=frontend}} is {errors}, expected 5"
        );
        // The silent client timed out, the two without a trusted certificate were refused
        // for it, the plaintext and garbage clients did not speak TLS.
        for (reason, expected) in [("timeout", 1), ("certificate", 2), ("protocol", 2)] {
            let counted = handshake_reason(&env, "frontend", reason)?;
            ensure!(
                counted == expected,
                "{HANDSHAKE_ERRORS}{{side=frontend,reason={reason}}} is {counted}, expected {expected}"
            );
        }
        env.finish()
    })
}

/// Which sides of the bulk scenario are TLS.
#[derive(Clone, Copy, Debug)]
struct Sides {
    client: bool,
    upstream: bool,
}

/// 1 GiB each way at the same time through TLS: every byte arrives, in order, and the log line
/// and the counters account for exactly those bytes on the userspace path.
fn bulk(sides: Sides) -> anyhow::Result<()> {
    let _heavy = heavy();
    let netns = NetNs::new()?;
    let ns = &netns;
    let len = bulk_len();
    let dir = cert_dir(ns)?;
    let ca = Ca::new("bulk ca")?;
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, &ca.pem)?;
    let proxy_leaf = ca.server(&["proxy.test"], Validity::Now)?;
    let (cert, key) = proxy_leaf.write(&dir, "proxy")?;
    let intake_leaf = ca.server(&["intake.test"], Validity::Now)?;
    ns.block_on(Duration::from_secs(240), move || async move {
        let upstream = listen(V4).await?;
        let mut config = DaemonConfig::new(Dataplane::Kernel, vec![upstream.local_addr()?]);
        if sides.client {
            config.frontend_extra = frontend_tls(&cert, Some(&key), "");
        }
        if sides.upstream {
            config.backend_extra = format!(
                "tls = {{ sni = \"intake.test\", ca_file = \"{}\" }}\n",
                ca_file.display()
            );
        }
        let env = TestEnv::start(ns, config)?;
        let listen_addr = env.daemon.config.listen;
        let started = Instant::now();
        let intake_config = server_config(&intake_leaf, None)?;
        let server = tokio::spawn(async move {
            if sides.upstream {
                let s = tls_accept(&upstream, intake_config).await?;
                exchange_stream(s, SEED_DOWN, len, len, Some(SEED_UP)).await
            } else {
                let s = accept(&upstream).await?;
                exchange_expecting(s, SEED_DOWN, len, len, Some(SEED_UP)).await
            }
        });
        let client_tls = client_config(&ca, None)?;
        let client = tokio::spawn(async move {
            if sides.client {
                let s = tls_connect(listen_addr, "proxy.test", client_tls).await?;
                exchange_stream(s, SEED_UP, len, len, Some(SEED_DOWN)).await
            } else {
                let s = connect(listen_addr).await?;
                exchange_expecting(s, SEED_UP, len, len, Some(SEED_DOWN)).await
            }
        });
        let client = client.await?.context("client side")?;
        let server = server.await?.context("upstream side")?;
        let secs = started.elapsed().as_secs_f64();
        eprintln!(
            "tls bulk {sides:?}: {len} bytes each way in {secs:.2} s ({:.0} MB/s per direction)",
            len as f64 / secs / 1e6
        );
        ensure!(
            server.received == client.sent && client.received == server.sent,
            "client sent {:?} received {:?} (first mismatch {:?}); upstream sent {:?} \
             received {:?} (first mismatch {:?})",
            client.sent,
            client.received,
            client.first_mismatch,
            server.sent,
            server.received,
            server.first_mismatch
        );
        let logs = env.daemon.wait_conn_logs(1, Duration::from_secs(5))?;
        ensure!(logs.len() == 1, "{} log lines: {logs:?}", logs.len());
        check_conn_log(&logs[0], Dataplane::Userspace, len, len, CLOSED)?;
        agent_proxy_tests::checks::assert_bytes(
            &env.daemon,
            Dataplane::Userspace,
            len,
            len,
            (0, 0),
        )?;
        env.finish()
    })
}

/// SIGHUP (a reload of the whole config) re-reads the certificate: new connections get the new
/// one while an open connection carries on; a broken file makes the reload refused, with a log
/// line, and the current certificate stays.
fn reload_on_sighup(dp: Dataplane) -> anyhow::Result<()> {
    const PART: u64 = 256 * 1024;
    let netns = NetNs::new()?;
    let ns = &netns;
    let dir = cert_dir(ns)?;
    let ca = Ca::new("reload ca")?;
    let first = ca.server(&["proxy.test"], Validity::Now)?;
    let second = ca.server(&["proxy.test"], Validity::Now)?;
    let (cert, key) = first.write(&dir, "proxy")?;
    ns.block_on(Duration::from_secs(90), move || async move {
        let upstream = listen(V4).await?;
        let mut config = DaemonConfig::new(dp, vec![upstream.local_addr()?]);
        config.frontend_extra = frontend_tls(&cert, Some(&key), "");
        let env = TestEnv::start(ns, config)?;
        let addr = env.daemon.config.listen;
        let tls = client_config(&ca, None)?;
        let presented = |s: &agent_proxy_tests::tls::ClientStream| {
            s.get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .cloned()
        };

        // An open connection with the first certificate, halfway through its exchange.
        let mut old = tls_connect(addr, "proxy.test", Arc::clone(&tls)).await?;
        ensure!(
            presented(&old) == Some(first.der.clone()),
            "first certificate not presented"
        );
        let mut old_up = accept(&upstream).await?;
        send_pattern(&mut old, SEED_UP, PART).await?;
        old.flush().await?;
        let got = recv_exact(&mut old_up, PART).await?;

        let hup = |env: &TestEnv| {
            // SAFETY: signalling the daemon this test started.
            unsafe { libc::kill(env.daemon.pid() as libc::pid_t, libc::SIGHUP) };
        };
        let wait_log = |env: &TestEnv, text: &str, count: usize| -> anyhow::Result<()> {
            let deadline = Instant::now() + Duration::from_secs(10);
            while env.daemon.stderr_text().matches(text).count() < count {
                if Instant::now() > deadline {
                    bail!(
                        "no log line {text:?} after SIGHUP; stderr:\n{}",
                        env.daemon.stderr_text()
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(())
        };
        second.write(&dir, "proxy")?;
        hup(&env);
        wait_log(&env, r#""message":"reloaded""#, 1)?;

        let fresh = tls_connect(addr, "proxy.test", Arc::clone(&tls)).await?;
        ensure!(
            presented(&fresh) == Some(second.der.clone()),
            "new certificate not presented after SIGHUP"
        );
        let fresh_up = accept(&upstream).await?;
        let server = tokio::spawn(exchange_expecting(
            fresh_up,
            SEED_DOWN,
            PART,
            PART,
            Some(SEED_UP),
        ));
        let client = exchange_stream(fresh, SEED_UP, PART, PART, Some(SEED_DOWN)).await?;
        let server = server.await??;
        ensure!(
            client.received == server.sent && server.received == client.sent,
            "fresh connection corrupted"
        );

        // The old connection still works both ways.
        old_up.write_all(b"still here").await?;
        let mut buf = [0u8; 10];
        tokio::time::timeout(Duration::from_secs(10), old.read_exact(&mut buf)).await??;
        ensure!(&buf == b"still here", "old connection got {buf:?}");
        ensure!(got.len == PART, "old connection's first part");
        old.shutdown().await?;
        let (end, _) = drain_until_end(&mut old_up, Duration::from_secs(10)).await?;
        ensure!(end == ReadEnd::Eof, "old connection's upstream saw {end:?}");
        drop(old_up);
        let (end, _) = drain_until_end(&mut old, Duration::from_secs(10)).await?;
        ensure!(end == ReadEnd::Eof, "old connection's client saw {end:?}");

        // A broken certificate file: refused, logged, the second certificate stays.
        std::fs::write(
            &cert,
            "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
        )?;
        hup(&env);
        wait_log(&env, "reload refused", 1)?;
        let after = tls_connect(addr, "proxy.test", Arc::clone(&tls)).await?;
        ensure!(
            presented(&after) == Some(second.der.clone()),
            "a broken file replaced the certificate"
        );
        drop(after);
        let _ = accept(&upstream).await?;
        env.daemon.wait_conn_logs(3, Duration::from_secs(5))?;
        env.finish()
    })
}

#[test]
fn frontend_curl_openssl_sni() {
    run("frontend_curl_openssl_sni", frontend_with_curl_and_openssl);
}

#[test]
fn origination_verified() {
    run("origination_verified", origination_verifies_the_intake);
}

#[test]
fn mtls_garbage_silent() {
    run("mtls_garbage_silent", mtls_and_bad_clients);
}

#[test]
fn reload_sighup() {
    run("reload_sighup", reload_on_sighup);
}

#[test]
fn bulk_tls_to_plain() {
    run("bulk_tls_to_plain", |_| {
        bulk(Sides {
            client: true,
            upstream: false,
        })
    });
}

#[test]
fn bulk_plain_to_tls() {
    run("bulk_plain_to_tls", |_| {
        bulk(Sides {
            client: false,
            upstream: true,
        })
    });
}

#[test]
fn bulk_tls_to_tls() {
    run("bulk_tls_to_tls", |_| {
        bulk(Sides {
            client: true,
            upstream: true,
        })
    });
}

/// `agent-proxy check`: usable TLS files pass silently, `verify = false` passes with its
/// warning, a missing or broken file fails naming it. Needs no privileges.
#[test]
fn check_reads_tls_files_and_warns() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("agent-proxy-tls-check-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let ca = Ca::new("check ca")?;
    let (cert, key) = ca
        .server(&["proxy.test"], Validity::Now)?
        .write(&dir, "proxy")?;
    let broken = dir.join("broken.pem");
    std::fs::write(
        &broken,
        "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
    )?;
    let missing = dir.join("missing.pem");
    let check = |frontend_tls: &str, backend_tls: &str| -> anyhow::Result<(i32, String)> {
        let path = dir.join("agent-proxy.toml");
        std::fs::write(
            &path,
            format!(
                "[[frontend]]\nname = \"fe\"\nlisten = \"127.0.0.1:7000\"\nbackend = \"be\"\n\
                 {frontend_tls}\n[[backend]]\nname = \"be\"\nservers = [\"127.0.0.1:7001\"]\n\
                 {backend_tls}\n"
            ),
        )?;
        let out = std::process::Command::new(agent_proxy_tests::daemon::require_binary())
            .args(["check", "-c"])
            .arg(&path)
            .output()?;
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    };
    let good = frontend_tls(&cert, Some(&key), "");
    let config = dir.join("agent-proxy.toml").display().to_string();

    let (code, stderr) = check(&good, "tls = {}")?;
    ensure!(
        code == 0 && stderr.is_empty(),
        "good TLS files: exit {code}, stderr {stderr:?}"
    );

    let (code, stderr) = check(&good, "tls = { verify = false }")?;
    ensure!(
        code == 0
            && stderr.trim_end()
                == format!(
                    "{config}: warning: backend \"be\": tls verify = false: the servers' \
                     certificates are not checked, anyone on the path can impersonate them \
                     (use only in a lab)"
                ),
        "verify = false: exit {code}, stderr {stderr:?}"
    );

    for (what, frontend, backend, expect) in [
        (
            "missing cert",
            frontend_tls(&missing, Some(&key), ""),
            "",
            format!("frontend \"fe\": tls: cannot read {}", missing.display()),
        ),
        (
            "broken cert",
            frontend_tls(&broken, Some(&key), ""),
            "",
            format!("frontend \"fe\": tls: cannot read {}", broken.display()),
        ),
        (
            "key of another certificate",
            frontend_tls(&cert, Some(&dir.join("other.key")), ""),
            "",
            format!(
                "frontend \"fe\": tls: {}: the private key cannot be used with {}",
                dir.join("other.key").display(),
                cert.display()
            ),
        ),
        (
            "missing ca_file",
            good.clone(),
            &*format!("tls = {{ ca_file = \"{}\" }}", missing.display()),
            format!("backend \"be\": tls: cannot read {}", missing.display()),
        ),
    ] {
        if what.starts_with("key of another") {
            ca.server(&["other.test"], Validity::Now)?
                .write(&dir, "other")?;
        }
        let (code, stderr) = check(&frontend, backend)?;
        ensure!(
            code == 1 && stderr.starts_with(&format!("{config}: {expect}")),
            "{what}: exit {code}, stderr {stderr:?}, expected it to start with {config}: {expect}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
