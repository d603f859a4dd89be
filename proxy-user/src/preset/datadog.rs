//! The Datadog preset: every site, two styles.
//!
//! Intake names come from Datadog's documentation: "Network Traffic"
//! (docs.datadoghq.com/agent/configuration/network/) for the names agents open connections to,
//! and "Proxy Example with HAProxy" (docs.datadoghq.com/agent/configuration/proxy_examples/haproxy/,
//! formerly agent/faq/proxy_example_haproxy) for the port map and each port's intake. Both
//! write every name as a prefix plus the site, so one table serves all sites.
use std::fmt::Write as _;

use super::{ALLOW_PRIVATE, Preset, Style, header};

/// The Datadog sites, as `DD_SITE` spells them.
pub const DATADOG_SITES: [&str; 6] = [
    "datadoghq.com",
    "datadoghq.eu",
    "us3.datadoghq.com",
    "us5.datadoghq.com",
    "ap1.datadoghq.com",
    "ddog-gov.com",
];

/// The site when `--site` is not given (US1, the agent's own default).
pub const DEFAULT_SITE: &str = "datadoghq.com";

/// One name (a prefix of the site) a connect-style proxy lets agents reach, and why.
struct Name {
    prefix: &'static str,
    what: &'static str,
}

/// The names the Agent (v6/v7) and the Cluster Agent connect to, per "Network Traffic". Exact
/// names where the page gives them, one domain rule where it says a family of names must be
/// allowed (`*.agent.SITE`). No rule for the bare site: on US1 `.datadoghq.com` would also
/// allow the US3, US5 and AP1 sites, which live under it.
const CONNECT_NAMES: &[Name] = &[
    Name {
        prefix: ".agent.",
        what: "<VERSION>-app.agent (metrics, events, metadata: 7-72-0-app.agent for Agent \
               7.72.0), trace.agent (APM), <VERSION>-flare.agent",
    },
    Name {
        prefix: "api.",
        what: "API key validation (Agent 6.18/7.18 and later)",
    },
    Name {
        prefix: "flare.",
        what: "agent flares",
    },
    Name {
        prefix: "agent-http-intake.logs.",
        what: "logs over HTTPS (logs_config.force_use_http)",
    },
    Name {
        prefix: "process.",
        what: "live processes and containers, Cloud Network Monitoring, USM",
    },
    Name {
        prefix: "intake.profile.",
        what: "profiling",
    },
    Name {
        prefix: "instrumentation-telemetry-intake.",
        what: "APM instrumentation telemetry",
    },
    Name {
        prefix: "config.",
        what: "remote configuration",
    },
    Name {
        prefix: "dbm-metrics-intake.",
        what: "database monitoring metrics and activity",
    },
    Name {
        prefix: "dbquery-intake.",
        what: "database monitoring query samples",
    },
    Name {
        prefix: "ndm-intake.",
        what: "network device monitoring metadata",
    },
    Name {
        prefix: "snmp-traps-intake.",
        what: "SNMP traps",
    },
    Name {
        prefix: "ndmflow-intake.",
        what: "NetFlow",
    },
    Name {
        prefix: "netpath-intake.",
        what: "network path",
    },
    Name {
        prefix: "orchestrator.",
        what: "orchestrator explorer (Cluster Agent)",
    },
    Name {
        prefix: "contlcycle-intake.",
        what: "container lifecycle events",
    },
    Name {
        prefix: "contimage-intake.",
        what: "container images",
    },
    Name {
        prefix: "sbom-intake.",
        what: "cloud security vulnerabilities (SBOM)",
    },
    Name {
        prefix: "llmobs-intake.",
        what: "LLM observability",
    },
];

/// One frontend of the ports style: the HAProxy guide's port, the intake behind it, and the
/// `datadog.yaml` setting that points agents at it.
struct Intake {
    port: u16,
    name: &'static str,
    prefix: &'static str,
    what: &'static str,
}

