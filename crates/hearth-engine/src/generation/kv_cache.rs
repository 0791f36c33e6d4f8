//! Paged KV storage owned by the engine, and the packed batch that addresses it.
//!
//! The cache is one flat pool of token *slots* per layer: block `b` owns slots
//! `b * block_size .. (b + 1) * block_size`, and the token at position `p` of a sequence lives in
//! slot `block_table[p / block_size] * block_size + p % block_size`. Which blocks a sequence owns
//! is decided elsewhere (the block manager); this module only stores tensors and turns block
//! tables into index tensors, once per step, so the layer loop does no host work.

/// Index of one KV-cache block.
pub type BlockId = u32;

/// Content hash of a full block, chained over every block before it (the block manager's
/// prefix cache key).
pub type BlockHash = u64;

use std::sync::Arc;

use candle_core::{bail, DType, Device, Result, Tensor};

use crate::models::llama::lora::LoraAdapter;

/// A copy of `src`'s first `num_slots` slots over `dst`'s, in every layer: how a sequence takes
/// the leading tokens of a block it shares only in part (see the block manager's `partial`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockCopy {
    pub src: BlockId,
    pub dst: BlockId,
    pub num_slots: usize,
}

/// Shape and element type of the cache.
#[derive(Debug, Clone, PartialEq)]
pub struct KvCacheConfig {
    pub num_blocks: usize,
    pub block_size: usize,
    pub num_layers: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub dtype: DType,
}

impl KvCacheConfig {
    fn num_slots(&self) -> usize {
        self.num_blocks * self.block_size
    }
}

/// Per-layer K and V pools, each `[num_blocks * block_size, num_kv_heads, head_dim]`.
pub struct KvCache {
    cfg: KvCacheConfig,
    keys: Vec<Tensor>,
    values: Vec<Tensor>,
}

/// Scatter index that writes a step's packed K/V rows into their slots. It has the shape of the
/// K/V rows (`[T, num_kv_heads, head_dim]`, every element of row `t` holding `t`'s slot) because
/// candle's scatter takes one index per element; it is built once per step and reused by every
/// layer.
pub struct SlotWriteIndex {
    index: Tensor,
}

impl KvCache {
    /// Preallocates the whole pool (zeros) so that serving never allocates cache memory.
    pub fn new(cfg: &KvCacheConfig, device: &Device) -> Result<Self> {
        if cfg.num_blocks == 0 || cfg.block_size == 0 || cfg.num_layers == 0 {
            bail!("KV cache needs at least one block, one slot per block and one layer: {cfg:?}");
        }
        // u32 slot indices must address every slot.
        if u32::try_from(cfg.num_slots()).is_err() {
            bail!("KV cache of {} slots exceeds the u32 slot index range", cfg.num_slots());
        }
        let shape = (cfg.num_slots(), cfg.num_kv_heads, cfg.head_dim);
        let pool = || Tensor::zeros(shape, cfg.dtype, device);
        let keys = (0..cfg.num_layers).map(|_| pool()).collect::<Result<Vec<_>>>()?;
        let values = (0..cfg.num_layers).map(|_| pool()).collect::<Result<Vec<_>>>()?;
        Ok(Self { cfg: cfg.clone(), keys, values })
    }

    /// Device bytes one block takes across all layers, K and V together.
    pub fn bytes_per_block(cfg: &KvCacheConfig) -> usize {
        2 * cfg.num_layers
            * cfg.block_size
            * cfg.num_kv_heads
            * cfg.head_dim
            * cfg.dtype.size_in_bytes()
    }

    pub fn config(&self) -> &KvCacheConfig {
        &self.cfg
    }

    /// Builds the step's write index, checking every slot the batch touches against the pool
    /// size (a GPU scatter would not check bounds itself).
    pub fn write_index(&self, batch: &PackedBatch) -> Result<SlotWriteIndex> {
        if batch.block_size != self.cfg.block_size {
            bail!(
                "batch built for block size {}, cache has {}",
                batch.block_size,
                self.cfg.block_size
            );
        }
        if batch.max_slot >= self.cfg.num_slots() {
            bail!(
                "slot {} out of range: the cache has {} slots",
                batch.max_slot,
                self.cfg.num_slots()
            );
        }
        let shape = (batch.num_tokens(), self.cfg.num_kv_heads, self.cfg.head_dim);
        let index = batch
            .slot_mapping
            .reshape((batch.num_tokens(), 1, 1))?
            .broadcast_as(shape)?
            .contiguous()?;
        Ok(SlotWriteIndex { index })
    }

