//! Running the tools xtask drives (apt-get, rustup, cargo, the binary).
//!
//! Every command that changes something is printed first as one `xtask: ...` line, written the
//! way a user would type it, so that a failure can be reproduced by hand. Probes (`dpkg-query`,
//! `rustup ... list`, `bpf-linker --version`) run silently and only their answer is reported.

use std::{
    env,
    ffi::{OsStr, OsString},
    io,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Output, Stdio},
};

use anyhow::{Context as _, Result, bail};

/// A command plus the line that shows it.
pub(crate) struct Cmd {
    command: Command,
    line: String,
}

impl Cmd {
    /// `program` is looked up in [`search_path`], i.e. with the cargo bin directory in it.
    pub(crate) fn new(program: &str) -> Self {
        Self::with_program(program, program)
    }

    /// The cargo that runs xtask (`$CARGO`), so that child builds use the same toolchain.
    pub(crate) fn cargo() -> Self {
        let program = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        Self::with_program(program, "cargo")
    }

    fn with_program(program: impl AsRef<OsStr>, shown: &str) -> Self {
        let mut command = Command::new(program);
        command.env("PATH", search_path());
        Self {
            command,
            line: shown.to_owned(),
        }
    }

    pub(crate) fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        let arg = arg.as_ref();
        self.line.push(' ');
        self.line.push_str(&quote(arg));
        self.command.arg(arg);
        self
    }

    pub(crate) fn args<I, S>(self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        args.into_iter().fold(self, Self::arg)
    }

    /// Sets a variable for the child; it is shown in front of the command line.
    pub(crate) fn env(mut self, key: &str, value: impl AsRef<OsStr>) -> Self {
        let value = value.as_ref();
        self.line = format!("{key}={} {}", quote(value), self.line);
        self.command.env(key, value);
        self
    }

    /// Puts `dir` first in the child's PATH.
    pub(crate) fn path_prepend(mut self, dir: &str) -> Self {
        let mut path = OsString::from(dir);
        path.push(":");
        path.push(search_path());
        self.line = format!("PATH={dir}:$PATH {}", self.line);
        self.command.env("PATH", path);
        self
    }

    pub(crate) fn current_dir(mut self, dir: &Path) -> Self {
        self.command.current_dir(dir);
        self
    }

    /// Prints the line, runs the command with inherited stdio, fails unless it exits 0.
    pub(crate) fn run(self) -> Result<()> {
        let line = self.line.clone();
        let status = self.status()?;
        if !status.success() {
            bail!("`{line}` failed ({})", describe(status));
        }
        Ok(())
    }

    /// Prints the line, runs the command with inherited stdio and returns how it ended.
    pub(crate) fn status(mut self) -> Result<ExitStatus> {
        println!("xtask: {}", self.line);
        self.command
            .status()
            .with_context(|| format!("cannot start `{}`", self.line))
    }

    /// Like [`Self::status`], but also hands back every line the command printed on stdout
    /// (which still reaches the terminal as it comes).
    pub(crate) fn status_tee(mut self) -> Result<(ExitStatus, Vec<String>)> {
        use std::io::{BufRead as _, Write as _};
        println!("xtask: {}", self.line);
        let mut child = self
            .command
            .stdout(std::process::Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start `{}`", self.line))?;
        let mut lines = Vec::new();
        if let Some(stdout) = child.stdout.take() {
            let mut out = std::io::stdout().lock();
            for line in std::io::BufReader::new(stdout).lines() {
                let line = line.context("reading the command's output")?;
                let _ = writeln!(out, "{line}");
                lines.push(line);
            }
        }
        let status = child
            .wait()
            .with_context(|| format!("waiting for `{}`", self.line))?;
        Ok((status, lines))
    }

    /// Prints the line and replaces this process with the command; returns only on failure.
    pub(crate) fn exec(mut self) -> anyhow::Error {
        println!("xtask: {}", self.line);
        let err = self.command.exec();
        anyhow::Error::new(err).context(format!("cannot start `{}`", self.line))
    }

    /// Runs the command silently and returns its output; the error is the spawn error, so that
    /// callers can tell "not installed" (`NotFound`) from "answered no" (non-zero exit).
    pub(crate) fn probe(mut self) -> io::Result<Output> {
        self.command
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
    }
}

/// The stdout of a successful probe, or `None`.
pub(crate) fn probe_stdout(cmd: Cmd) -> Option<String> {
    let out = cmd.probe().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `$CARGO_HOME/bin` (default `~/.cargo/bin`): where rustup, cargo and `cargo install` put
/// binaries such as bpf-linker.
pub(crate) fn cargo_bin_dir() -> Option<PathBuf> {
    let home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))?;
    Some(home.join("bin"))
}

/// PATH for children: ours, with the cargo bin directory added in front when it is missing (a
/// root shell or `sudo` often lacks it, and aya-build finds bpf-linker through PATH).
pub(crate) fn search_path() -> OsString {
    let path = env::var_os("PATH").unwrap_or_default();
    let Some(bin) = cargo_bin_dir() else {
        return path;
    };
    if env::split_paths(&path).any(|p| p == bin) {
        return path;
    }
    env::join_paths(std::iter::once(bin).chain(env::split_paths(&path))).unwrap_or(path)
}

/// Finds an executable the way the children will (through [`search_path`]).
pub(crate) fn which(name: &str) -> Option<PathBuf> {
    env::split_paths(&search_path())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Whether we run with effective uid 0 (read from /proc so that no unsafe libc call is needed).
pub(crate) fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let uids = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
            // Fields: real, effective, saved, filesystem.
            uids.split_whitespace().nth(1).map(|euid| euid == "0")
        })
        .unwrap_or(false)
}

/// "exit status 3" / "killed by signal 9".
pub(crate) fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => "unknown exit".to_owned(),
    }
}

/// `arg` as a shell would need it typed (single-quoted unless plain).
pub(crate) fn quote(arg: &OsStr) -> String {
    let s = arg.to_string_lossy();
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+^@%".contains(c));
    if plain {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}