/// The HAProxy guide's port map. 3844 is unused there too; its 3848 (package downloads for
/// remote agent management, from a host outside the site) is left out: it is not site data.
const INTAKES: &[Intake] = &[
    Intake {
        port: 3834,
        name: "metrics",
        prefix: "metrics.agent.",
        what: "metrics, checks, events, metadata (dd_url)",
    },
    Intake {
        port: 3835,
        name: "traces",
        prefix: "trace.agent.",
        what: "APM traces (apm_config.apm_dd_url)",
    },
    Intake {
        port: 3836,
        name: "profiles",
        prefix: "intake.profile.",
        what: "profiles (apm_config.profiling_dd_url)",
    },
    Intake {
        port: 3837,
        name: "processes",
        prefix: "process.",
        what: "processes and containers (process_config.process_dd_url)",
    },
    Intake {
        port: 3838,
        name: "logs",
        prefix: "agent-http-intake.logs.",
        what: "logs over HTTP (logs_config.logs_dd_url)",
    },
    Intake {
        port: 3839,
        name: "dbm-metrics",
        prefix: "dbm-metrics-intake.",
        what: "database monitoring metrics and activity",
    },
    Intake {
        port: 3840,
        name: "dbm-samples",
        prefix: "dbquery-intake.",
        what: "database monitoring samples",
    },
    Intake {
        port: 3841,
        name: "ndm-metadata",
        prefix: "ndm-intake.",
        what: "network devices metadata",
    },
    Intake {
        port: 3842,
        name: "snmp-traps",
        prefix: "snmp-traps-intake.",
        what: "SNMP traps",
    },
    Intake {
        port: 3843,
        name: "instrumentation-telemetry",
        prefix: "instrumentation-telemetry-intake.",
        what: "APM instrumentation telemetry (apm_config.telemetry.dd_url)",
    },
    Intake {
        port: 3845,
        name: "netflow",
        prefix: "ndmflow-intake.",
        what: "NetFlow",
    },
    Intake {
        port: 3846,
        name: "remote-config",
        prefix: "config.",
        what: "remote configuration (remote_configuration.rc_dd_url)",
    },
    Intake {
        port: 3847,
        name: "network-path",
        prefix: "netpath-intake.",
        what: "network path",
    },
];

/// The connect style's listening port: Squid's, which Datadog's proxy examples use.
const CONNECT_PORT: u16 = 3128;

pub(super) fn render(out: &mut String, preset: &Preset, site: &str, style: Style) {
    match style {
        Style::Connect => connect(out, preset, site),
        Style::Ports => ports(out, preset, site),
    }
}

fn connect(out: &mut String, preset: &Preset, site: &str) {
    header(
        out,
        preset,
        &format!("Datadog Agents, site {site}, through a CONNECT proxy"),
    );
    let _ = write!(
        out,
        "\n\
         # The shape Datadog recommends over HAProxy: agents use this proxy as their HTTPS proxy\n\
         # and open a CONNECT tunnel to each intake name; their TLS goes end to end with\n\
         # Datadog (the proxy never sees the API key) and the kernel carries the tunnel.\n\
         #\n\
         # On each agent, in datadog.yaml (or DD_PROXY_HTTPS=http://<PROXY_HOST>:{CONNECT_PORT}):\n\
         #\n\
         #   site: {site}\n\
         #   proxy:\n\
         #     https: http://<PROXY_HOST>:{CONNECT_PORT}\n\
         #   logs_config:\n\
         #     force_use_http: true      # logs over HTTPS, through the proxy (TCP logs cannot be)\n\
         #\n\
         # Leave `proxy: http:` unset: only CONNECT is served, for HTTPS. With `users` below,\n\
         # put the credentials in the URL: http://agent:<PASSWORD>@<PROXY_HOST>:{CONNECT_PORT}.\n\
         # Agents 7.67 and later ask for names with a trailing dot (trace.agent.{site}.);\n\
         # the rules match them.\n\
         \n\
         [[frontend]]\n\
         name = \"datadog\"\n\
         listen = \"0.0.0.0:{CONNECT_PORT}\"\n\
         mode = \"connect\"\n\
         {ALLOW_PRIVATE}\n\
         # users = [{{ name = \"agent\", password = \"<PASSWORD>\" }}]   # Basic auth; unset, anyone `allow` admits may tunnel\n\
         connect_timeout = \"5s\"\n\
         # The names agents reach on site {site} (Datadog's \"Network Traffic\" page), and\n\
         # nothing else. `.NAME:443` allows NAME and every name under it; the others are exact.\n\
         allow_destinations = [\n"
    );
    for name in CONNECT_NAMES {
        let rule = format!("\"{}{site}:443\",", name.prefix);
        let _ = writeln!(out, "    {rule:<52} # {}", name.what);
    }
    out.push_str("]\n");
}

