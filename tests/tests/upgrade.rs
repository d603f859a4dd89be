//! SIGUSR2 upgrades in place (issue 18): the daemon starts its binary anew and hands it the
//! listening sockets; the new process serves, then the old one stops accepting, hands its
//! kernel-spliced connections over (their sockets and the maps they are in) and drains the
//! rest. Across two upgrades in a row a client connecting every 10 ms sees no failure, a paced
//! stream opened before them finishes byte-exact, the pid file follows the newest process, and
//! nothing is left behind. On the kernel path for remote agents the stream moves with each
//! upgrade: each old process exits while it still flows, the newest keeps counting its bytes
//! as kernel bytes, and logs its one line with its whole life and nothing copied in userspace.
//! Elsewhere (the relay; a same-host agent's connection, paired with the upstream socket) the
//! stream finishes in the process that accepted it. A keep-alive connection idle across both
//! upgrades answers exactly after them (moved too, on the kernel path for remote agents), and
//! a TLS connection busy across the first upgrade finishes in the old process, byte-exact. A
//! broken new binary changes nothing: the old process keeps serving and counts the failure.
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use agent_proxy_tests::bpftool;
use agent_proxy_tests::echo::{echo_once, echo_server, paced};
use agent_proxy_tests::netns::NetNs;
use agent_proxy_tests::pattern::Pattern;
use agent_proxy_tests::peers::{V4, accept, connect, listen, recv_checked};
use agent_proxy_tests::tls::{Ca, Validity, cert_dir, client_config, tls_connect};
use agent_proxy_tests::{DaemonConfig, Dataplane, TestEnv, dataplane_tests};
use anyhow::{Context as _, bail, ensure};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const CHUNKS: u64 = 320;
const CHUNK: usize = 16 * 1024;
const PAUSE: Duration = Duration::from_millis(25);

fn pid_in(file: &std::path::Path) -> Option<u32> {
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
}

