//! The one place gpumesh talks to CUDA: an exact INT8 × INT8 → INT32 matrix multiply on
//! an NVIDIA GPU, for capacity proofs (docs/capacity-proof.md).
//!
//! Nothing is linked at build time. [`Cuda::open`] loads the driver (`libcuda`) and NVRTC
//! (`libnvrtc`, CUDA's run-time compiler) when called, and fails with a message naming
//! what is missing, so a machine without a GPU or a CUDA toolkit builds and runs
//! everything else. It compiles the kernel once, to PTX; [`Cuda::device`] loads it on one
//! device, with one context and one stream, and [`Device::multiply`] runs it.
//!
//! The kernel is a 16×16 tiled product in plain 32-bit integer arithmetic: exact, since
//! every partial sum of at most 1024 products of two `i8` is at most 2^24 in magnitude.
//! It aims at correctness first; it does not use tensor cores.
//!
//! This crate is the workspace's only `unsafe` code: cudarc marks library probing and
//! kernel launches `unsafe`, and each block here says why its use is sound.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::Ptx;

/// The kernel's side of a tile: a block is `TILE × TILE` threads, one per entry of C.
const TILE: usize = 16;

/// C = A·B for row-major `a` (`rows × inner`), `b` (`inner × inner`) and `c`
/// (`rows × inner`), with `inner` a multiple of the tile. Block (x, y) computes the
/// tile of C at columns 16x.., rows 16y..; rows past `rows` are neither read nor written.
const KERNEL: &str = r#"
extern "C" __global__ void gemm_i8(
    const signed char* a, const signed char* b, int* c, int rows, int inner)
{
    __shared__ int ta[16][16];
    __shared__ int tb[16][16];
    const int tx = threadIdx.x;
    const int ty = threadIdx.y;
    const int row = blockIdx.y * 16 + ty;
    const int col = blockIdx.x * 16 + tx;
    int acc = 0;
    for (int k0 = 0; k0 < inner; k0 += 16) {
        ta[ty][tx] = row < rows ? (int)a[(size_t)row * inner + k0 + tx] : 0;
        tb[ty][tx] = (int)b[(size_t)(k0 + ty) * inner + col];
        __syncthreads();
        #pragma unroll
        for (int k = 0; k < 16; ++k) {
            acc += ta[ty][k] * tb[k][tx];
        }
        __syncthreads();
    }
    if (row < rows) {
        c[(size_t)row * inner + col] = acc;
    }
}
"#;
const KERNEL_NAME: &str = "gemm_i8";

/// Why CUDA could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    /// A library could not be loaded: not installed, not on the loader's path, or too old.
    #[error("{0}")]
    Unavailable(String),
    #[error("NVRTC could not compile the multiply kernel: {0}")]
    Compile(String),
    #[error("CUDA {what} failed: {error}")]
    Driver { what: &'static str, error: String },
    #[error("CUDA sees {count} devices; there is no device {ordinal}")]
    NoDevice { ordinal: usize, count: usize },
    #[error("bad multiply shape: {0}")]
    Shape(String),
}

fn driver(what: &'static str) -> impl FnOnce(cudarc::driver::DriverError) -> CudaError {
    move |e| CudaError::Driver {
        what,
        error: e.to_string(),
    }
}

/// Runs `f`, turning a panic into an error. cudarc resolves each library function on
/// its first call and panics when the library lacks it (a driver or NVRTC older than the
/// CUDA 12.0 API these bindings use): setting up must fail, not take the agent down.
/// (The default panic hook still prints the panic.)
fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T, CudaError>) -> Result<T, CudaError> {
    std::panic::catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("no message");
        Err(CudaError::Unavailable(format!(
            "{what} failed inside cudarc (is a CUDA library older than 12.0?): {message}"
        )))
    })
}

fn driver_present() -> bool {
    // SAFETY: this opens NVIDIA's driver library (`libcuda`) by its usual names and closes
    // it again; opening runs the library's initialisers, as any use of CUDA does. Nothing
    // is called in it. (cudarc's own loading panics when the library is absent; this
    // probe returns `false` instead.)
    unsafe { cudarc::driver::sys::is_culib_present() }
}

fn nvrtc_present() -> bool {
    // SAFETY: as for `driver_present`, for NVIDIA's NVRTC library (`libnvrtc`).
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// CUDA, loaded, with the multiply kernel compiled.
#[derive(Clone)]
pub struct Cuda {
    ptx: Ptx,
}

impl std::fmt::Debug for Cuda {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cuda").finish_non_exhaustive()
    }
}

