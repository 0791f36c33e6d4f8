//! Which device a package runs on (`--device cpu|cuda|cuda:N|auto`) and in which precision.

use anyhow::bail;
use candle_core::{DType, Device};

/// `auto` uses the GPU when the package asks for one (`build.gpu: true`) and this build has CUDA
/// and a device is present; otherwise the CPU, with the reason logged. `cpu`, `cuda` and `cuda:N`
/// are obeyed whatever the package asks, and a CUDA device that cannot be had is an error.
pub fn choose_device(arg: &str, package_wants_gpu: bool) -> anyhow::Result<Device> {
    match arg {
        "cpu" => Ok(Device::Cpu),
        "auto" if !package_wants_gpu => Ok(Device::Cpu),
        "auto" => Ok(cuda(0).unwrap_or_else(|reason| {
            tracing::warn!(reason = %format!("{reason:#}"), "package asks for a GPU; falling back to the CPU");
            Device::Cpu
        })),
        "cuda" => cuda(0),
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(ordinal)) => cuda(ordinal),
            _ => bail!("unknown device `{other}`; expected cpu, cuda, cuda:N or auto"),
        },
    }
}

/// The compute precision: the package's `hearth.yaml` `dtype` when it names one, else bf16 on a
/// GPU (half the memory traffic of f32, and what Llama-family checkpoints are trained in) and f32
/// on the CPU (candle's CPU matmuls are fastest and exact in f32).
pub fn choose_dtype(device: &Device, configured: Option<hearth_package::DType>) -> DType {
    dtype_for(device.is_cuda(), configured)
}

fn dtype_for(on_gpu: bool, configured: Option<hearth_package::DType>) -> DType {
    match configured {
        Some(hearth_package::DType::F32) => DType::F32,
        Some(hearth_package::DType::F16) => DType::F16,
        Some(hearth_package::DType::Bf16) => DType::BF16,
        None if on_gpu => DType::BF16,
        None => DType::F32,
    }
}

#[cfg(feature = "cuda")]
fn cuda(ordinal: usize) -> anyhow::Result<Device> {
    Device::new_cuda(ordinal).map_err(|e| {
        // The cause alone: with RUST_BACKTRACE set, candle wraps it with a backtrace.
        let cause = match e {
            candle_core::Error::WithBacktrace { inner, .. } => inner.to_string(),
            e => e.to_string(),
        };
        anyhow::anyhow!(
            "no usable CUDA device {ordinal} ({}); check that an NVIDIA GPU is visible \
             (nvidia-smi) and that the driver supports CUDA 13",
            cause.trim_end()
        )
    })
}

#[cfg(not(feature = "cuda"))]
fn cuda(_ordinal: usize) -> anyhow::Result<Device> {
    bail!("this hearth was built without CUDA support (build with `--features cuda`)")
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_package::DType as PackageDType;

    #[test]
    fn cpu_and_auto_without_gpu_request_pick_the_cpu() {
        assert!(choose_device("cpu", true).unwrap().is_cpu());
        assert!(choose_device("auto", false).unwrap().is_cpu());
    }

    #[test]
    fn unknown_device_is_refused() {
        let err = choose_device("tpu", false).unwrap_err().to_string();
        assert!(err.contains("tpu"), "{err}");
        let err = choose_device("cuda:x", false).unwrap_err().to_string();
        assert!(err.contains("cuda:x"), "{err}");
    }

    /// Only meaningful where no CUDA device can be had: a CPU-only build, or a CUDA build on a
    /// machine without a GPU (CI). With a GPU present these would pick it, so they are skipped.
    fn no_cuda_device_here() -> bool {
        !cfg!(feature = "cuda") || Device::new_cuda(0).is_err()
    }

    #[test]
    fn auto_with_gpu_request_falls_back_to_the_cpu_without_a_device() {
        if no_cuda_device_here() {
            assert!(choose_device("auto", true).unwrap().is_cpu());
        }
    }

    #[test]
    fn explicit_cuda_without_a_device_is_an_error_saying_why() {
        if no_cuda_device_here() {
            for arg in ["cuda", "cuda:1"] {
                let err = format!("{:#}", choose_device(arg, false).unwrap_err());
                assert!(err.contains("CUDA"), "{arg}: {err}");
            }
        }
    }

    #[test]
    fn dtype_is_the_packages_when_it_names_one_on_either_device() {
        for on_gpu in [false, true] {
            assert_eq!(dtype_for(on_gpu, Some(PackageDType::Bf16)), DType::BF16);
            assert_eq!(dtype_for(on_gpu, Some(PackageDType::F16)), DType::F16);
            assert_eq!(dtype_for(on_gpu, Some(PackageDType::F32)), DType::F32);
        }
    }

    #[test]
    fn dtype_defaults_to_bf16_on_a_gpu_and_f32_on_the_cpu() {
        assert_eq!(dtype_for(true, None), DType::BF16);
        assert_eq!(dtype_for(false, None), DType::F32);
        assert_eq!(choose_dtype(&Device::Cpu, None), DType::F32);
    }
}