fn ports(out: &mut String, preset: &Preset, site: &str) {
    header(
        out,
        preset,
        &format!("Datadog Agents, site {site}, one port per intake"),
    );
    let _ = write!(
        out,
        "\n\
         # The port map of Datadog's HAProxy guide (\"Proxy Example with HAProxy\"): one tcp\n\
         # frontend per intake; each backend originates verified TLS to the intake with the\n\
         # system CA bundle (ca-certificates), the certificate checked against the intake's\n\
         # name. Names follow their DNS TTLs: no cron reload as with HAProxy. Delete the\n\
         # frontend/backend pairs of products you do not use: /readyz answers 503 while any\n\
         # backend's name has no address (a product not offered on your site, say).\n\
         #\n\
         # Agents speak plain HTTP to these ports, so they have no certificate to validate and\n\
         # `skip_ssl_validation` stays false; the API key crosses the agent-proxy hop in clear,\n\
         # so keep that hop on a trusted network, or give each frontend `tls = {{ cert, key }}`\n\
         # with a certificate the agents trust and use https:// below without `*_no_ssl`.\n\
         #\n\
         # On each agent, in datadog.yaml (<PROXY_HOST> is this host):\n\
         #\n\
         #   site: {site}\n\
         #   dd_url: http://<PROXY_HOST>:3834\n\
         #   apm_config:\n\
         #     apm_dd_url: http://<PROXY_HOST>:3835\n\
         #     profiling_dd_url: http://<PROXY_HOST>:3836/api/v2/profile\n\
         #     telemetry:\n\
         #       dd_url: http://<PROXY_HOST>:3843\n\
         #   process_config:\n\
         #     process_dd_url: http://<PROXY_HOST>:3837\n\
         #   logs_config:\n\
         #     force_use_http: true        # `use_http: true` on agents before 7.x\n\
         #     logs_dd_url: <PROXY_HOST>:3838\n\
         #     logs_no_ssl: true\n\
         #   database_monitoring:\n\
         #     metrics:    {{ logs_dd_url: <PROXY_HOST>:3839, logs_no_ssl: true }}\n\
         #     activity:   {{ logs_dd_url: <PROXY_HOST>:3839, logs_no_ssl: true }}\n\
         #     samples:    {{ logs_dd_url: <PROXY_HOST>:3840, logs_no_ssl: true }}\n\
         #   network_devices:\n\
         #     metadata:   {{ logs_dd_url: <PROXY_HOST>:3841, logs_no_ssl: true }}\n\
         #     snmp_traps:\n\
         #       forwarder: {{ logs_dd_url: <PROXY_HOST>:3842, logs_no_ssl: true }}\n\
         #     netflow:\n\
         #       forwarder: {{ logs_dd_url: <PROXY_HOST>:3845, logs_no_ssl: true }}\n\
         #   remote_configuration:\n\
         #     rc_dd_url: <PROXY_HOST>:3846\n\
         #     no_tls: true\n\
         #   network_path:\n\
         #     forwarder: {{ logs_dd_url: <PROXY_HOST>:3847, logs_no_ssl: true }}\n\
         #\n\
         # API key validation and flares go to other hosts than dd_url's intake; the HAProxy guide\n\
         # routes them by URL path, which a tcp frontend cannot. Allow the agents those two\n\
         # (api.{site}, flare.{site}) directly, or use the connect style\n\
         # (`agent-proxy init --preset datadog --site {site} --style connect`).\n"
    );
    for intake in INTAKES {
        let host = format!("{}{site}", intake.prefix);
        let _ = write!(
            out,
            "\n\
             # {port}: {what}.\n\
             [[frontend]]\n\
             name = \"datadog-{name}\"\n\
             listen = \"0.0.0.0:{port}\"\n\
             mode = \"tcp\"\n\
             backend = \"datadog-{name}\"\n\
             {ALLOW_PRIVATE}\n\
             \n\
             [[backend]]\n\
             name = \"datadog-{name}\"\n\
             servers = [\"{host}:443\"]\n\
             tls = {{}}                         # verified; SNI and certificate name: {host}\n\
             health_check = {{ interval = \"10s\", timeout = \"3s\" }}\n",
            port = intake.port,
            what = intake.what,
            name = intake.name,
        );
    }
}
