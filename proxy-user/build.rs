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
