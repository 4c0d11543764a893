//! Workloads as plain processes on the host: for local development networks only.
//!
//! There is no isolation and no image: the command runs as the agent's user. The process
//! runs in its own process group, so a kill stops everything it started. A service
//! cannot be given a port from outside, so it is told where to listen instead:
//! `GPUMESH_PORT_<port>_<TCP|UDP>` holds the host port chosen for each container port,
//! and `PORT` the first one's.

use std::process::Stdio;

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
pub struct ProcessRuntime;

impl Runtime for ProcessRuntime {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Process
    }

    /// Nothing to do: each workload runs in its own process group, killed whole when its
    /// handle is dropped, so none outlives the agent that started it in this process.
    fn reap(&self) -> BoxFuture<'_, anyhow::Result<usize>> {
        async { Ok(0) }.boxed()
    }

    /// Nothing is found: this runtime keeps no record of its process groups, so an agent
    /// killed outright leaves them to the operator (local development networks only).
    fn found(
        &self,
        _network: u64,
        _host: gpumesh_types::Address,
    ) -> BoxFuture<'_, anyhow::Result<Vec<super::Found>>> {
        async { Ok(Vec::new()) }.boxed()
    }

    fn adopt(
        &self,
        found: &super::Found,
        _output: mpsc::Sender<Output>,
    ) -> BoxFuture<'_, anyhow::Result<Box<dyn Workload>>> {
        let lease = found.lease;
        async move {
            Err(anyhow::anyhow!(
                "the process runtime cannot adopt lease {lease}'s workload"
            ))
        }
        .boxed()
    }

    fn remove(&self, _found: &super::Found) -> BoxFuture<'_, anyhow::Result<()>> {
        async { Ok(()) }.boxed()
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
            Ok(Box::new(ProcessWorkload { child, readers }) as Box<dyn Workload>)
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
            // stop too. Guard against a pid that would name some other group.
            if let Some(pid) = self
                .child
                .id()
                .and_then(|p| i32::try_from(p).ok())
                .filter(|p| *p > 1)
                && let Some(group) = rustix::process::Pid::from_raw(pid)
            {
                let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
            }
            let _ = self.child.start_kill();
            Ok(())
        }
        .boxed()
    }
}
