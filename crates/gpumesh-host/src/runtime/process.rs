//! Workloads as plain processes on the host: for local development networks only.
//!
//! There is no isolation and no image: the command runs as the agent's user. The process
//! runs in its own process group, so a kill stops everything it started. A service
//! cannot be given a port from outside, so it is told where to listen instead:
//! `GPUMESH_PORT_<port>_<TCP|UDP>` holds the host port chosen for each container port,
//! and `PORT` the first one's.
//!
//! A process group outlives an agent killed outright, so the runtime records each one it
//! starts (`process-workloads.json` in its state directory: the lease, the group and its
//! leader's start time, whose network and host) until it ends. A later run finds them
//! ([`Runtime::found`]) and can only end them: their output went to the agent that died.
//! The start time guards against a group id the system has since given to another.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use anyhow::{Context, bail};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use gpumesh_types::{LogStream, RuntimeKind};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{Output, Runtime, Workload, WorkloadSpec};

/// Runs each workload's command as a child process.
#[derive(Debug, Default)]
pub struct ProcessRuntime {
    record: Option<Arc<Record>>,
}

/// The file of process groups started and not yet ended.
#[derive(Debug)]
struct Record {
    path: PathBuf,
    /// One writer at a time: every agent of a local network may share the runtime.
    lock: Mutex<()>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Entry {
    lease: u64,
    group: i32,
    /// The group leader's start, in clock ticks since boot (`/proc/PID/stat`).
    started: u64,
    network: String,
    host: String,
}

impl Record {
    fn read(&self) -> Vec<Entry> {
        std::fs::read(&self.path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }

    fn write(&self, entries: &[Entry]) -> anyhow::Result<()> {
        let tmp = self.path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec(entries)?)
            .with_context(|| format!("failed to write {}", tmp.display()))?;
        std::fs::rename(&tmp, &self.path)
            .with_context(|| format!("failed to replace {}", self.path.display()))
    }

    fn change(&self, f: impl FnOnce(&mut Vec<Entry>)) -> anyhow::Result<()> {
        let _held = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut entries = self.read();
        f(&mut entries);
        self.write(&entries)
    }
}

/// When process `pid` started, in clock ticks since boot; `None` once it is gone.
fn start_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether `entry`'s group leader is still the process that was recorded.
fn alive(entry: &Entry) -> bool {
    start_ticks(entry.group) == Some(entry.started)
}

/// Kills process group `group`; never 0, 1 or a negative id, which would name others.
fn kill_group(group: i32) {
    if let Some(pid) = rustix::process::Pid::from_raw(group).filter(|_| group > 1) {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
}

fn label<'a>(spec: &'a WorkloadSpec, key: &str) -> &'a str {
    spec.labels
        .iter()
        .find(|(k, _)| k == key)
        .map_or("", |(_, v)| v.as_str())
}

impl ProcessRuntime {
    /// A process runtime that records the groups it starts in `dir` (created if missing),
    /// so that a later run of the agent finds those a killed one left.
    pub fn recorded_in(dir: &Path) -> anyhow::Result<ProcessRuntime> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("failed to create the state directory {}", dir.display()))?;
        Ok(ProcessRuntime {
            record: Some(Arc::new(Record {
                path: dir.join("process-workloads.json"),
                lock: Mutex::new(()),
            })),
        })
    }
}

