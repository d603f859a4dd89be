//! `deploy/`: the systemd unit (`systemd-analyze verify`, its settings, and its capabilities:
//! enough for the kernel path as an unprivileged user, each one needed), the Kubernetes
//! manifests (`kubernetes-validate --strict`, probes, security context, their ConfigMaps pass
//! `check`), and the container image (built from scratch with podman, serving bytes through a
//! tcp frontend on the kernel path, and on the userspace relay under the default seccomp
//! profile), and the Prometheus alert rules (`promtool check rules`, their unit tests with
//! `promtool test rules`, every metric they name exported by the daemon). A missing tool skips
//! loudly, or fails with `CI=true`.
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use agent_proxy_tests::daemon::require_binary;
use agent_proxy_tests::netns::NetNs;
use agent_proxy_tests::pattern::Pattern;
use agent_proxy_tests::peers::{V4, connect, exchange, listen, serve_once};
use agent_proxy_tests::privileges::{require_root, require_tool, which};
use agent_proxy_tests::{Daemon, DaemonConfig, Dataplane};
use anyhow::{bail, ensure};
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

const UNIT: &str = "deploy/agent-proxy.service";

/// A scratch directory others may read (the daemon may run as `nobody`); removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("agent-proxy-deploy-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        set_mode(&dir, 0o755);
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn output(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {cmd:?}: {e}"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The `[Service]` settings of the unit: every `KEY=VALUE` line, in order (keys may repeat).
fn unit_service_settings() -> Vec<(String, String)> {
    let unit = std::fs::read_to_string(repo().join(UNIT)).expect("read the unit");
    let mut section = "";
    let mut settings = Vec::new();
    for line in unit.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line;
        } else if section == "[Service]"
            && !line.starts_with('#')
            && let Some((key, value)) = line.split_once('=')
        {
            settings.push((key.to_owned(), value.to_owned()));
        }
    }
    settings
}

fn setting<'a>(settings: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    settings
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect()
}

/// The unit as `systemd-analyze verify` sees it, with its commands pointing at `binary`.
fn verify_unit(dir: &Path, binary: &Path) -> Output {
    let unit = std::fs::read_to_string(repo().join(UNIT)).expect("read the unit");
    let path = dir.join("agent-proxy.service");
    let rewritten = unit.replace("/usr/local/bin/agent-proxy", &binary.display().to_string());
    std::fs::write(&path, rewritten).expect("write the unit");
    output(
        Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&path),
    )
}

#[test]
fn systemd_unit_verifies() {
    let test = "deploy::systemd_unit_verifies";
    if !require_tool(
        test,
        "systemd-analyze",
        which("systemd-analyze").is_some(),
        "apt install systemd",
    ) {
        return;
    }
    let scratch = Scratch::new("verify");
    let out = verify_unit(&scratch.0, &require_binary());
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "systemd-analyze verify: {}: {}",
        out.status,
        text(&out)
    );
    // The same unit with a binary that is not there fails: verify looks at the commands.
    let missing = scratch.0.join("no-such-binary");
    let out = verify_unit(&scratch.0, &missing);
    assert!(
        !out.status.success() && text(&out).contains("is not executable"),
        "verify passed a unit whose binary is missing: {}",
        text(&out)
    );
}

/// The capabilities of the unit, as `CAP_*` names.
fn unit_capabilities(settings: &[(String, String)], key: &str) -> BTreeSet<String> {
    setting(settings, key)
        .iter()
        .flat_map(|v| v.split_whitespace())
        .map(str::to_owned)
        .collect()
}

