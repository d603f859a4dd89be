//! TLS origination benchmark (scenario 5 of the benchmark plan): a plain client pushes bytes
//! through a proxy that originates verified TLS to a local TLS intake, for agent-proxy and
//! HAProxy (`ssl verify required ca-file ...`) in the same run, alternating, on this machine.
//!
//! ```text
//! cargo build --release -p proxy-user -p agent-proxy-tests --bin tls-bench
//! target/release/tls-bench [--bytes 2147483648] [--runs 5]
//! ```
//!
//! Per run and proxy: throughput (client's first byte to the intake's count of the last),
//! whole-machine CPU seconds per GB (from /proc/stat) and the proxy process's own CPU per GB
//! (from /proc/PID/stat). The intake is a rustls (aws-lc-rs) server shared by both proxies, so its
//! decryption cost is the same for both. With `--strace`, one extra transfer per proxy runs
//! under `strace -c -f` and its system calls per MB are printed (strace slows the proxy down:
//! that transfer is not timed). Runs as any user; needs `haproxy` on PATH (and `strace` for
//! `--strace`) and the release `agent-proxy` (or `AGENT_PROXY_BIN`). Meant to become part of
//! `cargo xtask bench`.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_proxy_tests::tls::{Ca, Validity, server_config};
use anyhow::{Context as _, bail};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

const WRITE: usize = 256 * 1024;

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A TLS intake: reads each connection to EOF, then answers with the byte count (8 bytes).
async fn sink(config: Arc<rustls::ServerConfig>) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&config));
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                let Ok(mut s) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = vec![0u8; 256 * 1024];
                let mut total = 0u64;
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) => break,
                        Ok(n) => total += n as u64,
                        // A FIN without close_notify is the end too.
                        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                        Err(_) => return,
                    }
                }
                let _ = s.write_all(&total.to_be_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    Ok(addr)
}

/// Sends `bytes` through `addr`, shuts down writing, waits for the intake's count.
async fn push(addr: SocketAddr, bytes: u64) -> anyhow::Result<Duration> {
    let mut s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let buf = vec![0x5au8; WRITE];
    let started = Instant::now();
    let mut sent = 0u64;
    while sent < bytes {
        let n = (bytes - sent).min(WRITE as u64) as usize;
        s.write_all(&buf[..n]).await?;
        sent += n as u64;
    }
    s.shutdown().await?;
    let mut count = [0u8; 8];
    s.read_exact(&mut count)
        .await
        .context("no count from the intake")?;
    let elapsed = started.elapsed();
    let got = u64::from_be_bytes(count);
    if got != bytes {
        bail!("intake counted {got} bytes, {bytes} sent");
    }
    Ok(elapsed)
}

/// Busy jiffies of the whole machine (user+nice+system+irq+softirq+steal).
fn machine_busy() -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let cpu = stat.lines().next().context("empty /proc/stat")?;
    let v: Vec<u64> = cpu
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    Ok(v[0] + v[1] + v[2] + v[5] + v[6] + v.get(7).copied().unwrap_or(0))
}

