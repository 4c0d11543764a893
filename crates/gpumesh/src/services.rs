//! Deployments and sessions on the command line: `deploy`, `deployments`, `deployment
//! show|scale|allow|stop` and `session`.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use gpumesh_types::{
    Amount, Country, DeploymentId, DeploymentRequest, DeploymentView, GeoPoint, RegionSpec,
    ScaleRequest, SessionId, SessionRequest, SessionState,
};

use crate::cli::{AccountArgs, DeployArgs, DeploymentCommand, SessionArgs};
use crate::commands::{account_of, client};
use crate::format;

/// One `--region`: `CC` or `LAT,LON`, then optionally `:MIN-MAX`.
pub fn parse_region(text: &str) -> anyhow::Result<RegionSpec> {
    let text = text.trim();
    let (place, bounds) = match text.rsplit_once(':') {
        Some((place, bounds)) => (place, Some(bounds)),
        None => (text, None),
    };
    let (min, max) = match bounds {
        None => (1, 1),
        Some(b) => {
            let (min, max) = b.split_once('-').unwrap_or((b, b));
            let parse = |n: &str| {
                n.trim()
                    .parse::<u16>()
                    .with_context(|| format!("region {text:?}: {n:?} is not a replica count"))
            };
            (parse(min)?, parse(max)?)
        }
    };
    if min > max {
        bail!("region {text:?}: the minimum {min} is above the maximum {max}");
    }
    let (near, country) = if place.contains(',') {
        (place.parse::<GeoPoint>()?, None)
    } else {
        let country: Country = place.parse()?;
        let point = gpumesh_sim::countries::COUNTRIES
            .iter()
            .find(|c| c.0 == country.as_str())
            .map(|c| GeoPoint { lat: c.1, lon: c.2 })
            .with_context(|| {
                format!(
                    "no representative point is known for {country}; give the region as LAT,LON"
                )
            })?;
        (point, Some(country))
    };
    Ok(RegionSpec {
        name: place.to_string(),
        near,
        country,
        min,
        max,
        max_rtt_ms: None,
    })
}

