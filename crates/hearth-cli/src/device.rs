//! Which device a package runs on: `--device cpu|cuda|cuda:N|auto`.

use anyhow::bail;
use candle_core::Device;

/// `auto` uses the GPU when the package asks for one (`build.gpu: true`) and this build has CUDA
/// and a device is present; otherwise the CPU, with the reason logged.
pub fn choose_device(arg: &str, package_wants_gpu: bool) -> anyhow::Result<Device> {
    match arg {
        "cpu" => Ok(Device::Cpu),
        "auto" if !package_wants_gpu => Ok(Device::Cpu),
        "auto" => Ok(cuda(0).unwrap_or_else(|reason| {
            tracing::warn!(%reason, "package asks for a GPU; falling back to the CPU");
            Device::Cpu
        })),
        "cuda" => cuda(0),
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(ordinal)) => cuda(ordinal),
            _ => bail!("unknown device `{other}`; expected cpu, cuda, cuda:N or auto"),
        },
    }
}

#[cfg(feature = "cuda")]
fn cuda(ordinal: usize) -> anyhow::Result<Device> {
    Device::new_cuda(ordinal).map_err(|e| anyhow::anyhow!("no usable CUDA device {ordinal}: {e}"))
}

#[cfg(not(feature = "cuda"))]
fn cuda(_ordinal: usize) -> anyhow::Result<Device> {
    bail!("this hearth was built without CUDA support (build with `--features cuda`)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_and_auto_without_gpu_request_pick_the_cpu() {
        assert!(choose_device("cpu", true).unwrap().is_cpu());
        assert!(choose_device("auto", false).unwrap().is_cpu());
    }

    #[test]
    fn unknown_device_is_refused() {
        let err = choose_device("tpu", false).unwrap_err().to_string();
        assert!(err.contains("tpu"), "{err}");
    }
}
