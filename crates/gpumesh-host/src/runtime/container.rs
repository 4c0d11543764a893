//! Workloads as OCI containers through the Docker Engine API, which Docker and Podman
//! both serve.
//!
//! Each lease gets a fresh container: the buyer's image and command, a memory and CPU
//! limit, no privileges (all capabilities dropped, no new privileges), no host network
//! (Docker's bridge by default, or none), the lease's GPUs passed through by UUID on real
//! hardware, and labels that say whose it is (the network, the host, the lease, its GPUs,
//! and the runtime instance that made it). A service's ports are published through the
//! engine's port bindings on the host ports the agent chose; a host whose containers have
//! no network refuses them. The container is removed when it ends.

use std::path::Path;

use anyhow::{Context, anyhow};
use bollard::Docker;
use bollard::container::LogOutput;
use bollard::models::{ContainerCreateBody, DeviceRequest, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, KillContainerOptions, ListContainersOptions,
    ListImagesOptions, LogsOptions, RemoveContainerOptions, TagImageOptions,
};
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use gpumesh_types::{LogStream, RuntimeKind};
use tokio::sync::mpsc;

/// How long an engine has to answer its version when connecting.
const ENGINE_ANSWER: std::time::Duration = std::time::Duration::from_secs(10);
use tokio::task::JoinHandle;

use super::{Found, Output, Runtime, WORKLOAD_USER, Workload, WorkloadSpec};

/// Sockets tried, in order, when `DOCKER_HOST` is not set.
const DEFAULT_SOCKETS: &[&str] = &["/var/run/docker.sock", "/run/podman/podman.sock"];

/// Runs workloads as containers through a Docker Engine API socket.
#[derive(Debug, Clone)]
pub struct ContainerRuntime {
    docker: Docker,
    endpoint: String,
    engine: String,
    network: String,
    /// The network of containers that publish ports (a service needs one).
    service_network: String,
    /// Labelled on every container this runtime creates (`gpumesh.runtime`), so that
    /// [`Runtime::reap`] removes its own and nothing else.
    instance: String,
}

/// An id for one runtime instance, unique on the engine: this process, the time and a
/// count of the instances it made.
fn instance_id() -> String {
    static MADE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{}-{nanos}-{n}", std::process::id())
}

/// The sockets to try: `DOCKER_HOST` (unix only), then the usual places.
pub fn candidate_sockets() -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(host) = std::env::var("DOCKER_HOST") {
        if let Some(path) = host.strip_prefix("unix://") {
            out.push(path.to_string());
        }
        return out;
    }
    if let Ok(dir) = std::env::var("XDG_RUNTIME_DIR") {
        out.push(format!("{dir}/podman/podman.sock"));
        out.push(format!("{dir}/docker.sock"));
    }
    out.extend(DEFAULT_SOCKETS.iter().map(|s| s.to_string()));
    out
}

impl ContainerRuntime {
    /// Connects to the first reachable engine; the error lists what was tried.
    pub async fn connect(socket: Option<&str>, network: &str) -> anyhow::Result<ContainerRuntime> {
        let candidates = match socket {
            Some(s) => vec![s.trim_start_matches("unix://").to_string()],
            None => candidate_sockets(),
        };
        let mut tried = Vec::new();
        for path in candidates {
            if !Path::new(&path).exists() {
                tried.push(format!("{path} (absent)"));
                continue;
            }
            let docker = match Docker::connect_with_unix(&path, 120, bollard::API_DEFAULT_VERSION) {
                Ok(d) => d,
                Err(e) => {
                    tried.push(format!("{path} ({e})"));
                    continue;
                }
            };
            // Generous: Podman's first API call on a busy 2-core machine has taken over 3 s.
            match tokio::time::timeout(ENGINE_ANSWER, docker.version()).await {
                Ok(Ok(version)) => {
                    let engine = version
                        .components
                        .and_then(|c| c.into_iter().next())
                        .map(|c| format!("{} {}", c.name, c.version))
                        .or(version.version.map(|v| format!("Docker Engine {v}")))
                        .unwrap_or_else(|| "unknown engine".into());
                    return Ok(ContainerRuntime {
                        docker,
                        endpoint: path,
                        engine,
                        network: network.to_string(),
                        service_network: network.to_string(),
                        instance: instance_id(),
                    });
                }
                Ok(Err(e)) => tried.push(format!("{path} ({e})")),
                Err(_) => tried.push(format!(
                    "{path} (no answer in {} s)",
                    ENGINE_ANSWER.as_secs()
                )),
            }
        }
        Err(anyhow!(
            "no Docker Engine API is reachable; tried {}",
            tried.join(", ")
        ))
    }

