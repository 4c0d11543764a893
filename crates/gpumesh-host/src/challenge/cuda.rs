//! The CUDA prover: the challenge's product on the host's NVIDIA GPU.
//!
//! `gpumesh-proof` derives A and B and commits to the rows ([`gpumesh_proof::prove_with`]),
//! so the root is the CPU kernel's whenever the device's product is right; the GPU only
//! multiplies, block by block, through `gpumesh-cuda` (the driver and NVRTC loaded at run
//! time). GPU `index` is the CUDA device whose UUID the registration gave that index;
//! each device's context, stream and kernel are set up on its first proof and kept.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use gpumesh_cuda::{Cuda, Device, DeviceMatrix};
use gpumesh_proof::{Challenge, Proved};

use super::Prover;

/// Proves on the GPU the challenge names, with an exact INT8 kernel.
#[derive(Debug)]
pub struct CudaProver {
    cuda: Cuda,
    /// The UUID of each GPU the host registered, by the registration's index.
    uuids: Vec<String>,
    /// The name of the first GPU, opened by [`CudaProver::open`] to show the kernel loads.
    name: String,
    devices: Mutex<BTreeMap<u16, Arc<Device>>>,
}

impl CudaProver {
    /// Loads the CUDA driver and NVRTC, compiles the kernel and opens the first GPU (by
    /// its UUID). Fails with the reason (a missing or old library, no device) rather than
    /// panicking.
    pub fn open(uuids: Vec<String>) -> Result<Self, String> {
        let cuda = Cuda::open().map_err(|e| e.to_string())?;
        let first_uuid = uuids.first().ok_or("no GPU to prove on")?;
        let first = cuda
            .device_by_uuid(first_uuid)
            .map_err(|e| format!("CUDA device {first_uuid}: {e}"))?;
        let name = first.name().to_string();
        Ok(Self {
            cuda,
            uuids,
            name,
            devices: Mutex::new(BTreeMap::from([(0, Arc::new(first))])),
        })
    }

    /// GPU `index` of the registration: the CUDA device with its UUID (CUDA's ordinals
    /// need not follow NVML's order, nor the registration's grouping by model).
    fn device(&self, index: u16) -> Result<Arc<Device>, String> {
        let mut devices = self.devices.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(device) = devices.get(&index) {
            return Ok(device.clone());
        }
        let uuid = self
            .uuids
            .get(usize::from(index))
            .ok_or_else(|| format!("this host registered no GPU {index}"))?;
        let device = Arc::new(
            self.cuda
                .device_by_uuid(uuid)
                .map_err(|e| format!("CUDA device {uuid}: {e}"))?,
        );
        devices.insert(index, device.clone());
        Ok(device)
    }
}

impl Prover for CudaProver {
    fn prove(&self, index: u16, challenge: &Challenge) -> Result<Proved, String> {
        let device = self.device(index)?;
        let inner = challenge.params.inner as usize;
        // B is the same for every block of one proof: uploaded on the first.
        let mut b_on_device: Option<DeviceMatrix> = None;
        gpumesh_proof::prove_with(challenge, |a, b, rows, c| {
            let b_on_device = match &mut b_on_device {
                Some(uploaded) => uploaded,
                None => b_on_device.insert(device.upload(b, inner).map_err(|e| e.to_string())?),
            };
            device
                .multiply(a, b_on_device, rows, c)
                .map_err(|e| e.to_string())
        })
        .map_err(|e| format!("GPU {index} ({}): {e}", device.name()))
    }

    fn describe(&self) -> String {
        format!("CUDA prover on {}", self.name)
    }
}

#[cfg(test)]
mod tests {
    use alloy_primitives::B256;
    use gpumesh_proof::{ProofParams, pick_rows, prove, verify};
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    use super::*;

    /// Set where a GPU is known to be present: then a prover that cannot open fails the
    /// test instead of skipping it.
    const REQUIRE: &str = "GPUMESH_REQUIRE_CUDA";

    /// This machine's GPUs' UUIDs in the order a registration numbers them; none without
    /// a driver.
    fn machine_uuids() -> Vec<String> {
        crate::discovery::discover_nvml()
            .map(|gpus| crate::discovery::offers_from(&gpus).uuids)
            .unwrap_or_default()
    }

    #[test]
    fn cuda_open_fails_with_a_reason_or_opens_a_device() {
        match CudaProver::open(machine_uuids()) {
            Err(reason) => {
                assert!(
                    std::env::var_os(REQUIRE).is_none(),
                    "{REQUIRE} is set: {reason}"
                );
                assert!(
                    ["libcuda", "libnvrtc", "CUDA device", "no GPU"]
                        .iter()
                        .any(|what| reason.contains(what)),
                    "the reason names what is missing: {reason}"
                );
            }
            Ok(prover) => assert!(prover.describe().starts_with("CUDA prover on ")),
        }
    }

    #[test]
    fn cuda_prover_commits_what_the_cpu_kernel_commits() {
        let prover = match CudaProver::open(machine_uuids()) {
            Ok(prover) => prover,
            Err(reason) => {
                assert!(
                    std::env::var_os(REQUIRE).is_none(),
                    "{REQUIRE} is set: {reason}"
                );
                eprintln!("skipping: {reason}");
                return;
            }
        };
        eprintln!("{}", prover.describe());
        let big = ProofParams {
            rows: 2048,
            inner: 1024,
            spot_rows: 128,
        };
        for (seed, params) in [(1u8, ProofParams::LOCAL), (2, big)] {
            let challenge = Challenge {
                seed: B256::repeat_byte(seed),
                params,
            };
            let on_gpu = prover.prove(0, &challenge).unwrap();
            assert_eq!(
                on_gpu.root(),
                prove(&challenge).unwrap().root(),
                "{params:?}"
            );
            let mut rng = ChaCha8Rng::seed_from_u64(u64::from(seed));
            let asked = pick_rows(&params, &mut rng);
            let opening = on_gpu.open(&asked).unwrap();
            assert_eq!(
                verify(&challenge, on_gpu.root(), &asked, &opening, &mut rng),
                Ok(())
            );
        }
    }
}