impl Cuda {
    /// Loads the CUDA driver and NVRTC and compiles the kernel. Fails, without
    /// panicking, when either library is missing or too old, naming which.
    pub fn open() -> Result<Self, CudaError> {
        let mut missing = Vec::new();
        if !driver_present() {
            missing.push("the CUDA driver library (libcuda)");
        }
        if !nvrtc_present() {
            missing.push("NVRTC, CUDA's run-time compiler (libnvrtc)");
        }
        if !missing.is_empty() {
            return Err(CudaError::Unavailable(format!(
                "{} could not be loaded: not installed, or not on the loader's path \
                 (LD_LIBRARY_PATH)",
                missing.join(" and ")
            )));
        }
        let ptx = guarded("compiling the kernel", || {
            cudarc::nvrtc::compile_ptx(KERNEL).map_err(|e| CudaError::Compile(e.to_string()))
        })?;
        Ok(Self { ptx })
    }

    /// How many devices the driver sees.
    pub fn device_count(&self) -> Result<usize, CudaError> {
        let count = CudaContext::device_count().map_err(driver("device count"))?;
        Ok(usize::try_from(count).unwrap_or(0))
    }

    /// Opens device `ordinal` (in CUDA's order): its primary context, a stream, and the
    /// kernel loaded into it.
    pub fn device(&self, ordinal: usize) -> Result<Device, CudaError> {
        guarded("opening a device", || {
            let count = self.device_count()?;
            if ordinal >= count {
                return Err(CudaError::NoDevice { ordinal, count });
            }
            let context = CudaContext::new(ordinal).map_err(driver("context creation"))?;
            let name = context.name().map_err(driver("device name"))?;
            let uuid = nvml_uuid(&context.uuid().map_err(driver("device UUID"))?.bytes);
            let stream = context.new_stream().map_err(driver("stream creation"))?;
            let module = context.load_module(self.ptx.clone()).map_err(driver(
                "loading the kernel (is the driver older than NVRTC?)",
            ))?;
            let gemm = module
                .load_function(KERNEL_NAME)
                .map_err(driver("kernel lookup"))?;
            Ok(Device {
                ordinal,
                name,
                uuid,
                stream,
                gemm,
            })
        })
    }
}

/// Opens the device whose UUID is `uuid` (as NVML writes it, `GPU-…`): CUDA's ordinals
/// need not follow NVML's order, and a host names its GPUs by UUID.
impl Cuda {
    pub fn device_by_uuid(&self, uuid: &str) -> Result<Device, CudaError> {
        for ordinal in 0..self.device_count()? {
            let device = self.device(ordinal)?;
            if device.uuid.eq_ignore_ascii_case(uuid) {
                return Ok(device);
            }
        }
        Err(CudaError::Unavailable(format!(
            "no CUDA device has UUID {uuid}"
        )))
    }
}

