//! The iptables rules of transparent frontends (`intercept = { ports, from, local }`), through
//! the `iptables`/`ip6tables` commands, in chains of the proxy's own (as istio-init and
//! kube-proxy do): nothing else in the nat table is touched.
//!
//! Per address family, in the nat table:
//! - `AGENT_PROXY_PREROUTING`, jumped to from `PREROUTING`: connections routed through this
//!   host from the `from` networks to the intercepted ports are redirected to the frontend;
//! - `AGENT_PROXY_OUTPUT`, jumped to from `OUTPUT`: this host's own connections (`local`),
//!   except those with the proxy's mark (`global.outgoing_mark`, on every socket it dials) and
//!   those to loopback addresses.
//!
//! [`install`] makes the chains hold exactly the config's rules, whatever was there (a killed
//! daemon's leftovers included): installing twice gives one set. [`remove`] takes the jumps and
//! the chains away. [`status`] shows them. The daemon installs at start and removes when it
//! stops accepting; `agent-proxy redirect install|remove|status` do the same by hand.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::process::Command;

use crate::config::{Config, FrontendMode};

/// The chain jumped to from `PREROUTING`.
pub const CHAIN_PREROUTING: &str = "AGENT_PROXY_PREROUTING";
/// The chain jumped to from `OUTPUT`.
pub const CHAIN_OUTPUT: &str = "AGENT_PROXY_OUTPUT";

/// `multiport` takes at most 15 ports in one rule.
const PORTS_PER_RULE: usize = 15;

/// An address family and its command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    /// The command that manages this family's rules.
    pub fn command(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }

    fn loopback(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.0/8",
            Family::V6 => "::1/128",
        }
    }

    fn holds(self, ip: IpAddr) -> bool {
        ip.is_ipv4() == (self == Family::V4)
    }
}

/// The rules of one family: the arguments after `-A CHAIN` of each rule, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    pub prerouting: Vec<Vec<String>>,
    pub output: Vec<Vec<String>>,
}

impl Rules {
    fn is_empty(&self) -> bool {
        self.prerouting.is_empty() && self.output.is_empty()
    }
}

/// What a config asks for: per family, its rules (empty when no frontend intercepts).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub v4: Rules,
    pub v6: Rules,
    /// Some frontend captures this host's own connections: dialed sockets must carry the mark.
    pub local: bool,
}

impl Plan {
    /// The rules of every transparent frontend with `intercept`.
    pub fn new(config: &Config) -> Self {
        let mark = config.global.outgoing_mark;
        let mut plan = Plan::default();
        for frontend in &config.frontends {
            let FrontendMode::Transparent(mode) = &frontend.mode else {
                continue;
            };
            let Some(intercept) = &mode.intercept else {
                continue;
            };
            let ip = frontend.listen.ip();
            // A wildcard IPv6 listener is dual-stack and takes IPv4 too.
            let families: &[Family] = match ip {
                IpAddr::V6(v6) if v6.is_unspecified() => &Family::ALL,
                IpAddr::V6(_) => &[Family::V6],
                IpAddr::V4(_) => &[Family::V4],
            };
            let to_port = frontend.listen.port().to_string();
            let comment = format!("agent-proxy frontend {}", frontend.name);
            for &family in families {
                let rules = plan.rules_mut(family);
                for chunk in intercept.ports.chunks(PORTS_PER_RULE) {
                    let ports = chunk
                        .iter()
                        .map(u16::to_string)
                        .collect::<Vec<_>>()
                        .join(",");
                    let redirect = |source: Option<String>| {
                        let mut rule = vec!["-p".to_owned(), "tcp".to_owned()];
                        if let Some(source) = source {
                            rule.extend(["-s".to_owned(), source]);
                        }
                        rule.extend(
                            [
                                "-m",
                                "multiport",
                                "--dports",
                                &ports,
                                "-m",
                                "comment",
                                "--comment",
                                &comment,
                                "-j",
                                "REDIRECT",
                                "--to-ports",
                                &to_port,
                            ]
                            .map(str::to_owned),
                        );
                        rule
                    };
                    for net in intercept.from.iter().filter(|n| family.holds(n.addr())) {
                        rules.prerouting.push(redirect(Some(net.to_string())));
                    }
                    if intercept.local {
                        if rules.output.is_empty() {
                            rules.output.push(args(&[
                                "-m",
                                "mark",
                                "--mark",
                                &format!("{mark:#x}"),
                                "-j",
                                "RETURN",
                            ]));
                            rules
                                .output
                                .push(args(&["-d", family.loopback(), "-j", "RETURN"]));
                        }
                        rules.output.push(redirect(None));
                    }
                }
            }
            plan.local |= intercept.local;
        }
        plan
    }

    fn rules_mut(&mut self, family: Family) -> &mut Rules {
        match family {
            Family::V4 => &mut self.v4,
            Family::V6 => &mut self.v6,
        }
    }

    pub fn rules(&self, family: Family) -> &Rules {
        match family {
            Family::V4 => &self.v4,
            Family::V6 => &self.v6,
        }
    }

