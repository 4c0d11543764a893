//! Input checks for registrations and jobs, each failure with its stable error code.

use gpumesh_types::{
    Amount, ErrorCode, GpuModel, JobRequest, ONE_TOKEN, RegisterHost, RuntimeKind,
};

use crate::{GpuRecord, Params, RegistryError};

/// The highest price per GPU-hour anyone may ask or offer, in whole tokens.
pub const MAX_PRICE_TOKENS: u128 = 1_000_000;
/// GPUs of one model on one host.
pub const MAX_GPUS_PER_MODEL: u16 = 64;
const MAX_NAME: usize = 64;
const MAX_IMAGES: usize = 256;
const MAX_IMAGE_NAME: usize = 256;
const MAX_ARGS: usize = 256;
const MAX_COMMAND_BYTES: usize = 16 * 1024;
const MAX_URL: usize = 256;

fn invalid(code: ErrorCode, message: impl Into<String>) -> RegistryError {
    RegistryError::Invalid {
        code,
        message: message.into(),
    }
}

fn price(what: &str, price: Amount) -> Result<(), RegistryError> {
    if price == Amount::ZERO {
        return Err(invalid(
            ErrorCode::InvalidPrice,
            format!("{what} must be more than zero"),
        ));
    }
    if price.0 > MAX_PRICE_TOKENS * ONE_TOKEN {
        return Err(invalid(
            ErrorCode::InvalidPrice,
            format!(
                "{what} of {} tokens is over the limit of {MAX_PRICE_TOKENS} per GPU-hour",
                price.tokens()
            ),
        ));
    }
    Ok(())
}

fn image_name(image: &str) -> Result<(), RegistryError> {
    if image.is_empty()
        || image.len() > MAX_IMAGE_NAME
        || image.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(invalid(
            ErrorCode::InvalidRequest,
            format!("image name {image:?} must be 1 to {MAX_IMAGE_NAME} characters without spaces"),
        ));
    }
    Ok(())
}

pub(crate) fn images(images: &[String]) -> Result<(), RegistryError> {
    if images.len() > MAX_IMAGES {
        return Err(invalid(
            ErrorCode::InvalidRequest,
            format!("at most {MAX_IMAGES} images may be listed"),
        ));
    }
    images.iter().try_for_each(|i| image_name(i))
}

fn assigned(country: gpumesh_types::Country) -> Result<(), RegistryError> {
    if country.is_assigned() {
        return Ok(());
    }
    Err(invalid(
        ErrorCode::InvalidLocation,
        format!(
            "country \"{country}\" is not an assigned ISO 3166-1 alpha-2 code such as DE or IN"
        ),
    ))
}

/// Checks a registration and expands its offers into one record per GPU.
pub(crate) fn host(request: &RegisterHost, local: bool) -> Result<Vec<GpuRecord>, RegistryError> {
    let name = request.name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME || name.chars().any(char::is_control) {
        return Err(invalid(
            ErrorCode::InvalidRequest,
            format!("host name must be 1 to {MAX_NAME} printable characters"),
        ));
    }
    request
        .location
        .point
        .validate()
        .map_err(|e| invalid(ErrorCode::InvalidLocation, e.to_string()))?;
    assigned(request.location.country)?;
    price("price per GPU-hour", request.price_per_gpu_hour)?;
    images(&request.images)?;
    if let Some(url) = &request.challenge_url {
        challenge_url(url, local)?;
    }
    if request.runtime == RuntimeKind::Process && !local {
        return Err(invalid(
            ErrorCode::ProcessRuntimeNotAllowed,
            "a public network runs workloads only in containers (the container runtime); the process runtime is for local networks",
        ));
    }
    if request.gpus.is_empty() {
        return Err(invalid(
            ErrorCode::InvalidRequest,
            "a host must offer at least one GPU",
        ));
    }
    let mut gpus = Vec::new();
    let mut seen: Vec<GpuModel> = Vec::new();
    for offer in &request.gpus {
        if seen.contains(&offer.model) {
            return Err(invalid(
                ErrorCode::InvalidRequest,
                format!("{} is listed twice; give one count per model", offer.model),
            ));
        }
        seen.push(offer.model);
        if offer.count == 0 || offer.count > MAX_GPUS_PER_MODEL {
            return Err(invalid(
                ErrorCode::InvalidRequest,
                format!(
                    "count of {} must be 1 to {MAX_GPUS_PER_MODEL}, not {}",
                    offer.model, offer.count
                ),
            ));
        }
        if offer.simulated && !local {
            return Err(invalid(
                ErrorCode::SimulatedNotAllowed,
                "simulated GPUs are accepted only by a local network",
            ));
        }
        let catalog_vram = offer.model.spec().vram_mib;
        let vram_mib = offer.vram_mib.unwrap_or(catalog_vram);
        if vram_mib == 0 || vram_mib > 4 * catalog_vram {
            return Err(invalid(
                ErrorCode::InvalidRequest,
                format!("{vram_mib} MiB is not plausible memory for {}", offer.model),
            ));
        }
        for _ in 0..offer.count {
            gpus.push(GpuRecord {
                model: offer.model,
                vram_mib,
                simulated: offer.simulated,
            });
        }
    }
    Ok(gpus)
}

