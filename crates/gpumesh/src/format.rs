//! Parsing what people type and printing what they read.

use anyhow::{Context, bail};
#[cfg(test)]
use gpumesh_types::GpuModel;
use gpumesh_types::{GpuSelector, LeaseView};

/// Parses a duration such as `90s`, `10m`, `2h`, `1h30m` or a number of seconds.
pub fn parse_duration_ms(text: &str) -> anyhow::Result<u64> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return secs.checked_mul(1000).context("duration is too long");
    }
    let mut total: u64 = 0;
    let mut number = String::new();
    let mut any = false;
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit: u64 = match c {
            'h' => 3_600_000,
            'm' => 60_000,
            's' => 1_000,
            _ => bail!("{text:?} is not a duration like 90s, 10m or 2h"),
        };
        let n: u64 = number
            .parse()
            .with_context(|| format!("{text:?} is not a duration like 90s, 10m or 2h"))?;
        total = n
            .checked_mul(unit)
            .and_then(|v| v.checked_add(total))
            .context("duration is too long")?;
        number.clear();
        any = true;
    }
    if !number.is_empty() || !any {
        bail!("{text:?} is not a duration like 90s, 10m or 2h");
    }
    Ok(total)
}

/// Parses `MODEL[:COUNT]` or `CLASS[:COUNT]`.
pub fn parse_gpu(text: &str) -> anyhow::Result<(GpuSelector, u16)> {
    let (model, count) = match text.split_once(':') {
        Some((m, c)) => (
            m,
            c.parse::<u16>()
                .with_context(|| format!("{c:?} is not a GPU count"))?,
        ),
        None => (text, 1),
    };
    Ok((model.parse()?, count))
}

/// A listing's table: a header row and aligned columns, no frame (so it pipes well).
pub fn table<const N: usize>(
    header: [&str; N],
    rows: impl IntoIterator<Item = [String; N]>,
) -> comfy_table::Table {
    let mut table = comfy_table::Table::new();
    table
        .load_preset(comfy_table::presets::NOTHING)
        .set_header(header);
    for row in rows {
        table.add_row(row);
    }
    table
}

/// The buyer's receipt of an ended lease.
pub fn receipt(lease: &LeaseView) -> String {
    let mut out = format!(
        "lease {} {:?}{}",
        lease.id,
        lease.state,
        lease
            .exit_code
            .map(|c| format!(", exit code {c}"))
            .unwrap_or_default()
    );
    if let Some(f) = &lease.failure {
        out.push_str(&format!(" ({f})"));
    }
    out.push('\n');
    match &lease.settlement {
        Some(s) => {
            let at = |ms: Option<u64>| {
                ms.map_or("-".to_string(), |ms| {
                    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
                    humantime::format_rfc3339_millis(t).to_string()
                })
            };
            out.push_str(&format!(
                "  started        {} (recorded in the ledger)\n",
                at(s.started_ms)
            ));
            out.push_str(&format!("  ended          {}\n", at(lease.ended_ms)));
            out.push_str(&format!(
                "  GPU time       {:.3} GPU-seconds billed",
                s.gpu_ms as f64 / 1000.0
            ));
            match s.bound_gpu_ms {
                Some(bound) => out.push_str(&format!(
                    " of at most {:.3} observed (GPUs × (end − start + slack))\n",
                    bound as f64 / 1000.0
                )),
                None => out.push('\n'),
            }
            out.push_str(&format!("  escrow         {} tokens\n", s.escrow.tokens()));
            out.push_str(&format!("  cost           {} tokens\n", s.charged.tokens()));
            out.push_str(&format!(
                "    to the host  {} tokens\n",
                s.host_share.tokens()
            ));
            out.push_str(&format!(
                "    to treasury  {} tokens\n",
                s.treasury_share.tokens()
            ));
            out.push_str(&format!(
                "  refund         {} tokens{}",
                s.refund.tokens(),
                if s.closed { "" } else { " (escrow still open)" }
            ));
        }
        None => out.push_str("  no escrow was opened; nothing was charged"),
    }
    out
}

/// A lease's endpoints and health, for a table cell: `8080/tcp → 1.2.3.4:31000 (ready)`.
pub fn endpoints(lease: &gpumesh_types::LeaseView) -> String {
    let mut cell = lease
        .endpoints
        .iter()
        .map(|e| format!("{} → {}", e.port, e.address))
        .collect::<Vec<_>>()
        .join(", ");
    if let Some(health) = lease.health {
        cell.push_str(&format!(" ({})", format!("{health:?}").to_lowercase()));
    }
    cell
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("90").unwrap(), 90_000);
        assert_eq!(parse_duration_ms("90s").unwrap(), 90_000);
        assert_eq!(parse_duration_ms("10m").unwrap(), 600_000);
        assert_eq!(parse_duration_ms("1h30m").unwrap(), 5_400_000);
        for bad in ["", "m", "10x", "5m3", "-1s"] {
            assert!(parse_duration_ms(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn gpu_requests() {
        assert_eq!(
            parse_gpu("H100:4").unwrap(),
            (GpuSelector::Model(GpuModel::H100), 4)
        );
        assert_eq!(
            parse_gpu("rtx4090").unwrap(),
            (GpuSelector::Model(GpuModel::Rtx4090), 1)
        );
        assert_eq!(
            parse_gpu("consumer").unwrap(),
            (GpuSelector::Class(gpumesh_types::GpuClass::Consumer), 1)
        );
        assert!(parse_gpu("H100:x").is_err());
        assert!(parse_gpu("Z9").is_err());
    }
}