    /// Whether any rule is asked for.
    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

/// Why the rules could not be changed.
#[derive(Debug, thiserror::Error)]
pub enum RedirectError {
    #[error(
        "`{command}` is not installed; transparent frontends with `intercept` need it \
         (Debian/Ubuntu: apt-get install iptables)"
    )]
    Missing { command: &'static str },
    #[error("`{command} {args}` failed: {stderr}")]
    Failed {
        command: &'static str,
        args: String,
        stderr: String,
    },
    #[error("cannot run `{command}`")]
    Spawn {
        command: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Runs `command -w -t nat ARGS`: its output, or (inner `Err`) its error text when it ran and
/// failed, which checks (`-S`, `-C`) use as their answer.
fn nat(family: Family, args: &[&str]) -> Result<Result<String, String>, RedirectError> {
    let command = family.command();
    let output = Command::new(command)
        .args(["-w", "-t", "nat"])
        .args(args)
        .output()
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => RedirectError::Missing { command },
            _ => RedirectError::Spawn { command, source },
        })?;
    if output.status.success() {
        Ok(Ok(String::from_utf8_lossy(&output.stdout).into_owned()))
    } else {
        Ok(Err(String::from_utf8_lossy(&output.stderr)
            .trim()
            .to_owned()))
    }
}

/// Runs a step that must succeed.
fn must(family: Family, args: &[&str]) -> Result<String, RedirectError> {
    nat(family, args)?.map_err(|stderr| RedirectError::Failed {
        command: family.command(),
        args: format!("-w -t nat {}", args.join(" ")),
        stderr,
    })
}

/// Makes the proxy's chains hold exactly `plan`'s rules, for each family that has some; the
/// chains of a family without rules are removed.
pub fn install(plan: &Plan) -> Result<(), RedirectError> {
    for family in Family::ALL {
        let rules = plan.rules(family);
        if rules.is_empty() {
            // Leftovers of an earlier config; a host without the command has none.
            match remove_family(family) {
                Ok(()) | Err(RedirectError::Missing { .. }) => {}
                Err(e) => return Err(e),
            }
            continue;
        }
        // Fails clearly where the nat table (or the command) is missing.
        must(family, &["-S", "PREROUTING"])?;
        for (chain, parent, list) in [
            (CHAIN_PREROUTING, "PREROUTING", &rules.prerouting),
            (CHAIN_OUTPUT, "OUTPUT", &rules.output),
        ] {
            if nat(family, &["-S", chain])?.is_err() {
                must(family, &["-N", chain])?;
            }
            must(family, &["-F", chain])?;
            for rule in list {
                let mut args = vec!["-A", chain];
                args.extend(rule.iter().map(String::as_str));
                must(family, &args)?;
            }
            if nat(family, &["-C", parent, "-j", chain])?.is_err() {
                must(family, &["-I", parent, "1", "-j", chain])?;
            }
        }
    }
    Ok(())
}

/// Removes the jumps to the proxy's chains and the chains, for both families; what is not
/// there is skipped, and a family whose command is missing has nothing to remove.
pub fn remove() -> Result<(), RedirectError> {
    for family in Family::ALL {
        match remove_family(family) {
            Ok(()) | Err(RedirectError::Missing { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn remove_family(family: Family) -> Result<(), RedirectError> {
    for (chain, parent) in [(CHAIN_PREROUTING, "PREROUTING"), (CHAIN_OUTPUT, "OUTPUT")] {
        // A jump inserted twice by hand is removed twice; the bound keeps a failing `-D` from
        // looping.
        for _ in 0..64 {
            if nat(family, &["-D", parent, "-j", chain])?.is_err() {
                break;
            }
        }
        if nat(family, &["-S", chain])?.is_ok() {
            must(family, &["-F", chain])?;
            must(family, &["-X", chain])?;
        }
    }
    Ok(())
}

/// The proxy's chains and whether they are jumped to, per family, as `iptables -S` prints
/// them; `installed` is true when both families hold what `plan` asks for.
pub fn status(plan: &Plan) -> Result<(String, bool), RedirectError> {
    let mut text = String::new();
    let mut installed = true;
    for family in Family::ALL {
        let wanted = plan.rules(family);
        let command = family.command();
        for (chain, parent, list) in [
            (CHAIN_PREROUTING, "PREROUTING", &wanted.prerouting),
            (CHAIN_OUTPUT, "OUTPUT", &wanted.output),
        ] {
            let shown = match nat(family, &["-S", chain]) {
                Ok(Ok(out)) => Some(out),
                Ok(Err(_)) => None,
                Err(RedirectError::Missing { .. }) if wanted.is_empty() => None,
                Err(e) => return Err(e),
            };
            let jumped =
                shown.is_some() && matches!(nat(family, &["-C", parent, "-j", chain]), Ok(Ok(_)));
            let present = shown.as_deref().map_or(0, |out| {
                out.lines().filter(|l| l.starts_with("-A ")).count()
            });
            let _ = writeln!(
                text,
                "{command} nat {chain}: {}, {present} rules (config: {}), {}",
                if shown.is_some() { "present" } else { "absent" },
                list.len(),
                if jumped {
                    format!("jumped to from {parent}")
                } else {
                    format!("not jumped to from {parent}")
                },
            );
            for line in shown.iter().flat_map(|out| out.lines()) {
                let _ = writeln!(text, "  {line}");
            }
            let matches = if list.is_empty() {
                shown.is_none() || present == 0
            } else {
                jumped && present == list.len()
            };
            installed &= matches;
        }
    }
    Ok((text, installed))
}

#[cfg(test)]
mod tests;
