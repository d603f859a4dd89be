//! `agent-proxy check -c FILE`: exit 0 and silence for a valid file; exit 1 and
//! `FILE:LINE:COL: message` on stderr, pointing at the offending token, for an invalid one.
//! Needs no privileges.
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use agent_proxy_tests::daemon::require_binary;

const VALID: &str = r#"# agent-proxy test config
[global]
max_connections = 10000
dataplane = "auto"
admin = "127.0.0.1:9090"
drain_timeout = "5s"
log_format = "json"

[[frontend]]
name = "fe"
listen = "127.0.0.1:7000"
mode = "tcp"
backend = "be"
allow = ["127.0.0.0/8", "::1/128"]
max_connections = 4096

[[backend]]
name = "be"
servers = ["127.0.0.1:7001", "[::1]:7001"]
balance = "roundrobin"
connect_timeout = "2s"
retries = 3
"#;

/// Writes `content` to a fresh file and runs `agent-proxy check -c` on it (at most 10 s).
fn check(content: &str) -> (PathBuf, Output) {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "agent-proxy-check-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    let path = dir.join("agent-proxy.toml");
    std::fs::write(&path, content).expect("write config");
    let mut child = Command::new(require_binary())
        .arg("check")
        .arg("-c")
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn agent-proxy check");
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("agent-proxy check did not finish within 10 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().expect("collect output");
    (path, out)
}

/// 1-based line and column (in characters) of the first occurrence of `needle` in `content`.
fn position(content: &str, needle: &str) -> (usize, usize) {
    let at = content
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in the test config"));
    let before = &content[..at];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line, col)
}

/// `VALID` with `from` replaced by `to` (which must change it).
fn broken(from: &str, to: &str) -> String {
    assert!(VALID.contains(from), "{from:?} not in VALID");
    VALID.replacen(from, to, 1)
}

/// Asserts exit 1 and a first stderr line `PATH:LINE:COL: message` pointing at `needle`.
fn assert_points_at(content: &str, needle: &str, what: &str) {
    let (line, col) = position(content, needle);
    let (path, out) = check(content);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{what}: expected exit 1, got {}; stderr: {stderr}",
        out.status
    );
    let prefix = format!("{}:{line}:{col}: ", path.display());
    let first = stderr.lines().next().unwrap_or("");
    assert!(
        first.starts_with(&prefix) && first.len() > prefix.len(),
        "{what}: expected stderr to start with {prefix:?} and a message (the error is at \
         {needle:?}), got:\n{stderr}"
    );
    let _ = std::fs::remove_dir_all(path.parent().expect("temp dir"));
}

