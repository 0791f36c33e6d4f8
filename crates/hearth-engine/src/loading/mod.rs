//! Weight loading with progress: a thin wrapper over candle's memory-mapped safetensors backend
//! that counts the tensors the model asks for, so a person waiting on a large model sees it move.

pub mod weights;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Result, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};

/// Reports `(tensors_loaded, tensors_total)`.
pub type Progress<'a> = &'a (dyn Fn(usize, usize) + Send + Sync);

struct CountingBackend<'a> {
    inner: MmapedSafetensors,
    num_loaded: AtomicUsize,
    num_total: usize,
    progress: Progress<'a>,
}

impl CountingBackend<'_> {
    fn tick(&self) {
        let done = self.num_loaded.fetch_add(1, Ordering::Relaxed) + 1;
        (self.progress)(done.min(self.num_total), self.num_total);
    }
}

impl SimpleBackend for CountingBackend<'_> {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        let tensor = SimpleBackend::get(&self.inner, s, name, h, dtype, dev)?;
        self.tick();
        Ok(tensor)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> Result<Tensor> {
        let tensor = SimpleBackend::get_unchecked(&self.inner, name, dtype, dev)?;
        self.tick();
        Ok(tensor)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        SimpleBackend::contains_tensor(&self.inner, name)
    }
}

/// A `VarBuilder` over memory-mapped safetensors files (the weights are not copied until a
/// tensor is placed on `device`).
pub fn var_builder<'a>(
    files: &[PathBuf],
    num_tensors: usize,
    dtype: DType,
    device: &Device,
    progress: Progress<'a>,
) -> Result<VarBuilder<'a>> {
    // SAFETY: the files are memory-mapped read-only; the package loader has already validated
    // their headers, and packages are replaced by atomic directory swaps, never edited in place.
    let inner = unsafe { MmapedSafetensors::multi(files)? };
    let backend = CountingBackend {
        inner,
        num_loaded: AtomicUsize::new(0),
        num_total: num_tensors,
        progress,
    };
    Ok(VarBuilder::from_backend(Box::new(backend), dtype, device.clone()))
}