#[test]
fn systemd_unit_settings() {
    let s = unit_service_settings();
    let config = "/etc/agent-proxy/agent-proxy.toml";
    assert_eq!(
        setting(&s, "ExecStart"),
        [format!("/usr/local/bin/agent-proxy run -c {config}")]
    );
    assert_eq!(
        setting(&s, "ExecStartPre"),
        [format!("/usr/local/bin/agent-proxy check -c {config}")]
    );
    assert_eq!(
        setting(&s, "ExecReload"),
        [
            format!("/usr/local/bin/agent-proxy check -c {config}").as_str(),
            "/bin/kill -HUP $MAINPID"
        ]
    );
    assert_eq!(setting(&s, "NoNewPrivileges"), ["yes"]);
    // The daemon speaks sd_notify (tests/tests/upgrade.rs checks what it says), and an
    // upgraded process names itself the main one: systemd must accept it from any process.
    assert_eq!(setting(&s, "Type"), ["notify"]);
    assert_eq!(setting(&s, "NotifyAccess"), ["all"]);
    assert_eq!(setting(&s, "Restart"), ["on-failure"]);
    assert_eq!(setting(&s, "User"), ["agent-proxy"]);
    let nofile: u64 = setting(&s, "LimitNOFILE")[0].parse().expect("a number");
    assert!(
        nofile >= 2 * 10_000,
        "LimitNOFILE {nofile} < twice max_connections"
    );
    let ambient = unit_capabilities(&s, "AmbientCapabilities");
    let expected: BTreeSet<String> = [
        "CAP_BPF",
        "CAP_NET_ADMIN",
        "CAP_PERFMON",
        "CAP_NET_BIND_SERVICE",
    ]
    .map(str::to_owned)
    .into();
    assert_eq!(ambient, expected);
    assert_eq!(unit_capabilities(&s, "CapabilityBoundingSet"), expected);
    let sysusers = std::fs::read_to_string(repo().join("deploy/sysusers.d/agent-proxy.conf"))
        .expect("the sysusers.d file");
    assert!(
        sysusers.lines().any(|l| l.starts_with("u agent-proxy ")),
        "{sysusers}"
    );
}

/// `setpriv` arguments that make the daemon `nobody` with exactly `caps` (`CAP_*` names).
fn as_nobody_with(caps: &BTreeSet<String>) -> Vec<String> {
    let list: String = caps
        .iter()
        .map(|c| format!(",+{}", c.trim_start_matches("CAP_").to_ascii_lowercase()))
        .collect();
    [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        &format!("--inh-caps=-all{list}"),
        &format!("--ambient-caps=-all{list}"),
        &format!("--bounding-set=-all{list}"),
    ]
    .map(str::to_owned)
    .into()
}

/// The kernel path with a privileged port and the same-host agent programs: what the unit's
/// capabilities must cover. The config and binary are readable by `nobody`.
fn unprivileged_config(scratch: &Path, upstream: std::net::SocketAddr) -> DaemonConfig {
    let binary = scratch.join("agent-proxy");
    if !binary.exists() {
        std::fs::copy(require_binary(), &binary).expect("copy the binary");
        set_mode(&binary, 0o755);
    }
    let mut config = DaemonConfig::new(Dataplane::Kernel, vec![upstream]);
    config.listen = "127.0.0.1:443".parse().expect("address");
    config.binary = Some(binary);
    config
}

