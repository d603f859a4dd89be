//! The `aya::EbpfLoader` for the daemon's object, without aya's parse of the kernel's BTF when
//! the object has no CO-RE relocation.
//!
//! aya 0.14's `EbpfLoader::new()` always parses `/sys/kernel/btf/vmlinux` (`Btf::from_sys_fs`:
//! 5.5 MB read, ~18 MiB of heap at its peak, the largest part of the daemon's start-up peak RSS,
//! docs/benchmarks.md). The result serves one purpose, CO-RE relocations
//! (`Object::relocate_btf`, a no-op for an object without them), and `.btf(None)` only drops it
//! once parsed. aya 0.15+ has a loader without it but needs a newer Rust; 0.14 has no other
//! constructor (`Default` and `Ebpf::load` parse too).
//!
//! So, when the object has no CO-RE relocation ([`core_relocations`]), the loader is built on
//! a thread of its own that may not open files: a seccomp filter on that thread alone answers
//! `open`, `openat` and `openat2` with `EPERM`, `Btf::from_sys_fs` fails at its open, and the
//! loader comes back holding no BTF, as `.btf(None)` leaves it, without the parse. The thread runs
//! nothing else and ends; nothing else of the process ever runs under the filter: seccomp
//! filters apply to the thread that installs them (without `SECCOMP_FILTER_FLAG_TSYNC`) and to
//! the threads and processes it starts (none). `no_new_privs`, which an unprivileged filter
//! needs, is per thread too (and set for the whole process anyway by systemd's
//! `NoNewPrivileges=yes` and Kubernetes' `allowPrivilegeEscalation: false`, deploy/).
//! `SECCOMP_RET_ERRNO` is not audited by default. What runs under the filter was read in aya
//! 0.14.0's source (pinned, `=0.14.0`): `EbpfLoader::new()` is that parse and empty collections,
//! nothing lazily initialised that a failed open could leave wrong for later (a newer aya must
//! be read again before it is trusted here). If any of it fails (a container runtime's
//! seccomp profile refusing `prctl(PR_SET_SECCOMP)`, an architecture not listed here, an object
//! with CO-RE relocations), the loader is built as before, with the parse, and that is logged at
//! debug.
//!
//! Not chosen: a mount namespace on that thread with `/dev/null` bind-mounted over the file, or
//! a `chroot` of that thread: both need a capability the deployments do not grant
//! (`CAP_SYS_ADMIN`, `CAP_SYS_CHROOT`; deploy/agent-proxy.service, deploy/kubernetes), and
//! systemd's `RestrictNamespaces=yes` refuses the namespace, so they would never take effect
//! where it matters; the bind mount would also reach the host's namespace if made before its
//! mounts were made private. A patched aya would have to be carried from release to release.
use aya::EbpfLoader;

/// Whether `object` (an eBPF ELF object) has CO-RE relocations: a `.BTF.ext` section whose
/// `core_relo` part is not empty. `None` if the object cannot be read that far.
pub(super) fn core_relocations(object: &[u8]) -> Option<bool> {
    use object::{Object as _, ObjectSection as _};
    let file = object::File::parse(object).ok()?;
    let Some(section) = file.section_by_name(".BTF.ext") else {
        return Some(false);
    };
    let ext = section.data().ok()?;
    let u32_at = |at: usize| -> Option<u32> {
        let b = ext.get(at..at + 4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    // struct btf_ext_header: magic (0xeb9f), version, flags, hdr_len, then offset and length of
    // func_info, line_info and (hdr_len >= 32) core_relo.
    if ext.get(..2)? != 0xeb9f_u16.to_le_bytes() {
        return None;
    }
    if u32_at(4)? < 32 {
        return Some(false);
    }
    Some(u32_at(28)? > 0)
}

/// A loader for `object`: without the kernel's BTF if `object` has no CO-RE relocation and the
/// thread can be fenced, else `EbpfLoader::new()` as is.
pub(super) fn loader(object: &[u8]) -> EbpfLoader<'static> {
    if core_relocations(object) != Some(false) {
        tracing::debug!("the eBPF object has CO-RE relocations: aya parses the kernel's BTF");
        return EbpfLoader::new();
    }
    match without_kernel_btf() {
        Ok(loader) => loader,
        Err(e) => {
            tracing::debug!(error = %e, "aya parses the kernel's BTF, unused (no CO-RE relocation)");
            EbpfLoader::new()
        }
    }
}

/// `EbpfLoader::new()` on a thread that may not open files, so that it holds no BTF.
fn without_kernel_btf() -> std::io::Result<EbpfLoader<'static>> {
    std::thread::Builder::new()
        .name("ebpf-loader".into())
        .spawn(|| {
            deny_opens()?;
            Ok(EbpfLoader::new())
        })?
        .join()
        .map_err(|_| std::io::Error::other("the loader thread panicked"))?
}