    /// Stores the step's new keys and values, `[T, num_kv_heads, head_dim]` in packed order, for
    /// `layer`.
    pub fn write(
        &mut self,
        layer: usize,
        k: &Tensor,
        v: &Tensor,
        index: &SlotWriteIndex,
    ) -> Result<()> {
        let (keys, values) = self.layer(layer)?;
        let k = k.to_dtype(self.cfg.dtype)?.contiguous()?;
        let v = v.to_dtype(self.cfg.dtype)?.contiguous()?;
        keys.scatter_set(&index.index, &k, 0)?;
        values.scatter_set(&index.index, &v, 0)
    }

    /// Applies `copies` in order (a later one may read what an earlier one wrote).
    pub fn copy_blocks(&mut self, copies: &[BlockCopy]) -> Result<()> {
        let block_size = self.cfg.block_size;
        for copy in copies {
            let in_range = |block: BlockId| (block as usize) < self.cfg.num_blocks;
            if !in_range(copy.src) || !in_range(copy.dst) || copy.num_slots > block_size {
                bail!(
                    "block copy {copy:?} out of range: {} blocks of {block_size} slots",
                    self.cfg.num_blocks
                );
            }
            if copy.src == copy.dst || copy.num_slots == 0 {
                continue;
            }
            let src = copy.src * block_size as u32;
            let dst = copy.dst as usize * block_size;
            // The rows are gathered into storage of their own: `slice_set` refuses to read the
            // pool it writes, and `copy` of a narrowed view would clone the whole pool.
            let slots = Tensor::arange(src, src + copy.num_slots as u32, self.keys[0].device())?;
            for pool in self.keys.iter().chain(&self.values) {
                pool.slice_set(&pool.index_select(&slots, 0)?, 0, dst)?;
            }
        }
        Ok(())
    }

    /// Reads back the K and V of `slots` (a `[n]` u32 tensor), each `[n, num_kv_heads, head_dim]`.
    pub fn gather(&self, layer: usize, slots: &Tensor) -> Result<(Tensor, Tensor)> {
        let (keys, values) = self.layer(layer)?;
        Ok((keys.index_select(slots, 0)?, values.index_select(slots, 0)?))
    }

    /// One layer's keys and values, `[slots, kv_heads, head_dim]` each.
    pub fn layer(&self, layer: usize) -> Result<(&Tensor, &Tensor)> {
        match (self.keys.get(layer), self.values.get(layer)) {
            (Some(k), Some(v)) => Ok((k, v)),
            _ => bail!("layer {layer} out of range: the cache has {} layers", self.cfg.num_layers),
        }
    }
}

/// Which of a sequence's new tokens need logits this step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WantLogits {
    /// Only the last new token (a decode step, or the final chunk of a prefill).
    Last,
    /// Every new token (scoring, tests).
    All,
    /// None (a prefill chunk that does not reach the end of the prompt).
    None,
}

/// One sequence's share of a step, as the scheduler hands it to the runner.
#[derive(Debug, Clone, Copy)]
pub struct SeqInput<'a> {
    /// Tokens to run this step.
    pub tokens: &'a [u32],
    /// Tokens of this sequence already in the cache (the position of `tokens[0]`).
    pub start_pos: usize,
    /// Physical block ids in order; must cover `start_pos + tokens.len()` tokens.
    pub block_table: &'a [u32],
    pub want_logits: WantLogits,
    /// How long the sequence is known to be: its whole prompt while that is prefilled in chunks,
    /// its tokens so far when decoding. LongRoPE picks its frequencies by it; a value below
    /// `start_pos + tokens.len()` counts as that.
    pub known_len: usize,
}

/// One sequence's part of a packed batch.
#[derive(Debug, Clone)]
pub struct SeqSlice {
    /// First row of this sequence in the packed tokens.
    pub offset: usize,
    /// New tokens this step.
    pub len: usize,
    /// Tokens cached before this step plus `len`.
    pub context_len: usize,
    /// Physical block ids, in order.
    pub block_table: Vec<u32>,
    /// At least `context_len`: see [`SeqInput::known_len`].
    pub known_len: usize,
}