/// With the unit's capabilities and nothing else, as `nobody`: the kernel path loads, binds
/// 443 and carries bytes; without any one of them something the daemon does fails.
#[test]
fn systemd_unit_capabilities_are_exactly_enough() {
    let test = "deploy::systemd_unit_capabilities_are_exactly_enough";
    if !require_root(test)
        || !require_tool(
            test,
            "setpriv",
            which("setpriv").is_some(),
            "apt install util-linux",
        )
    {
        return;
    }
    let caps = unit_capabilities(&unit_service_settings(), "AmbientCapabilities");
    let scratch = Scratch::new("caps");
    let ns = NetNs::new().expect("namespace");
    let result = ns.block_on(Duration::from_secs(120), || async {
        let upstream = listen(V4).await?;
        let mut config = unprivileged_config(&scratch.0, upstream.local_addr()?);
        config.exec_prefix = as_nobody_with(&caps);
        let mut daemon = Daemon::start(&ns, config.clone())?;
        let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.pid()))?;
        ensure!(
            status
                .lines()
                .any(|l| l.starts_with("Uid:") && l.contains("65534")),
            "the daemon does not run as nobody:\n{status}"
        );
        let server = tokio::spawn(serve_once(upstream, 4 << 20, 2, 1 << 20));
        let got = exchange(connect(config.listen).await?, 1, 2 << 20, 2 << 20).await?;
        let up = server.await??;
        ensure!(up.hash == Pattern::hash(1, 2 << 20), "upstream got {up:?}");
        ensure!(
            got.received.hash == Pattern::hash(2, 1 << 20),
            "client got {:?}",
            got.received
        );
        let m = daemon.metrics()?;
        ensure!(
            m.get("agent_proxy_dataplane", &[("path", "kernel")]) == Some(1.0),
            "not on the kernel path"
        );
        let log = daemon.stderr_text();
        ensure!(
            !log.contains("sk_msg program rejected"),
            "the same-host agent program was reduced with the unit's capabilities:\n{log}"
        );
        ensure!(daemon.stop()?.success(), "exit after SIGTERM");
        daemon.passed();

        // Each capability removed: what breaks.
        for (cap, breaks) in [
            ("CAP_BPF", "the kernel path cannot be used"),
            ("CAP_NET_ADMIN", "the kernel path cannot be used"),
            ("CAP_NET_BIND_SERVICE", "cannot listen on 127.0.0.1:443"),
            // The splice verdict reads each buffer's TCP sequence number (bpf_probe_read_kernel)
            // to trim retransmitted overlaps: without CAP_PERFMON it does not load.
            ("CAP_PERFMON", "the kernel path cannot be used"),
        ] {
            ensure!(caps.contains(cap), "the unit lacks {cap}");
            let mut fewer = caps.clone();
            fewer.remove(cap);
            let mut config = config.clone();
            config.exec_prefix = as_nobody_with(&fewer);
            let log = match Daemon::start(&ns, config) {
                Err(e) => format!("{e:#}"),
                Ok(mut daemon) => {
                    let log = daemon.stderr_text();
                    daemon.stop()?;
                    daemon.passed();
                    log
                }
            };
            ensure!(
                log.contains(breaks),
                "without {cap}: expected {breaks:?} in:\n{log}"
            );
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{test}: {e:?}");
    }
}

/// Every document of a YAML file, as JSON (PyYAML, which kubernetes-validate brings).
fn yaml_documents(path: &Path) -> Vec<Value> {
    let out = output(Command::new("python3").args([
        "-c",
        "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d]))",
    ]).arg(path));
    assert!(
        out.status.success(),
        "parse {}: {}",
        path.display(),
        text(&out)
    );
    serde_json::from_slice(&out.stdout).expect("JSON")
}

fn kubernetes_validate(paths: &[PathBuf]) -> Output {
    output(
        Command::new("python3")
            .args(["-m", "kubernetes_validate", "--strict"])
            .args(paths),
    )
}

fn python_has(module: &str) -> bool {
    Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The workload's pod spec and its one container.
fn pod(docs: &[Value], kind: &str) -> (Value, Value) {
    let workload = docs
        .iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind}"));
    let spec = workload["spec"]["template"]["spec"].clone();
    let container = spec["containers"][0].clone();
    (spec, container)
}

