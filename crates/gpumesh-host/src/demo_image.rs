//! The demo workload image, built locally because no registry can be assumed.
//!
//! A root file system with one static busybox binary and links to its applets, imported
//! into the container engine as `localhost/gpumesh-demo:3`. Enough for `sh -c '…'`
//! workloads in devnet, examples and tests, and for a demo service: busybox's `httpd`
//! ([`demo_service_command`]).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::runtime::container::ContainerRuntime;

/// The demo image's name.
pub const DEMO_IMAGE: &str = "localhost/gpumesh-demo:3";

/// The demo service: an HTTP server on `port` whose page names its lease, so a request
/// to an endpoint shows which replica answered. Under the process runtime it listens on
/// `$PORT` (the host port the agent chose) with the host's busybox.
pub fn demo_service_command(port: u16) -> Vec<String> {
    let script = format!(
        "www=/tmp/www-$GPUMESH_LEASE_ID; mkdir -p $www && echo \"hello from lease $GPUMESH_LEASE_ID\" > $www/index.html && \
         echo serving on ${{PORT:-{port}}} && \
         if command -v httpd >/dev/null; then exec httpd -f -p ${{PORT:-{port}}} -h $www; else exec busybox httpd -f -p ${{PORT:-{port}}} -h $www; fi"
    );
    vec!["/bin/sh".into(), "-c".into(), script]
}

/// A service that serves like [`demo_service_command`] for `serve_s` seconds, then stops
/// its server while the workload runs on: what a host that keeps billing for a dead
/// service looks like to checkers.
pub fn failing_service_command(port: u16, serve_s: u32) -> Vec<String> {
    let script = format!(
        "www=/tmp/www-$GPUMESH_LEASE_ID; mkdir -p $www && echo \"hello from lease $GPUMESH_LEASE_ID\" > $www/index.html && \
         if command -v httpd >/dev/null; then h=httpd; else h='busybox httpd'; fi; \
         $h -f -p ${{PORT:-{port}}} -h $www & pid=$!; sleep {serve_s}; kill $pid; \
         echo stopped serving; exec sleep 3600"
    );
    vec!["/bin/sh".into(), "-c".into(), script]
}

/// The demo service as a job: one GPU of `gpu` near `near` under `cap` per GPU-hour for at
/// most two minutes, serving HTTP on container port 8080, ready once `GET /` answers
/// (probed every `probe_every_ms`).
pub fn demo_service_job(
    gpu: gpumesh_types::GpuModel,
    near: gpumesh_types::GeoPoint,
    cap: gpumesh_types::Amount,
    probe_every_ms: u64,
) -> gpumesh_types::JobRequest {
    use gpumesh_types::{HealthCheck, PortSpec, Probe, Protocol};
    let mut job = gpumesh_types::JobRequest::new(
        gpu,
        1,
        near,
        cap,
        120_000,
        DEMO_IMAGE,
        demo_service_command(8080),
    );
    job.ports = vec![PortSpec {
        port: 8080,
        protocol: Protocol::Tcp,
    }];
    job.health = Some(HealthCheck {
        interval_ms: probe_every_ms,
        grace_ms: 30_000,
        failures: 3,
        ..HealthCheck::new(Probe::Http("/".into()))
    });
    job
}

/// Places a static busybox is found (Debian's busybox-static puts it in /bin).
const BUSYBOX_PATHS: &[&str] = &["/bin/busybox", "/usr/bin/busybox", "/usr/local/bin/busybox"];

const APPLETS: &[&str] = &[
    "sh",
    "echo",
    "sleep",
    "cat",
    "ls",
    "env",
    "head",
    "tail",
    "seq",
    "date",
    "true",
    "false",
    "yes",
    "wc",
    "sha256sum",
    "printf",
    "expr",
    "uname",
    "hostname",
    "id",
    "grep",
    "tr",
    "dd",
    "httpd",
    "nc",
    "wget",
    "mkdir",
    "rm",
    "kill",
];

/// Whether an ELF file is statically linked (has no PT_INTERP program header).
fn is_static_elf(bytes: &[u8]) -> bool {
    let u16_at = |o: usize| {
        bytes
            .get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let u64_at = |o: usize| {
        bytes
            .get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as usize)
    };
    if bytes.get(..5) != Some(b"\x7fELF\x02") {
        return false; // not a 64-bit ELF
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    (0..phnum).all(|i| {
        let at = phoff + i * phentsize;
        bytes
            .get(at..at + 4)
            .is_some_and(|t| u32::from_le_bytes([t[0], t[1], t[2], t[3]]) != 3)
    })
}

/// Finds a statically linked busybox.
pub fn find_static_busybox() -> anyhow::Result<PathBuf> {
    for path in BUSYBOX_PATHS {
        let path = Path::new(path);
        if let Ok(bytes) = std::fs::read(path)
            && is_static_elf(&bytes)
        {
            return Ok(path.to_path_buf());
        }
    }
    bail!(
        "no statically linked busybox found in {BUSYBOX_PATHS:?}; install it (Debian: apt-get install busybox-static)"
    )
}

/// A tar of the demo root file system.
pub fn demo_rootfs_tar() -> anyhow::Result<Vec<u8>> {
    let busybox = find_static_busybox()?;
    let mut tar = tar::Builder::new(Vec::new());
    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_size(0);
    for d in ["bin", "tmp", "proc", "dev", "sys", "etc"] {
        let mut header = dir.clone();
        // Workloads run unprivileged: /tmp is everyone's, as in every distribution.
        if d == "tmp" {
            header.set_mode(0o1777);
        }
        tar.append_data(&mut header, d, std::io::empty())
            .context("failed to add a directory")?;
    }
    tar.append_path_with_name(&busybox, "bin/busybox")
        .context("failed to add busybox")?;
    for applet in APPLETS {
        let mut link = tar::Header::new_gnu();
        link.set_entry_type(tar::EntryType::Symlink);
        link.set_mode(0o777);
        link.set_size(0);
        tar.append_link(&mut link, format!("bin/{applet}"), "busybox")
            .context("failed to add a link")?;
    }
    tar.into_inner().context("failed to finish the tar")
}

/// Makes sure the engine holds the demo image, importing it if not.
pub async fn ensure_demo_image(runtime: &ContainerRuntime) -> anyhow::Result<bool> {
    if runtime.has_image(DEMO_IMAGE).await {
        return Ok(false);
    }
    let tar = demo_rootfs_tar()?;
    runtime
        .import_image(DEMO_IMAGE, tar)
        .await
        .context("failed to import the demo image")?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_and_dynamic_binaries_are_told_apart() {
        // The test binary itself is dynamically linked on Linux.
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(!is_static_elf(&me));
        assert!(!is_static_elf(b"#!/bin/sh\n"));
        if let Ok(path) = find_static_busybox() {
            assert!(is_static_elf(&std::fs::read(path).unwrap()));
        }
    }
}
