//! SIGHUP reloads the whole config (issue 15): frontends and backends added, changed and
//! removed while a paced stream is carried (spliced on the kernel path, relayed on the
//! userspace one) and a client keeps opening connections to a frontend whose address does not
//! change. The stream stays byte-exact across every reload, no connection of that client is
//! refused, and a broken config, or one changing what only a restart can, is refused -
//! counted, logged, shown on `/stats` - while the previous config keeps serving.
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use agent_proxy_tests::echo::{echo_once, echo_server, paced};
use agent_proxy_tests::netns::NetNs;
use agent_proxy_tests::pattern::Pattern;
use agent_proxy_tests::peers::{V4, accept, connect, listen, recv_checked};
use agent_proxy_tests::{DaemonConfig, Dataplane, TestEnv, dataplane_tests};
use anyhow::{Context as _, bail, ensure};
use tokio::net::TcpStream;

const STREAM: &str = "127.0.0.1:7000";
const STEADY: &str = "127.0.0.1:7001";
const ADDED: &str = "127.0.0.1:7002";
const ADMIN: &str = "127.0.0.1:9090";
/// The paced stream: this many chunks each way, one every PAUSE.
const CHUNKS: u64 = 120;
const CHUNK: usize = 16 * 1024;
const PAUSE: Duration = Duration::from_millis(25);
const SEED_UP: u64 = 71;
const SEED_DOWN: u64 = 72;

fn addr(text: &str) -> SocketAddr {
    text.parse().expect("valid address")
}