/// utime+stime jiffies of a process and its threads.
fn process_cpu(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = &stat[stat.rfind(')').context("stat")? + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    Ok(f[11].parse::<u64>()? + f[12].parse::<u64>()?)
}

/// One transfer of `bytes` through `proxy` under `strace -c -f`; returns the summary table.
fn strace_transfer(
    rt: &tokio::runtime::Runtime,
    proxy: &Proxy,
    bytes: u64,
    dir: &Path,
) -> anyhow::Result<String> {
    let out = dir.join(format!("strace-{}.txt", proxy.name));
    let mut strace = Command::new("strace")
        .args(["-c", "-f", "-qq", "-o"])
        .arg(&out)
        .args(["-p", &proxy.child.id().to_string()])
        .spawn()
        .context("start strace")?;
    std::thread::sleep(Duration::from_millis(500));
    rt.block_on(push(proxy.addr, bytes))?;
    // SAFETY: signalling the strace this function started.
    unsafe { libc::kill(strace.id() as libc::pid_t, libc::SIGINT) };
    strace.wait()?;
    Ok(std::fs::read_to_string(out)?)
}

struct Proxy {
    name: &'static str,
    child: Child,
    addr: SocketAddr,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_port(addr: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        if Instant::now() > deadline {
            bail!("nothing listens on {addr}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn free_port() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

fn start_agent_proxy(dir: &Path, intake: SocketAddr, ca: &Path) -> anyhow::Result<Proxy> {
    let addr = free_port()?;
    let config = dir.join("agent-proxy.toml");
    std::fs::write(
        &config,
        format!(
            "[global]\nadmin = \"off\"\ndataplane = \"userspace\"\n\n[[frontend]]\nname = \"bench\"\n\
             listen = \"{addr}\"\nbackend = \"intake\"\n\n[[backend]]\nname = \"intake\"\n\
             servers = [\"{intake}\"]\ntls = {{ sni = \"intake.test\", ca_file = \"{}\" }}\n",
            ca.display()
        ),
    )?;
    let bin = agent_proxy_tests::daemon::require_binary();
    let child = Command::new(bin)
        .args(["run", "-c"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()?;
    let proxy = Proxy {
        name: "agent-proxy",
        child,
        addr,
    };
    wait_port(addr)?;
    Ok(proxy)
}

fn start_haproxy(dir: &Path, intake: SocketAddr, ca: &Path) -> anyhow::Result<Proxy> {
    let addr = free_port()?;
    let config = dir.join("haproxy.cfg");
    std::fs::write(
        &config,
        format!(
            "global\n  maxconn 4000\n\ndefaults\n  mode tcp\n  timeout connect 5s\n  \
             timeout client 60s\n  timeout server 60s\n\nfrontend bench\n  bind {addr}\n  \
             default_backend intake\n\nbackend intake\n  server s1 {intake} ssl verify required \
             ca-file {} sni str(intake.test)\n",
            ca.display()
        ),
    )?;
    let child = Command::new("haproxy")
        .args(["-db", "-f"])
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .context("start haproxy")?;
    let proxy = Proxy {
        name: "haproxy",
        child,
        addr,
    };
    wait_port(addr)?;
    Ok(proxy)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let bytes = arg("--bytes", 2 << 30);
    let runs = arg("--runs", 5) as usize;
    let hz = 100.0; // USER_HZ on Linux
    let dir: PathBuf = std::env::temp_dir().join(format!("tls-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let ca = Ca::new("bench ca")?;
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, &ca.pem)?;
    let leaf = ca.server(&["intake.test", "127.0.0.1"], Validity::Now)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let intake = rt.block_on(sink(server_config(&leaf, None)?))?;
    let proxies = [
        start_agent_proxy(&dir, intake, &ca_file)?,
        start_haproxy(&dir, intake, &ca_file)?,
    ];
    // Warm-up: one small transfer each.
    for p in &proxies {
        rt.block_on(push(p.addr, 64 << 20))?;
    }
    let gb = bytes as f64 / 1e9;
    let mut rows: Vec<[Vec<f64>; 3]> = (0..proxies.len()).map(|_| Default::default()).collect();
    for run in 0..runs {
        for (i, p) in proxies.iter().enumerate() {
            let pid = p.child.id();
            let (busy0, cpu0) = (machine_busy()?, process_cpu(pid)?);
            let elapsed = rt.block_on(push(p.addr, bytes))?;
            let (busy1, cpu1) = (machine_busy()?, process_cpu(pid)?);
            let gbps = gb / elapsed.as_secs_f64();
            let machine = (busy1 - busy0) as f64 / hz / gb;
            let own = (cpu1 - cpu0) as f64 / hz / gb;
            eprintln!(
                "run {run} {:<11} {gbps:.3} GB/s  machine {machine:.2} CPU-s/GB  proxy {own:.2} \
                 CPU-s/GB",
                p.name,
            );
            rows[i][0].push(gbps);
            rows[i][1].push(machine);
            rows[i][2].push(own);
        }
    }
    println!("| proxy | GB/s median (min-max) | machine CPU-s/GB | proxy CPU-s/GB |");
    println!("| --- | --- | --- | --- |");
    let mut medians = Vec::new();
    for (p, row) in proxies.iter().zip(rows.iter_mut()) {
        let [t, m, o] = row;
        let (lo, hi) = (
            t.iter().copied().fold(f64::MAX, f64::min),
            t.iter().copied().fold(0.0, f64::max),
        );
        let tm = median(t);
        let mm = median(m);
        medians.push((tm, mm));
        println!(
            "| {} | {tm:.3} ({lo:.3}-{hi:.3}) | {mm:.2} | {:.2} |",
            p.name,
            median(o),
        );
    }
    println!(
        "\nagent-proxy / haproxy: throughput x{:.2}, machine CPU per GB x{:.2} ({} runs of {} bytes)",
        medians[0].0 / medians[1].0,
        medians[0].1 / medians[1].1,
        runs,
        bytes
    );
    if std::env::args().any(|a| a == "--strace") {
        let traced = 256 << 20;
        for p in &proxies {
            let table = strace_transfer(&rt, p, traced, &dir)?;
            println!("\n{} under strace -c -f, {traced} bytes:\n{table}", p.name);
        }
    }
    drop(proxies);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
