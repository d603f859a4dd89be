//! A client that closes or resets in the middle of its request head is a finished connection:
//! for every prefix of a valid CONNECT head (0, 1, ..., n-1 bytes), sent and then closed (FIN)
//! or reset (RST), the daemon logs and counts the connection, releases its slot, and keeps
//! answering `/healthz` within a second. Issue 21: one client that sent `C` and closed put the
//! head reader into a loop that never yielded, and the whole daemon stopped answering. The
//! other per-connection read before any byte is carried, a TLS frontend's handshake, gets the
//! same treatment with every prefix of a real ClientHello.
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use agent_proxy_tests::admin::http_get;
use agent_proxy_tests::connect::{
    PASSWORD, USER, basic_auth, closed_lines, connect_config, connect_head, field,
};
use agent_proxy_tests::netns::NetNs;
use agent_proxy_tests::peers::{V4, connect, linger_zero, listen};
use agent_proxy_tests::tls::{Ca, Validity, cert_dir, client_config};
use agent_proxy_tests::{DaemonConfig, Dataplane, TestEnv, dataplane_tests};
use anyhow::{Context as _, ensure};
use tokio::io::AsyncWriteExt as _;

/// How long `/healthz` may take after each client; the daemon answers in microseconds when
/// it is not stuck.
const HEALTHZ_WITHIN: Duration = Duration::from_secs(1);

/// `GET /healthz` from a blocking thread, bounded by [`HEALTHZ_WITHIN`].
async fn healthz(admin: SocketAddr, after: &str) -> anyhow::Result<()> {
    let started = Instant::now();
    let answer = tokio::time::timeout(
        HEALTHZ_WITHIN,
        tokio::task::spawn_blocking(move || http_get(admin, "/healthz")),
    )
    .await
    .with_context(|| format!("/healthz did not answer within {HEALTHZ_WITHIN:?} after {after}"))?
    .context("join")?
    .with_context(|| format!("/healthz after {after}"))?;
    ensure!(
        answer.0 == 200,
        "/healthz answered {} after {after} ({:?})",
        answer.0,
        started.elapsed()
    );
    Ok(())
}

/// For every strict prefix of `bytes`: a client connects, sends it, closes (then, in a second
/// pass, resets), and `/healthz` must answer within [`HEALTHZ_WITHIN`] after each. Returns the
/// number of clients.
async fn leave_after_each_prefix(
    proxy: SocketAddr,
    admin: SocketAddr,
    bytes: &[u8],
    what: &str,
) -> anyhow::Result<usize> {
    let mut clients = 0;
    for reset in [false, true] {
        for n in 0..bytes.len() {
            let mut s = connect(proxy).await?;
            if n > 0 {
                s.write_all(&bytes[..n]).await?;
            }
            if reset {
                linger_zero(&s)?;
            }
            drop(s);
            clients += 1;
            let how = if reset { "reset" } else { "close" };
            healthz(
                admin,
                &format!("a {how} after {n} of {} {what} bytes", bytes.len()),
            )
            .await?;
        }
    }
    Ok(clients)
}

fn head_prefixes(dp: Dataplane) -> anyhow::Result<()> {
    let netns = NetNs::new()?;
    let ns = &netns;
    ns.block_on(Duration::from_secs(120), move || async move {
        // A request timeout far beyond the test: only the close itself may end a connection.
        let extra = "request_timeout = \"60s\"\n";
        let env = TestEnv::start(
            ns,
            connect_config(dp, &["127.0.0.1:9".to_owned()], true, extra),
        )?;
        let (proxy, admin) = (env.daemon.config.listen, env.daemon.config.admin);
        let head = connect_head("127.0.0.1:9", &basic_auth(USER, PASSWORD)).into_bytes();
        let clients = leave_after_each_prefix(proxy, admin, &head, "head").await?;
        env.daemon
            .wait_conn_logs(clients, Duration::from_secs(10))?;
        let lines = closed_lines(&env.daemon.stderr_text());
        ensure!(
            lines.len() == clients,
            "{} log lines for {clients} clients",
            lines.len()
        );
        for line in &lines {
            ensure!(
                field(line, "status") == "-"
                    && ["client_close", "client_reset"].contains(&field(line, "end").as_str())
                    && field(line, "path") == "none",
                "a client gone mid-head: {line}"
            );
        }
        let m = env.daemon.settle(Duration::from_secs(5), |m| {
            m.sum("agent_proxy_frontend_current_connections", &[]) == 0.0
        })?;
        let total = m.count("agent_proxy_frontend_connections_total", &[]);
        ensure!(
            total == clients as u64,
            "agent_proxy_frontend_connections_total = {total}, {clients} clients"
        );
        let current = m.sum("agent_proxy_frontend_current_connections", &[]);
        ensure!(current == 0.0, "{current} connections still open");
        env.finish()
    })
}

/// A real TLS ClientHello for `proxy.test`, as rustls writes it.
fn client_hello(ca: &Ca) -> anyhow::Result<Vec<u8>> {
    let config = client_config(ca, None)?;
    let name = rustls_pki_types::ServerName::try_from("proxy.test")?;
    let mut conn = rustls::ClientConnection::new(config, name)?;
    let mut hello = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut hello)?;
    }
    Ok(hello)
}

/// The same for a TLS frontend: every prefix of a ClientHello, then a close or a reset. The
/// handshake ends at once (`end=tls_handshake_failed`), nothing is dialed, `/healthz` answers.
fn handshake_prefixes(dp: Dataplane) -> anyhow::Result<()> {
    let netns = NetNs::new()?;
    let ns = &netns;
    let dir = cert_dir(ns)?;
    let ca = Ca::new("prefix ca")?;
    let (cert, key) = ca
        .server(&["proxy.test"], Validity::Now)?
        .write(&dir, "proxy")?;
    let hello = client_hello(&ca)?;
    ns.block_on(Duration::from_secs(120), move || async move {
        let upstream = listen(V4).await?;
        let mut config = DaemonConfig::new(dp, vec![upstream.local_addr()?]);
        config.frontend_extra = format!(
            "tls = {{ cert = \"{}\", key = \"{}\", handshake_timeout = \"60s\" }}\n",
            cert.display(),
            key.display()
        );
        let env = TestEnv::start(ns, config)?;
        let (proxy, admin) = (env.daemon.config.listen, env.daemon.config.admin);
        let clients = leave_after_each_prefix(proxy, admin, &hello, "ClientHello").await?;
        let logs = env
            .daemon
            .wait_conn_logs(clients, Duration::from_secs(20))?;
        ensure!(
            logs.len() == clients,
            "{} log lines for {clients} clients",
            logs.len()
        );
        for log in &logs {
            ensure!(
                log.end == "tls_handshake_failed",
                "a client gone mid-handshake: {log:?}"
            );
        }
        let accepted = tokio::time::timeout(Duration::from_millis(100), upstream.accept()).await;
        ensure!(
            accepted.is_err(),
            "the upstream was dialed for a client without a handshake"
        );
        env.finish()
    })
}

dataplane_tests!(head_prefixes, handshake_prefixes);
