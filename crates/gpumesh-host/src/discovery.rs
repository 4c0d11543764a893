//! Finding the GPUs a host offers, and the prover that answers checkers for them: a
//! [`Devices`]. NVIDIA's NVML with the CUDA prover is what a real host uses; the CPU
//! reference device runs the same unsimulated path on a machine's CPU, for tests and for
//! networks whose genesis lists it; GPUs declared as simulated are for local networks.

use std::sync::Arc;

use gpumesh_types::{GpuModel, GpuOffer};

use crate::challenge::{CpuProver, CudaProver, Prover};

/// Where a host's GPUs and their prover come from.
pub trait Devices: std::fmt::Debug {
    /// The machine's GPUs, in the order the device reports them.
    fn discover(&self) -> Result<Vec<DiscoveredGpu>, String>;
    /// The prover for the offered GPUs (`uuids`, in the registration's order). A real
    /// GPU proves on the GPU or not at all: a CPU would miss every deadline, and be
    /// rejected for it.
    fn prover(&self, uuids: &[String]) -> Result<Arc<dyn Prover>, String>;
    /// Whether workloads get the GPUs by their UUIDs (a CPU reference has none to give).
    fn passes_gpus(&self) -> bool;
}

/// NVIDIA GPUs through NVML, proven through CUDA: the default for a real host.
#[derive(Debug, Default)]
pub struct Nvml;

impl Devices for Nvml {
    fn discover(&self) -> Result<Vec<DiscoveredGpu>, String> {
        discover_nvml()
    }

    fn prover(&self, uuids: &[String]) -> Result<Arc<dyn Prover>, String> {
        CudaProver::open(uuids.to_vec())
            .map(|p| Arc::new(p) as Arc<dyn Prover>)
            .map_err(|e| format!("the CUDA prover cannot be loaded ({e}); a host proves its GPUs on them, never on its CPU"))
    }

    fn passes_gpus(&self) -> bool {
        true
    }
}

/// The machine's CPU as one device of the catalog's `cpu-reference` model, proven by the
/// exact CPU kernel at full speed: the network's real (unsimulated) proof path on a
/// machine without a GPU. Only a genesis that gives `cpu-reference` a reference rate
/// registers it; never a default.
#[derive(Debug, Default)]
pub struct CpuReference;

impl Devices for CpuReference {
    fn discover(&self) -> Result<Vec<DiscoveredGpu>, String> {
        Ok(vec![DiscoveredGpu {
            index: 0,
            name: "CPU reference device".into(),
            uuid: "CPU-REFERENCE-0".into(),
            memory_mib: GpuModel::CpuReference.spec().vram_mib,
            model: Some(GpuModel::CpuReference),
        }])
    }

    fn prover(&self, _uuids: &[String]) -> Result<Arc<dyn Prover>, String> {
        Ok(Arc::new(CpuProver))
    }

    fn passes_gpus(&self) -> bool {
        false
    }
}

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

/// What a host offers from the GPUs it found.
#[derive(Debug, PartialEq, Eq)]
pub struct Offered<'a> {
    /// One offer per model, in the order each model was first found.
    pub offers: Vec<GpuOffer>,
    /// The UUID of each offered GPU in the registration's order (the offers expanded):
    /// the network's GPU `i` is the device with `uuids[i]`, whatever NVML's or CUDA's
    /// own numbering.
    pub uuids: Vec<String>,
    /// GPUs of models not in the catalog: not offered.
    pub unknown: Vec<&'a DiscoveredGpu>,
}

/// Groups discovered GPUs of known models into offers, keeping each one's UUID at the
/// index the registration gives it.
pub fn offers_from(gpus: &[DiscoveredGpu]) -> Offered<'_> {
    let mut by_model: Vec<(GpuOffer, Vec<String>)> = Vec::new();
    let mut unknown = Vec::new();
    for gpu in gpus {
        let Some(model) = gpu.model else {
            unknown.push(gpu);
            continue;
        };
        match by_model.iter_mut().find(|(o, _)| o.model == model) {
            Some((offer, uuids)) => {
                offer.count += 1;
                offer.vram_mib = offer.vram_mib.min(Some(gpu.memory_mib));
                uuids.push(gpu.uuid.clone());
            }
            None => by_model.push((
                GpuOffer {
                    model,
                    count: 1,
                    vram_mib: Some(gpu.memory_mib),
                    simulated: false,
                },
                vec![gpu.uuid.clone()],
            )),
        }
    }
    let (offers, uuids): (Vec<GpuOffer>, Vec<Vec<String>>) = by_model.into_iter().unzip();
    Offered {
        offers,
        uuids: uuids.into_iter().flatten().collect(),
        unknown,
    }
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
        let offered = offers_from(&gpus);
        assert_eq!(offered.offers.len(), 1);
        assert_eq!(
            (
                offered.offers[0].model,
                offered.offers[0].count,
                offered.offers[0].simulated
            ),
            (GpuModel::H100, 2, false)
        );
        assert_eq!(offered.unknown.len(), 1);
    }

    /// NVML numbers a mixed machine's GPUs in its own order; the registration groups
    /// them by model. Each registered index must name the device that is really that
    /// model, by its UUID.
    #[test]
    fn a_mixed_machine_s_registered_indices_name_the_right_devices() {
        let table = [
            (0, "NVIDIA GeForce RTX 4090", "GPU-aaaa"),
            (1, "NVIDIA H100 80GB HBM3", "GPU-bbbb"),
            (2, "NVIDIA GeForce RTX 4090", "GPU-cccc"),
            (3, "Mystery 9000", "GPU-dddd"),
            (4, "NVIDIA H100 80GB HBM3", "GPU-eeee"),
            (5, "NVIDIA L40S", "GPU-ffff"),
        ];
        let gpus: Vec<DiscoveredGpu> = table
            .iter()
            .map(|&(index, name, uuid)| DiscoveredGpu {
                index,
                name: name.into(),
                uuid: uuid.into(),
                memory_mib: 24_000,
                model: GpuModel::from_nvml_name(name),
            })
            .collect();
        let offered = offers_from(&gpus);
        let registered: Vec<GpuModel> = offered
            .offers
            .iter()
            .flat_map(|o| std::iter::repeat_n(o.model, usize::from(o.count)))
            .collect();
        assert_eq!(registered.len(), offered.uuids.len());
        for (i, (model, uuid)) in registered.iter().zip(&offered.uuids).enumerate() {
            let device = gpus.iter().find(|g| &g.uuid == uuid).unwrap();
            assert_eq!(device.model, Some(*model), "registered GPU {i} is {uuid}");
        }
        assert_eq!(
            offered.uuids,
            ["GPU-aaaa", "GPU-cccc", "GPU-bbbb", "GPU-eeee", "GPU-ffff"]
        );
        assert_eq!(offered.unknown[0].uuid, "GPU-dddd");
    }
}
