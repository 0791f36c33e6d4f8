//! The embedder: one loaded encoder model that turns texts (or token ids) into vectors.
//!
//! [`Embedder::start`] validates an embedding package's weights, places them on a device and
//! spawns the embedder thread, which owns the model. Callers submit whole requests (one or many
//! inputs) with [`Embedder::submit`]; tokenizing and checking happen in the caller, so a bad
//! input is refused before it queues. The thread batches dynamically: every request that arrived
//! while it was busy is run in the next round, its inputs sorted by length and cut into
//! right-padded batches bounded in padded tokens, so short inputs do not pay for long ones. The
//! attention mask keeps padding out of every token's attention and out of pooling, so a vector
//! does not depend on what else was in its batch. Pooling and normalisation follow the package's
//! sentence-transformers configuration.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

use candle_core::{DType, Device, IndexOp, Result as CandleResult, Tensor, D};
use hearth_package::{EmbeddingConfig, Package, PoolingMode};
use tokenizers::Tokenizer;
use tokio::sync::oneshot;

use crate::error::{EmbedError, EngineError};
use crate::loading::{var_builder, Progress};
use crate::models::bert::{self, Bert, BertConfig};

/// How an embedder runs; the defaults suit a CPU.
#[derive(Debug, Clone)]
pub struct EmbedderConfig {
    /// Padded tokens (batch size × longest input) in one forward pass.
    pub max_batch_tokens: usize,
    /// Inputs in one forward pass.
    pub max_batch_size: usize,
    /// Requests waiting for the embedder thread before new ones are refused as overloaded.
    pub max_waiting: usize,
    /// Inputs in one request.
    pub max_inputs: usize,
    /// Weight and activation precision.
    pub dtype: DType,
}

impl Default for EmbedderConfig {
    fn default() -> Self {
        Self {
            max_batch_tokens: 16_384,
            max_batch_size: 256,
            max_waiting: 256,
            max_inputs: 2048,
            dtype: DType::F32,
        }
    }
}

/// One thing to embed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EmbedInput {
    /// Text, tokenized with the package's tokenizer, special tokens (`[CLS]`, `[SEP]`) added.
    Text(String),
    /// Token ids used as they are: include the model's special tokens yourself.
    Tokens(Vec<u32>),
}

/// What the embedder tells about its model.
#[derive(Debug, Clone)]
pub struct EmbedderInfo {
    pub name: String,
    pub architecture: String,
    /// Length of every vector.
    pub dimension: usize,
    /// Longest input in tokens, special tokens included.
    pub max_input_tokens: usize,
    pub vocab_size: usize,
    pub pooling: Vec<PoolingMode>,
    pub normalize: bool,
    pub device: String,
}

/// A finished request: one vector per input, in input order.
#[derive(Debug, Clone)]
pub struct Embeddings {
    pub vectors: Vec<Vec<f32>>,
    /// Tokens over all inputs, special tokens included.
    pub prompt_tokens: usize,
}

/// One submitted request.
struct Job {
    inputs: Vec<Vec<u32>>,
    reply: oneshot::Sender<Result<Vec<Vec<f32>>, String>>,
}

enum Command {
    Embed(Job),
    Stop,
}

/// A request in flight. Dropping it abandons the answer (the work may still run).
pub struct EmbedTicket {
    pub prompt_tokens: usize,
    reply: oneshot::Receiver<Result<Vec<Vec<f32>>, String>>,
}

impl EmbedTicket {
    pub async fn wait(self) -> Result<Embeddings, EmbedError> {
        let prompt_tokens = self.prompt_tokens;
        finish(self.reply.await, prompt_tokens)
    }

    /// Blocks the calling thread; never call it from inside an async runtime.
    pub fn wait_blocking(self) -> Result<Embeddings, EmbedError> {
        let prompt_tokens = self.prompt_tokens;
        finish(self.reply.blocking_recv(), prompt_tokens)
    }
}