/// The calling thread's `open`, `openat` and `openat2` fail with `EPERM` from now on, until it
/// ends. Never call it on a thread that does anything else.
fn deny_opens() -> std::io::Result<()> {
    // The filter is built first: this thread's first allocation attaches it to a malloc arena,
    // which glibc may size by reading a file in /sys.
    let filter = open_filter()?;
    let program = libc::sock_fprog {
        len: u16::try_from(filter.len()).map_err(std::io::Error::other)?,
        filter: filter.as_ptr().cast_mut(),
    };
    // SAFETY: plain prctl calls; `program` points at `filter`, alive across the call (the kernel
    // copies it).
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
            || libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &raw const program,
            ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The classic BPF seccomp program: on this architecture, `EPERM` for the open calls; anything
/// else (another architecture's calls, any other call) allowed.
fn open_filter() -> std::io::Result<Vec<libc::sock_filter>> {
    #[cfg(target_arch = "x86_64")]
    const ARCH: u32 = 0xc000_003e; // AUDIT_ARCH_X86_64
    #[cfg(target_arch = "aarch64")]
    const ARCH: u32 = 0xc000_00b7; // AUDIT_ARCH_AARCH64
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    return Err(std::io::Error::other(
        "no seccomp filter for this architecture",
    ));
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    {
        let denied = [
            libc::SYS_openat,
            libc::SYS_openat2,
            #[cfg(target_arch = "x86_64")]
            libc::SYS_open,
        ];
        let n = denied.len() as u8;
        let op = |code: u32, k: u32, jt: u8, jf: u8| libc::sock_filter {
            code: code as u16,
            jt,
            jf,
            k,
        };
        let load = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
        let equal = libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K;
        let mut filter = vec![
            op(
                load,
                std::mem::offset_of!(libc::seccomp_data, arch) as u32,
                0,
                0,
            ),
            // Another architecture: to "allow", past the loading of nr and the n checks.
            op(equal, ARCH, 0, n + 1),
            op(
                load,
                std::mem::offset_of!(libc::seccomp_data, nr) as u32,
                0,
                0,
            ),
        ];
        for (i, nr) in (0u8..).zip(denied) {
            // Equal: to "deny", past the remaining checks and "allow".
            filter.push(op(equal, nr as u32, n - i, 0));
        }
        filter.push(op(
            libc::BPF_RET | libc::BPF_K,
            libc::SECCOMP_RET_ALLOW,
            0,
            0,
        ));
        filter.push(op(
            libc::BPF_RET | libc::BPF_K,
            libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
            0,
            0,
        ));
        Ok(filter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The daemon's object has no CO-RE relocation, so aya's parse of the kernel's BTF is
    /// skipped; aya's own reading of the object agrees. If this fails because the eBPF code now
    /// uses CO-RE, the skip is off by itself ([`loader`]) and the start-up peak RSS is ~18 MiB
    /// higher: say so in docs/benchmarks.md ("Memory") and change this test.
    #[test]
    fn object_has_no_core_relocation() {
        let object = super::super::EBPF_OBJECT;
        if object.is_empty() {
            assert!(
                std::env::var_os("CI").is_none(),
                "the eBPF object is not built in (AYA_BUILD_SKIP) under CI"
            );
            eprintln!("SKIPPED: the eBPF object is not built in (AYA_BUILD_SKIP)");
            return;
        }
        let parsed = aya_obj::Object::parse(object).unwrap();
        assert_eq!(core_relocations(object), Some(parsed.has_btf_relocations()));
        assert_eq!(core_relocations(object), Some(false));
    }

    #[test]
    fn core_relocations_of_other_bytes() {
        assert_eq!(core_relocations(b"not an ELF object"), None);
    }

    /// On the fenced thread the kernel's BTF cannot be opened and aya's loader holds none;
    /// other threads still open files.
    #[test]
    fn fenced_thread_opens_nothing_and_nothing_else_is_fenced() {
        let fenced = std::thread::spawn(|| {
            deny_opens().unwrap();
            let open = std::fs::File::open("/proc/self/status").map(drop);
            let btf = aya::Btf::from_sys_fs().map(drop);
            (open.map_err(|e| e.raw_os_error()), btf.is_err())
        })
        .join()
        .unwrap();
        assert_eq!(fenced, (Err(Some(libc::EPERM)), true));
        std::fs::File::open("/proc/self/status").unwrap();
        std::thread::spawn(|| std::fs::File::open("/proc/self/status").unwrap())
            .join()
            .unwrap();
        let loader = without_kernel_btf().unwrap();
        assert!(
            format!("{loader:?}").starts_with("EbpfLoader { btf: None,"),
            "{loader:?}"
        );
    }
}
