//! `agent-proxy init --preset NAME`: a ready, commented config for one kind of agent, printed
//! for the operator to save as `/etc/agent-proxy/agent-proxy.toml`.
//!
//! Each preset reproduces the setup its agent's own documentation recommends (Datadog's web
//! proxy or its HAProxy port map, StackState's HAProxy forwarder of seed 001, DataKit's proxy
//! on 9530), with what the agent side must set written as comments. Two promises, both tested
//! for every preset, site and style: the text passes `agent-proxy check` as printed, and a
//! Datadog config names its own site only (no other site's domain, comments included), so that
//! an allowlist for the EU site never lets an agent reach US1.
mod datadog;
mod others;
#[cfg(test)]
mod tests;

use std::fmt::Write as _;

pub use datadog::{DATADOG_SITES, DEFAULT_SITE};

/// The preset names `--preset` accepts.
pub const PRESETS: [&str; 3] = ["datadog", "stackstate", "datakit"];

/// How a Datadog preset puts the proxy in the agents' path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// A CONNECT forward proxy (`proxy: https:` in `datadog.yaml`): the agent's TLS goes end to
    /// end, one allowlist of the site's intake names. What Datadog recommends over HAProxy.
    Connect,
    /// One tcp frontend per intake, HAProxy-guide ports, the proxy originating verified TLS.
    Ports,
}

/// A preset with its options resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Preset {
    /// Datadog, one site, one style.
    Datadog { site: &'static str, style: Style },
    /// StackState's receiver behind a tcp frontend on 3834 (seed 001).
    StackState { receiver: Receiver },
    /// DataKit's Dataway behind a connect frontend on 9530 (seed 004).
    DataKit,
}

/// Where the StackState preset sends the agents' bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receiver {
    /// A DNS name or IP literal (IPv6 in brackets), as written in `servers`.
    pub host: String,
    pub port: u16,
    /// The receiver speaks HTTPS: the proxy originates verified TLS to it.
    pub tls: bool,
    /// The URL path the agents post to (`/receiver/stsAgent`), kept for the agent-side comment.
    pub path: String,
    /// No `--receiver` was given: `host` is a placeholder that never resolves.
    pub placeholder: bool,
}

impl Receiver {
    /// The host of the placeholder receiver: under `.invalid` (RFC 2606), so a config started
    /// unedited resolves nothing and says so, instead of sending agent data somewhere real.
    pub const PLACEHOLDER_HOST: &'static str = "stackstate-receiver.invalid";

    fn placeholder() -> Self {
        Receiver {
            host: Self::PLACEHOLDER_HOST.to_owned(),
            port: 443,
            tls: true,
            path: "/receiver/stsAgent".to_owned(),
            placeholder: true,
        }
    }

    /// Parses `https://HOST[:PORT][/PATH]`, `http://HOST[:PORT][/PATH]` or `HOST:PORT` (HTTPS).
    fn parse(text: &str) -> Result<Self, PresetError> {
        let bad = |reason: &str| PresetError::InvalidReceiver {
            value: text.to_owned(),
            reason: reason.to_owned(),
        };
        let (tls, rest, default_port) = if let Some(rest) = text.strip_prefix("https://") {
            (true, rest, Some(443))
        } else if let Some(rest) = text.strip_prefix("http://") {
            (false, rest, Some(80))
        } else if text.contains("://") {
            return Err(bad("expected an http:// or https:// URL, or HOST:PORT"));
        } else {
            (true, text, None)
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && !port.contains(']') => {
                let port = port
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| bad("expected a port 1-65535"))?;
                (host, port)
            }
            _ => match default_port {
                Some(port) => (authority, port),
                None => return Err(bad("expected HOST:PORT or a URL")),
            },
        };
        let host_ok = !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b));
        let path_ok = path
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\');
        if !host_ok {
            return Err(bad("expected a DNS name or an IP address as the host"));
        }
        if !path_ok {
            return Err(bad("the path must be printable ASCII without quotes"));
        }
        Ok(Receiver {
            host: host.to_owned(),
            port,
            tls,
            path: path.to_owned(),
            placeholder: false,
        })
    }
}

/// The command-line options of `init`, as given.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options<'a> {
    pub preset: &'a str,
    pub site: Option<&'a str>,
    pub style: Option<&'a str>,
    pub receiver: Option<&'a str>,
}

/// Why `init` refused its options; each message names what is accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PresetError {
    #[error("unknown preset \"{0}\": expected one of {known}", known = PRESETS.join(", "))]
    UnknownPreset(String),
    #[error("unknown Datadog site \"{0}\": expected one of {known}", known = DATADOG_SITES.join(", "))]
    UnknownSite(String),
    #[error("unknown style \"{0}\": expected connect or ports")]
    UnknownStyle(String),
    #[error("--{option} is only used with --preset {used_by}")]
    NotApplicable {
        option: &'static str,
        used_by: &'static str,
    },
    #[error("invalid --receiver \"{value}\": {reason}")]
    InvalidReceiver { value: String, reason: String },
}