#[test]
fn kubernetes_manifests_validate() {
    let test = "deploy::kubernetes_manifests_validate";
    if !require_tool(
        test,
        "kubernetes-validate",
        python_has("kubernetes_validate"),
        "pip install kubernetes-validate",
    ) {
        return;
    }
    let dir = repo().join("deploy/kubernetes");
    let files = [dir.join("egress.yaml"), dir.join("node.yaml")];
    let out = kubernetes_validate(&files);
    assert!(out.status.success(), "kubernetes-validate: {}", text(&out));
    // A misspelled field fails strict validation: the validator does look.
    let scratch = Scratch::new("k8s");
    let bad = scratch.0.join("bad.yaml");
    let egress = std::fs::read_to_string(&files[0]).expect("read");
    std::fs::write(&bad, egress.replace("readinessProbe:", "readinesProbe:")).expect("write");
    let out = kubernetes_validate(&[bad]);
    assert!(
        !out.status.success(),
        "a misspelled field passed: {}",
        text(&out)
    );

    let preset = init_datadog();
    for (file, kinds, workload) in [
        (
            &files[0],
            vec!["ConfigMap", "Deployment", "Service", "PodDisruptionBudget"],
            "Deployment",
        ),
        (&files[1], vec!["ConfigMap", "DaemonSet"], "DaemonSet"),
    ] {
        let docs = yaml_documents(file);
        let found: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
        assert_eq!(found, kinds, "{}", file.display());
        let (spec, container) = pod(&docs, workload);
        assert_eq!(
            spec["hostNetwork"] == true,
            workload == "DaemonSet",
            "{workload}"
        );
        for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
            assert_eq!(
                container[probe]["httpGet"]["path"], path,
                "{workload} {probe}"
            );
            assert_eq!(
                container[probe]["httpGet"]["port"], "admin",
                "{workload} {probe}"
            );
        }
        let admin_port = container["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .find(|p| p["name"] == "admin")
            .expect("an admin port")["containerPort"]
            .clone();
        assert_eq!(admin_port, 9090, "{workload}");
        let security = &container["securityContext"];
        assert_eq!(
            security["capabilities"]["drop"],
            serde_json::json!(["ALL"]),
            "{workload}"
        );
        assert_eq!(
            security["capabilities"]["add"],
            serde_json::json!(["BPF", "NET_ADMIN", "PERFMON"]),
            "{workload}"
        );
        assert_eq!(security["allowPrivilegeEscalation"], false, "{workload}");
        // The ConfigMap: the preset with admin where the kubelet reaches it, no same-host path.
        let configmap = docs
            .iter()
            .find(|d| d["kind"] == "ConfigMap")
            .expect("ConfigMap");
        let mounted = spec["volumes"][0]["configMap"]["name"].clone();
        assert_eq!(configmap["metadata"]["name"], mounted, "{workload}");
        let toml = configmap["data"]["agent-proxy.toml"]
            .as_str()
            .expect("agent-proxy.toml");
        let expected = preset
            .replace("admin = \"127.0.0.1:9090\"\n", "admin = \"0.0.0.0:9090\"\n")
            .replace(
                "dataplane = \"auto\"\n",
                "dataplane = \"auto\"\nlocal_agents = false\n",
            );
        assert_eq!(
            toml, expected,
            "{workload}: the ConfigMap drifted from the preset"
        );
        check_config(&scratch.0, workload, toml);
    }
}

fn init_datadog() -> String {
    let out = output(Command::new(require_binary()).args(["init", "--preset", "datadog"]));
    assert!(out.status.success(), "init: {}", text(&out));
    String::from_utf8(out.stdout).expect("UTF-8")
}

fn check_config(dir: &Path, name: &str, toml: &str) {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, toml).expect("write");
    let out = output(
        Command::new(require_binary())
            .arg("check")
            .arg("-c")
            .arg(&path),
    );
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "check {name}: {}",
        text(&out)
    );
}

/// A container, removed on drop.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["rm", "--force", "--time", "0", &self.0])
            .stdin(Stdio::null())
            .output();
    }
}

/// The image's tag for this test run.
fn build_image() -> anyhow::Result<String> {
    let tag = format!("localhost/agent-proxy:test-{}", std::process::id());
    let out = output(
        Command::new(repo().join("deploy/build-image.sh"))
            .arg(require_binary())
            .arg(&tag),
    );
    ensure!(out.status.success(), "build-image.sh: {}", text(&out));
    Ok(tag)
}

