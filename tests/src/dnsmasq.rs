//! A DNS server for a test: dnsmasq inside the test's namespace, answering A records from a
//! hosts file with a fixed TTL and nothing else (no upstream, no system files). Records change
//! with [`Dnsmasq::set`] (rewrite + SIGHUP, which makes dnsmasq re-read the file).
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::netns::NetNs;

pub struct Dnsmasq {
    child: Option<Child>,
    hosts: PathBuf,
    dir: PathBuf,
    /// Where it answers (UDP and TCP), inside the namespace.
    pub addr: SocketAddr,
    ttl_secs: u32,
}

impl Dnsmasq {
    /// Starts dnsmasq in `ns` on 127.0.0.1:5353 with `records` (name, address), answering with
    /// TTL `ttl_secs`; waits until it answers.
    pub fn start(ns: &NetNs, records: &[(&str, IpAddr)], ttl_secs: u32) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("agent-proxy-dns-{}", ns.name()));
        std::fs::create_dir_all(&dir)?;
        let hosts = dir.join("hosts");
        let mut dns = Self {
            child: None,
            hosts,
            dir,
            addr: "127.0.0.1:5353".parse()?,
            ttl_secs,
        };
        dns.restart(ns, records)?;
        Ok(dns)
    }

    /// Starts it again (after [`Dnsmasq::stop`]; a running one is stopped first) with
    /// `records`, on the same address and TTL; waits until it answers.
    pub fn restart(&mut self, ns: &NetNs, records: &[(&str, IpAddr)]) -> anyhow::Result<()> {
        self.stop();
        write_hosts(&self.hosts, records)?;
        let child = Command::new("ip")
            .args(["netns", "exec", ns.name(), "dnsmasq"])
            .args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--no-negcache",
                "--bind-interfaces",
                "--listen-address=127.0.0.1",
                "--port=5353",
                "--user=root",
                "--pid-file=",
            ])
            .arg(format!("--addn-hosts={}", self.hosts.display()))
            .arg(format!("--local-ttl={}", self.ttl_secs))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start dnsmasq (apt install dnsmasq-base; `cargo xtask test` does)")?;
        self.child = Some(child);
        self.wait_listening(ns)
    }

    fn wait_listening(&mut self, ns: &NetNs) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(child) = &mut self.child
                && let Some(status) = child.try_wait()?
            {
                bail!("dnsmasq exited at start-up: {status}");
            }
            // dnsmasq listens on TCP as well as UDP; a TCP connect is a simple readiness probe.
            let addr = self.addr;
            if ns.run(move || std::net::TcpStream::connect(addr).is_ok()) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("dnsmasq not listening on {addr} within 10 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Replaces the records; dnsmasq answers with them from the next query on.
    pub fn set(&self, records: &[(&str, IpAddr)]) -> anyhow::Result<()> {
        write_hosts(&self.hosts, records)?;
        let child = self.child.as_ref().context("dnsmasq was stopped")?;
        // SAFETY: a plain kill(2) of our own child.
        if unsafe { libc::kill(child.id() as i32, libc::SIGHUP) } != 0 {
            bail!("SIGHUP dnsmasq: {}", std::io::Error::last_os_error());
        }
        // dnsmasq handles the signal in its event loop; give it a moment.
        std::thread::sleep(Duration::from_millis(200));
        Ok(())
    }

    /// Stops answering for good (the process is killed).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn write_hosts(path: &PathBuf, records: &[(&str, IpAddr)]) -> anyhow::Result<()> {
    let text: String = records
        .iter()
        .map(|(name, ip)| format!("{ip} {name}\n"))
        .collect();
    std::fs::write(path, text).with_context(|| format!("write {}", path.display()))
}
