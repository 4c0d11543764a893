//! The GPU catalog: the models the network knows, with their class, memory and weight.
//!
//! A host may only register models in this catalog, so that buyers, checkers and the
//! ledger agree on what a name means. `k_factor` is the spec weight K used for stake
//! requirements and capacity rewards (docs/protocol.md); `tflops_fp16` is the claimed dense
//! throughput a capacity proof is held to.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Who a GPU model is made for, which is what gaming requests ask for.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum GpuClass {
    /// Data-centre accelerators for AI training and inference.
    Datacenter,
    /// Workstation cards (professional visualisation, inference).
    Workstation,
    /// Consumer cards, the cloud-gaming class.
    Consumer,
}

/// Static facts about one GPU model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GpuSpec {
    pub model: GpuModel,
    /// The catalog name, as typed on the command line and sent on the wire.
    pub name: &'static str,
    pub class: GpuClass,
    pub vram_mib: u32,
    /// Spec weight K, in hundredths (an H100 is 100).
    pub k_factor: u32,
    /// Claimed dense FP16 throughput in TFLOP/s, what capacity proofs are timed against.
    pub tflops_fp16: u32,
    /// Substrings of NVML's device name that identify this model, most specific first.
    nvml_names: &'static [&'static str],
}

macro_rules! catalog {
    ($( $variant:ident => $name:literal, $class:ident, $vram:literal, $k:literal, $tflops:literal, [$($nvml:literal),*]; )*) => {
        /// A GPU model from the catalog.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum GpuModel { $($variant),* }

        /// Every model in the catalog, in declaration order.
        pub const CATALOG: &[GpuSpec] = &[
            $(GpuSpec {
                model: GpuModel::$variant,
                name: $name,
                class: GpuClass::$class,
                vram_mib: $vram,
                k_factor: $k,
                tflops_fp16: $tflops,
                nvml_names: &[$($nvml),*],
            }),*
        ];
    };
}

catalog! {
    H200 => "H200", Datacenter, 143_771, 130, 989, ["H200"];
    H100 => "H100", Datacenter, 81_559, 100, 989, ["H100"];
    A100_80 => "A100-80GB", Datacenter, 81_920, 60, 312, ["A100 80GB", "A100-SXM4-80GB", "A100-PCIE-80GB"];
    A100_40 => "A100-40GB", Datacenter, 40_960, 50, 312, ["A100"];
    L40S => "L40S", Datacenter, 46_068, 45, 362, ["L40S"];
    A10 => "A10", Datacenter, 23_028, 15, 125, ["A10"];
    T4 => "T4", Datacenter, 15_360, 8, 65, ["T4"];
    RtxA6000 => "RTX-A6000", Workstation, 49_140, 25, 155, ["RTX A6000"];
    Rtx4090 => "RTX4090", Consumer, 24_564, 30, 330, ["4090"];
    Rtx4080 => "RTX4080", Consumer, 16_376, 20, 195, ["4080"];
    Rtx3090 => "RTX3090", Consumer, 24_576, 18, 142, ["3090"];
    Rtx3080 => "RTX3080", Consumer, 10_240, 12, 119, ["3080"];
    // Not a GPU: a machine's CPU running the real (unsimulated) proof path, so that a
    // network's full checking can be exercised on machines without one. NVML never
    // reports it; a host offers it only with `--device cpu-reference`, and only a
    // genesis that lists its reference proof rate registers it.
    CpuReference => "cpu-reference", Consumer, 1_024, 1, 1, [];
}

impl GpuModel {
    pub fn spec(self) -> &'static GpuSpec {
        // The catalog lists variants in declaration order.
        &CATALOG[self as usize]
    }

    pub fn name(self) -> &'static str {
        self.spec().name
    }

    pub fn class(self) -> GpuClass {
        self.spec().class
    }

    /// Recognises the device name NVML reports (for example "NVIDIA H100 80GB HBM3").
    pub fn from_nvml_name(device_name: &str) -> Option<GpuModel> {
        let upper = device_name.to_ascii_uppercase();
        // Longer patterns first, so "A100 80GB" wins over "A100" and "A10" loses to both.
        let mut best: Option<(usize, GpuModel)> = None;
        for spec in CATALOG {
            for pattern in spec.nvml_names {
                if upper.contains(&pattern.to_ascii_uppercase())
                    && best.is_none_or(|(len, _)| pattern.len() > len)
                {
                    best = Some((pattern.len(), spec.model));
                }
            }
        }
        best.map(|(_, model)| model)
    }
}

/// The name is not in the catalog.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown GPU model {given:?}; known models: {known}")]
pub struct UnknownGpuModel {
    pub given: String,
    pub known: String,
}

impl FromStr for GpuModel {
    type Err = UnknownGpuModel;

    /// Accepts the catalog name in any case, with or without dashes and spaces.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let norm = |t: &str| {
            t.chars()
                .filter(|c| c.is_ascii_alphanumeric())
                .collect::<String>()
                .to_ascii_uppercase()
        };
        let wanted = norm(s);
        CATALOG
            .iter()
            .find(|spec| norm(spec.name) == wanted)
            .map(|spec| spec.model)
            .ok_or_else(|| UnknownGpuModel {
                given: s.to_string(),
                known: CATALOG
                    .iter()
                    .map(|s| s.name)
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}

impl fmt::Display for GpuModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for GpuModel {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for GpuModel {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_is_in_declaration_order() {
        for (i, spec) in CATALOG.iter().enumerate() {
            assert_eq!(spec.model as usize, i, "{}", spec.name);
            assert_eq!(spec.model.spec().name, spec.name);
        }
    }

    #[test]
    fn names_parse_loosely_and_print_canonically() {
        assert_eq!("rtx 4090".parse::<GpuModel>().unwrap(), GpuModel::Rtx4090);
        assert_eq!("a100-80gb".parse::<GpuModel>().unwrap(), GpuModel::A100_80);
        assert_eq!(GpuModel::A100_80.to_string(), "A100-80GB");
        let err = "B300".parse::<GpuModel>().unwrap_err();
        assert!(
            err.to_string().contains("unknown GPU model \"B300\""),
            "{err}"
        );
    }

    #[test]
    fn nvml_names_map_to_the_most_specific_model() {
        let cases = [
            ("NVIDIA H100 80GB HBM3", Some(GpuModel::H100)),
            ("NVIDIA H200", Some(GpuModel::H200)),
            ("NVIDIA A100-SXM4-80GB", Some(GpuModel::A100_80)),
            ("NVIDIA A100-SXM4-40GB", Some(GpuModel::A100_40)),
            ("NVIDIA A10", Some(GpuModel::A10)),
            ("NVIDIA GeForce RTX 4090", Some(GpuModel::Rtx4090)),
            ("NVIDIA RTX A6000", Some(GpuModel::RtxA6000)),
            ("Matrox G200", None),
        ];
        for (name, want) in cases {
            assert_eq!(GpuModel::from_nvml_name(name), want, "{name}");
        }
    }
}
