//! An independent look at the daemon's eBPF maps, through `bpftool`, so that a daemon whose
//! gauges lie cannot hide an entry that outlived its connection.
//!
//! `bpftool map show` lists the maps of every process on the machine, and tests run daemons in
//! parallel. Debian's bpftool is built without skeletons, so it prints no `pids` field; the
//! daemon's own maps are found through /proc/PID/fdinfo instead, which gives the `map_id` of
//! every map fd the daemon holds. (When a bpftool does print `pids`, those are honoured too.)
use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::privileges::which;

/// One map as `bpftool -j map show` describes it.
#[derive(Clone, Debug)]
pub struct MapInfo {
    pub id: u64,
    pub name: String,
    pub kind: String,
    pub pids: Vec<u64>,
}

/// Ids of the eBPF maps that process `pid` holds a file descriptor for.
pub fn map_ids_of(pid: u32) -> anyhow::Result<BTreeSet<u64>> {
    let mut ids = BTreeSet::new();
    let dir = std::fs::read_dir(format!("/proc/{pid}/fd")).context("list fds")?;
    for entry in dir.filter_map(Result::ok) {
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        if target.to_str() != Some("anon_inode:bpf-map") {
            continue;
        }
        let fd = entry.file_name();
        let Ok(info) =
            std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", fd.to_string_lossy()))
        else {
            continue;
        };
        if let Some(id) = info
            .lines()
            .find_map(|l| l.strip_prefix("map_id:"))
            .and_then(|v| v.trim().parse().ok())
        {
            ids.insert(id);
        }
    }
    Ok(ids)
}

/// Runs bpftool with `args` (JSON output), at most 10 s.
fn bpftool_json(args: &[&str]) -> anyhow::Result<Value> {
    let bin = which("bpftool")
        .context("bpftool is not installed (Debian: apt-get install bpftool); it is needed to check the eBPF maps independently of the daemon")?;
    let mut child = Command::new(bin)
        .arg("-j")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawn bpftool")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("bpftool {} did not finish within 10 s", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "bpftool {} failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_slice(&out.stdout)
        .with_context(|| format!("bpftool {}: output is not JSON", args.join(" ")))
}

/// Every map on the machine.
pub fn all_maps() -> anyhow::Result<Vec<MapInfo>> {
    let v = bpftool_json(&["map", "show"])?;
    let list = v.as_array().context("map show: not an array")?;
    Ok(list
        .iter()
        .filter_map(|m| {
            Some(MapInfo {
                id: m.get("id")?.as_u64()?,
                name: m
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
                kind: m
                    .get("type")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
                pids: m
                    .get("pids")
                    .and_then(Value::as_array)
                    .map(|ps| {
                        ps.iter()
                            .filter_map(|p| p.get("pid").and_then(Value::as_u64))
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect())
}

/// The maps of the daemon `pid`: those it holds an fd for, or that bpftool says it holds.
pub fn maps_of(pid: u32) -> anyhow::Result<Vec<MapInfo>> {
    let ids = map_ids_of(pid)?;
    Ok(all_maps()?
        .into_iter()
        .filter(|m| ids.contains(&m.id) || m.pids.contains(&u64::from(pid)))
        .collect())
}

/// Number of entries in map `id` (`bpftool map dump`). A sockhash with 4-byte values cannot
/// be read back from userspace (bpftool prints `"value":{"error":"No space left on device"}`
/// for each entry), but every key is still listed, and keys are what is counted.
pub fn entry_count(id: u64) -> anyhow::Result<usize> {
    let v = bpftool_json(&["map", "dump", "id", &id.to_string()])?;
    Ok(v.as_array()
        .with_context(|| format!("map dump id {id}: not an array"))?
        .len())
}