    /// Containers that publish ports join `network` instead of the default one.
    pub fn with_service_network(mut self, network: &str) -> ContainerRuntime {
        self.service_network = network.to_string();
        self
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The ids of the containers, running or not, carrying every one of `labels`.
    pub async fn labelled(&self, labels: &[(&str, &str)]) -> anyhow::Result<Vec<String>> {
        Ok(self
            .listed(labels)
            .await?
            .into_iter()
            .filter_map(|c| c.id)
            .collect())
    }

    /// The containers, running or not, carrying every one of `labels`.
    async fn listed(
        &self,
        labels: &[(&str, &str)],
    ) -> anyhow::Result<Vec<bollard::models::ContainerSummary>> {
        let filters = std::collections::HashMap::from([(
            "label".to_string(),
            labels.iter().map(|(k, v)| format!("{k}={v}")).collect(),
        )]);
        self.docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            }))
            .await
            .context("failed to list containers")
    }

    pub async fn has_image(&self, image: &str) -> bool {
        self.docker.inspect_image(image).await.is_ok()
    }

    /// Imports a root file system tarball as `name` (`repo:tag`), as `docker import` does.
    pub async fn import_image(&self, name: &str, rootfs_tar: Vec<u8>) -> anyhow::Result<()> {
        let (repo, tag) = name.rsplit_once(':').unwrap_or((name, "latest"));
        let options = CreateImageOptions {
            from_src: Some("-".into()),
            repo: Some(repo.into()),
            tag: Some(tag.into()),
            ..Default::default()
        };
        let mut stream = self.docker.create_image(
            Some(options),
            Some(bollard::body_full(rootfs_tar.into())),
            None,
        );
        let mut id = None;
        while let Some(item) = stream.next().await {
            let info = item.context("the engine refused the image import")?;
            if let Some(err) = info.error_detail.and_then(|d| d.message) {
                return Err(anyhow!("image import failed: {err}"));
            }
            if let Some(status) = info.status.filter(|s| s.starts_with("sha256:")) {
                id = Some(status);
            }
        }
        // Podman's import ignores the tag it was given; tag the new image explicitly.
        if let Some(id) = id {
            self.docker
                .tag_image(
                    &id,
                    Some(TagImageOptions {
                        repo: Some(repo.into()),
                        tag: Some(tag.into()),
                    }),
                )
                .await
                .context("failed to tag the imported image")?;
        }
        if !self.has_image(name).await {
            return Err(anyhow!(
                "the engine imported the image but {name} is not there"
            ));
        }
        Ok(())
    }
}

