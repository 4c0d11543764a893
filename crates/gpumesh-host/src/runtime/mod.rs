//! How workloads run: a [`Runtime`] starts a [`Workload`] from a [`WorkloadSpec`] and
//! forwards everything it prints to a channel.
//!
//! Two implementations: [`container::ContainerRuntime`], OCI containers through the Docker
//! Engine API (Docker or Podman), the default for every real host; and
//! [`process::ProcessRuntime`], plain processes, which only a local development network
//! may use (`--dev`).

pub mod container;
pub mod process;

use futures_util::future::BoxFuture;
use gpumesh_types::{Address, LeaseId, LogStream, PortSpec, Protocol, RuntimeKind};
use tokio::sync::mpsc;

/// What to run for one lease. Its `Debug` shows environment names only: values may be
/// the buyer's secrets.
#[derive(Clone, PartialEq, Eq)]
pub struct WorkloadSpec {
    pub lease: LeaseId,
    pub image: String,
    /// Empty: the image's own command.
    pub command: Vec<String>,
    pub env: Vec<(String, String)>,
    /// NVIDIA device UUIDs to pass through (empty for simulated GPUs).
    pub gpu_uuids: Vec<String>,
    /// Memory limit in bytes.
    pub memory_bytes: Option<i64>,
    /// CPU limit in billionths of a CPU.
    pub nano_cpus: Option<i64>,
    /// Ports to publish, each on the host port given (chosen by [`free_host_ports`]).
    pub ports: Vec<(PortSpec, u16)>,
    /// The host address ports are published on.
    pub publish_ip: std::net::IpAddr,
    /// Whose the workload is: the network, the host, the lease and the GPUs it holds
    /// (`gpumesh.network`, `gpumesh.host`, `gpumesh.lease`, `gpumesh.gpus`). The
    /// container runtime sets them as labels, so that what a host runs can be told
    /// apart from anything else on its engine.
    pub labels: Vec<(String, String)>,
    /// Run as the image's own user (root in most images), which the host allowed;
    /// otherwise as an unprivileged user ([`WORKLOAD_USER`]).
    pub as_image_user: bool,
}

/// The user and group workloads run as unless their host allows the image's own (root,
/// in most images): `nobody`, with no rights on the host or in the image's files beyond
/// what all users have. Their `/tmp` is a fresh writable file system.
pub const WORKLOAD_USER: &str = "65534:65534";

/// A workload an agent found on its engine at start, labelled with its network and host
/// (whoever started it: a previous run of the agent that crashed, or was killed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    /// The engine's id of it.
    pub id: String,
    pub lease: LeaseId,
    /// Whether it still runs.
    pub running: bool,
    /// The ports it publishes (a service's).
    pub ports: Vec<Published>,
}

/// A container port and the host port it is published on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Published {
    pub container: u16,
    pub host: u16,
}

impl std::fmt::Debug for WorkloadSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadSpec")
            .field("lease", &self.lease)
            .field("image", &self.image)
            .field("command", &self.command)
            .field(
                "env",
                &self.env.iter().map(|(name, _)| name).collect::<Vec<_>>(),
            )
            .field("gpu_uuids", &self.gpu_uuids)
            .field("memory_bytes", &self.memory_bytes)
            .field("nano_cpus", &self.nano_cpus)
            .field("ports", &self.ports)
            .field("publish_ip", &self.publish_ip)
            .field("as_image_user", &self.as_image_user)
            .finish()
    }
}

/// Picks a free host port for each container port: bound on `ip` with port 0 and
/// released, so the kernel chooses among ports nothing else holds (another program could
/// still take one before the workload does; the start then fails and the lease is
/// refunded).
pub fn free_host_ports(
    ip: std::net::IpAddr,
    ports: &[PortSpec],
) -> std::io::Result<Vec<(PortSpec, u16)>> {
    let mut held_tcp = Vec::new();
    let mut held_udp = Vec::new();
    let mut out = Vec::with_capacity(ports.len());
    for &spec in ports {
        // Keep each socket open until all are chosen, so no two ports come out alike.
        let port = match spec.protocol {
            Protocol::Tcp => {
                let socket = std::net::TcpListener::bind((ip, 0))?;
                let port = socket.local_addr()?.port();
                held_tcp.push(socket);
                port
            }
            Protocol::Udp => {
                let socket = std::net::UdpSocket::bind((ip, 0))?;
                let port = socket.local_addr()?.port();
                held_udp.push(socket);
                port
            }
        };
        out.push((spec, port));
    }
    Ok(out)
}

/// A piece of output from a workload.
pub type Output = (LogStream, String);

/// Starts workloads.
pub trait Runtime: Send + Sync + std::fmt::Debug {
    fn kind(&self) -> RuntimeKind;

    /// A line that says what this runtime is, for logs and banners.
    fn describe(&self) -> String;

    /// Starts the workload; its output goes to `output` until it ends.
    fn start(
        &self,
        spec: WorkloadSpec,
        output: mpsc::Sender<Output>,
    ) -> BoxFuture<'_, anyhow::Result<Box<dyn Workload>>>;

    /// Images present locally (for matching on pre-installed services).
    fn images(&self) -> BoxFuture<'_, anyhow::Result<Vec<String>>>;

    /// Stops and removes every workload this runtime started that is still there, and
    /// returns how many: what a local network does when it exits, so that the agents it
    /// killed on purpose (or a crash) leave nothing running.
    fn reap(&self) -> BoxFuture<'_, anyhow::Result<usize>>;

    /// The workloads labelled with this network and host, whoever started them: what an
    /// agent adopts or removes when it starts. None for a runtime whose workloads do not
    /// outlive their agent's handles.
    fn found(&self, network: u64, host: Address) -> BoxFuture<'_, anyhow::Result<Vec<Found>>>;

    /// Takes a found workload on: its output from now, and its end.
    fn adopt(
        &self,
        found: &Found,
        output: mpsc::Sender<Output>,
    ) -> BoxFuture<'_, anyhow::Result<Box<dyn Workload>>>;

    /// Stops and removes a found workload.
    fn remove(&self, found: &Found) -> BoxFuture<'_, anyhow::Result<()>>;
}

/// A started workload.
pub trait Workload: Send {
    /// Waits for it to end and returns its exit code, after all its output was forwarded.
    /// Safe to call again after the future was dropped.
    fn wait(&mut self) -> BoxFuture<'_, anyhow::Result<i64>>;

    /// Stops it at once.
    fn kill(&mut self) -> BoxFuture<'_, anyhow::Result<()>>;
}