#[test]
fn valid_config_passes_silently() {
    let (path, out) = check(VALID);
    assert!(
        out.status.success(),
        "check failed ({}) on a valid config: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stdout.is_empty() && out.stderr.is_empty(),
        "check printed something for a valid config: stdout {:?} stderr {:?}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(path.parent().expect("temp dir"));
}

#[test]
fn syntax_error() {
    // toml reports the unexpected second `=`.
    let content = broken("max_connections = 10000", "max_connections = = 10000");
    assert_points_at(&content, "= 10000", "syntax error");
}

#[test]
fn unknown_key() {
    let content = broken("mode = \"tcp\"\n", "mode = \"tcp\"\nbogus_key = 1\n");
    assert_points_at(&content, "bogus_key", "unknown key in [[frontend]]");
}

#[test]
fn unknown_key_in_global() {
    let content = broken(
        "log_format = \"json\"\n",
        "log_format = \"json\"\nlog_colour = \"red\"\n",
    );
    assert_points_at(&content, "log_colour", "unknown key in [global]");
}

#[test]
fn bad_listen_address() {
    let content = broken(
        "listen = \"127.0.0.1:7000\"",
        "listen = \"127.0.0.1:99999\"",
    );
    assert_points_at(&content, "\"127.0.0.1:99999\"", "bad listen address");
}

#[test]
fn frontend_names_missing_backend() {
    let content = broken("backend = \"be\"", "backend = \"nope\"");
    assert_points_at(&content, "\"nope\"", "frontend naming a missing backend");
}

#[test]
fn bad_duration() {
    let content = broken(
        "connect_timeout = \"2s\"",
        "connect_timeout = \"2 parsecs\"",
    );
    assert_points_at(&content, "\"2 parsecs\"", "bad duration");
}

/// The configs the end-to-end scenarios generate are valid (so that their failures are about
/// the data path, not the config).
#[test]
fn generated_configs_pass_check() {
    use agent_proxy_tests::{DaemonConfig, Dataplane};
    for dp in [Dataplane::Kernel, Dataplane::Userspace] {
        let mut config = DaemonConfig::new(
            dp,
            vec![
                "127.0.0.1:7001".parse().unwrap(),
                "[::1]:7002".parse().unwrap(),
            ],
        );
        config.kernel_window = Some(4 << 20);
        config.kernel_sndbuf = Some(8 << 20);
        config.listen = "[::1]:7000".parse().unwrap();
        let toml = config.to_toml();
        let (path, out) = check(&toml);
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "generated config rejected ({}): {}\n{toml}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let _ = std::fs::remove_dir_all(path.parent().expect("temp dir"));
    }
}

/// Every ```toml block of the docs is a config a reader may copy: each must pass `check`
/// (blocks that show a fragment start with `# fragment` and are skipped).
#[test]
fn docs_examples_pass_check() {
    let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs");
    let mut checked = 0;
    for entry in std::fs::read_dir(&docs).expect("docs/") {
        let path = entry.expect("docs entry").path();
        if path.extension().is_none_or(|e| e != "md") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read doc");
        let mut block: Option<String> = None;
        for line in text.lines() {
            match (&mut block, line.trim_start()) {
                (None, l) if l.starts_with("```toml") => block = Some(String::new()),
                (Some(body), l) if l.starts_with("```") => {
                    let body = std::mem::take(body);
                    block = None;
                    if body.trim_start().starts_with("# fragment") {
                        continue;
                    }
                    let (dir, out) = check(&body);
                    assert!(
                        out.status.success(),
                        "a config in {} fails check: {}\n{body}",
                        path.display(),
                        String::from_utf8_lossy(&out.stderr)
                    );
                    let _ = std::fs::remove_dir_all(dir.parent().expect("temp dir"));
                    checked += 1;
                }
                (Some(body), _) => {
                    body.push_str(line);
                    body.push('\n');
                }
                (None, _) => {}
            }
        }
    }
    assert!(checked >= 1, "no ```toml block found in docs/");
}

/// The config blocks an example keeps commented out (from a `# [[frontend]]` or `# [[backend]]`
/// line to the first line that is not `# ...` or `#`), uncommented.
fn commented_blocks(text: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in text.lines() {
        inside |= line.starts_with("# [[");
        inside &= line.starts_with("# ") || line == "#";
        if inside {
            out.push_str(
                line.strip_prefix('#')
                    .unwrap_or(line)
                    .trim_start_matches(' '),
            );
            out.push('\n');
        }
    }
    out
}

/// Every file in examples/ passes `check` as shipped, and so does each with its commented-out
/// frontends and backends uncommented (their comments say they do).
#[test]
fn examples_pass_check() {
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut checked = Vec::new();
    for entry in std::fs::read_dir(&examples).expect("examples/") {
        let path = entry.expect("examples entry").path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read example");
        let uncommented = commented_blocks(&text);
        let mut variants = vec![("as shipped", text.clone())];
        if !uncommented.is_empty() {
            variants.push(("uncommented", format!("{text}\n{uncommented}")));
        }
        for (how, body) in variants {
            let (dir, out) = check(&body);
            assert!(
                out.status.success(),
                "{} ({how}) fails check: {}\n{body}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            let _ = std::fs::remove_dir_all(dir.parent().expect("temp dir"));
        }
        checked.push(path);
    }
    assert!(
        checked.iter().any(|p| p.ends_with("agent-proxy.toml")),
        "examples/agent-proxy.toml not checked: {checked:?}"
    );
}

#[test]
fn commented_blocks_are_found() {
    let text = "a = 1\n# prose\n#\n# [[frontend]]\n# name = \"x\"   # why\n#\n#   listen = 1\n\n# [[backend]]\n";
    assert_eq!(
        commented_blocks(text),
        "[[frontend]]\nname = \"x\"   # why\n\nlisten = 1\n[[backend]]\n"
    );
}

/// `check` runs the same start-up validation as `run` (the frontend limit, the TLS files), so a
/// config that `run` would refuse does not pass `check`.
#[test]
fn more_frontends_than_the_kernel_counters_hold_fail_check() {
    let mut content = String::new();
    for i in 0..257 {
        content.push_str(&format!(
            "[[frontend]]\nname = \"f{i}\"\nlisten = \"127.0.0.1:{}\"\nbackend = \"b\"\n",
            20_000 + i
        ));
    }
    content.push_str("[[backend]]\nname = \"b\"\nservers = [\"127.0.0.1:1\"]\n");
    let (path, out) = check(&content);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "check passed 257 frontends: {stderr}"
    );
    assert!(
        stderr.contains("at most 256 frontends are supported"),
        "check said: {stderr}"
    );
    let _ = std::fs::remove_dir_all(path.parent().expect("temp dir"));
}

/// `--version` names the commit; `check` without `-c` reads the same default file as `run`.
#[test]
fn version_and_default_config_path() {
    let bin = require_binary();
    let out = Command::new(&bin)
        .arg("--version")
        .output()
        .expect("run --version");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "--version: {}", out.status);
    let version = text.trim().strip_prefix("agent-proxy ").unwrap_or_default();
    let (number, commit) = version.split_once(' ').unwrap_or_default();
    assert!(
        number.split('.').count() == 3
            && commit.starts_with('(')
            && commit.ends_with(')')
            && commit.len() > 8,
        "--version printed {text:?}, expected `agent-proxy X.Y.Z (COMMIT)`"
    );
    let default = std::path::Path::new("/etc/agent-proxy/agent-proxy.toml");
    if default.exists() {
        eprintln!(
            "{} exists here: the default-path half is not checked",
            default.display()
        );
        return;
    }
    let out = Command::new(&bin).arg("check").output().expect("run check");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "check without -c: {stderr}");
    assert!(
        stderr.starts_with("/etc/agent-proxy/agent-proxy.toml: cannot read:"),
        "check without -c: {stderr}"
    );
}

/// Text logs carry no ANSI colour codes when stderr is not a terminal (a file here, as under
/// journald): the daemon's start-up lines, written to a file, have no escape byte.
#[test]
fn text_logs_to_a_file_have_no_colour() {
    let bin = require_binary();
    let config = VALID
        .replace("log_format = \"json\"", "log_format = \"text\"")
        .replace("dataplane = \"auto\"", "dataplane = \"userspace\"")
        .replace("127.0.0.1:9090", "127.0.0.1:0")
        .replace("127.0.0.1:7000", "127.0.0.1:0");
    let (path, out) = check(&config);
    assert!(
        out.status.success(),
        "check: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = path.with_extension("log");
    let file = std::fs::File::create(&log).expect("log file");
    let mut child = Command::new(&bin)
        .args(["run", "-c"])
        .arg(&path)
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("dup"))
        .stderr(file)
        .spawn()
        .expect("run the daemon");
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("listening") || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        text.contains("listening"),
        "the daemon did not start: {text}"
    );
    assert!(
        !text.contains('\u{1b}'),
        "colour codes in a log file: {text:?}"
    );
}