impl Runtime for ContainerRuntime {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Container
    }

    fn describe(&self) -> String {
        format!(
            "container runtime ({} at unix://{}, network {}, services on {})",
            self.engine, self.endpoint, self.network, self.service_network
        )
    }

    fn start(
        &self,
        spec: WorkloadSpec,
        output: mpsc::Sender<Output>,
    ) -> BoxFuture<'_, anyhow::Result<Box<dyn Workload>>> {
        async move {
            if !self.has_image(&spec.image).await {
                return Err(anyhow!(
                    "image {} is not on this host, and this host pulls no images; ask for an image the host advertises",
                    spec.image
                ));
            }
            let device_requests = (!spec.gpu_uuids.is_empty())
                .then(|| vec![gpu_request(&self.engine, &spec.gpu_uuids)]);
            let network = if spec.ports.is_empty() { &self.network } else { &self.service_network };
            if !spec.ports.is_empty() && network == "none" {
                return Err(anyhow!(
                    "this host runs services without a network (--service-network none) and cannot publish ports {:?}",
                    spec.ports.iter().map(|(p, _)| p.to_string()).collect::<Vec<_>>()
                ));
            }
            let port_bindings: bollard::models::PortMap = spec
                .ports
                .iter()
                .map(|(p, host_port)| {
                    let binding = bollard::models::PortBinding {
                        host_ip: Some(spec.publish_ip.to_string()),
                        host_port: Some(host_port.to_string()),
                    };
                    (p.to_string(), Some(vec![binding]))
                })
                .collect();
            let host_config = HostConfig {
                port_bindings: (!port_bindings.is_empty()).then_some(port_bindings),
                memory: spec.memory_bytes,
                memory_swap: spec.memory_bytes,
                nano_cpus: spec.nano_cpus,
                pids_limit: Some(1024),
                network_mode: Some(network.clone()),
                privileged: Some(false),
                cap_drop: Some(vec!["ALL".into()]),
                security_opt: Some(vec!["no-new-privileges".into()]),
                device_requests,
                // Writable whatever user runs: an unprivileged workload cannot write to
                // the image's own /tmp, which root owns.
                tmpfs: Some(std::collections::HashMap::from([(
                    "/tmp".to_string(),
                    "rw,nosuid,nodev,size=256m,mode=1777".to_string(),
                )])),
                ..Default::default()
            };
            let body = ContainerCreateBody {
                image: Some(spec.image.clone()),
                user: (!spec.as_image_user).then(|| WORKLOAD_USER.to_string()),
                cmd: (!spec.command.is_empty()).then(|| spec.command.clone()),
                env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
                labels: Some(
                    spec.labels
                        .iter()
                        .cloned()
                        .chain([
                            ("gpumesh.lease".to_string(), spec.lease.to_string()),
                            ("gpumesh.runtime".to_string(), self.instance.clone()),
                        ])
                        .collect(),
                ),
                exposed_ports: (!spec.ports.is_empty())
                    .then(|| spec.ports.iter().map(|(p, _)| p.to_string()).collect()),
                host_config: Some(host_config),
                ..Default::default()
            };
            let name = container_name(&spec);
            let create = || {
                self.docker.create_container(
                    Some(CreateContainerOptions { name: Some(name.clone()), ..Default::default() }),
                    body.clone(),
                )
            };
            let created = match create().await {
                // A container of this lease from an earlier run of this host's agent
                // (one that died before removing it): the lease is starting again here,
                // so the old one goes.
                Err(bollard::errors::Error::DockerResponseServerError { status_code: 409, .. }) => {
                    tracing::warn!(container = %name, "removing an earlier container of this lease");
                    self.docker
                        .remove_container(&name, Some(RemoveContainerOptions { force: true, ..Default::default() }))
                        .await
                        .with_context(|| format!("failed to remove the earlier container {name}"))?;
                    create().await
                }
                other => other,
            }
            .context("failed to create the container")?;
            let id = created.id;
            if let Err(e) = self.docker.start_container(&id, None).await {
                let _ = self.docker.remove_container(&id, Some(RemoveContainerOptions { force: true, ..Default::default() })).await;
                return Err(anyhow!(e).context("failed to start the container"));
            }
            let logs = forward_logs(self.docker.clone(), id.clone(), 0, output);
            Ok(Box::new(ContainerWorkload { docker: self.docker.clone(), id, logs: Some(logs) }) as Box<dyn Workload>)
        }
        .boxed()
    }

    fn found(
        &self,
        network: u64,
        host: gpumesh_types::Address,
    ) -> BoxFuture<'_, anyhow::Result<Vec<Found>>> {
        async move {
            let (network, host) = (network.to_string(), host.to_string());
            let containers = self
                .listed(&[("gpumesh.network", &network), ("gpumesh.host", &host)])
                .await?;
            let mut found = Vec::new();
            for c in containers {
                let (Some(id), Some(labels)) = (c.id, c.labels) else {
                    continue;
                };
                let Some(lease) = labels
                    .get("gpumesh.lease")
                    .and_then(|l| l.parse::<u64>().ok())
                else {
                    continue;
                };
                let ports = c
                    .ports
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|p| {
                        Some(super::Published {
                            container: p.private_port,
                            host: p.public_port?,
                        })
                    })
                    .collect();
                found.push(Found {
                    id,
                    lease: gpumesh_types::LeaseId(lease),
                    running: c.state == Some(bollard::models::ContainerSummaryStateEnum::RUNNING),
                    ports,
                });
            }
            Ok(found)
        }
        .boxed()
    }

    fn adopt(
        &self,
        found: &Found,
        output: mpsc::Sender<Output>,
    ) -> BoxFuture<'_, anyhow::Result<Box<dyn Workload>>> {
        let id = found.id.clone();
        async move {
            // Output from now on: what it printed while no agent watched is not sent again.
            let since = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i32);
            let logs = forward_logs(self.docker.clone(), id.clone(), since, output);
            Ok(Box::new(ContainerWorkload {
                docker: self.docker.clone(),
                id,
                logs: Some(logs),
            }) as Box<dyn Workload>)
        }
        .boxed()
    }

    fn remove(&self, found: &Found) -> BoxFuture<'_, anyhow::Result<()>> {
        let id = found.id.clone();
        async move {
            self.docker
                .remove_container(
                    &id,
                    Some(RemoveContainerOptions {
                        force: true,
                        ..Default::default()
                    }),
                )
                .await
                .with_context(|| format!("failed to remove container {id}"))
        }
        .boxed()
    }

    fn reap(&self) -> BoxFuture<'_, anyhow::Result<usize>> {
        async move {
            let ids = self
                .labelled(&[("gpumesh.runtime", &self.instance)])
                .await?;
            for id in &ids {
                self.docker
                    .remove_container(
                        id,
                        Some(RemoveContainerOptions {
                            force: true,
                            ..Default::default()
                        }),
                    )
                    .await
                    .with_context(|| format!("failed to remove container {id}"))?;
                tracing::info!(container = %id, "removed a workload's container left running");
            }
            Ok(ids.len())
        }
        .boxed()
    }

    fn images(&self) -> BoxFuture<'_, anyhow::Result<Vec<String>>> {
        async move {
            let images = self
                .docker
                .list_images(Some(ListImagesOptions::default()))
                .await
                .context("failed to list images")?;
            let mut tags: Vec<String> = images
                .into_iter()
                .flat_map(|i| i.repo_tags)
                .filter(|t| t != "<none>:<none>")
                .collect();
            tags.sort();
            tags.dedup();
            tags.truncate(256);
            Ok(tags)
        }
        .boxed()
    }
}