pub(crate) fn job(job: &JobRequest, params: &Params) -> Result<(), RegistryError> {
    job.near
        .validate()
        .map_err(|e| invalid(ErrorCode::InvalidLocation, e.to_string()))?;
    if job.gpu_count == 0 || job.gpu_count > MAX_GPUS_PER_MODEL {
        return Err(invalid(
            ErrorCode::InvalidRequest,
            format!("GPU count must be 1 to {MAX_GPUS_PER_MODEL}"),
        ));
    }
    price("maximum price per GPU-hour", job.max_price_per_gpu_hour)?;
    if job.max_duration_ms < 1_000 || job.max_duration_ms > params.max_lease_duration_ms {
        return Err(invalid(
            ErrorCode::InvalidRequest,
            format!(
                "maximum duration must be 1 s to {} s",
                params.max_lease_duration_ms / 1_000
            ),
        ));
    }
    image_name(&job.image)?;
    if job.max_tier.is_some_and(|t| !(1..=3).contains(&t)) {
        return Err(invalid(
            ErrorCode::InvalidRequest,
            "tier must be 1 (best) to 3",
        ));
    }
    if job.max_rtt_ms.is_some_and(|r| r == 0 || r > 10_000) {
        return Err(invalid(
            ErrorCode::InvalidRequest,
            "round-trip bound must be 1 to 10000 ms",
        ));
    }
    if job.min_vram_mib.is_some_and(|v| v > 4 * 1024 * 1024) {
        return Err(invalid(
            ErrorCode::InvalidRequest,
            "memory per GPU is at most 4 TiB",
        ));
    }
    if job.countries.len() + job.exclude_countries.len() > 256 {
        return Err(invalid(
            ErrorCode::InvalidLocation,
            "at most 256 countries may be listed",
        ));
    }
    job.countries
        .iter()
        .chain(&job.exclude_countries)
        .try_for_each(|&c| assigned(c))?;
    let bytes: usize = job.command.iter().map(String::len).sum();
    if job.command.len() > MAX_ARGS
        || bytes > MAX_COMMAND_BYTES
        || job.command.iter().any(|a| a.contains('\0'))
    {
        return Err(invalid(
            ErrorCode::InvalidRequest,
            format!(
                "command must be at most {MAX_ARGS} arguments and {MAX_COMMAND_BYTES} bytes, without NUL bytes"
            ),
        ));
    }
    service(&job.ports, &job.env, job.health.as_ref())
}

/// Ports a lease may publish at most.
pub const MAX_PORTS: usize = 16;
/// Container ports below this are privileged: a workload, which runs with every
/// capability dropped, cannot listen on them.
pub const FIRST_UNPRIVILEGED_PORT: u16 = 1024;
const MAX_ENV_VARS: usize = 64;
const MAX_ENV_BYTES: usize = 32 * 1024;
/// Environment names the host agent or the container toolkit read or set: a buyer's
/// value must not choose the GPUs a container sees, nor where it listens.
pub const RESERVED_ENV_PREFIXES: &[&str] = &["GPUMESH_", "NVIDIA_"];
pub const RESERVED_ENV_NAMES: &[&str] = &["CUDA_VISIBLE_DEVICES", "PORT"];
const MAX_HEALTH_PATH: usize = 256;

