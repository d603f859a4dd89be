//! Builds `proxy-ebpf` for the BPF target with aya-build; the object is embedded in the binary
//! with `aya::include_bytes_aligned!`. `AYA_BUILD_SKIP=1` skips it (docs, lints); the binary then
//! runs with the userspace data path only and says so.
use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let package = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "proxy-ebpf")
        .ok_or_else(|| anyhow!("proxy-ebpf package not found"))?;
    let root = package
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", package.manifest_path))?;
    println!(
        "cargo:rustc-env=AGENT_PROXY_COMMIT={}",
        commit(root.as_str())
    );
    println!("cargo:rustc-check-cfg=cfg(ebpf_skipped)");
    if std::env::var_os("AYA_BUILD_SKIP").is_some_and(|v| v == "1" || v == "true") {
        println!("cargo:rustc-cfg=ebpf_skipped");
    }
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "proxy-ebpf",
            root_dir: root.as_str(),
            ..Default::default()
        }],
        // Must equal EBPF_TOOLCHAIN in xtask/src/setup.rs: a nightly whose LLVM (22) matches the
        // one bpf-linker is built against; newer nightlies emit bitcode it cannot read.
        aya_build::Toolchain::Custom("nightly-2026-05-20"),
    )
}

/// The commit the tree is at (`git describe --always --dirty`), or "unknown" outside a git
/// checkout (a source tarball). Rebuilt when HEAD moves.
fn commit(ebpf_root: &str) -> String {
    let repo = std::path::Path::new(ebpf_root).join("..");
    for file in [".git/HEAD", ".git/index"] {
        let path = repo.join(file);
        if path.exists() {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
    std::process::Command::new("git")
        .args(["describe", "--always", "--dirty", "--abbrev=10"])
        .current_dir(&repo)
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}