/// Runs the image in `ns` (its network namespace joined, as `--network host` would join the
/// host's) with `config`; waits until /readyz answers 200.
fn run_container(
    ns: &NetNs,
    image: &str,
    dir: &Path,
    config: &str,
    seccomp: &[&str],
) -> anyhow::Result<Container> {
    std::fs::write(dir.join("agent-proxy.toml"), config)?;
    let name = format!("agent-proxy-test-{}-{}", std::process::id(), ns.name());
    let _ = output(Command::new("podman").args(["rm", "--force", &name]));
    let out = output(
        Command::new("podman")
            .args(["run", "--detach", "--name", &name, "--runtime", "runc"])
            .args([
                "--ulimit",
                "nofile=4096:4096",
                "--ulimit",
                "nproc=4096:4096",
            ])
            .arg(format!("--network=ns:{}", ns.path().display()))
            .args(["--cap-drop=all", "--cap-add=bpf,net_admin,perfmon"])
            .args(seccomp)
            .arg(format!("--volume={}:/etc/agent-proxy:ro", dir.display()))
            .arg(image),
    );
    ensure!(out.status.success(), "podman run: {}", text(&out));
    let container = Container(name);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ready =
            ns.run(|| agent_proxy_tests::admin::http_get("127.0.0.1:9090".parse()?, "/readyz"));
        if matches!(ready, Ok((200, _))) {
            return Ok(container);
        }
        if Instant::now() > deadline {
            let logs = output(Command::new("podman").args(["logs", &container.0]));
            bail!(
                "the container is not ready (last {ready:?}); its log:\n{}",
                text(&logs)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Bytes through the container's tcp frontend to an upstream in the namespace, hashed both
/// ways; returns the container's `/metrics`.
fn serve_through(ns: &NetNs, upstream_port: u16) -> anyhow::Result<String> {
    ns.block_on(Duration::from_secs(60), move || async move {
        let upstream = tokio::net::TcpListener::bind(("127.0.0.1", upstream_port)).await?;
        let server = tokio::spawn(serve_once(upstream, 4 << 20, 12, 1 << 20));
        let got = exchange(
            connect("127.0.0.1:7000".parse()?).await?,
            11,
            2 << 20,
            2 << 20,
        )
        .await?;
        let up = server.await??;
        ensure!(up.hash == Pattern::hash(11, 2 << 20), "upstream got {up:?}");
        ensure!(
            got.received.hash == Pattern::hash(12, 1 << 20),
            "client got {:?}",
            got.received
        );
        let (code, metrics) =
            agent_proxy_tests::admin::http_get("127.0.0.1:9090".parse()?, "/metrics")?;
        ensure!(code == 200, "/metrics: {code}");
        Ok(metrics)
    })
}

#[test]
fn container_image_serves_traffic() {
    let test = "deploy::container_image_serves_traffic";
    if !require_root(test)
        || !require_tool(
            test,
            "podman",
            which("podman").is_some(),
            "apt install podman runc",
        )
    {
        return;
    }
    let result = (|| -> anyhow::Result<()> {
        let image = build_image()?;
        let scratch = Scratch::new("image");
        let ns = NetNs::new()?;
        let upstream_port = ns
            .run(|| std::net::TcpListener::bind("127.0.0.1:0")?.local_addr())?
            .port();
        let config = |dataplane: &str| {
            format!(
                "[global]\ndataplane = \"{dataplane}\"\nadmin = \"127.0.0.1:9090\"\nlocal_agents = false\n\
                 drain_timeout = \"2s\"\n\n[[frontend]]\nname = \"fe\"\nlisten = \"127.0.0.1:7000\"\n\
                 backend = \"be\"\n\n[[backend]]\nname = \"be\"\nservers = [\"127.0.0.1:{upstream_port}\"]\n"
            )
        };
        // The kernel path: bpf() needs a seccomp profile that allows it.
        {
            let _container = run_container(
                &ns,
                &image,
                &scratch.0,
                &config("kernel"),
                &["--security-opt=seccomp=unconfined"],
            )?;
            let metrics = serve_through(&ns, upstream_port)?;
            ensure!(
                metrics.contains("agent_proxy_dataplane{path=\"kernel\"} 1"),
                "not on the kernel path:\n{metrics}"
            );
        }
        // The runtime's default profile (bpf() only with CAP_SYS_ADMIN on podman 4.3): "auto"
        // falls back to the userspace relay, and the container still serves.
        let container = run_container(&ns, &image, &scratch.0, &config("auto"), &[])?;
        let metrics = serve_through(&ns, upstream_port)?;
        let log = text(&output(Command::new("podman").args(["logs", &container.0])));
        // A runtime whose default profile allows bpf() with CAP_BPF keeps the kernel path; one
        // that does not (podman 4.3) gets the relay, and the log says why.
        let relay = metrics.contains("agent_proxy_dataplane{path=\"userspace\"} 1")
            && log.contains("kernel data path unavailable");
        ensure!(
            relay || metrics.contains("agent_proxy_dataplane{path=\"kernel\"} 1"),
            "neither the kernel path nor the relay with its reason:\n{metrics}\n{log}"
        );
        let _ = output(Command::new("podman").args(["rmi", "--force", &image]));
        Ok(())
    })();
    if let Err(e) = result {
        panic!("{test}: {e:?}");
    }
}

const RULES: &str = "deploy/prometheus/agent-proxy-rules.yml";
const RULES_TEST: &str = "deploy/prometheus/agent-proxy-rules.test.yml";

/// The metric names an expression of the rules file uses (`agent_proxy_*`, `process_*`), a
/// histogram's `_count`/`_bucket`/`_sum` series under their family's name.
fn rule_metric_names(rules: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in rules.lines().filter(|l| !l.trim_start().starts_with('#')) {
        let mut rest = line;
        let next = |text: &str| {
            ["agent_proxy_", "process_"]
                .iter()
                .filter_map(|prefix| text.find(prefix))
                .min()
        };
        while let Some(at) = next(rest) {
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            let name = &tail[..end];
            let family = ["_count", "_bucket", "_sum"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|f| f.ends_with("_seconds")))
                .unwrap_or(name);
            names.insert(family.to_owned());
            rest = &tail[end..];
        }
    }
    names
}

/// `promtool check rules` accepts the rules file, `promtool test rules` passes its unit tests
/// (each alert fires on the series meant to fire it, at the time its `for` allows, and not on
/// the healthy ones), and every metric a rule names is one the daemon exports.
#[test]
fn prometheus_rules_check_and_fire() {
    let test = "deploy::prometheus_rules_check_and_fire";
    if !require_tool(
        test,
        "promtool",
        which("promtool").is_some(),
        "apt install prometheus",
    ) {
        return;
    }
    let out = output(
        Command::new("promtool")
            .args(["check", "rules"])
            .arg(repo().join(RULES)),
    );
    assert!(
        out.status.success() && text(&out).contains("SUCCESS"),
        "promtool check rules {RULES}: {}: {}",
        out.status,
        text(&out)
    );
    let out = output(
        Command::new("promtool")
            .args(["test", "rules", "agent-proxy-rules.test.yml"])
            .current_dir(repo().join("deploy/prometheus")),
    );
    assert!(
        out.status.success() && text(&out).contains("SUCCESS"),
        "promtool test rules {RULES_TEST}: {}: {}",
        out.status,
        text(&out)
    );
    let rules = std::fs::read_to_string(repo().join(RULES)).expect("read the rules");
    let registry = std::fs::read_to_string(repo().join("proxy-user/src/metrics.rs"))
        .expect("read proxy-user/src/metrics.rs");
    let names = rule_metric_names(&rules);
    assert!(
        names.len() >= 10,
        "too few metrics found in the rules: {names:?}"
    );
    for name in &names {
        assert!(
            registry.contains(&format!("\"{name}\"")),
            "{RULES} uses {name}, which proxy-user/src/metrics.rs neither registers nor tests"
        );
    }
    // Every alert the rules define is exercised by the unit tests.
    let tests = std::fs::read_to_string(repo().join(RULES_TEST)).expect("read the rule tests");
    for alert in rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
    {
        let tested = tests
            .lines()
            .any(|l| l.trim() == format!("alertname: {alert}"));
        assert!(tested, "alert {alert} has no test in {RULES_TEST}");
    }
}

#[test]
fn rule_metric_names_are_found() {
    let names = rule_metric_names(
        "# agent_proxy_not_this\n  expr: rate(agent_proxy_backend_connect_seconds_count[5m]) / process_max_fds > 0 and agent_proxy_x_total\n",
    );
    let expected = [
        "agent_proxy_backend_connect_seconds",
        "agent_proxy_x_total",
        "process_max_fds",
    ];
    assert_eq!(names, expected.iter().map(|s| s.to_string()).collect());
}
