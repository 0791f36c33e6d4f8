//! How much memory the KV cache may take: a fixed size, or a share of the memory actually
//! available when the model has loaded (free RAM on the CPU, free device memory on a GPU), the
//! way vLLM's `gpu_memory_utilization` sizes its cache. A cache sized by hand too small evicts
//! an agent's history between turns and recomputes it; sized from what is free, it holds it.

use candle_core::Device;

/// The memory given to a model's KV cache.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum KvCacheSize {
    /// Exactly this many bytes.
    Bytes(usize),
    /// This share (0–1) of the memory available once the weights are loaded.
    Available(f64),
}

impl Default for KvCacheSize {
    fn default() -> Self {
        Self::Available(DEFAULT_AVAILABLE_SHARE)
    }
}

/// Half of what is free: the rest stays for activations, the operating system and any other
/// model the daemon loads later. On a GPU the same share holds; raise it where one model has
/// the device to itself.
pub const DEFAULT_AVAILABLE_SHARE: f64 = 0.5;

/// Where the available memory cannot be read (another OS, a driver that will not say).
const FALLBACK_BYTES: usize = 512 << 20;

impl KvCacheSize {
    /// The bytes this size means on `device` now, and how the number was found (for the log).
    pub fn resolve(self, device: &Device) -> (usize, &'static str) {
        match self {
            Self::Bytes(bytes) => (bytes, "configured"),
            Self::Available(share) => match available_bytes(device) {
                Some(free) => {
                    ((free as f64 * share.clamp(0.0, 1.0)) as usize, "share of free memory")
                }
                None => (FALLBACK_BYTES, "fallback: free memory unknown"),
            },
        }
    }
}

/// Memory free for new allocations on `device`, in bytes.
pub fn available_bytes(device: &Device) -> Option<usize> {
    match device {
        Device::Cpu => available_ram(),
        #[cfg(feature = "cuda")]
        // cudarc binds the device's context to this thread before asking the driver.
        Device::Cuda(cuda) => {
            cuda.cuda_stream().context().mem_get_info().ok().map(|(free, _)| free)
        }
        #[allow(unreachable_patterns)]
        _ => None,
    }
}

/// Free RAM as Linux counts it (`MemAvailable`: free pages plus caches it can drop), bounded
/// by the process's cgroup (v2) limit where there is one, so a container's limit counts and not
/// the host's memory. Read from `/proc` and `/sys` because that is the whole of it; a system
/// information crate would bring far more than two numbers.
fn available_ram() -> Option<usize> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let host = meminfo_kib(&meminfo, "MemAvailable")? * 1024;
    Some(match cgroup_headroom() {
        Some(limit) => host.min(limit),
        None => host,
    })
}

fn meminfo_kib(meminfo: &str, key: &str) -> Option<usize> {
    meminfo.lines().find_map(|line| {
        let rest = line.strip_prefix(key)?.strip_prefix(':')?;
        rest.trim().trim_end_matches("kB").trim().parse().ok()
    })
}

/// `memory.max − memory.current` of this process's cgroup, when it has a limit.
fn cgroup_headroom() -> Option<usize> {
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    // cgroup v2: one line, `0::/path`.
    let path = cgroup.lines().find_map(|l| l.strip_prefix("0::"))?.trim();
    let dir = std::path::Path::new("/sys/fs/cgroup").join(path.trim_start_matches('/'));
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).ok();
    headroom(&read("memory.max")?, &read("memory.current")?)
}

fn headroom(max: &str, current: &str) -> Option<usize> {
    let max: usize = max.trim().parse().ok()?; // "max" (no limit) does not parse
    let current: usize = current.trim().parse().ok()?;
    Some(max.saturating_sub(current))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_available_memory_and_cgroup_limits() {
        let meminfo =
            "MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   23254588 kB\n";
        assert_eq!(meminfo_kib(meminfo, "MemAvailable"), Some(23_254_588));
        assert_eq!(meminfo_kib(meminfo, "MemAvail"), None);
        assert_eq!(headroom("max\n", "1000\n"), None);
        assert_eq!(headroom("8589934592\n", "1073741824\n"), Some(7 << 30));
        assert_eq!(headroom("100\n", "200\n"), Some(0));
    }

    #[test]
    fn a_share_of_free_memory_on_this_machine() {
        if cfg!(target_os = "linux") {
            let free = available_bytes(&Device::Cpu).expect("Linux reports MemAvailable");
            assert!(free > 0);
            let (bytes, how) = KvCacheSize::Available(0.25).resolve(&Device::Cpu);
            assert_eq!(how, "share of free memory");
            // Free memory moves between the two reads; a quarter of it is far from either end.
            assert!(bytes > free / 8 && bytes < free / 2, "{bytes} of {free}");
        }
        assert_eq!(KvCacheSize::Bytes(1234).resolve(&Device::Cpu), (1234, "configured"));
    }
}
