//! The servers behind the proxies, one per scenario, started once and shared by every row and
//! run of the scenario.
//!
//! The intake of the HTTP scenarios is nginx answering `return 200` to every POST: nginx reads
//! and discards the body in C with epoll, so on this machine it serves the DataKit workload
//! direct at about 1.5-2x the rate of any proxy row (the intake must not be the bottleneck of
//! the direct row), it is what the reference figures of shared/benchmarks.md were taken with, and
//! it holds 10,000 keep-alive connections with a few MiB. For the TLS scenarios the same nginx
//! also listens with `ssl` (OpenSSL) on [`INTAKE_TLS_PORT`].
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use agent_proxy_tests::netns::NetNs;

use crate::procs::Proc;
use crate::tls::{INTAKE_TLS_PORT, Pki};

/// nginx's plain HTTP listener.
pub(crate) const INTAKE_PORT: u16 = 8000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ServerKind {
    /// nginx, `return 200` for any request (HTTP scenarios).
    Intake,
    /// The same nginx with a second, TLS listener (TLS scenarios).
    IntakeTls,
    /// `sockperf server` over TCP (ping-pong).
    Sockperf,
    /// `iperf3 -s` (bulk).
    Iperf3,
}

pub(crate) struct Server {
    proc: Proc,
    /// The plaintext listener.
    pub addr: SocketAddr,
    /// The TLS listener of [`ServerKind::IntakeTls`].
    pub tls_addr: Option<SocketAddr>,
}

impl Server {
    /// Starts the server of `kind` on `ip` in `ns`; [`ServerKind::IntakeTls`] needs `pki` (its
    /// TLS listener is on 127.0.0.1, whose name the certificates carry).
    pub(crate) fn start(
        kind: ServerKind,
        ns: &NetNs,
        ip: IpAddr,
        dir: &Path,
        pki: Option<&Pki>,
    ) -> anyhow::Result<Self> {
        let local = |port| SocketAddr::from(([127, 0, 0, 1], port));
        let addr = SocketAddr::new(ip, 0);
        let ip_text = ip.to_string();
        let tls_addr = match (kind, pki) {
            (ServerKind::IntakeTls, Some(pki)) => Some((local(INTAKE_TLS_PORT), pki)),
            (ServerKind::IntakeTls, None) => anyhow::bail!("the TLS intake needs certificates"),
            _ => None,
        };
        let (port, proc) = match kind {
            ServerKind::Intake | ServerKind::IntakeTls => {
                let port = INTAKE_PORT;
                let conf = dir.join("nginx.conf");
                std::fs::create_dir_all(dir.join("nginx"))?;
                std::fs::write(
                    &conf,
                    nginx_config(dir, SocketAddr::new(ip, port), tls_addr),
                )?;
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
                    &["server", "--tcp", "-i", &ip_text, "-p", "11111"],
                    &log,
                )?;
                (port, p)
            }
            ServerKind::Iperf3 => {
                let port = 5201;
                let log = dir.join("iperf3-server.log");
                (
                    port,
                    Proc::spawn(ns, "iperf3", &["-s", "-B", &ip_text, "-p", "5201"], &log)?,
                )
            }
        };
        let mut server = Self {
            proc,
            addr: SocketAddr::new(addr.ip(), port),
            tls_addr: tls_addr.map(|(addr, _)| addr),
        };
        server.proc.wait_listening(port, Duration::from_secs(10))?;
        if let Some(addr) = server.tls_addr {
            server
                .proc
                .wait_listening(addr.port(), Duration::from_secs(10))?;
        }
        Ok(server)
    }

    pub(crate) fn ensure_running(&mut self) -> anyhow::Result<()> {
        self.proc.ensure_running()
    }
}

/// nginx as the intake: 200 at once, keep-alive without a request limit, no access log, enough
/// connections and file descriptors for 10,000 agents; with `tls`, a second server block
/// listening with `ssl`.
fn nginx_config(dir: &Path, listen: SocketAddr, tls: Option<(SocketAddr, &Pki)>) -> String {
    let d = dir.join("nginx");
    let d = d.display();
    let tls = tls.map_or(String::new(), |(addr, pki)| {
        crate::tls::nginx_server(pki, addr)
    });
    format!(
        "worker_processes auto;\nworker_rlimit_nofile 100000;\npid {d}/nginx.pid;\n\
         error_log {d}/error.log warn;\n\
         events {{ worker_connections 40000; multi_accept on; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
           fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
           keepalive_requests 100000000;\n  keepalive_timeout 600s;\n  client_max_body_size 16m;\n\
           client_body_buffer_size 256k;\n\
           server {{\n    listen {listen} backlog=16384;\n    location / {{ return 200 \"ok\\n\"; }}\n  }}\n{tls}}}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nginx_adds_the_tls_listener_only_when_asked() {
        let dir = Path::new("/w");
        let plain = nginx_config(dir, SocketAddr::from(([127, 0, 0, 1], INTAKE_PORT)), None);
        assert!(
            plain.contains("listen 127.0.0.1:8000 backlog=16384;\n"),
            "{plain}"
        );
        assert!(!plain.contains("ssl"), "{plain}");
        assert!(plain.ends_with("  }\n}\n"), "{plain}");
        let pki = Pki::names_in("/w");
        let addr = SocketAddr::from(([127, 0, 0, 1], INTAKE_TLS_PORT));
        let both = nginx_config(
            dir,
            SocketAddr::from(([127, 0, 0, 1], INTAKE_PORT)),
            Some((addr, &pki)),
        );
        assert!(both.starts_with(&plain[..plain.len() - 2]), "{both}");
        assert!(
            both.contains("listen 127.0.0.1:8443 ssl backlog=16384;\n"),
            "{both}"
        );
        assert!(both.ends_with("  }\n}\n"), "{both}");
    }
}
