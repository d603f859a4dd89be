//! A client that closes or resets in the middle of its request head is a finished connection:
//! for every prefix of a valid CONNECT head (0, 1, ..., n-1 bytes), sent and then closed (FIN)
//! or reset (RST), the daemon logs and counts the connection, releases its slot, and keeps
//! answering `/healthz` within a second. Issue 21: one client that sent `C` and closed put the
//! head reader into a loop that never yielded, and the whole daemon stopped answering.
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use agent_proxy_tests::admin::http_get;
use agent_proxy_tests::connect::{
    PASSWORD, USER, basic_auth, closed_lines, connect_config, connect_head, field,
};
use agent_proxy_tests::netns::NetNs;
use agent_proxy_tests::peers::{connect, linger_zero};
use agent_proxy_tests::{Dataplane, TestEnv, dataplane_tests};
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
        let mut clients = 0;
        for reset in [false, true] {
            for n in 0..head.len() {
                let mut s = connect(proxy).await?;
                if n > 0 {
                    s.write_all(&head[..n]).await?;
                }
                if reset {
                    linger_zero(&s)?;
                }
                drop(s);
                clients += 1;
                let how = if reset { "reset" } else { "close" };
                healthz(
                    admin,
                    &format!("a {how} after {n} of {} head bytes", head.len()),
                )
                .await?;
            }
        }
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

dataplane_tests!(head_prefixes);
