//! LoRA updates of a step's rows on the CPU, in place: for each row under an adapter,
//! `y += Bᵀ·(A·x)` with the adapter's own small matrices, every row and adapter in one op.
//!
//! Done with candle ops, each adapter's rows cost an index_select, two products, a cast and an
//! index_add per projection: at 8 streams under 8 adapters that is thousands of tiny ops a step,
//! and decode ran at a fifth of the base model's speed. The work itself is small (`r · (in +
//! out)` multiply-adds a row, against the base product's `in · out`), so here it is done
//! directly: a row's `r` dot products with `A`, then `r` scaled additions of `Bᵀ`'s rows, the
//! rows spread over candle's barrier pool. Written here because candle has no gathered
//! (per-row weight) product, which is what Punica's BGMV kernel is on a GPU.

use std::sync::Mutex;

use candle_core::utils::barrier_pool;
use candle_core::{CpuStorage, InplaceOp2, Layout, Result};

use super::decode_attention::{axpy, dot};
use super::split_matmul::contiguous_f32;

/// One adapter's matrices for one projection, on the host: `a` is `A` (`[r, in]`, row-major)
/// and `bt` is `scale · Bᵀ` (`[r, out]`).
pub struct HostLora {
    pub a: Vec<f32>,
    pub bt: Vec<f32>,
    pub rank: usize,
}

/// The rows of `y` (`[T, out]`) to update from `x` (`[T, in]`), each with its adapter.
pub struct LoraDelta<'a> {
    pub rows: Vec<(usize, &'a HostLora)>,
}

impl InplaceOp2 for LoraDelta<'_> {
    fn name(&self) -> &'static str {
        "lora-delta"
    }

    fn cpu_fwd(
        &self,
        y: &mut CpuStorage,
        y_layout: &Layout,
        x: &CpuStorage,
        x_layout: &Layout,
    ) -> Result<()> {
        let (CpuStorage::F32(y), Some((start, end))) = (y, y_layout.contiguous_offsets()) else {
            candle_core::bail!("lora-delta updates a contiguous f32 tensor");
        };
        let Some(x) = contiguous_f32(x, x_layout) else {
            candle_core::bail!("lora-delta reads a contiguous f32 tensor");
        };
        let (rows, out) = y_layout.shape().dims2()?;
        let (x_rows, inp) = x_layout.shape().dims2()?;
        if rows != x_rows {
            candle_core::bail!("lora-delta: {rows} output rows for {x_rows} input rows");
        }
        let y = &mut y[start..end];
        for (row, lora) in &self.rows {
            let fits = lora.a.len() == lora.rank * inp && lora.bt.len() == lora.rank * out;
            if *row >= rows || !fits {
                candle_core::bail!(
                    "lora-delta: row {row} or its adapter does not fit [{rows}, {inp}] → {out}"
                );
            }
        }
        let outputs: Vec<Mutex<&mut [f32]>> = y.chunks_mut(out).map(Mutex::new).collect();
        let threads = barrier_pool().n_workers() + 1;
        barrier_pool().execute(|tid| {
            for (row, lora) in self.rows.iter().skip(tid).step_by(threads) {
                let x = &x[row * inp..(row + 1) * inp];
                let mut y = outputs[*row].lock().unwrap_or_else(|e| e.into_inner());
                pulp::Arch::new().dispatch(Update { x, lora, y: &mut y });
            }
        });
        Ok(())
    }
}

struct Update<'a> {
    x: &'a [f32],
    lora: &'a HostLora,
    y: &'a mut [f32],
}

impl pulp::WithSimd for Update<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, simd: S) {
        let Update { x, lora, y } = self;
        let (inp, out) = (x.len(), y.len());
        for k in 0..lora.rank {
            let h = dot(simd, &lora.a[k * inp..(k + 1) * inp], x);
            axpy(simd, h, &lora.bt[k * out..(k + 1) * out], y);
        }
    }
}