impl SeqSlice {
    /// Position of this step's first token.
    pub fn start_pos(&self) -> usize {
        self.context_len - self.len
    }
}

/// The new tokens of several sequences concatenated into one `[T]` input, with every index
/// tensor the model needs for the step built up front.
pub struct PackedBatch {
    /// `[T]` u32 token ids.
    pub input_ids: Tensor,
    /// `[T]` u32 position of each token within its sequence.
    pub positions: Tensor,
    pub seqs: Vec<SeqSlice>,
    /// Packed rows whose logits are wanted, in output order.
    pub logits_rows: Vec<usize>,
    /// Per sequence, the LoRA adapter it runs with (`None`: the base model).
    pub adapters: Vec<Option<Arc<LoraAdapter>>>,
    block_size: usize,
    /// `[T]` u32 cache slot of each new token.
    slot_mapping: Tensor,
    /// Per sequence, `[context_len]` u32 slots of its whole context, in position order.
    context_slots: Vec<Tensor>,
    /// The same slots on the host, for CPU kernels that read the cache in place.
    context_slot_lists: Vec<Vec<u32>>,
    /// `[logits_rows.len()]` u32, or `None` when no logits are wanted.
    logits_index: Option<Tensor>,
    max_slot: usize,
}

/// Host-side index vectors, gathered in one pass before anything goes to the device.
#[derive(Default)]
struct HostIndices {
    input_ids: Vec<u32>,
    positions: Vec<u32>,
    slot_mapping: Vec<u32>,
    context_slots: Vec<Vec<u32>>,
    logits_rows: Vec<usize>,
    seqs: Vec<SeqSlice>,
    max_slot: usize,
}

impl PackedBatch {
    /// The same batch with sequence `i` running under `adapters[i]`.
    pub fn with_adapters(mut self, adapters: Vec<Option<Arc<LoraAdapter>>>) -> Result<Self> {
        if adapters.len() != self.seqs.len() {
            bail!("{} adapters for {} sequences", adapters.len(), self.seqs.len());
        }
        self.adapters = adapters;
        Ok(self)
    }

    pub fn new(device: &Device, block_size: usize, seqs: &[SeqInput]) -> Result<Self> {
        let host = HostIndices::build(block_size, seqs)?;
        let u32_tensor = |v: Vec<u32>| {
            let n = v.len();
            Tensor::from_vec(v, n, device)
        };
        let logits_index = if host.logits_rows.is_empty() {
            None
        } else {
            Some(u32_tensor(host.logits_rows.iter().map(|&r| r as u32).collect())?)
        };
        let context_slots = host
            .context_slots
            .iter()
            .map(|slots| Tensor::new(slots.as_slice(), device))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            input_ids: u32_tensor(host.input_ids)?,
            positions: u32_tensor(host.positions)?,
            adapters: vec![None; host.seqs.len()],
            seqs: host.seqs,
            logits_rows: host.logits_rows,
            block_size,
            slot_mapping: u32_tensor(host.slot_mapping)?,
            context_slots,
            context_slot_lists: host.context_slots,
            logits_index,
            max_slot: host.max_slot,
        })
    }

    /// Total new tokens in the step (`T`).
    pub fn num_tokens(&self) -> usize {
        self.seqs.last().map_or(0, |s| s.offset + s.len)
    }

    /// `[context_len]` u32 cache slots of sequence `i`'s whole context.
    pub fn context_slots(&self, i: usize) -> Option<&Tensor> {
        self.context_slots.get(i)
    }

    /// Sequence `i`'s context slots on the host (the same as [`Self::context_slots`]).
    pub fn context_slot_list(&self, i: usize) -> Option<&[u32]> {
        self.context_slot_lists.get(i).map(Vec::as_slice)
    }

    /// `[logits_rows.len()]` u32 row index, `None` when the step wants no logits.
    pub fn logits_index(&self) -> Option<&Tensor> {
        self.logits_index.as_ref()
    }
}