/// The config files of the scenario: `stream` -> `be` (the paced stream's upstream),
/// `steady` -> `echo`, and optionally `added` -> `echo2`; `global` and `extra` lines as given.
fn config_text(dp: Dataplane, servers: &Servers, step: Step) -> String {
    let global = format!(
        "[global]\ndataplane = \"{dp}\"\nadmin = \"{ADMIN}\"\ndrain_timeout = \"2s\"\n\
         log_format = \"json\"\n{}",
        dp.extra_global()
    );
    let mut text = global;
    // `stream`'s settings change along the way; its address does not.
    let stream_extra = match step {
        Step::Start => "",
        _ => "max_connections = 100\nidle_timeout = \"10m\"\n",
    };
    text += &format!(
        "\n[[frontend]]\nname = \"stream\"\nlisten = \"{STREAM}\"\nbackend = \"be\"\n{stream_extra}"
    );
    text +=
        &format!("\n[[frontend]]\nname = \"steady\"\nlisten = \"{STEADY}\"\nbackend = \"echo\"\n");
    if step == Step::Added {
        text += &format!(
            "\n[[frontend]]\nname = \"added\"\nlisten = \"{ADDED}\"\nbackend = \"echo2\"\n"
        );
    }
    text += &format!(
        "\n[[backend]]\nname = \"be\"\nservers = [\"{}\"]\n",
        servers.stream
    );
    // A change of the steady frontend's backend: a second server, another balance.
    let echo = match step {
        Step::Start | Step::Added => format!("servers = [\"{}\"]\n", servers.echo[0]),
        Step::Removed => format!(
            "servers = [\"{}\", \"{}\"]\nbalance = \"leastconn\"\n",
            servers.echo[0], servers.echo[1]
        ),
    };
    text += &format!("\n[[backend]]\nname = \"echo\"\n{echo}");
    if step == Step::Added {
        text += &format!(
            "\n[[backend]]\nname = \"echo2\"\nservers = [\"{}\"]\n",
            servers.echo[1]
        );
    }
    text
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Step {
    Start,
    /// `added` and `echo2` added, `stream` changed.
    Added,
    /// `added` and `echo2` removed, `echo` changed.
    Removed,
}

struct Servers {
    stream: SocketAddr,
    echo: [SocketAddr; 2],
}

/// Sends SIGHUP and waits until `agent_proxy_config_reloads_total{result}` reaches `count`.
fn reload(env: &TestEnv, result: &str, count: u64) -> anyhow::Result<()> {
    // SAFETY: signalling the daemon this test started.
    let sent = unsafe { libc::kill(env.daemon.pid() as libc::pid_t, libc::SIGHUP) };
    ensure!(sent == 0, "SIGHUP");
    let m = env.daemon.settle(Duration::from_secs(10), |m| {
        m.count("agent_proxy_config_reloads_total", &[("result", result)]) >= count
    })?;
    let got = m.count("agent_proxy_config_reloads_total", &[("result", result)]);
    ensure!(
        got == count,
        "agent_proxy_config_reloads_total{{result=\"{result}\"}} = {got}, expected {count}; \
         stderr:\n{}",
        env.daemon.stderr_text()
    );
    let successful = m.get("agent_proxy_config_last_reload_successful", &[]);
    let expected = if result == "ok" { 1.0 } else { 0.0 };
    ensure!(
        successful == Some(expected),
        "agent_proxy_config_last_reload_successful = {successful:?} after reload {result} \
         number {count} (ok {}, error {})",
        m.count("agent_proxy_config_reloads_total", &[("result", "ok")]),
        m.count("agent_proxy_config_reloads_total", &[("result", "error")])
    );
    Ok(())
}

/// `/stats`' `reload` object.
fn reload_status(env: &TestEnv) -> anyhow::Result<serde_json::Value> {
    let (code, body) = env.daemon.get("/stats")?;
    ensure!(code == 200, "/stats answered {code}");
    let doc: serde_json::Value = serde_json::from_str(&body)?;
    Ok(doc["reload"].clone())
}

fn reloads_keep_connections(dp: Dataplane) -> anyhow::Result<()> {
    let netns = NetNs::new()?;
    let ns = &netns;
    ns.block_on(Duration::from_secs(90), move || async move {
        let stream_up = listen(V4).await?;
        let (echo_a, echo_b) = (listen(V4).await?, listen(V4).await?);
        let servers = Servers {
            stream: stream_up.local_addr()?,
            echo: [echo_a.local_addr()?, echo_b.local_addr()?],
        };
        let echoed_b = Arc::new(AtomicU64::new(0));
        echo_server(echo_a, Arc::new(AtomicU64::new(0)));
        echo_server(echo_b, Arc::clone(&echoed_b));
        let mut config = DaemonConfig::new(dp, vec![servers.stream]);
        config.listen = addr(STREAM);
        config.admin = addr(ADMIN);
        config.toml_override = Some(config_text(dp, &servers, Step::Start));
        let env = TestEnv::start(ns, config)?;
        let file = env.daemon.config_path().to_path_buf();

        // The paced stream, both ways.
        let client = connect(addr(STREAM)).await?;
        let upstream = accept(&stream_up).await?;
        let (client_r, client_w) = client.into_split();
        let (up_r, up_w) = upstream.into_split();
        let writers = tokio::spawn(async move {
            tokio::try_join!(
                paced(client_w, SEED_UP, CHUNKS, CHUNK, PAUSE),
                paced(up_w, SEED_DOWN, CHUNKS, CHUNK, PAUSE)
            )
        });
        let readers = tokio::spawn(async move {
            let (mut client_r, mut up_r) = (client_r, up_r);
            let limit = CHUNKS * CHUNK as u64;
            tokio::try_join!(
                recv_checked(&mut up_r, limit, Some(SEED_UP)),
                recv_checked(&mut client_r, limit, Some(SEED_DOWN))
            )
        });

        // A client that keeps connecting to the steady frontend through every reload.
        let stop = Arc::new(AtomicBool::new(false));
        let hammer = {
            let stop = Arc::clone(&stop);
            tokio::spawn(async move {
                let (mut ok, mut failures) = (0u64, Vec::new());
                let mut seed = 1000;
                while !stop.load(Ordering::SeqCst) {
                    seed += 1;
                    match echo_once(addr(STEADY), seed, 2048).await {
                        Ok(()) => ok += 1,
                        Err(e) => failures.push(format!("{e:#}")),
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                (ok, failures)
            })
        };

        // 1. Add a frontend and a backend, change another frontend.
        tokio::time::sleep(Duration::from_millis(300)).await;
        std::fs::write(&file, config_text(dp, &servers, Step::Added))?;
        reload(&env, "ok", 1)?;
        echo_once(addr(ADDED), 1, 2048)
            .await
            .context("the added frontend")?;
        ensure!(echoed_b.load(Ordering::SeqCst) >= 1, "echo2 never reached");

        // 2. Remove them; the steady frontend's backend gains a server.
        tokio::time::sleep(Duration::from_millis(300)).await;
        std::fs::write(&file, config_text(dp, &servers, Step::Removed))?;
        reload(&env, "ok", 2)?;
        match TcpStream::connect(addr(ADDED)).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
            other => bail!("the removed frontend still accepts: {other:?}"),
        }
        let before = echoed_b.load(Ordering::SeqCst);
        for i in 0..6 {
            echo_once(addr(STEADY), 50 + i, 2048).await?;
        }
        ensure!(
            echoed_b.load(Ordering::SeqCst) > before,
            "the steady frontend's backend did not take its new server"
        );

        // 3. A broken file: refused, with its position; nothing served changes.
        std::fs::write(&file, "[global\n")?;
        reload(&env, "error", 1)?;
        let status = reload_status(&env)?;
        let error = status["last"]["error"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        ensure!(
            status["last"]["result"] == "error"
                && error.starts_with(&format!("{}:1:8: ", file.display())),
            "/stats reload after a broken file: {status}"
        );
        ensure!(
            env.daemon.stderr_text().contains("reload refused"),
            "no log line for the refused reload"
        );
        match TcpStream::connect(addr(ADDED)).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
            other => bail!("a refused reload changed the frontends: {other:?}"),
        }

        // 4. A change only a restart can make: refused by name.
        let other = if dp.is_kernel() {
            "userspace"
        } else {
            "kernel"
        };
        let text = config_text(dp, &servers, Step::Removed).replace(
            &format!("dataplane = \"{dp}\""),
            &format!("dataplane = \"{other}\""),
        );
        std::fs::write(&file, text)?;
        reload(&env, "error", 2)?;
        let status = reload_status(&env)?;
        let error = status["last"]["error"].as_str().unwrap_or_default();
        ensure!(
            error.contains("global.dataplane cannot change on reload"),
            "/stats reload after a dataplane change: {status}"
        );

        // 5. A valid file again.
        std::fs::write(&file, config_text(dp, &servers, Step::Removed))?;
        reload(&env, "ok", 3)?;
        let status = reload_status(&env)?;
        ensure!(
            status["reloads"] == 5 && status["last"]["result"] == "ok",
            "/stats reload at the end: {status}"
        );

        let ((), ()) = writers.await??;
        let ((up, up_mismatch), (down, down_mismatch)) = readers.await??;
        let len = CHUNKS * CHUNK as u64;
        ensure!(
            up.len == len && up.hash == Pattern::hash(SEED_UP, len) && up_mismatch.is_none(),
            "the paced stream's upstream received {up:?} (first mismatch {up_mismatch:?})"
        );
        ensure!(
            down.len == len
                && down.hash == Pattern::hash(SEED_DOWN, len)
                && down_mismatch.is_none(),
            "the paced stream's client received {down:?} (first mismatch {down_mismatch:?})"
        );
        stop.store(true, Ordering::SeqCst);
        let (ok, failures) = hammer.await?;
        eprintln!("reload [{dp}]: {ok} connections to the steady frontend during the reloads");
        ensure!(
            failures.is_empty(),
            "{} of {} connections to the steady frontend failed during reloads: {:?}",
            failures.len(),
            ok + failures.len() as u64,
            &failures[..failures.len().min(5)]
        );
        ensure!(ok >= 50, "only {ok} connections during the reloads");

        // The paced stream was carried on the path asked for, and ended cleanly.
        let started = Instant::now();
        let logs = loop {
            let logs = env.daemon.conn_logs();
            if logs.iter().any(|l| l.frontend == "stream")
                || started.elapsed() > Duration::from_secs(5)
            {
                break logs;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let stream = logs
            .iter()
            .find(|l| l.frontend == "stream")
            .context("no log line for the paced stream")?;
        ensure!(
            stream.path == dp.as_str() && stream.bytes_up == len && stream.bytes_down == len,
            "the paced stream's log line: {stream:?}"
        );
        env.finish()
    })
}

dataplane_tests!(reloads_keep_connections);
