//! A description of the machine the load generator ran on, stored with every result so numbers
//! from different hosts are never compared by mistake.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MachineInfo {
    pub cpu_model: String,
    /// Logical CPUs (the `processor` entries of `/proc/cpuinfo`).
    pub cores: usize,
    pub memory_gib: Option<f64>,
    pub os: String,
    pub arch: String,
}

impl MachineInfo {
    /// Reads `/proc`; on systems without it, falls back to what the standard library knows.
    pub fn detect() -> MachineInfo {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let (cpu_model, cores) = parse_cpuinfo(&cpuinfo);
        let cores = if cores > 0 {
            cores
        } else {
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
        };
        MachineInfo {
            cpu_model: cpu_model.unwrap_or_else(|| "unknown".into()),
            cores,
            memory_gib: parse_mem_total_gib(&meminfo),
            os: std::env::consts::OS.into(),
            arch: std::env::consts::ARCH.into(),
        }
    }

    pub fn one_line(&self) -> String {
        let mem = self.memory_gib.map(|g| format!(", {g:.0} GiB RAM")).unwrap_or_default();
        format!("{} ({} logical cores{mem}, {}/{})", self.cpu_model, self.cores, self.os, self.arch)
    }
}

/// The first CPU's model name (x86 `model name`, or ARM's `Model`/`CPU part` fallbacks) and the
/// number of `processor` entries.
fn parse_cpuinfo(text: &str) -> (Option<String>, usize) {
    let mut model = None;
    let mut cores = 0;
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else { continue };
        match key.trim() {
            "processor" => cores += 1,
            "model name" | "Model" | "cpu model" if model.is_none() => {
                model = Some(value.trim().to_string());
            }
            _ => {}
        }
    }
    (model, cores)
}

fn parse_mem_total_gib(text: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        let cpuinfo = "processor\t: 0\nmodel name\t: Test CPU @ 3GHz\n\nprocessor\t: 1\nmodel name\t: Test CPU @ 3GHz\n";
        assert_eq!(parse_cpuinfo(cpuinfo), (Some("Test CPU @ 3GHz".into()), 2));
        let mem = parse_mem_total_gib("MemTotal:       16777216 kB\nMemFree: 1 kB\n").unwrap();
        assert!((mem - 16.0).abs() < 1e-9);
    }

    #[test]
    fn detect_finds_some_cores() {
        assert!(MachineInfo::detect().cores > 0);
    }
}
