//! Finding the GPUs a host offers: NVIDIA's NVML where a driver is present, or GPUs
//! declared as simulated for a local network.

use gpumesh_types::{GpuModel, GpuOffer};

/// One GPU NVML reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiscoveredGpu {
    pub index: u32,
    pub name: String,
    pub uuid: String,
    pub memory_mib: u32,
    /// The catalog model, when the name is one the network knows.
    pub model: Option<GpuModel>,
}

/// Asks NVML for the machine's GPUs. Fails with a reason when no driver is present.
pub fn discover_nvml() -> Result<Vec<DiscoveredGpu>, String> {
    let nvml = nvml_wrapper::Nvml::init()
        .map_err(|e| format!("no NVIDIA driver found through NVML ({e})"))?;
    let count = nvml
        .device_count()
        .map_err(|e| format!("NVML could not count devices: {e}"))?;
    let mut gpus = Vec::with_capacity(count as usize);
    for index in 0..count {
        let device = nvml
            .device_by_index(index)
            .map_err(|e| format!("NVML device {index}: {e}"))?;
        let name = device
            .name()
            .map_err(|e| format!("NVML device {index} name: {e}"))?;
        let uuid = device
            .uuid()
            .map_err(|e| format!("NVML device {index} uuid: {e}"))?;
        let memory = device
            .memory_info()
            .map_err(|e| format!("NVML device {index} memory: {e}"))?;
        gpus.push(DiscoveredGpu {
            index,
            model: GpuModel::from_nvml_name(&name),
            name,
            uuid,
            memory_mib: (memory.total / (1024 * 1024)) as u32,
        });
    }
    Ok(gpus)
}

/// Groups discovered GPUs of known models into offers; unknown models are returned apart.
pub fn offers_from(gpus: &[DiscoveredGpu]) -> (Vec<GpuOffer>, Vec<&DiscoveredGpu>) {
    let mut offers: Vec<GpuOffer> = Vec::new();
    let mut unknown = Vec::new();
    for gpu in gpus {
        let Some(model) = gpu.model else {
            unknown.push(gpu);
            continue;
        };
        match offers.iter_mut().find(|o| o.model == model) {
            Some(offer) => offer.count += 1,
            None => offers.push(GpuOffer {
                model,
                count: 1,
                vram_mib: Some(gpu.memory_mib),
                simulated: false,
            }),
        }
    }
    (offers, unknown)
}

/// Parses `MODEL:COUNT` (or just `MODEL`) as declared simulated GPUs.
pub fn parse_simulated(text: &str) -> Result<GpuOffer, String> {
    let (model, count) = match text.split_once(':') {
        Some((m, c)) => (
            m,
            c.parse::<u16>()
                .map_err(|_| format!("{c:?} is not a GPU count in {text:?}"))?,
        ),
        None => (text, 1),
    };
    let model: GpuModel = model
        .parse()
        .map_err(|e: gpumesh_types::UnknownGpuModel| e.to_string())?;
    if count == 0 {
        return Err(format!("{text:?} declares zero GPUs"));
    }
    Ok(GpuOffer {
        model,
        count,
        vram_mib: None,
        simulated: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simulated_declarations_parse() {
        assert_eq!(parse_simulated("H100:8").unwrap().count, 8);
        assert_eq!(parse_simulated("rtx4090").unwrap().model, GpuModel::Rtx4090);
        assert!(parse_simulated("H100:0").is_err());
        assert!(parse_simulated("H100:x").is_err());
        assert!(
            parse_simulated("B300:1")
                .unwrap_err()
                .contains("unknown GPU model")
        );
    }

    #[test]
    fn discovered_gpus_group_by_model() {
        let gpu = |index, name: &str| DiscoveredGpu {
            index,
            name: name.into(),
            uuid: format!("GPU-{index}"),
            memory_mib: 81_559,
            model: GpuModel::from_nvml_name(name),
        };
        let gpus = [
            gpu(0, "NVIDIA H100 80GB HBM3"),
            gpu(1, "NVIDIA H100 80GB HBM3"),
            gpu(2, "Mystery 9000"),
        ];
        let (offers, unknown) = offers_from(&gpus);
        assert_eq!(offers.len(), 1);
        assert_eq!(
            (offers[0].model, offers[0].count, offers[0].simulated),
            (GpuModel::H100, 2, false)
        );
        assert_eq!(unknown.len(), 1);
    }
}