/// A device UUID written as NVML writes it: `GPU-` and the 16 bytes as 8-4-4-4-12 hex.
pub fn nvml_uuid(bytes: &[std::ffi::c_char; 16]) -> String {
    let hex: String = bytes.iter().map(|&b| format!("{:02x}", b as u8)).collect();
    format!(
        "GPU-{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// One GPU with the kernel loaded. Calls on one device run in order on its stream.
pub struct Device {
    ordinal: usize,
    name: String,
    /// Its UUID as NVML writes it.
    uuid: String,
    stream: Arc<CudaStream>,
    gemm: CudaFunction,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("ordinal", &self.ordinal)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// A square INT8 matrix (the proof's B) held on one device.
pub struct DeviceMatrix {
    ordinal: usize,
    inner: usize,
    values: CudaSlice<i8>,
}

impl std::fmt::Debug for DeviceMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceMatrix")
            .field("ordinal", &self.ordinal)
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl Device {
    /// The device's name as the driver reports it ("NVIDIA H100 80GB HBM3").
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    pub fn uuid(&self) -> &str {
        &self.uuid
    }

    /// Copies `b` (`inner × inner`, row-major) to the device.
    pub fn upload(&self, b: &[i8], inner: usize) -> Result<DeviceMatrix, CudaError> {
        if inner == 0 || !inner.is_multiple_of(TILE) || b.len() != inner * inner {
            return Err(CudaError::Shape(format!(
                "B must be inner × inner with inner a positive multiple of {TILE}; \
                 got {} values for inner {inner}",
                b.len()
            )));
        }
        let values = self.stream.clone_htod(b).map_err(driver("uploading B"))?;
        Ok(DeviceMatrix {
            ordinal: self.ordinal,
            inner,
            values,
        })
    }

    /// `c = a · b` exactly, with `a` and `c` `rows × inner` row-major and `b` uploaded to
    /// this device. Blocks until `c` is written.
    pub fn multiply(
        &self,
        a: &[i8],
        b: &DeviceMatrix,
        rows: usize,
        c: &mut [i32],
    ) -> Result<(), CudaError> {
        let inner = b.inner;
        if b.ordinal != self.ordinal {
            return Err(CudaError::Shape(format!(
                "B is on device {}, not {}",
                b.ordinal, self.ordinal
            )));
        }
        let (Ok(rows_i32), Ok(inner_i32)) = (i32::try_from(rows), i32::try_from(inner)) else {
            return Err(CudaError::Shape(format!("{rows} × {inner} is too large")));
        };
        if rows == 0 || a.len() != rows * inner || c.len() != rows * inner {
            return Err(CudaError::Shape(format!(
                "A has {} values and C {} for {rows} rows of {inner}",
                a.len(),
                c.len()
            )));
        }
        let grid_y = u32::try_from(rows.div_ceil(TILE))
            .map_err(|_| CudaError::Shape(format!("{rows} rows are too many")))?;
        let a_dev = self.stream.clone_htod(a).map_err(driver("uploading A"))?;
        let mut c_dev = self
            .stream
            .alloc_zeros::<i32>(rows * inner)
            .map_err(driver("allocating C"))?;
        let config = LaunchConfig {
            grid_dim: ((inner / TILE) as u32, grid_y, 1),
            block_dim: (TILE as u32, TILE as u32, 1),
            shared_mem_bytes: 0,
        };
        let mut launch = self.stream.launch_builder(&self.gemm);
        launch
            .arg(&a_dev)
            .arg(&b.values)
            .arg(&mut c_dev)
            .arg(&rows_i32)
            .arg(&inner_i32);
        // SAFETY: the arguments match `gemm_i8`'s signature in order and type (two i8
        // buffers, an i32 buffer, two ints). Every access stays in bounds: `a_dev` and
        // `c_dev` hold `rows × inner` values and `b.values` `inner × inner` (checked
        // above and in `upload`); the grid covers exactly `inner / 16` column tiles, so
        // `col < inner` and `k0 + tx < inner`, and rows at or past `rows` are neither read
        // nor written. All three buffers live on this device's stream until the launch
        // has finished (cudarc records their use and the copy below waits for it).
        unsafe { launch.launch(config) }.map_err(driver("kernel launch"))?;
        self.stream
            .memcpy_dtoh(&c_dev, c)
            .map_err(driver("downloading C"))?;
        self.stream.synchronize().map_err(driver("synchronising"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_written_as_nvml_writes_them() {
        let bytes: [u8; 16] = [
            0x5a, 0x3b, 0x9c, 0x01, 0x22, 0x7e, 0x40, 0x0f, 0x8d, 0x11, 0xab, 0xcd, 0xef, 0x01,
            0x23, 0x45,
        ];
        assert_eq!(
            nvml_uuid(&bytes.map(|b| b as std::ffi::c_char)),
            "GPU-5a3b9c01-227e-400f-8d11-abcdef012345"
        );
    }

    #[test]
    fn open_fails_cleanly_or_multiplies_exactly() {
        let cuda = match Cuda::open() {
            Ok(cuda) => cuda,
            Err(CudaError::Unavailable(reason)) => {
                assert!(
                    std::env::var_os("GPUMESH_REQUIRE_CUDA").is_none(),
                    "GPUMESH_REQUIRE_CUDA is set: {reason}"
                );
                assert!(
                    reason.contains("libcuda") || reason.contains("libnvrtc"),
                    "{reason}"
                );
                eprintln!("skipping: {reason}");
                return;
            }
            Err(e) => panic!("CUDA is present but unusable: {e}"),
        };
        let device = match cuda.device(0) {
            Ok(device) => device,
            Err(e) => {
                assert!(
                    std::env::var_os("GPUMESH_REQUIRE_CUDA").is_none(),
                    "GPUMESH_REQUIRE_CUDA is set: {e}"
                );
                eprintln!("skipping: {e}");
                return;
            }
        };
        let (rows, inner) = (37, 48);
        let a: Vec<i8> = (0..rows * inner)
            .map(|x| (x * 37 % 256) as u8 as i8)
            .collect();
        let b: Vec<i8> = (0..inner * inner)
            .map(|x| (x * 101 % 256) as u8 as i8)
            .collect();
        let mut want = vec![0i32; rows * inner];
        for i in 0..rows {
            for j in 0..inner {
                want[i * inner + j] = (0..inner)
                    .map(|k| i32::from(a[i * inner + k]) * i32::from(b[k * inner + j]))
                    .sum();
            }
        }
        let b_dev = device.upload(&b, inner).unwrap();
        let mut c = vec![0i32; rows * inner];
        device.multiply(&a, &b_dev, rows, &mut c).unwrap();
        assert_eq!(c, want);
        assert!(matches!(
            device.multiply(&a[1..], &b_dev, rows, &mut c),
            Err(CudaError::Shape(_))
        ));
    }
}