impl HostIndices {
    fn build(block_size: usize, seqs: &[SeqInput]) -> Result<Self> {
        if block_size == 0 {
            bail!("block_size must be at least 1");
        }
        if seqs.is_empty() {
            bail!("a packed batch needs at least one sequence");
        }
        let mut host = HostIndices::default();
        for (i, seq) in seqs.iter().enumerate() {
            host.push(i, block_size, seq)?;
        }
        if u32::try_from(host.input_ids.len()).is_err() {
            bail!("a step of {} tokens exceeds the u32 index range", host.input_ids.len());
        }
        Ok(host)
    }

    fn push(&mut self, i: usize, block_size: usize, seq: &SeqInput) -> Result<()> {
        let len = seq.tokens.len();
        let context_len = seq.start_pos + len;
        if len == 0 {
            bail!("sequence {i} has no new tokens");
        }
        if seq.block_table.len() * block_size < context_len {
            bail!(
                "sequence {i}: {} blocks of {block_size} cannot hold {context_len} tokens",
                seq.block_table.len()
            );
        }
        let slots = (0..context_len)
            .map(|p| {
                let slot = seq.block_table[p / block_size] as usize * block_size + p % block_size;
                u32::try_from(slot)
                    .map_err(|_| candle_core::Error::Msg(format!("slot {slot} exceeds u32")))
            })
            .collect::<Result<Vec<u32>>>()?;
        let offset = self.input_ids.len();
        self.max_slot = self.max_slot.max(slots.iter().copied().max().unwrap_or(0) as usize);
        self.input_ids.extend_from_slice(seq.tokens);
        self.positions.extend((seq.start_pos..context_len).map(|p| p as u32));
        self.slot_mapping.extend_from_slice(&slots[seq.start_pos..]);
        self.logits_rows.extend(match seq.want_logits {
            WantLogits::All => offset..offset + len,
            WantLogits::Last => offset + len - 1..offset + len,
            WantLogits::None => offset..offset,
        });
        self.context_slots.push(slots);
        let block_table = seq.block_table.to_vec();
        let known_len = seq.known_len.max(context_len);
        self.seqs.push(SeqSlice { offset, len, context_len, block_table, known_len });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache_cfg() -> KvCacheConfig {
        KvCacheConfig {
            num_blocks: 6,
            block_size: 4,
            num_layers: 2,
            num_kv_heads: 2,
            head_dim: 3,
            dtype: DType::F32,
        }
    }

    #[test]
    fn packs_slots_positions_and_logit_rows() {
        let (a, b) = ([1, 2, 3], [4, 5, 6, 7, 8, 9]);
        let seqs = [
            SeqInput {
                tokens: &a,
                start_pos: 5,
                block_table: &[4, 1],
                want_logits: WantLogits::Last,
                known_len: 0,
            },
            SeqInput {
                tokens: &b,
                start_pos: 0,
                block_table: &[3, 0],
                want_logits: WantLogits::All,
                known_len: 0,
            },
        ];
        let batch = PackedBatch::new(&Device::Cpu, 4, &seqs).unwrap();
        assert_eq!(batch.num_tokens(), 9);
        assert_eq!(batch.positions.to_vec1::<u32>().unwrap(), [5, 6, 7, 0, 1, 2, 3, 4, 5]);
        assert_eq!(batch.slot_mapping.to_vec1::<u32>().unwrap(), [5, 6, 7, 12, 13, 14, 15, 0, 1]);
        let ctx0 = batch.context_slots(0).unwrap().to_vec1::<u32>().unwrap();
        assert_eq!(ctx0, [16, 17, 18, 19, 4, 5, 6, 7]);
        assert_eq!(batch.logits_rows, [2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(batch.seqs[1].start_pos(), 0);
        assert_eq!(batch.max_slot, 19);
    }

    #[test]
    fn rejects_short_block_tables_and_empty_sequences() {
        let t = [1, 2, 3, 4, 5];
        let short = SeqInput {
            tokens: &t,
            start_pos: 0,
            block_table: &[0],
            want_logits: WantLogits::None,
            known_len: 0,
        };
        assert!(PackedBatch::new(&Device::Cpu, 4, &[short]).is_err());
        let empty = SeqInput {
            tokens: &[],
            start_pos: 0,
            block_table: &[0],
            want_logits: WantLogits::None,
            known_len: 0,
        };
        assert!(PackedBatch::new(&Device::Cpu, 4, &[empty]).is_err());
        assert!(PackedBatch::new(&Device::Cpu, 4, &[]).is_err());
    }

    #[test]
    fn writes_land_in_their_slots_and_read_back() {
        let cfg = cache_cfg();
        let mut cache = KvCache::new(&cfg, &Device::Cpu).unwrap();
        let tokens = [0u32; 5];
        let seq = SeqInput {
            tokens: &tokens,
            start_pos: 2,
            block_table: &[5, 2],
            want_logits: WantLogits::None,
            known_len: 0,
        };
        let batch = PackedBatch::new(&Device::Cpu, 4, &[seq]).unwrap();
        let k = Tensor::arange(0f32, 30.0, &Device::Cpu).unwrap().reshape((5, 2, 3)).unwrap();
        let v = (&k + 100.0).unwrap();
        let index = cache.write_index(&batch).unwrap();
        cache.write(1, &k, &v, &index).unwrap();
        let (k_ctx, v_ctx) = cache.gather(1, batch.context_slots(0).unwrap()).unwrap();
        // Positions 0 and 1 were never written; 2.. hold the new rows in order.
        let k_new = k_ctx.narrow(0, 2, 5).unwrap();
        assert_eq!(
            k_new.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            k.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
        let v_head =
            v_ctx.narrow(0, 2, 1).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(v_head, [100.0, 101.0, 102.0, 103.0, 104.0, 105.0]);
        let untouched = cache.gather(0, batch.context_slots(0).unwrap()).unwrap().0;
        assert_eq!(untouched.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
    }

    /// Every slot of the pool, layer by layer, K then V, as one vector per pool.
    fn pools(cache: &KvCache) -> Vec<Vec<f32>> {
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        cache.keys.iter().chain(&cache.values).map(flat).collect()
    }

    #[test]
    fn block_copies_move_leading_slots_in_every_layer_in_order() {
        let cfg = cache_cfg();
        let mut cache = KvCache::new(&cfg, &Device::Cpu).unwrap();
        let slot_len = cfg.num_kv_heads * cfg.head_dim;
        let pool_len = cfg.num_blocks * cfg.block_size * slot_len;
        for (i, pool) in cache.keys.iter().chain(&cache.values).enumerate() {
            let values = Tensor::arange(0f32, pool_len as f32, &Device::Cpu).unwrap();
            let values = (values + (1000 * i) as f64).unwrap().reshape(pool.shape()).unwrap();
            pool.slice_set(&values, 0, 0).unwrap();
        }
        let before = pools(&cache);
        // Block 1's first 3 slots to block 4, then block 4's first 2 to block 0 (reading what
        // the first copy wrote), and a no-op copy of a block onto itself.
        let copies = [
            BlockCopy { src: 1, dst: 4, num_slots: 3 },
            BlockCopy { src: 4, dst: 0, num_slots: 2 },
            BlockCopy { src: 2, dst: 2, num_slots: 4 },
        ];
        cache.copy_blocks(&copies).unwrap();
        let slot = |block: usize, offset: usize| (block * cfg.block_size + offset) * slot_len;
        for (pool, old) in pools(&cache).iter().zip(&before) {
            let mut expected = old.clone();
            expected.copy_within(slot(1, 0)..slot(1, 3), slot(4, 0));
            expected.copy_within(slot(1, 0)..slot(1, 2), slot(0, 0));
            assert_eq!(pool, &expected);
        }

        let out_of_range = [BlockCopy { src: 6, dst: 0, num_slots: 1 }];
        assert!(cache.copy_blocks(&out_of_range).is_err());
        let too_long = [BlockCopy { src: 1, dst: 0, num_slots: 5 }];
        assert!(cache.copy_blocks(&too_long).is_err());
    }

    #[test]
    fn rejects_slots_beyond_the_pool() {
        let cache = KvCache::new(&cache_cfg(), &Device::Cpu).unwrap();
        let seq = SeqInput {
            tokens: &[1],
            start_pos: 0,
            block_table: &[6],
            want_logits: WantLogits::Last,
            known_len: 0,
        };
        let batch = PackedBatch::new(&Device::Cpu, 4, &[seq]).unwrap();
        assert!(cache.write_index(&batch).is_err());
        assert_eq!(KvCache::bytes_per_block(&cache_cfg()), 2 * 2 * 4 * 2 * 3 * 4);
    }
}