pub async fn deploy(args: DeployArgs) -> anyhow::Result<ExitCode> {
    let client = client(&args.connection, true)?;
    let (gpu, gpu_count) = format::parse_gpu(&args.gpu)?;
    let regions = args
        .regions
        .iter()
        .filter(|r| !r.trim().is_empty())
        .map(|r| {
            parse_region(r).map(|mut region| {
                region.max_rtt_ms = args.region_max_rtt;
                region
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let budget = Amount::parse_tokens(&args.budget).context("--budget")?;
    let request = DeploymentRequest {
        gpu,
        gpu_count,
        image: args.image.clone(),
        command: args.command.clone(),
        ports: args.service.ports.clone(),
        env: args.service.env.clone(),
        health: args.service.health_check()?,
        regions,
        max_price_per_gpu_hour: Amount::parse_tokens(&args.max_price).context("--max-price")?,
        period_ms: format::parse_duration_ms(&args.period)?,
        sessions_per_replica: args.sessions_per_replica,
    };
    let created = client.create_deployment(&request).await?;
    client
        .allow(created.id, budget)
        .await
        .context("the deployment exists, but allowing the budget failed; retry with `gpumesh deployment allow`")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&created)?);
    }
    eprintln!(
        "deployment {} created; the network may spend up to {} tokens on it. Follow it with: gpumesh deployment show {}",
        created.id,
        budget.tokens(),
        created.id
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn deployments(args: AccountArgs) -> anyhow::Result<ExitCode> {
    let owner = account_of(&args)?;
    let list = client(&args.connection, false)?
        .deployments_of(owner)
        .await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(ExitCode::SUCCESS);
    }
    if list.is_empty() {
        println!("no deployments for {owner}");
        return Ok(ExitCode::SUCCESS);
    }
    let rows = list.iter().map(|d| {
        [
            d.id.to_string(),
            format!("{:?}", d.state).to_lowercase(),
            d.image.clone(),
            d.regions
                .iter()
                .map(|r| format!("{} {}/{} ({}-{})", r.name, r.live, r.desired, r.min, r.max))
                .collect::<Vec<_>>()
                .join(", "),
            d.sessions_served.to_string(),
            d.notice.clone().unwrap_or_default(),
        ]
    });
    println!(
        "{}",
        format::table(
            [
                "deployment",
                "state",
                "image",
                "regions live/desired (bounds)",
                "sessions",
                "note"
            ],
            rows
        )
    );
    Ok(ExitCode::SUCCESS)
}

fn show(d: &DeploymentView) {
    println!(
        "deployment {}: {:?}, {} × {} of {}, period {} s, {} session(s) per replica",
        d.id,
        d.state,
        d.gpu_count,
        d.gpu,
        d.image,
        d.period_ms / 1_000,
        d.sessions_per_replica
    );
    if let Some(notice) = &d.notice {
        println!("note: {notice}");
    }
    println!(
        "replicas started {}, re-placed {}, scaled up {}, down {}; sessions served {}, rejected {}",
        d.replicas_started,
        d.replacements,
        d.scale_ups,
        d.scale_downs,
        d.sessions_served,
        d.sessions_rejected
    );
    let regions = d.regions.iter().map(|r| {
        [
            r.name.clone(),
            format!("{}-{}", r.min, r.max),
            r.desired.to_string(),
            r.live.to_string(),
            r.queued_sessions.to_string(),
        ]
    });
    println!(
        "{}",
        format::table(["region", "bounds", "desired", "live", "queued"], regions)
    );
    let replicas = d.replicas.iter().map(|r| {
        [
            r.lease.to_string(),
            r.region.clone(),
            format!("{:?}", r.state).to_lowercase(),
            r.health
                .map(|h| format!("{h:?}").to_lowercase())
                .unwrap_or_default(),
            r.endpoints
                .iter()
                .map(|e| format!("{} → {}", e.port, e.address))
                .collect::<Vec<_>>()
                .join(", "),
            format!("{} now, {} served", r.sessions, r.sessions_served),
        ]
    });
    println!(
        "{}",
        format::table(
            [
                "lease",
                "region",
                "state",
                "health",
                "endpoints",
                "sessions"
            ],
            replicas
        )
    );
}

pub async fn deployment(command: DeploymentCommand) -> anyhow::Result<ExitCode> {
    match command {
        DeploymentCommand::Show {
            connection,
            id,
            json,
        } => {
            let d = client(&connection, false)?
                .deployment(DeploymentId(id))
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&d)?);
            } else {
                show(&d);
            }
        }
        DeploymentCommand::Scale {
            connection,
            id,
            region,
            min,
            max,
        } => {
            let d = client(&connection, true)?
                .scale_deployment(DeploymentId(id), &ScaleRequest { region, min, max })
                .await?;
            show(&d);
        }
        DeploymentCommand::Allow {
            connection,
            id,
            tokens,
        } => {
            let amount = Amount::parse_tokens(&tokens).context("the allowance")?;
            client(&connection, true)?
                .allow(DeploymentId(id), amount)
                .await?;
            eprintln!(
                "the network may now spend up to {} tokens of your balance on deployment {id}",
                amount.tokens()
            );
        }
        DeploymentCommand::Stop { connection, id } => {
            let d = client(&connection, true)?
                .stop_deployment(DeploymentId(id))
                .await?;
            eprintln!(
                "deployment {} stopped; its replicas end and what they did not use is refunded",
                d.id
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn session(args: SessionArgs) -> anyhow::Result<ExitCode> {
    let client = client(&args.connection, true)?;
    let request = SessionRequest {
        deployment: DeploymentId(args.deployment),
        near: args.near.parse()?,
        max_rtt_ms: args.max_rtt,
        queue_ms: format::parse_duration_ms(&args.queue)?,
    };
    let asked = Instant::now();
    let mut view = client.request_session(&request).await?;
    while view.state == SessionState::Queued {
        tokio::time::sleep(Duration::from_millis(200)).await;
        view = client.session(SessionId(view.id.0)).await?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&view)?);
    }
    match view.state {
        SessionState::Active => {
            eprintln!(
                "session {} on replica {} (about {:.0} ms away), assigned {} ms after the request",
                view.id,
                view.replica.map(|l| l.to_string()).unwrap_or_default(),
                view.rtt_ms.unwrap_or_default(),
                asked.elapsed().as_millis()
            );
            for e in &view.endpoints {
                eprintln!("  {} → {}", e.port, e.address);
            }
            Ok(ExitCode::SUCCESS)
        }
        _ => {
            eprintln!(
                "no session: {}",
                view.rejected
                    .map(|r| r.describe())
                    .unwrap_or("it ended before it began")
            );
            Ok(ExitCode::from(2))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_region;

    #[test]
    fn regions_parse_from_countries_and_points() {
        let de = parse_region("DE:1-3").unwrap();
        assert_eq!((de.name.as_str(), de.min, de.max), ("DE", 1, 3));
        assert_eq!(de.country.map(|c| c.to_string()).as_deref(), Some("DE"));
        let point = parse_region("48.1,11.6:0-2").unwrap();
        assert_eq!(
            (point.near.lat, point.near.lon, point.min, point.max),
            (48.1, 11.6, 0, 2)
        );
        assert!(point.country.is_none());
        let one = parse_region("-33.9,151.2").unwrap();
        assert_eq!((one.min, one.max), (1, 1));
        for bad in ["DE:3-1", "XX", "48.1,11.6:a-b", "200,0", "ZZ:1-2"] {
            assert!(parse_region(bad).is_err(), "{bad}");
        }
    }
}