/// The request for a lease's GPUs, by UUID: CDI device names (`nvidia.com/gpu=UUID`)
/// through the `cdi` driver for Podman, whose Docker-compatible API passes on no other;
/// the `nvidia` driver's request for Docker (what `docker run --gpus` sends).
fn gpu_request(engine: &str, uuids: &[String]) -> DeviceRequest {
    if engine.starts_with("Podman") {
        DeviceRequest {
            driver: Some("cdi".into()),
            device_ids: Some(
                uuids
                    .iter()
                    .map(|u| format!("nvidia.com/gpu={u}"))
                    .collect(),
            ),
            ..Default::default()
        }
    } else {
        DeviceRequest {
            driver: Some("nvidia".into()),
            device_ids: Some(uuids.to_vec()),
            capabilities: Some(vec![vec!["gpu".into()]]),
            ..Default::default()
        }
    }
}

/// A container's name: its network, host and lease, so that a restarted agent finds its
/// own (and two agents never collide), whatever process made it.
fn container_name(spec: &WorkloadSpec) -> String {
    let label = |key: &str| {
        spec.labels
            .iter()
            .find(|(k, _)| k == key)
            .map_or("none", |(_, v)| v.as_str())
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect::<String>()
    };
    format!(
        "gpumesh-{}-{}-lease-{}",
        label("gpumesh.network"),
        label("gpumesh.host"),
        spec.lease
    )
}

/// Forwards a container's output from `since` (seconds since the Unix epoch; 0 for all)
/// to `output` until it ends.
fn forward_logs(
    docker: Docker,
    id: String,
    since: i32,
    output: mpsc::Sender<Output>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let options = LogsOptions {
            follow: true,
            stdout: true,
            stderr: true,
            since,
            ..Default::default()
        };
        let mut stream = docker.logs(&id, Some(options));
        while let Some(Ok(item)) = stream.next().await {
            let (stream_kind, bytes) = match item {
                LogOutput::StdOut { message } | LogOutput::Console { message } => {
                    (LogStream::Stdout, message)
                }
                LogOutput::StdErr { message } => (LogStream::Stderr, message),
                LogOutput::StdIn { .. } => continue,
            };
            let text = String::from_utf8_lossy(&bytes).into_owned();
            if output.send((stream_kind, text)).await.is_err() {
                break;
            }
        }
    })
}