/// Whether `pid` is gone (or a zombie nobody reaped yet).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// SIGUSR2 to `pid`; waits until the pid file names another process that serves.
async fn upgrade(pid: u32, pid_file: &std::path::Path) -> anyhow::Result<u32> {
    // SAFETY: signalling a daemon this test started (or its successor).
    let sent = unsafe { libc::kill(pid as libc::pid_t, libc::SIGUSR2) };
    ensure!(sent == 0, "SIGUSR2 to {pid}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(new) = pid_in(pid_file).filter(|&p| p != pid) {
            return Ok(new);
        }
        if Instant::now() > deadline {
            bail!(
                "no new process in {} 30 s after SIGUSR2",
                pid_file.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// After an upgrade from `old` on the kernel path for remote agents: `old` handed the stream
/// over and exits while the stream still flows, and the process that serves now counts the
/// stream's kernel bytes as they move.
async fn handed_over<T>(
    old: u32,
    readers: &tokio::task::JoinHandle<T>,
    env: &TestEnv,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(3);
    while !gone(old) {
        ensure!(
            Instant::now() < deadline,
            "process {old} still runs 3 s after the upgrade: the stream was not handed over"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ensure!(
        !readers.is_finished(),
        "the stream ended before process {old} exited: nothing shows it moved"
    );
    let kernel_up = |env: &TestEnv| -> anyhow::Result<f64> {
        let m = env.daemon.metrics()?;
        Ok(m.sum(
            "agent_proxy_bytes_total",
            &[
                ("frontend", "fe"),
                ("direction", "upstream"),
                ("path", "kernel"),
            ],
        ))
    };
    let before = kernel_up(env)?;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let after = kernel_up(env)?;
    ensure!(
        after > before && !readers.is_finished(),
        "after process {old} exited its successor counted kernel bytes {before} -> {after}"
    );
    Ok(())
}

/// One echo round on a kept connection: 1,000 bytes of pattern `seed` out and back, exact.
async fn idle_round<S>(conn: &mut S, seed: u64) -> anyhow::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut out = vec![0u8; 1000];
    Pattern::new(seed).fill(&mut out);
    conn.write_all(&out).await?;
    let mut back = vec![0u8; out.len()];
    tokio::time::timeout(Duration::from_secs(10), conn.read_exact(&mut back))
        .await
        .context("echo stalled")??;
    ensure!(back == out, "the echo differs");
    Ok(())
}

/// The ids of the eBPF maps `pid` holds.
fn maps_of(pid: u32) -> std::collections::BTreeSet<u64> {
    bpftool::map_ids_of(pid).unwrap_or_default()
}

fn upgrades_keep_serving(dp: Dataplane) -> anyhow::Result<()> {
    let netns = NetNs::new()?;
    let ns = &netns;
    let held = std::sync::Mutex::new(std::collections::BTreeSet::new());
    let pid_file = std::env::temp_dir().join(format!("agent-proxy-upgrade-{}.pid", ns.name()));
    let _ = std::fs::remove_file(&pid_file);
    // Kernel-spliced connections of remote agents move to the new process; a same-host
    // agent's (paired with the upstream socket) and relayed ones drain in the old.
    let moves = dp == Dataplane::KernelRemote;
    let result = ns.block_on(Duration::from_secs(120), || async {
        let echo = listen(V4).await?;
        let stream_up = listen(V4).await?;
        let echo_addr = echo.local_addr()?;
        echo_server(echo, Arc::default());
        let mut config = DaemonConfig::new(dp, vec![stream_up.local_addr()?]);
        config.drain_timeout = Duration::from_secs(20);
        // systemd's side, played by a datagram socket: the daemon's notifications.
        let notify_path = std::env::temp_dir().join(format!("agent-proxy-notify-{}", ns.name()));
        let _ = std::fs::remove_file(&notify_path);
        let notify = std::os::unix::net::UnixDatagram::bind(&notify_path)?;
        notify.set_read_timeout(Some(Duration::from_secs(10)))?;
        config.exec_prefix = vec![
            "env".into(),
            format!("NOTIFY_SOCKET={}", notify_path.display()),
        ];
        config.global_extra = format!("pid_file = \"{}\"\n", pid_file.display());
        let mut env = TestEnv::start(ns, config)?;
        let addr = env.daemon.config.listen;
        // A second frontend for the many short connections (the first carries the stream).
        let steady: SocketAddr = "127.0.0.1:7001".parse()?;
        // And a TLS-terminating one (relayed in userspace whatever the data path).
        let tls_fe: SocketAddr = "127.0.0.1:7002".parse()?;
        let dir = cert_dir(ns)?;
        let ca = Ca::new("upgrade ca")?;
        let (cert, key) = ca
            .server(&["proxy.test"], Validity::Now)?
            .write(&dir, "proxy")?;
        let text = std::fs::read_to_string(env.daemon.config_path())?
            + &format!(
                "\n[[frontend]]\nname = \"steady\"\nlisten = \"{steady}\"\nbackend = \"echo\"\n\
                 \n[[frontend]]\nname = \"tlsfe\"\nlisten = \"{tls_fe}\"\nbackend = \"echo\"\n\
                 tls = {{ cert = \"{}\", key = \"{}\" }}\n\
                 \n[[backend]]\nname = \"echo\"\nservers = [\"{echo_addr}\"]\n",
                cert.display(),
                key.display()
            );
        std::fs::write(env.daemon.config_path(), text)?;
        // SAFETY: signalling the daemon this test started.
        ensure!(unsafe { libc::kill(env.daemon.pid() as libc::pid_t, libc::SIGHUP) } == 0);
        let first = env.daemon.pid();
        let deadline = Instant::now() + Duration::from_secs(10);
        while echo_once(steady, 1, 1024).await.is_err() {
            ensure!(
                Instant::now() < deadline,
                "the steady frontend never came up"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        ensure!(
            pid_in(&pid_file) == Some(first),
            "pid file before the upgrades"
        );

        // A keep-alive connection that is idle across the upgrades: one round before, one
        // after (on the kernel path for remote agents it moves with each upgrade).
        let mut idle = connect(steady).await?;
        idle_round(&mut idle, 1)
            .await
            .context("idle connection, before")?;

        // The paced stream, both ways, accepted by the first process.
        let client = connect(addr).await?;
        let upstream = accept(&stream_up).await?;
        let (client_r, client_w) = client.into_split();
        let (up_r, up_w) = upstream.into_split();
        let writers = tokio::spawn(async move {
            tokio::try_join!(
                paced(client_w, 11, CHUNKS, CHUNK, PAUSE),
                paced(up_w, 12, CHUNKS, CHUNK, PAUSE)
            )
        });
        let readers = tokio::spawn(async move {
            let (mut client_r, mut up_r) = (client_r, up_r);
            let limit = CHUNKS * CHUNK as u64;
            tokio::try_join!(
                recv_checked(&mut up_r, limit, Some(11)),
                recv_checked(&mut client_r, limit, Some(12))
            )
        });
        let stop = Arc::new(AtomicBool::new(false));
        let hammer = {
            let stop = Arc::clone(&stop);
            tokio::spawn(async move {
                let (mut ok, mut failures) = (0u64, Vec::new());
                let mut seed = 100;
                while !stop.load(Ordering::SeqCst) {
                    seed += 1;
                    match echo_once(steady, seed, 1024).await {
                        Ok(()) => ok += 1,
                        Err(e) => failures.push(format!("{e:#}")),
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                (ok, failures)
            })
        };

        // A TLS connection relayed by the first process, busy across its upgrade: it finishes
        // there, byte-exact (20 rounds 50 ms apart, then a clean end).
        let mut tls = tls_connect(tls_fe, "proxy.test", client_config(&ca, None)?).await?;
        idle_round(&mut tls, 3)
            .await
            .context("TLS connection, first round")?;
        let tls_task = tokio::spawn(async move {
            for round in 0..20 {
                idle_round(&mut tls, 10 + round).await?;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            tls.shutdown().await?;
            let mut rest = Vec::new();
            tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut rest))
                .await
                .context("no EOF")??;
            ensure!(rest.is_empty(), "{} stray bytes", rest.len());
            anyhow::Ok(())
        });

        tokio::time::sleep(Duration::from_millis(300)).await;
        held.lock().unwrap().extend(maps_of(first));
        let second = upgrade(first, &pid_file).await?;
        eprintln!("upgrade [{dp}]: {first} -> {second}");
        if moves {
            handed_over(first, &readers, &env).await?;
        } else {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        held.lock().unwrap().extend(maps_of(second));
        let third = upgrade(second, &pid_file).await?;
        eprintln!("upgrade [{dp}]: {second} -> {third}");
        if moves {
            handed_over(second, &readers, &env).await?;
        } else {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        held.lock().unwrap().extend(maps_of(third));

        let ((), ()) = writers.await??;
        let ((up, up_mismatch), (down, down_mismatch)) = readers.await??;
        let len = CHUNKS * CHUNK as u64;
        ensure!(
            up.len == len && up.hash == Pattern::hash(11, len) && up_mismatch.is_none(),
            "the stream's upstream received {up:?} ({up_mismatch:?})"
        );
        ensure!(
            down.len == len && down.hash == Pattern::hash(12, len) && down_mismatch.is_none(),
            "the stream's client received {down:?} ({down_mismatch:?})"
        );
        tls_task
            .await?
            .context("the TLS connection open across the first upgrade")?;
        idle_round(&mut idle, 2)
            .await
            .context("idle connection, after the upgrades")?;
        idle.shutdown().await?;
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), idle.read_to_end(&mut rest))
            .await
            .context("idle connection: no EOF")??;
        ensure!(
            rest.is_empty(),
            "idle connection: {} stray bytes",
            rest.len()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.store(true, Ordering::SeqCst);
        let (ok, failures) = hammer.await?;
        eprintln!("upgrade [{dp}]: {ok} connections every 10 ms through two upgrades");
        ensure!(
            failures.is_empty(),
            "{} of {} connections failed during the upgrades: {:?}",
            failures.len(),
            ok + failures.len() as u64,
            &failures[..failures.len().min(5)]
        );
        ensure!(ok >= 50, "only {ok} connections");

        // The first process exits by itself once its stream ended, with status 0; the second
        // had nothing left to drain.
        let status = env.daemon.wait_exit(Duration::from_secs(15))?;
        ensure!(status.success(), "the first process exited with {status}");
        let deadline = Instant::now() + Duration::from_secs(15);
        while !gone(second) {
            ensure!(
                Instant::now() < deadline,
                "the second process {second} did not exit"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        ensure!(!gone(third), "the newest process is gone");
        let log = env.daemon.stderr_text();
        let served = log.matches("upgrade: the new process serves").count();
        ensure!(served == 2, "{served} upgrades logged as served:\n{log}");
        // The stream's one log line: carried on the data path asked for - by the first
        // process, or (moved) by the newest, with its whole life and nothing copied.
        let streams: Vec<_> = env
            .daemon
            .conn_logs()
            .into_iter()
            .filter(|l| l.frontend == "fe")
            .collect();
        ensure!(streams.len() == 1, "the stream's log lines: {streams:?}");
        let stream = &streams[0];
        ensure!(
            stream.path == dp.as_str() && stream.bytes_up == len && stream.bytes_down == len,
            "the stream's log line: {stream:?}"
        );
        if moves {
            ensure!(
                stream.userspace_up == 0
                    && stream.userspace_down == 0
                    && stream.duration_ms >= (CHUNKS as f64 * PAUSE.as_millis() as f64) * 0.9,
                "the moved stream's log line: {stream:?}"
            );
            let complete = agent_proxy_tests::logs::json_lines(&log)
                .iter()
                .filter(|l| {
                    let fields = &l["fields"];
                    fields["message"]
                        .as_str()
                        .is_some_and(|m| m.ends_with("hand-over complete"))
                        && fields["connections"].as_u64() == Some(2)
                })
                .count();
            ensure!(
                complete == 2,
                "{complete} hand-overs of the stream and the idle connection logged:\n{log}"
            );
            // The newest process counts the stream's bytes as kernel bytes: the maps it was
            // spliced in came with it.
            let m = env.daemon.metrics()?;
            for (direction, want) in [("upstream", len), ("downstream", len)] {
                let got = m.get(
                    "agent_proxy_bytes_total",
                    &[
                        ("frontend", "fe"),
                        ("direction", direction),
                        ("path", "kernel"),
                    ],
                );
                ensure!(
                    got == Some(want as f64),
                    "the newest process's kernel bytes {direction}: {got:?}, want {want}"
                );
            }
        }
        // The newest process serves /stats and /metrics on the same admin address.
        let m = env.daemon.metrics()?;
        let dataplane = m.get("agent_proxy_dataplane", &[("path", dp.as_str())]);
        ensure!(
            dataplane == Some(1.0),
            "the newest process's dataplane: {dataplane:?}"
        );
        echo_once(steady, 7, 1024)
            .await
            .context("after the upgrades")?;

        // What systemd heard: ready, a reload, then each new process naming itself the main
        // one - and no STOPPING from the processes that handed over.
        let mut heard = Vec::new();
        notify.set_read_timeout(Some(Duration::from_millis(200)))?;
        let mut buf = [0u8; 256];
        while let Ok(n) = notify.recv(&mut buf) {
            heard.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        let expected = [
            "READY=1".to_owned(),
            "RELOADING=1".to_owned(),
            "READY=1".to_owned(),
            format!("MAINPID={second}\nREADY=1"),
            format!("MAINPID={third}\nREADY=1"),
        ];
        ensure!(
            heard == expected,
            "systemd heard {heard:?}, expected {expected:?}"
        );

        // SIGTERM to the newest: it exits 0 and removes the pid file.
        // SAFETY: signalling the process this test's daemon started.
        ensure!(unsafe { libc::kill(third as libc::pid_t, libc::SIGTERM) } == 0);
        let deadline = Instant::now() + Duration::from_secs(25);
        while !gone(third) {
            ensure!(
                Instant::now() < deadline,
                "the newest process {third} did not stop"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        ensure!(!pid_file.exists(), "the pid file outlived the last process");
        let mut buf = [0u8; 64];
        let n = notify
            .recv(&mut buf)
            .context("no STOPPING=1 from the last process")?;
        ensure!(
            &buf[..n] == b"STOPPING=1",
            "the last process said {:?}",
            &buf[..n]
        );
        let _ = std::fs::remove_file(&notify_path);
        env.daemon.passed();
        anyhow::Ok(())
    });
    // Whatever happened, no process of this test outlives it.
    if let Some(pid) = pid_in(&pid_file) {
        // SAFETY: a process this test started.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    }
    let _ = std::fs::remove_file(&pid_file);
    result?;
    // Every map any of the three processes held is gone with them (nothing pinned, nothing
    // referenced from elsewhere).
    let held = held.into_inner().unwrap_or_default();
    if dp.is_kernel() {
        ensure!(
            !held.is_empty(),
            "the kernel-path processes held no eBPF map"
        );
    }
    let left: Vec<_> = bpftool::all_maps()?
        .into_iter()
        .filter(|m| held.contains(&m.id))
        .collect();
    ensure!(
        left.is_empty(),
        "eBPF maps left after the last process exited: {left:?}"
    );
    Ok(())
}

/// The file at the binary's path replaced by a script that exits 1: SIGUSR2 starts it, it
/// fails, the old process keeps serving and counts `agent_proxy_upgrades_total{result="error"}`.
fn broken_binary_keeps_serving(dp: Dataplane) -> anyhow::Result<()> {
    let netns = NetNs::new()?;
    let ns = &netns;
    let dir = std::env::temp_dir().join(format!("agent-proxy-upgrade-bin-{}", ns.name()));
    std::fs::create_dir_all(&dir)?;
    let copy = dir.join("agent-proxy");
    // Copied by `cp`, not by this process: a file this (multi-threaded) test process had open
    // for writing could be inherited by a child another test forks meanwhile, and exec'ing it
    // would then fail with ETXTBSY.
    let copied = std::process::Command::new("cp")
        .arg(agent_proxy_tests::daemon::require_binary())
        .arg(&copy)
        .status()?;
    ensure!(copied.success(), "cp the binary: {copied}");
    let result = ns.block_on(Duration::from_secs(60), || async {
        let echo = listen(V4).await?;
        let echo_addr = echo.local_addr()?;
        echo_server(echo, Arc::default());
        let mut config = DaemonConfig::new(dp, vec![echo_addr]);
        config.binary = Some(copy.clone());
        let env = TestEnv::start(ns, config)?;
        let addr = env.daemon.config.listen;
        echo_once(addr, 1, 1024).await?;
        // Replaced as a package upgrade replaces a file: a new file renamed over the old.
        let script = dir.join("agent-proxy.new");
        std::fs::write(&script, "#!/bin/sh\nexit 1\n")?;
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        // (The daemon starts this script itself, so the ETXTBSY race above would only make the
        // upgrade fail, as it must anyway.)
        std::fs::rename(&script, &copy)?;
        // SAFETY: signalling the daemon this test started.
        ensure!(unsafe { libc::kill(env.daemon.pid() as libc::pid_t, libc::SIGUSR2) } == 0);
        let m = env.daemon.settle(Duration::from_secs(10), |m| {
            m.count("agent_proxy_upgrades_total", &[("result", "error")]) >= 1
        })?;
        let failed = m.count("agent_proxy_upgrades_total", &[("result", "error")]);
        let ok = m.count("agent_proxy_upgrades_total", &[("result", "ok")]);
        ensure!(failed == 1 && ok == 0, "upgrades: {failed} failed, {ok} ok");
        ensure!(
            env.daemon
                .stderr_text()
                .contains("upgrade failed; this process keeps serving"),
            "no log line for the failed upgrade"
        );
        for i in 0..5 {
            echo_once(addr, 10 + i, 1024)
                .await
                .context("after the failed upgrade")?;
        }
        env.finish()
    });
    let _ = std::fs::remove_dir_all(&dir);
    result
}

dataplane_tests!(upgrades_keep_serving, broken_binary_keeps_serving);
