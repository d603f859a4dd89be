//! The servers behind the proxies, one per scenario, started once and shared by every row and
//! run of the scenario.
//!
//! The intake of the HTTP scenarios is nginx answering `return 200` to every POST: nginx reads
//! and discards the body in C with epoll, so on this machine it serves the DataKit workload
//! direct at about 1.5-2x the rate of any proxy row (the intake must not be the bottleneck of
//! the direct row), it is what the reference figures of shared/benchmarks.md were taken with, and
//! it holds 10,000 keep-alive connections with a few MiB.
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use agent_proxy_tests::netns::NetNs;

use crate::procs::Proc;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerKind {
    /// nginx, `return 200` for any request (HTTP scenarios).
    Intake,
    /// `sockperf server` over TCP (ping-pong).
    Sockperf,
    /// `iperf3 -s` (bulk).
    Iperf3,
}

pub struct Server {
    proc: Proc,
    pub addr: SocketAddr,
}

impl Server {
    pub fn start(kind: ServerKind, ns: &NetNs, dir: &Path) -> anyhow::Result<Self> {
        let (port, proc) = match kind {
            ServerKind::Intake => {
                let port = 8000;
                let conf = dir.join("nginx.conf");
                std::fs::create_dir_all(dir.join("nginx"))?;
                std::fs::write(&conf, nginx_config(dir, port))?;
                let log = dir.join("nginx.log");
                let args = ["-c", &*conf.to_string_lossy(), "-g", "daemon off;"].map(str::to_owned);
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                (port, Proc::spawn(ns, "nginx", &args, &log)?)
            }
            ServerKind::Sockperf => {
                let port = 11111;
                let log = dir.join("sockperf-server.log");
                let p = Proc::spawn(
                    ns,
                    "sockperf",
                    &["server", "--tcp", "-i", "127.0.0.1", "-p", "11111"],
                    &log,
                )?;
                (port, p)
            }
            ServerKind::Iperf3 => {
                let port = 5201;
                let log = dir.join("iperf3-server.log");
                (
                    port,
                    Proc::spawn(ns, "iperf3", &["-s", "-B", "127.0.0.1", "-p", "5201"], &log)?,
                )
            }
        };
        let mut server = Self {
            proc,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        server.proc.wait_listening(port, Duration::from_secs(10))?;
        Ok(server)
    }

    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        self.proc.ensure_running()
    }
}

/// nginx as the intake: 200 at once, keep-alive without a request limit, no access log, enough
/// connections and file descriptors for 10,000 agents.
fn nginx_config(dir: &Path, port: u16) -> String {
    let d = dir.join("nginx");
    let d = d.display();
    format!(
        "worker_processes auto;\nworker_rlimit_nofile 100000;\npid {d}/nginx.pid;\n\
         error_log {d}/error.log warn;\n\
         events {{ worker_connections 40000; multi_accept on; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
           fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
           keepalive_requests 100000000;\n  keepalive_timeout 600s;\n  client_max_body_size 16m;\n\
           client_body_buffer_size 256k;\n\
           server {{\n    listen 127.0.0.1:{port} backlog=16384;\n    location / {{ return 200 \"ok\\n\"; }}\n  }}\n}}\n"
    )
}
