//! The model runner: turns one step's scheduled sequences into a packed batch, runs the model and
//! hands back the logits rows to sample from. It never sees a queue; the scheduler never sees a
//! tensor.

use std::sync::Arc;

use candle_core::{Device, Result};

use crate::generation::kv_cache::{KvCache, PackedBatch, SeqInput, WantLogits};
use crate::generation::scheduler::{ScheduledSeq, Scheduler};
use crate::models::llama::lora::LoraAdapter;
use crate::models::llama::Llama;

/// Runs one forward pass over `scheduled`, each with its LoRA adapter from `adapters` (same
/// order), and returns one logits row per sequence whose `samples` flag is set, in the order
/// they appear in `scheduled`.
pub fn run_step(
    model: &Llama,
    kv: &mut KvCache,
    scheduler: &Scheduler,
    scheduled: &[ScheduledSeq],
    adapters: &[Option<Arc<LoraAdapter>>],
    device: &Device,
    block_size: usize,
) -> Result<Vec<Vec<f32>>> {
    let mut inputs = Vec::with_capacity(scheduled.len());
    for s in scheduled {
        let seq = scheduler.get(s.seq_id).ok_or_else(|| {
            candle_core::Error::Msg(format!("scheduled sequence {} is unknown", s.seq_id))
        })?;
        inputs.push(SeqInput {
            tokens: &seq.token_ids[s.start..s.start + s.num_tokens],
            start_pos: s.start,
            block_table: &seq.block_table,
            want_logits: if s.samples { WantLogits::Last } else { WantLogits::None },
            known_len: seq.token_ids.len(),
        });
    }
    let batch = PackedBatch::new(device, block_size, &inputs)?.with_adapters(adapters.to_vec())?;
    if batch.logits_rows.is_empty() {
        model.forward(&batch, kv)?;
        return Ok(Vec::new());
    }
    model.forward(&batch, kv)?.to_vec2::<f32>()
}