impl Preset {
    /// Resolves the options: defaults filled in, anything unknown or misplaced refused.
    pub fn from_options(options: Options<'_>) -> Result<Self, PresetError> {
        let refuse = |option, used_by| Err(PresetError::NotApplicable { option, used_by });
        match options.preset {
            "datadog" => {
                if options.receiver.is_some() {
                    return refuse("receiver", "stackstate");
                }
                let site = match options.site {
                    None => DEFAULT_SITE,
                    Some(site) => DATADOG_SITES
                        .iter()
                        .copied()
                        .find(|known| site.eq_ignore_ascii_case(known))
                        .ok_or_else(|| PresetError::UnknownSite(site.to_owned()))?,
                };
                let style = match options.style {
                    None | Some("connect") => Style::Connect,
                    Some("ports") => Style::Ports,
                    Some(other) => return Err(PresetError::UnknownStyle(other.to_owned())),
                };
                Ok(Preset::Datadog { site, style })
            }
            "stackstate" | "datakit" => {
                if options.site.is_some() {
                    return refuse("site", "datadog");
                }
                if options.style.is_some() {
                    return refuse("style", "datadog");
                }
                if options.preset == "datakit" {
                    if options.receiver.is_some() {
                        return refuse("receiver", "stackstate");
                    }
                    return Ok(Preset::DataKit);
                }
                let Some(text) = options.receiver else {
                    return Ok(Preset::StackState {
                        receiver: Receiver::placeholder(),
                    });
                };
                let preset = Preset::StackState {
                    receiver: Receiver::parse(text)?,
                };
                // The host passed the character check; the config's own rules (a valid DNS
                // name, IPv6 in brackets) have the last word, so that the output passes check.
                match crate::config::parse(&preset.render(), "init") {
                    Ok(_) => Ok(preset),
                    Err(e) => Err(PresetError::InvalidReceiver {
                        value: text.to_owned(),
                        reason: e.message(),
                    }),
                }
            }
            other => Err(PresetError::UnknownPreset(other.to_owned())),
        }
    }

    /// The config text, comments included.
    pub fn render(&self) -> String {
        let mut out = String::new();
        match self {
            Preset::Datadog { site, style } => datadog::render(&mut out, self, site, *style),
            Preset::StackState { receiver } => others::stackstate(&mut out, receiver),
            Preset::DataKit => others::datakit(&mut out),
        }
        out
    }

    /// The `init` command line that prints this preset, for the header.
    fn command(&self) -> String {
        match self {
            Preset::Datadog { site, style } => {
                let style = match style {
                    Style::Connect => "connect",
                    Style::Ports => "ports",
                };
                format!("agent-proxy init --preset datadog --site {site} --style {style}")
            }
            Preset::StackState { receiver } if receiver.placeholder => {
                "agent-proxy init --preset stackstate".to_owned()
            }
            Preset::StackState { receiver } => format!(
                "agent-proxy init --preset stackstate --receiver {}://{}:{}{}",
                if receiver.tls { "https" } else { "http" },
                receiver.host,
                receiver.port,
                receiver.path
            ),
            Preset::DataKit => "agent-proxy init --preset datakit".to_owned(),
        }
    }
}

/// Client networks every preset admits: RFC 1918, IPv6 unique-local, and this host (agents on
/// the proxy's own host). The proxy is never open to the internet by default.
const ALLOW_PRIVATE: &str = "allow = [\"10.0.0.0/8\", \"172.16.0.0/12\", \"192.168.0.0/16\", \"fc00::/7\", \"127.0.0.0/8\", \"::1\"]";

/// The opening comment and `[global]` of every preset.
fn header(out: &mut String, preset: &Preset, title: &str) {
    let _ = write!(
        out,
        "# agent-proxy: {title}\n\
         #\n\
         # Printed by `{command}`.\n\
         # Save it as /etc/agent-proxy/agent-proxy.toml, adjust `allow` to your agents' networks,\n\
         # and validate every edit with `agent-proxy check -c /etc/agent-proxy/agent-proxy.toml`\n\
         # (it prints FILE:LINE:COL: message for the first mistake). Every key is described in\n\
         # docs/configuration.md; installing the proxy as a service in docs/operations.md.\n\
         \n\
         [global]\n\
         # /metrics (Prometheus), /healthz, /readyz and /stats. Unauthenticated: keep it on\n\
         # loopback or a management network.\n\
         admin = \"127.0.0.1:9090\"\n\
         # The kernel (eBPF sockmap) carries established connections when its programs load (root,\n\
         # or CAP_BPF + CAP_NET_ADMIN + CAP_PERFMON), the userspace relay otherwise.\n\
         dataplane = \"auto\"\n\
         # On SIGTERM: stop accepting, let open connections finish for this long, then exit.\n\
         drain_timeout = \"30s\"\n\
         # \"json\" for log shippers; one line per finished connection either way.\n\
         log_format = \"text\"\n",
        command = preset.command(),
    );
}