fn finish(
    answer: std::result::Result<Result<Vec<Vec<f32>>, String>, oneshot::error::RecvError>,
    prompt_tokens: usize,
) -> Result<Embeddings, EmbedError> {
    match answer {
        Ok(Ok(vectors)) => Ok(Embeddings { vectors, prompt_tokens }),
        Ok(Err(message)) => Err(EmbedError::Failed(message)),
        Err(_) => Err(EmbedError::ShuttingDown),
    }
}

/// A cheap, cloneable handle to one loaded embedding model.
#[derive(Clone)]
pub struct Embedder {
    inner: Arc<Inner>,
}

struct Inner {
    info: EmbedderInfo,
    tokenizer: Tokenizer,
    lowercase: bool,
    max_waiting: usize,
    max_inputs: usize,
    commands: mpsc::Sender<Command>,
    num_waiting: Arc<AtomicUsize>,
    shutting_down: AtomicBool,
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl Embedder {
    /// Validates the package's weights against the encoder's expected tensors, loads them onto
    /// `device` and starts the embedder thread. `progress(done, total)` reports tensors loaded.
    pub fn start(
        package: &Package,
        config: EmbedderConfig,
        device: &Device,
        progress: Progress<'_>,
    ) -> Result<Embedder, EngineError> {
        let load_err =
            |message: String| EngineError::Load { package: package.name.clone(), message };
        let Some(embedding) = package.embedding.clone() else {
            return Err(load_err(format!(
                "architecture `{}` is not an embedding model",
                package.model.architecture
            )));
        };
        if config.max_batch_tokens == 0 || config.max_batch_size == 0 || config.max_inputs == 0 {
            return Err(load_err(
                "embedder settings: batch and input limits must be at least 1".into(),
            ));
        }
        let model_cfg = BertConfig::from_value(&package.model.raw)
            .map_err(|e| load_err(format!("config.json: {e}")))?;
        if let Some(dim) =
            embedding.word_embedding_dimension.filter(|d| *d != model_cfg.hidden_size)
        {
            return Err(load_err(format!(
                "the pooling config is for {dim}-dimensional token states, but config.json's \
                 hidden_size is {}",
                model_cfg.hidden_size
            )));
        }
        let prefix = bert::weight_prefix(package.weights.names());
        let expected = bert::expected_tensors(&model_cfg, prefix);
        let unused = bert::unused_tensor_prefixes(prefix);
        let unused: Vec<&str> = unused.iter().map(String::as_str).collect();
        package.weights.check_allowing(&expected, &unused)?;
        let vb =
            var_builder(package.weights.files(), expected.len(), config.dtype, device, progress)
                .map_err(|e| load_err(format!("loading weights: {e}")))?;
        let vb = match prefix.strip_suffix('.') {
            Some(p) if !p.is_empty() => vb.pp(p),
            _ => vb,
        };
        let model =
            Bert::new(&model_cfg, vb).map_err(|e| load_err(format!("building model: {e}")))?;

        let max_input_tokens = embedding.max_seq_length.min(model_cfg.max_position_embeddings);
        let info = EmbedderInfo {
            name: package.name.clone(),
            architecture: package.model.architecture.clone(),
            dimension: embedding.dimension(model_cfg.hidden_size),
            max_input_tokens,
            vocab_size: model_cfg.vocab_size,
            pooling: embedding.pooling.clone(),
            normalize: embedding.normalize,
            device: format!("{device:?}"),
        };
        let tokenizer = plain_tokenizer(&package.tokenizer)
            .map_err(|e| load_err(format!("tokenizer.json: {e}")))?;
        let num_waiting = Arc::new(AtomicUsize::new(0));
        let (commands, inbox) = mpsc::channel();
        let worker = Worker {
            model,
            embedding,
            device: device.clone(),
            dtype: config.dtype,
            pad_id: model_cfg.pad_token_id(),
            max_batch_tokens: config.max_batch_tokens,
            max_batch_size: config.max_batch_size,
            num_waiting: num_waiting.clone(),
        };
        let handle = std::thread::Builder::new()
            .name(format!("embedder-{}", package.name))
            .spawn(move || worker.run(inbox))
            .map_err(|e| load_err(format!("spawning embedder thread: {e}")))?;
        Ok(Embedder {
            inner: Arc::new(Inner {
                info,
                tokenizer,
                lowercase: package.embedding.as_ref().is_some_and(|e| e.lowercase),
                max_waiting: config.max_waiting,
                max_inputs: config.max_inputs,
                commands,
                num_waiting,
                shutting_down: AtomicBool::new(false),
                worker: Mutex::new(Some(handle)),
            }),
        })
    }

    pub fn info(&self) -> &EmbedderInfo {
        &self.inner.info
    }

    /// Requests accepted and not yet answered.
    pub fn num_waiting(&self) -> usize {
        self.inner.num_waiting.load(Ordering::Acquire)
    }

    /// The token ids `input` is embedded from.
    pub fn tokenize(&self, input: &EmbedInput) -> Result<Vec<u32>, String> {
        match input {
            EmbedInput::Tokens(ids) => Ok(ids.clone()),
            EmbedInput::Text(text) => {
                let lowered;
                let text = if self.inner.lowercase {
                    lowered = text.to_lowercase();
                    lowered.as_str()
                } else {
                    text.as_str()
                };
                let encoding =
                    self.inner.tokenizer.encode(text, true).map_err(|e| e.to_string())?;
                Ok(encoding.get_ids().to_vec())
            }
        }
    }

    /// Checks and tokenizes every input, then queues the request.
    /// [`Embedder::submit`] for async callers: tokenizing runs on a blocking thread (long
    /// inputs take the tokenizer a while, which must not stall an async worker).
    pub async fn submit_async(&self, inputs: Vec<EmbedInput>) -> Result<EmbedTicket, EmbedError> {
        let embedder = self.clone();
        tokio::task::spawn_blocking(move || embedder.submit(&inputs))
            .await
            .map_err(|e| EmbedError::Failed(e.to_string()))?
    }

    pub fn submit(&self, inputs: &[EmbedInput]) -> Result<EmbedTicket, EmbedError> {
        let inner = &self.inner;
        if inner.shutting_down.load(Ordering::Acquire) {
            return Err(EmbedError::ShuttingDown);
        }
        if inputs.is_empty() {
            return Err(EmbedError::NoInputs);
        }
        if inputs.len() > inner.max_inputs {
            return Err(EmbedError::TooManyInputs { count: inputs.len(), max: inner.max_inputs });
        }
        let mut ids = Vec::with_capacity(inputs.len());
        for (index, input) in inputs.iter().enumerate() {
            if matches!(input, EmbedInput::Text(t) if t.is_empty())
                || matches!(input, EmbedInput::Tokens(t) if t.is_empty())
            {
                return Err(EmbedError::EmptyInput { index });
            }
            let tokens =
                self.tokenize(input).map_err(|message| EmbedError::Tokenize { index, message })?;
            self.check(index, &tokens)?;
            ids.push(tokens);
        }
        let prompt_tokens = ids.iter().map(Vec::len).sum();

        let num_waiting = inner.num_waiting.fetch_add(1, Ordering::AcqRel);
        if num_waiting >= inner.max_waiting {
            inner.num_waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(EmbedError::Overloaded { num_waiting });
        }
        let (reply, answer) = oneshot::channel();
        if inner.commands.send(Command::Embed(Job { inputs: ids, reply })).is_err() {
            inner.num_waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(EmbedError::ShuttingDown);
        }
        Ok(EmbedTicket { prompt_tokens, reply: answer })
    }

    /// Submits and waits.
    pub async fn embed(&self, inputs: &[EmbedInput]) -> Result<Embeddings, EmbedError> {
        self.submit(inputs)?.wait().await
    }

    /// Submits and blocks the calling thread until the answer comes.
    pub fn embed_blocking(&self, inputs: &[EmbedInput]) -> Result<Embeddings, EmbedError> {
        self.submit(inputs)?.wait_blocking()
    }

    fn check(&self, index: usize, tokens: &[u32]) -> Result<(), EmbedError> {
        let info = &self.inner.info;
        if tokens.is_empty() {
            return Err(EmbedError::EmptyInput { index });
        }
        if tokens.len() > info.max_input_tokens {
            return Err(EmbedError::TooLong {
                index,
                tokens: tokens.len(),
                max_tokens: info.max_input_tokens,
            });
        }
        if let Some(&token) = tokens.iter().find(|&&t| t as usize >= info.vocab_size) {
            return Err(EmbedError::BadToken { index, token, vocab_size: info.vocab_size });
        }
        Ok(())
    }

    /// Stops taking requests, lets the thread answer what it has, and waits for it.
    pub fn shutdown(&self) {
        self.inner.shutting_down.store(true, Ordering::Release);
        let _ = self.inner.commands.send(Command::Stop);
        let handle = self.inner.worker.lock().ok().and_then(|mut w| w.take());
        if let Some(handle) = handle {
            if handle.join().is_err() {
                tracing::error!(model = %self.inner.info.name, "embedder thread panicked during shutdown");
            }
        }
    }
}

/// The package's tokenizer without the padding and truncation its tokenizer.json may declare:
/// sentence-transformers overrides both (its `max_seq_length` rules), and the embedder pads
/// batches itself.
fn plain_tokenizer(tokenizer: &Tokenizer) -> std::result::Result<Tokenizer, String> {
    let mut tokenizer = tokenizer.clone();
    tokenizer.with_padding(None);
    tokenizer.with_truncation(None).map_err(|e| e.to_string())?;
    Ok(tokenizer)
}

/// The embedder thread's state.
struct Worker {
    model: Bert,
    embedding: EmbeddingConfig,
    device: Device,
    dtype: DType,
    pad_id: u32,
    max_batch_tokens: usize,
    max_batch_size: usize,
    num_waiting: Arc<AtomicUsize>,
}

impl Worker {
    fn run(self, inbox: mpsc::Receiver<Command>) {
        let mut stopping = false;
        while !stopping {
            // Wait for one request, then take every other one already waiting: they all run in
            // this round.
            let mut jobs = match inbox.recv() {
                Ok(Command::Embed(job)) => vec![job],
                Ok(Command::Stop) | Err(_) => break,
            };
            while let Ok(command) = inbox.try_recv() {
                match command {
                    Command::Embed(job) => jobs.push(job),
                    Command::Stop => stopping = true,
                }
            }
            self.round(jobs);
        }
        // Answer whatever was queued behind the stop.
        let rest: Vec<Job> = inbox
            .try_iter()
            .filter_map(|c| match c {
                Command::Embed(job) => Some(job),
                Command::Stop => None,
            })
            .collect();
        if !rest.is_empty() {
            self.round(rest);
        }
    }