/// Published ports, environment and health check of a lease or a deployment.
pub(crate) fn service(
    ports: &[gpumesh_types::PortSpec],
    env: &[gpumesh_types::EnvVar],
    health: Option<&gpumesh_types::HealthCheck>,
) -> Result<(), RegistryError> {
    if ports.len() > MAX_PORTS {
        return Err(invalid(
            ErrorCode::InvalidPort,
            format!("at most {MAX_PORTS} ports may be published"),
        ));
    }
    for (i, p) in ports.iter().enumerate() {
        if p.port < FIRST_UNPRIVILEGED_PORT {
            return Err(invalid(
                ErrorCode::InvalidPort,
                format!(
                    "port {p} is privileged (or 0): workloads run without capabilities and listen on {FIRST_UNPRIVILEGED_PORT}-65535"
                ),
            ));
        }
        if ports[..i].contains(p) {
            return Err(invalid(
                ErrorCode::InvalidPort,
                format!("port {p} is listed twice"),
            ));
        }
    }
    if env.len() > MAX_ENV_VARS {
        return Err(invalid(
            ErrorCode::InvalidEnv,
            format!("at most {MAX_ENV_VARS} environment variables may be given"),
        ));
    }
    let mut bytes = 0;
    for (i, var) in env.iter().enumerate() {
        let mut chars = var.name.chars();
        let identifier = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
            && var.name.len() <= 128;
        if !identifier {
            return Err(invalid(
                ErrorCode::InvalidEnv,
                format!(
                    "environment name {:?} is not an identifier (letters, digits and _, not starting with a digit, at most 128)",
                    var.name
                ),
            ));
        }
        if RESERVED_ENV_PREFIXES
            .iter()
            .any(|p| var.name.starts_with(p))
            || RESERVED_ENV_NAMES.contains(&var.name.as_str())
        {
            return Err(invalid(
                ErrorCode::InvalidEnv,
                format!(
                    "environment name {} is reserved: the host agent and the container toolkit set {} and {} themselves",
                    var.name,
                    RESERVED_ENV_PREFIXES
                        .iter()
                        .map(|p| format!("{p}*"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    RESERVED_ENV_NAMES.join(", ")
                ),
            ));
        }
        if env[..i].iter().any(|o| o.name == var.name) {
            return Err(invalid(
                ErrorCode::InvalidEnv,
                format!("environment name {} is given twice", var.name),
            ));
        }
        if var.value.contains('\0') {
            return Err(invalid(
                ErrorCode::InvalidEnv,
                format!("the value of {} holds a NUL byte", var.name),
            ));
        }
        bytes += var.name.len() + var.value.len();
    }
    if bytes > MAX_ENV_BYTES {
        return Err(invalid(
            ErrorCode::InvalidEnv,
            format!("the environment is over {MAX_ENV_BYTES} bytes"),
        ));
    }
    let Some(health) = health else {
        return Ok(());
    };
    let bad = |why: String| Err(invalid(ErrorCode::InvalidHealthCheck, why));
    if let gpumesh_types::Probe::Http(path) = &health.probe {
        let is_path = path.starts_with('/')
            && path.len() <= MAX_HEALTH_PATH
            && path.chars().all(|c| c.is_ascii_graphic());
        if !is_path {
            return bad(format!(
                "health check path {path:?} is not a path: it starts with / and has at most {MAX_HEALTH_PATH} printable characters, no spaces"
            ));
        }
    }
    let tcp = |port: u16| {
        ports.contains(&gpumesh_types::PortSpec {
            port,
            protocol: gpumesh_types::Protocol::Tcp,
        })
    };
    match health.port {
        Some(port) if !tcp(port) => {
            return bad(format!(
                "health check port {port} is not a published TCP port"
            ));
        }
        None if !ports
            .iter()
            .any(|p| p.protocol == gpumesh_types::Protocol::Tcp) =>
        {
            return bad("a health check needs a published TCP port to probe".into());
        }
        _ => {}
    }
    if !(100..=600_000).contains(&health.interval_ms) || health.grace_ms > 3_600_000 {
        return bad(
            "health check interval must be 100 ms to 10 min, and its grace at most 1 h".into(),
        );
    }
    if !(1..=100).contains(&health.failures) {
        return bad("health check failures must be 1 to 100".into());
    }
    Ok(())
}

/// A host's challenge URL: http(s), short, and, outside a local network, not an address
/// that would turn checkers against their own machine or network (loopback, private,
/// link-local).
fn challenge_url(url: &str, local: bool) -> Result<(), RegistryError> {
    let bad = |why: &str| {
        Err(invalid(
            ErrorCode::InvalidRequest,
            format!("challenge URL {url:?} {why}"),
        ))
    };
    let Some(rest) = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
    else {
        return bad("must start with http:// or https://");
    };
    if url.len() > MAX_URL || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad(&format!(
            "must be at most {MAX_URL} characters, without spaces"
        ));
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    if host.is_empty() {
        return bad("names no host");
    }
    if local {
        return Ok(());
    }
    let internal = match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(ip)) => {
            ip.is_loopback() || ip.is_private() || ip.is_link_local() || ip.is_unspecified()
        }
        Ok(std::net::IpAddr::V6(ip)) => {
            ip.is_loopback()
                || ip.is_unspecified()
                || (ip.segments()[0] & 0xfe00) == 0xfc00
                || (ip.segments()[0] & 0xffc0) == 0xfe80
        }
        Err(_) => host.eq_ignore_ascii_case("localhost") || host.ends_with(".localhost"),
    };
    if internal {
        return bad("points at a loopback, private or link-local address");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::challenge_url;

    #[test]
    fn challenge_urls() {
        for ok in [
            "http://gpu.example.org:7701",
            "https://203.0.113.7/agent",
            "http://[2001:db8::1]:80",
        ] {
            assert!(challenge_url(ok, false).is_ok(), "{ok}");
        }
        for bad in [
            "ftp://gpu.example.org",
            "http://",
            "http://127.0.0.1:7701",
            "http://localhost:1",
            "http://10.1.2.3",
            "http://192.168.0.2:80/x",
            "http://169.254.169.254/latest",
            "http://[::1]:7701",
            "http://[fd00::1]",
            "http://a b",
        ] {
            assert!(challenge_url(bad, false).is_err(), "{bad}");
        }
        assert!(challenge_url("http://127.0.0.1:7701", true).is_ok());
    }
}