impl Runtime for ProcessRuntime {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Process
    }

    /// Kills every recorded group still running: each workload's group is killed when
    /// its handle is dropped, but an agent in another process, killed outright, drops
    /// nothing.
    fn reap(&self) -> BoxFuture<'_, anyhow::Result<usize>> {
        async move {
            let Some(record) = &self.record else {
                return Ok(0);
            };
            let mut killed = 0;
            record.change(|entries| {
                for e in entries.iter().filter(|e| alive(e)) {
                    kill_group(e.group);
                    killed += 1;
                }
                entries.clear();
            })?;
            Ok(killed)
        }
        .boxed()
    }

    /// The recorded groups of this network and host whose leaders still run (those that
    /// ended are dropped from the record). Without a record, none.
    fn found(
        &self,
        network: u64,
        host: gpumesh_types::Address,
    ) -> BoxFuture<'_, anyhow::Result<Vec<super::Found>>> {
        async move {
            let Some(record) = &self.record else {
                return Ok(Vec::new());
            };
            let (network, host) = (network.to_string(), host.to_string());
            let mut found = Vec::new();
            record.change(|entries| {
                entries.retain(alive);
                found = entries
                    .iter()
                    .filter(|e| e.network == network && e.host == host)
                    .map(|e| super::Found {
                        id: e.group.to_string(),
                        lease: gpumesh_types::LeaseId(e.lease),
                        running: true,
                        ports: Vec::new(),
                    })
                    .collect();
            })?;
            Ok(found)
        }
        .boxed()
    }

    /// Never: a process's output went to pipes of the agent that died.
    fn adopt(
        &self,
        found: &super::Found,
        _output: mpsc::Sender<Output>,
    ) -> BoxFuture<'_, anyhow::Result<Box<dyn Workload>>> {
        let lease = found.lease;
        async move {
            bail!("the process runtime cannot take over lease {lease}'s process: its output went to the agent that died")
        }
        .boxed()
    }

    /// Kills a recorded group, if its leader is still the process recorded.
    fn remove(&self, found: &super::Found) -> BoxFuture<'_, anyhow::Result<()>> {
        let group: Option<i32> = found.id.parse().ok();
        async move {
            let (Some(record), Some(group)) = (&self.record, group) else {
                return Ok(());
            };
            record.change(|entries| {
                for e in entries.iter().filter(|e| e.group == group && alive(e)) {
                    kill_group(e.group);
                }
                entries.retain(|e| e.group != group);
            })
        }
        .boxed()
    }

    fn describe(&self) -> String {
        "process runtime (local development only: no isolation, images are ignored)".into()
    }

    fn start(
        &self,
        spec: WorkloadSpec,
        output: mpsc::Sender<Output>,
    ) -> BoxFuture<'_, anyhow::Result<Box<dyn Workload>>> {
        async move {
            let Some((program, args)) = spec.command.split_first() else {
                bail!(
                    "the process runtime needs a command; image {} has no meaning here",
                    spec.image
                );
            };
            let mut command = Command::new(program);
            let ports = spec.ports.iter().map(|(p, host_port)| {
                let proto = match p.protocol {
                    gpumesh_types::Protocol::Tcp => "TCP",
                    gpumesh_types::Protocol::Udp => "UDP",
                };
                (
                    format!("GPUMESH_PORT_{}_{proto}", p.port),
                    host_port.to_string(),
                )
            });
            let first = spec
                .ports
                .first()
                .map(|(_, host_port)| ("PORT".to_string(), host_port.to_string()));
            command
                .args(args)
                // The agent's own key and its password are not the workload's.
                .env_remove("GPUMESH_PASSWORD")
                .env_remove("GPUMESH_PASSWORD_FILE")
                .env_remove("GPUMESH_KEY")
                .envs(spec.env.iter().cloned())
                .envs(ports)
                .envs(first)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .process_group(0)
                .kill_on_drop(true);
            let mut child = command
                .spawn()
                .with_context(|| format!("failed to start {program:?}"))?;
            let stdout = child
                .stdout
                .take()
                .map(|s| forward(s, LogStream::Stdout, output.clone()));
            let stderr = child
                .stderr
                .take()
                .map(|s| forward(s, LogStream::Stderr, output));
            let readers = stdout.into_iter().chain(stderr).collect();
            // Recorded until it ends, so that a later run finds it if this agent dies.
            let recorded = match (&self.record, child.id().and_then(|p| i32::try_from(p).ok())) {
                (Some(record), Some(group)) => {
                    let entry = Entry {
                        lease: spec.lease.0,
                        group,
                        started: start_ticks(group).unwrap_or(0),
                        network: label(&spec, "gpumesh.network").to_string(),
                        host: label(&spec, "gpumesh.host").to_string(),
                    };
                    if let Err(e) = record.change(|entries| entries.push(entry)) {
                        tracing::warn!(error = %e, "could not record a workload's process group");
                    }
                    Some((record.clone(), group))
                }
                _ => None,
            };
            Ok(Box::new(ProcessWorkload {
                child,
                readers,
                recorded,
            }) as Box<dyn Workload>)
        }
        .boxed()
    }

    fn images(&self) -> BoxFuture<'_, anyhow::Result<Vec<String>>> {
        async { Ok(Vec::new()) }.boxed()
    }
}

fn forward(
    mut pipe: impl AsyncRead + Unpin + Send + 'static,
    stream: LogStream,
    output: mpsc::Sender<Output>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match pipe.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    if output.send((stream, text)).await.is_err() {
                        break;
                    }
                }
            }
        }
    })
}

struct ProcessWorkload {
    child: Child,
    readers: Vec<JoinHandle<()>>,
    /// Where it is recorded, and its group.
    recorded: Option<(Arc<Record>, i32)>,
}

impl Workload for ProcessWorkload {
    fn wait(&mut self) -> BoxFuture<'_, anyhow::Result<i64>> {
        async move {
            let status = self
                .child
                .wait()
                .await
                .context("failed to wait for the process")?;
            for reader in self.readers.drain(..) {
                let _ = reader.await;
            }
            if let Some((record, group)) = self.recorded.take()
                && let Err(e) = record.change(|entries| entries.retain(|e| e.group != group))
            {
                tracing::warn!(error = %e, "could not drop an ended workload from the record");
            }
            // A process killed by a signal reports 128 + the signal, as shells do.
            #[cfg(unix)]
            if let Some(signal) = std::os::unix::process::ExitStatusExt::signal(&status) {
                return Ok(128 + signal as i64);
            }
            Ok(status.code().unwrap_or(-1) as i64)
        }
        .boxed()
    }

    fn kill(&mut self) -> BoxFuture<'_, anyhow::Result<()>> {
        async move {
            // The whole process group (the child leads it), so that children of a shell
            // stop too.
            if let Some(group) = self.child.id().and_then(|p| i32::try_from(p).ok()) {
                kill_group(group);
            }
            let _ = self.child.start_kill();
            Ok(())
        }
        .boxed()
    }
}
