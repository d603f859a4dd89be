//! Squid as the reference forward proxy: started in the test's namespace with a config
//! equivalent to a connect frontend's (Basic users, destination pairs, timeouts), so the same
//! raw requests can be sent to both and the answers compared (docs/connect.md). The test
//! namespace has no DNS server: `dns_timeout` and `forward_timeout` are short so that Squid's
//! lookups and retries end within the comparison's 5 s per answer.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};

use crate::netns::NetNs;

/// A destination rule in Squid terms.
pub enum SquidDestination {
    /// A literal address and port (`dst` + `port` ACLs).
    Ip(SocketAddr),
    /// A host name and port (`dstdomain` + `port`).
    Name(String, u16),
}

/// A running Squid; killed on drop.
pub struct Squid {
    pub addr: SocketAddr,
    pub version: String,
    dir: PathBuf,
    child: Child,
}

impl Squid {
    /// Starts `squid -N` in `ns` on `addr` with one user and `destinations`; waits (at most
    /// 15 s) until it accepts connections.
    pub fn start(
        ns: &NetNs,
        addr: SocketAddr,
        user: &str,
        password: &str,
        destinations: &[SquidDestination],
        connect_timeout: Duration,
        request_timeout: Duration,
    ) -> anyhow::Result<Self> {
        let version = Command::new("squid")
            .arg("-v")
            .output()
            .context("run squid -v (apt-get install squid)")?;
        let version = String::from_utf8_lossy(&version.stdout)
            .lines()
            .next()
            .unwrap_or_default()
            .trim_start_matches("Squid Cache: Version ")
            .to_owned();
        let dir = std::env::temp_dir().join(format!("agent-proxy-squid-{}", ns.name()));
        std::fs::create_dir_all(&dir)?;
        // Squid drops to the `proxy` user: its logs and helper files must be reachable.
        set_mode(&dir, 0o777)?;
        let hash = Command::new("openssl")
            .args(["passwd", "-1", password])
            .output()
            .context("openssl passwd")?;
        ensure!(hash.status.success(), "openssl passwd failed");
        let passwd = dir.join("passwd");
        std::fs::write(
            &passwd,
            format!("{user}:{}", String::from_utf8_lossy(&hash.stdout)),
        )?;
        set_mode(&passwd, 0o644)?;
        let d = dir.display();
        let mut acls = String::new();
        let mut access = String::new();
        for (i, dest) in destinations.iter().enumerate() {
            let (host_acl, port) = match dest {
                SquidDestination::Ip(a) => (format!("dst {}", a.ip()), a.port()),
                SquidDestination::Name(n, p) => (format!("dstdomain {n}"), *p),
            };
            acls += &format!("acl dest{i} {host_acl}\nacl port{i} port {port}\n");
            // Tunnels and plain requests alike, as a connect frontend allows both.
            access += &format!("http_access allow dest{i} port{i}\n");
        }
        let config = format!(
            "http_port {addr}\npid_filename none\ncache deny all\ncache_mem 8 MB\n\
             access_log stdio:{d}/access.log\ncache_log {d}/cache.log\ncoredump_dir {d}\n\
             shutdown_lifetime 0 seconds\n\
             request_header_max_size 16 KB\n\
             connect_timeout {} seconds\nrequest_timeout {} seconds\n\
             forward_timeout 2 seconds\ndns_timeout 2 seconds\n\
             auth_param basic program /usr/lib/squid/basic_ncsa_auth {}\n\
             auth_param basic realm agent-proxy\nacl authed proxy_auth REQUIRED\n{acls}\
             http_access deny !authed\n{access}http_access deny all\n",
            connect_timeout.as_secs().max(1),
            request_timeout.as_secs().max(1),
            passwd.display(),
        );
        let conf = dir.join("squid.conf");
        std::fs::write(&conf, config)?;
        let child = Command::new("ip")
            .args(["netns", "exec", ns.name(), "squid", "-N", "-f"])
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start squid")?;
        let mut squid = Self {
            addr,
            version,
            dir,
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = squid.child.try_wait()? {
                bail!(
                    "squid exited with {status}; cache.log:\n{}",
                    std::fs::read_to_string(squid.dir.join("cache.log")).unwrap_or_default()
                );
            }
            if ns.run(|| std::net::TcpStream::connect(addr)).is_ok() {
                return Ok(squid);
            }
            if Instant::now() > deadline {
                bail!("squid did not listen on {addr} within 15 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn set_mode(path: &std::path::Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

impl Drop for Squid {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