    /// Runs every input of `jobs` and answers each job.
    fn round(&self, jobs: Vec<Job>) {
        let count = jobs.len();
        let inputs: Vec<&[u32]> =
            jobs.iter().flat_map(|job| job.inputs.iter().map(Vec::as_slice)).collect();
        let result = catch_unwind(AssertUnwindSafe(|| self.embed_all(&inputs)))
            .unwrap_or_else(|panic| Err(candle_core::Error::msg(panic_message(&panic))));
        self.num_waiting.fetch_sub(count, Ordering::AcqRel);
        match result {
            Ok(vectors) => {
                let mut vectors = vectors.into_iter();
                for job in jobs {
                    let mine: Vec<Vec<f32>> = vectors.by_ref().take(job.inputs.len()).collect();
                    let _ = job.reply.send(Ok(mine));
                }
            }
            Err(err) => {
                tracing::error!(error = %err, requests = count, "embedding round failed");
                for job in jobs {
                    let _ = job.reply.send(Err(err.to_string()));
                }
            }
        }
    }

    /// Embeds `inputs`, sorted by length into batches of at most `max_batch_tokens` padded
    /// tokens, and returns the vectors in input order.
    fn embed_all(&self, inputs: &[&[u32]]) -> CandleResult<Vec<Vec<f32>>> {
        let mut order: Vec<usize> = (0..inputs.len()).collect();
        order.sort_by_key(|&i| inputs[i].len());
        let mut out: Vec<Vec<f32>> = vec![Vec::new(); inputs.len()];
        let mut start = 0;
        while start < order.len() {
            // Sorted ascending, so the batch's last input is its longest.
            let mut end = start + 1;
            while end < order.len()
                && end - start < self.max_batch_size
                && (end - start + 1) * inputs[order[end]].len() <= self.max_batch_tokens
            {
                end += 1;
            }
            let batch: Vec<&[u32]> = order[start..end].iter().map(|&i| inputs[i]).collect();
            for (&i, vector) in order[start..end].iter().zip(self.embed_batch(&batch)?) {
                out[i] = vector;
            }
            start = end;
        }
        Ok(out)
    }