/// How long the output of an exited container may take to arrive.
const LOG_DRAIN: std::time::Duration = std::time::Duration::from_secs(3);

/// Completes with the exit code once the engine reports the container stopped. An
/// inspection that fails is retried: Podman briefly reports a state ("stopped") that the
/// Docker API's schema lacks; only a minute of failures in a row ends the watch.
async fn exited(docker: &Docker, id: &str) -> anyhow::Result<i64> {
    let mut failures = 0;
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let inspect = match docker
            .inspect_container(
                id,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
        {
            Ok(inspect) => {
                failures = 0;
                inspect
            }
            Err(e) => {
                failures += 1;
                if failures >= 60 {
                    return Err(anyhow!(e).context("failed to inspect the container"));
                }
                continue;
            }
        };
        if let Some(state) = inspect.state
            && state.running == Some(false)
            && matches!(
                state.status,
                Some(bollard::models::ContainerStateStatusEnum::EXITED)
                    | Some(bollard::models::ContainerStateStatusEnum::DEAD)
            )
        {
            return Ok(state.exit_code.unwrap_or(-1));
        }
    }
}

struct ContainerWorkload {
    docker: Docker,
    id: String,
    logs: Option<JoinHandle<()>>,
}

impl Workload for ContainerWorkload {
    fn wait(&mut self) -> BoxFuture<'_, anyhow::Result<i64>> {
        async move {
                        let mut waits = self.docker.wait_container(&self.id, None);
            // Podman 4 can miss the exit of a container that ends as the wait begins and
            // leave the wait open; polling the container's state as well ends it anyway.
            let code = tokio::select! {
                waited = waits.next() => match waited {
                    Some(Ok(response)) => response.status_code,
                    // bollard reports a non-zero exit as an error carrying the code.
                    Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => code,
                    Some(Err(e)) => return Err(anyhow!(e).context("failed to wait for the container")),
                    None => return Err(anyhow!("the engine ended the wait without a status")),
                },
                code = exited(&self.docker, &self.id) => code?,
            };
            // The log stream ends with the container; one that does not is cut off.
            if let Some(mut logs) = self.logs.take()
                && tokio::time::timeout(LOG_DRAIN, &mut logs).await.is_err()
            {
                logs.abort();
            }
            let _ = self
                .docker
                .remove_container(
                    &self.id,
                    Some(RemoveContainerOptions {
                        force: true,
                        ..Default::default()
                    }),
                )
                .await;
            Ok(code)
        }
        .boxed()
    }

    fn kill(&mut self) -> BoxFuture<'_, anyhow::Result<()>> {
        async move {
            self.docker
                .kill_container(
                    &self.id,
                    Some(KillContainerOptions {
                        signal: "KILL".into(),
                    }),
                )
                .await
                .context("failed to kill the container")
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpus_are_asked_by_uuid_as_each_engine_takes_them() {
        let uuids = vec!["GPU-aa".to_string(), "GPU-bb".to_string()];
        let podman = gpu_request("Podman Engine 4.3.1", &uuids);
        assert_eq!(podman.driver.as_deref(), Some("cdi"));
        assert_eq!(
            podman.device_ids.unwrap(),
            ["nvidia.com/gpu=GPU-aa", "nvidia.com/gpu=GPU-bb"]
        );
        let docker = gpu_request("Docker Engine 27.1", &uuids);
        assert_eq!(docker.driver.as_deref(), Some("nvidia"));
        assert_eq!(docker.device_ids.unwrap(), uuids);
        assert_eq!(docker.capabilities.unwrap(), vec![vec!["gpu".to_string()]]);
    }

    #[test]
    fn names_say_whose_a_container_is_whatever_process_made_it() {
        let spec = WorkloadSpec {
            lease: gpumesh_types::LeaseId(12),
            image: String::new(),
            command: Vec::new(),
            env: Vec::new(),
            gpu_uuids: Vec::new(),
            memory_bytes: None,
            nano_cpus: None,
            ports: Vec::new(),
            publish_ip: std::net::IpAddr::from([127, 0, 0, 1]),
            labels: vec![
                ("gpumesh.network".into(), "1337".into()),
                ("gpumesh.host".into(), "0xAbC".into()),
            ],
            as_image_user: false,
        };
        assert_eq!(container_name(&spec), "gpumesh-1337-0xabc-lease-12");
    }
}
