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

/// The most characters of free text from a host that is stored and shown to buyers: a
/// lease's failure (`finish`'s `error`). Longer text is cut, not refused: the report it
/// comes with (the end of a lease, with its final usage) must not be lost over its prose.
pub const MAX_HOST_TEXT: usize = 512;
/// The most characters of a service's health detail as its host reports it.
pub const MAX_HEALTH_DETAIL: usize = 256;

/// `text` cut to at most `max` characters, on a character boundary.
pub(crate) fn cut(mut text: String, max: usize) -> String {
    if let Some((end, _)) = text.char_indices().nth(max) {
        text.truncate(end);
    }
    text
}

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

/// Checks a registration and expands its offers into one record per GPU. `private`: the
/// challenge URL may name a private address (a local network, or a genesis that allows it).
pub(crate) fn host(
    request: &RegisterHost,
    local: bool,
    private: bool,
) -> Result<Vec<GpuRecord>, RegistryError> {
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
        challenge_url(url, private)?;
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

/// A host's challenge URL, parsed as a browser (and the checker's HTTP client) parses
/// it: http(s), at most [`MAX_URL`] characters, without user info, query or fragment
/// (checkers append their own paths). Outside a local network it must not name an
/// address that would turn checkers against their own machine or network: an IP literal
/// must be public ([`gpumesh_types::net::is_public`]), whatever form it is written in
/// (`127.1`, `0x7f.0.0.1`, `2130706433`, `[::ffff:127.0.0.1]` all name loopback), and
/// `localhost` names are refused. Other names are not resolved here (the registry does no
/// I/O): checkers on a public network resolve them to public addresses only, at each
/// probe, so a name that later points somewhere private reaches nothing.
pub fn challenge_url(raw: &str, local: bool) -> Result<url::Url, RegistryError> {
    let bad = |why: &str| {
        Err(invalid(
            ErrorCode::InvalidChallengeUrl,
            format!("challenge URL {raw:?} {why}"),
        ))
    };
    // The parser drops tabs and newlines and trims spaces silently: refuse them first,
    // so what is stored is what was judged.
    if raw.chars().count() > MAX_URL || raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad(&format!(
            "must be at most {MAX_URL} characters, without spaces"
        ));
    }
    let url = match url::Url::parse(raw) {
        Ok(url) => url,
        Err(e) => return bad(&format!("is not a URL: {e}")),
    };
    if !matches!(url.scheme(), "http" | "https") {
        return bad("must start with http:// or https://");
    }
    if !url.username().is_empty() || url.password().is_some() {
        return bad("must not carry user information (user@host)");
    }
    if url.query().is_some() || url.fragment().is_some() {
        return bad("must not have a query or a fragment: checkers append their own paths");
    }
    if local {
        return Ok(url);
    }
    let internal = match url.host() {
        Some(url::Host::Ipv4(ip)) => !gpumesh_types::net::is_public(ip.into()),
        Some(url::Host::Ipv6(ip)) => !gpumesh_types::net::is_public(ip.into()),
        Some(url::Host::Domain(name)) => {
            let name = name.trim_end_matches('.');
            name == "localhost" || name.ends_with(".localhost")
        }
        None => return bad("names no host"),
    };
    if internal {
        return bad(
            "points at an address that is not public (loopback, private, link-local, shared, documentation, multicast or reserved)",
        );
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::challenge_url;

    #[test]
    fn host_text_is_cut_on_a_character_boundary() {
        use super::cut;
        assert_eq!(cut("abc".into(), 5), "abc");
        assert_eq!(cut("abc".into(), 3), "abc");
        assert_eq!(cut("abcdef".into(), 3), "abc");
        assert_eq!(cut("ééééé".into(), 2), "éé");
        assert_eq!(cut("a🦀b".into(), 2), "a🦀");
        assert_eq!(cut(String::new(), 0), "");
        assert_eq!(
            cut("x".repeat(10_000), super::MAX_HOST_TEXT)
                .chars()
                .count(),
            512
        );
    }

    /// Each URL on a public network and on a local one: accepted, or refused with
    /// `invalid_challenge_url`.
    #[test]
    fn challenge_urls() {
        const OK: bool = true;
        const NO: bool = false;
        let cases: &[(&str, bool, bool)] = &[
            // (url, public network, local network)
            ("http://gpu.example.org:7701", OK, OK),
            ("https://gpu.example.org/agent/", OK, OK),
            ("http://8.8.8.8:7701", OK, OK),
            ("https://93.184.215.14/agent", OK, OK),
            ("http://[2606:4700:4700::1111]:80", OK, OK),
            ("http://[::ffff:8.8.8.8]:80", OK, OK),
            // Not http(s), or no URL at all.
            ("ftp://gpu.example.org", NO, NO),
            ("file:///etc/passwd", NO, NO),
            ("gopher://gpu.example.org:70/", NO, NO),
            ("gpu.example.org:7701", NO, NO),
            ("http://", NO, NO),
            ("http://a b", NO, NO),
            ("http://gpu.example.org\t:1", NO, NO),
            ("http://[::1", NO, NO),
            // User info, queries and fragments: never.
            ("http://x@127.0.0.1:9", NO, NO),
            ("http://x@gpu.example.org:9", NO, NO),
            ("http://x:y@8.8.8.8:9", NO, NO),
            ("http://8.8.8.8:9/?next=http://127.0.0.1/", NO, NO),
            ("http://8.8.8.8:9/#x", NO, NO),
            // Loopback in every spelling the parser accepts.
            ("http://127.0.0.1:7701", NO, OK),
            ("http://127.1:9", NO, OK),
            ("http://0x7f.0.0.1:9", NO, OK),
            ("http://0177.0.0.1:9", NO, OK),
            ("http://2130706433:9", NO, OK),
            ("http://0x7f000001:9", NO, OK),
            ("http://[::1]:7701", NO, OK),
            ("http://[::ffff:127.0.0.1]:9", NO, OK),
            ("http://[0:0:0:0:0:ffff:7f00:1]:9", NO, OK),
            ("http://[::127.0.0.1]:9", NO, OK),
            ("http://localhost:1", NO, OK),
            ("http://LOCALHOST.:1", NO, OK),
            ("http://agent.localhost:1", NO, OK),
            // Other addresses that are not public.
            ("http://0.0.0.0:9", NO, OK),
            ("http://0:9", NO, OK),
            ("http://10.1.2.3", NO, OK),
            ("http://012.1.2.3", NO, OK),
            ("http://172.16.0.1", NO, OK),
            ("http://192.168.0.2:80/x", NO, OK),
            ("http://100.64.0.1", NO, OK),
            ("http://169.254.169.254/latest", NO, OK),
            ("http://[::ffff:169.254.169.254]/latest", NO, OK),
            ("http://192.0.2.1", NO, OK),
            ("http://203.0.113.7/agent", NO, OK),
            ("http://224.0.0.1", NO, OK),
            ("http://255.255.255.255", NO, OK),
            ("http://[fd00::1]", NO, OK),
            ("http://[fe80::1]", NO, OK),
            ("http://[2001:db8::1]:80", NO, OK),
            ("http://[ff02::1]", NO, OK),
            ("http://[64:ff9b::a00:1]", NO, OK),
        ];
        for &(url, public, local) in cases {
            for (is_local, expected) in [(false, public), (true, local)] {
                let got = challenge_url(url, is_local);
                match (&got, expected) {
                    (Ok(_), true) => {}
                    (Err(e), false) => assert_eq!(
                        e.code(),
                        gpumesh_types::ErrorCode::InvalidChallengeUrl,
                        "{url} (local: {is_local}): {e}"
                    ),
                    _ => {
                        panic!("{url} (local: {is_local}): {got:?}, expected accepted: {expected}")
                    }
                }
            }
        }
        let long = format!("http://gpu.example.org/{}", "a".repeat(super::MAX_URL));
        assert!(challenge_url(&long, true).is_err());
    }
}