    /// One forward pass over a right-padded batch, then pooling and normalisation.
    fn embed_batch(&self, batch: &[&[u32]]) -> CandleResult<Vec<Vec<f32>>> {
        let b = batch.len();
        let l = batch.iter().map(|s| s.len()).max().unwrap_or(0);
        let mut ids = vec![self.pad_id; b * l];
        let mut mask = vec![0f32; b * l];
        for (row, seq) in batch.iter().enumerate() {
            ids[row * l..row * l + seq.len()].copy_from_slice(seq);
            mask[row * l..row * l + seq.len()].fill(1.0);
        }
        let ids = Tensor::from_vec(ids, (b, l), &self.device)?;
        let mask = Tensor::from_vec(mask, (b, l), &self.device)?.to_dtype(self.dtype)?;
        let hidden = self.model.forward(&ids, &mask)?;
        let lengths: Vec<usize> = batch.iter().map(|s| s.len()).collect();
        let mut pooled = pool(&hidden, &mask, &lengths, &self.embedding.pooling)?;
        if self.embedding.normalize {
            pooled = l2_normalize(&pooled)?;
        }
        pooled.to_dtype(DType::F32)?.to_vec2::<f32>()
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    let detail = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic");
    format!("the embedder panicked: {detail}")
}

/// Pools `hidden` (`[b, l, h]`) over each row's first `lengths[row]` positions, as
/// sentence-transformers' `Pooling` module does, concatenating `modes` in order: `[b, h * modes]`.
/// Sums run in f32.
fn pool(
    hidden: &Tensor,
    mask: &Tensor,
    lengths: &[usize],
    modes: &[PoolingMode],
) -> CandleResult<Tensor> {
    let out_dtype = hidden.dtype();
    let hidden = hidden.to_dtype(DType::F32)?;
    let (b, l, _h) = hidden.dims3()?;
    let mask = mask.to_dtype(DType::F32)?.reshape((b, l, 1))?;
    let masked_sum = || hidden.broadcast_mul(&mask)?.sum(1);
    let counts = || mask.sum(1)?.clamp(1e-9, f64::MAX);
    let mut parts = Vec::with_capacity(modes.len());
    for mode in modes {
        let part = match mode {
            PoolingMode::Cls => hidden.i((.., 0, ..))?,
            PoolingMode::Mean => masked_sum()?.broadcast_div(&counts()?)?,
            PoolingMode::MeanSqrtLen => masked_sum()?.broadcast_div(&counts()?.sqrt()?)?,
            PoolingMode::Max => {
                let keep = mask.broadcast_as(hidden.shape())?.to_dtype(DType::U8)?;
                let floor = Tensor::full(f32::NEG_INFINITY, hidden.shape(), hidden.device())?;
                keep.where_cond(&hidden, &floor)?.max(1)?
            }
            PoolingMode::WeightedMean => {
                let positions = Tensor::arange(1u32, l as u32 + 1, hidden.device())?
                    .to_dtype(DType::F32)?
                    .reshape((1, l, 1))?;
                let weights = mask.broadcast_mul(&positions)?;
                let total = weights.sum(1)?.clamp(1e-9, f64::MAX)?;
                hidden.broadcast_mul(&weights)?.sum(1)?.broadcast_div(&total)?
            }
            PoolingMode::LastToken => {
                let rows = lengths
                    .iter()
                    .enumerate()
                    .map(|(row, &len)| hidden.i((row, len.saturating_sub(1)..len.max(1), ..)))
                    .collect::<CandleResult<Vec<_>>>()?;
                Tensor::cat(&rows, 0)?
            }
        };
        parts.push(part);
    }
    Tensor::cat(&parts, D::Minus1)?.to_dtype(out_dtype)
}

/// Scales each row to unit L2 length, as `torch.nn.functional.normalize` (`x / max(‖x‖, 1e-12)`).
fn l2_normalize(xs: &Tensor) -> CandleResult<Tensor> {
    let norm = xs.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
    xs.broadcast_div(&norm)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hidden() -> (Tensor, Tensor) {
        // Two rows: the first has 3 tokens, the second 1 token and 2 padded positions whose
        // values (100) must never show.
        let dev = Device::Cpu;
        let hidden = Tensor::new(
            &[[[1f32, -2.0], [3.0, 4.0], [5.0, 0.0]], [[2.0, 2.0], [100.0, 100.0], [100.0, 100.0]]],
            &dev,
        )
        .unwrap();
        let mask = Tensor::new(&[[1f32, 1.0, 1.0], [1.0, 0.0, 0.0]], &dev).unwrap();
        (hidden, mask)
    }

    fn pooled(mode: PoolingMode) -> Vec<Vec<f32>> {
        let (hidden, mask) = hidden();
        pool(&hidden, &mask, &[3, 1], &[mode]).unwrap().to_vec2().unwrap()
    }

    #[test]
    fn pooling_ignores_padding() {
        assert_eq!(pooled(PoolingMode::Mean), [[3.0, 2.0 / 3.0], [2.0, 2.0]]);
        assert_eq!(pooled(PoolingMode::Max), [[5.0, 4.0], [2.0, 2.0]]);
        assert_eq!(pooled(PoolingMode::Cls), [[1.0, -2.0], [2.0, 2.0]]);
        assert_eq!(pooled(PoolingMode::LastToken), [[5.0, 0.0], [2.0, 2.0]]);
        let sqrt3 = 3f32.sqrt();
        let msl = pooled(PoolingMode::MeanSqrtLen);
        assert!((msl[0][0] - 9.0 / sqrt3).abs() < 1e-5 && msl[1] == [2.0, 2.0], "{msl:?}");
        // weights 1, 2, 3: (1 + 6 + 15) / 6, (-2 + 8 + 0) / 6
        let wm = pooled(PoolingMode::WeightedMean);
        assert!((wm[0][0] - 22.0 / 6.0).abs() < 1e-5 && (wm[0][1] - 1.0).abs() < 1e-5, "{wm:?}");
        assert_eq!(wm[1], [2.0, 2.0]);
    }

    #[test]
    fn pooling_modes_concatenate_in_order() {
        let (hidden, mask) = hidden();
        let out = pool(&hidden, &mask, &[3, 1], &[PoolingMode::Cls, PoolingMode::Max]).unwrap();
        assert_eq!(out.to_vec2::<f32>().unwrap(), [[1.0, -2.0, 5.0, 4.0], [2.0, 2.0, 2.0, 2.0]]);
    }

    #[test]
    fn normalize_gives_unit_vectors() {
        let xs = Tensor::new(&[[3f32, 4.0], [0.0, 0.0]], &Device::Cpu).unwrap();
        assert_eq!(l2_normalize(&xs).unwrap().to_vec2::<f32>().unwrap(), [[0.6, 0.8], [0.0, 0.0]]);
    }
}
