//! The engine handle: how the rest of Hearth talks to one loaded model.
//!
//! [`Engine::start`] validates a package's weights, places them on a device and spawns the engine
//! thread ([`crate::generation::worker`]), which owns the model, the KV cache and the scheduler. Callers submit
//! requests with [`Engine::submit`] and read events from the returned [`GenerationStream`];
//! dropping the stream cancels the request and frees its KV memory at the next step.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;

use candle_core::{DType, Device};
use hearth_package::{ChatTemplate, Package};
use hearth_protocol::tools::ToolFormat;
use hearth_protocol::{
    Conversation, GenerationEvent, OutputConstraint, SamplingParams, ValidSampling, ValidationError,
};
use tokenizers::Tokenizer;
use tokio::sync::mpsc;

use crate::error::{EngineError, SubmitError};
use crate::generation::adapters::AdapterRegistry;
use crate::generation::constraint::{GrammarCompiler, TokenConstraint};
use crate::generation::kv_cache::{KvCache, KvCacheConfig};
use crate::generation::memory::KvCacheSize;
use crate::generation::metrics::{EngineMetrics, MetricsSnapshot};
use crate::generation::phases::Phases;
use crate::generation::scheduler::SchedulerConfig;
use crate::generation::shared::{EngineStats, Shared};
use crate::generation::worker::{Command, Submission, Worker, WorkerParts};
use crate::kernels::linear::Quantization;
use crate::loading::weights::{gguf_location, GgufWeights, WeightSource, ROPE_FACTOR_TENSORS};
use crate::loading::{var_builder, Progress};
use crate::models::llama::{self, Llama, LlamaConfig};

/// How an engine runs; the defaults suit a CPU.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub scheduler: SchedulerConfig,
    /// Tokens per KV-cache block.
    pub block_size: usize,
    /// Memory given to the KV cache; it decides how many tokens of conversations stay cached
    /// and how many sequences fit at once. By default a share of the memory free after load.
    pub kv_cache: KvCacheSize,
    /// Weight and activation precision (f32 on the CPU unless configured).
    pub dtype: DType,
    /// Reuse the KV of earlier prompts' full blocks (a conversation's history, a shared system
    /// prompt) instead of computing it again.
    pub prefix_caching: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            scheduler: SchedulerConfig::default(),
            block_size: 16,
            kv_cache: KvCacheSize::default(),
            dtype: DType::F32,
            prefix_caching: true,
        }
    }
}

/// What the engine knows about a model's chat: its tool calls and its reasoning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChatTraits {
    pub format: ToolFormat,
    pub template_renders_tools: bool,
    /// The model reasons between `<think>` markers before it answers.
    pub thinks: bool,
    /// The token id of the format's call marker, when the tokenizer has it as one token
    /// (Mistral's `[TOOL_CALLS]`), for the grammars that hold calls to their schemas.
    pub call_marker_token: Option<u32>,
}

/// What the engine tells about its model.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub name: String,
    pub architecture: String,
    pub context_length: usize,
    pub vocab_size: usize,
    pub device: String,
}

/// Input to generate from.
#[derive(Debug, Clone)]
pub enum Prompt {
    /// Raw text, tokenized with the package's special-token rules (BOS where the model wants it).
    Text(String),
    /// Text already formatted by a chat template: its special tokens are in the text itself.
    Templated(String),
    /// Token ids, used as they are.
    Tokens(Vec<u32>),
}

#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub prompt: Prompt,
    /// Checked once, before it gets here (`SamplingParams::validated`).
    pub sampling: ValidSampling,
    /// A grammar the output must match (structured outputs), enforced token by token.
    pub constraint: Option<OutputConstraint>,
    /// The LoRA adapter to run with, by name (`None`: the base model).
    pub adapter: Option<String>,
}

/// Runs `work` with `engine` on tokio's blocking pool: CPU-bound preparation of a request
/// (chat template, tokenizer) that async callers must not run on their own thread.
pub async fn run_blocking<T: Send + 'static>(
    engine: Engine,
    work: impl FnOnce(&Engine) -> T + Send + 'static,
) -> Result<T, SubmitError> {
    // The caller's span goes with the work: a request submitted there is traced as its child.
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(|| work(&engine)))
        .await
        .map_err(|e| SubmitError::Internal(e.to_string()))
}

/// The events of one request. Dropping it cancels the request.
pub struct GenerationStream {
    pub prompt_tokens: usize,
    events: mpsc::UnboundedReceiver<GenerationEvent>,
}

impl GenerationStream {
    /// The next event; `None` only after the terminal event has been read.
    pub async fn recv(&mut self) -> Option<GenerationEvent> {
        self.events.recv().await
    }
}

/// A cheap, cloneable handle to one loaded model.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<EngineInner>,
}

struct EngineInner {
    info: ModelInfo,
    tokenizer: Arc<Tokenizer>,
    /// Compiles requests' grammars; why not, for a tokenizer llguidance cannot read. Built on
    /// the first structured request, so a model that never gets one never pays for it.
    grammars: OnceLock<Result<GrammarCompiler, String>>,
    eos_token_ids: Vec<u32>,
    chat_template: Option<ChatTemplate>,
    tool_parser: Option<ToolFormat>,
    add_bos: bool,
    bos_token_id: Option<u32>,
    max_waiting: usize,
    kv_capacity_tokens: usize,
    submissions: mpsc::Sender<Command>,
    shared: Arc<Shared>,
    worker: Mutex<Option<JoinHandle<()>>>,
    adapters: AdapterRegistry,
}

impl Engine {
    /// Validates the package's weights against the model's expected tensors, loads them onto
    /// `device` and starts the engine thread. `progress(done, total)` reports tensors loaded.
    pub fn start(
        package: &Package,
        config: EngineConfig,
        device: &Device,
        progress: Progress<'_>,
    ) -> Result<Engine, EngineError> {
        let load_err =
            |message: String| EngineError::Load { package: package.name.clone(), message };
        config.scheduler.validate().map_err(|e| load_err(format!("engine settings: {e}")))?;
        if config.block_size == 0 {
            return Err(load_err("engine settings: `block_size` must be at least 1".into()));
        }
        let model_cfg = LlamaConfig::from_value(&package.model.raw)
            .map_err(|e| load_err(format!("config.json: {e}")))?;
        let model = load_llama(package, &model_cfg, &config, device, progress)?;
        let adapters = AdapterRegistry::for_package(package, &model_cfg, model.dtype(), device)
            .map_err(load_err)?;

        let kv_cfg = kv_cache_config(&model_cfg, &config, device, &package.name);
        let kv = KvCache::new(&kv_cfg, device)
            .map_err(|e| load_err(format!("allocating KV cache: {e}")))?;
        let shared = Arc::new(Shared {
            stats: Mutex::new(EngineStats {
                kv_blocks_total: kv_cfg.num_blocks,
                block_size: kv_cfg.block_size,
                ..Default::default()
            }),
            num_queued: AtomicUsize::new(0),
            shutting_down: AtomicBool::new(false),
            metrics: EngineMetrics::default(),
        });
        let tokenizer = Arc::new(package.tokenizer.clone());
        let (submissions, inbox) = mpsc::channel(config.scheduler.max_waiting.max(1));
        let worker = Worker::new(WorkerParts {
            model,
            kv,
            scheduler: config.scheduler.clone(),
            num_blocks: kv_cfg.num_blocks,
            block_size: kv_cfg.block_size,
            prefix_caching: config.prefix_caching,
            tokenizer: tokenizer.clone(),
            eos_token_ids: package.special_tokens.eos_token_ids.clone(),
            device: device.clone(),
            shared: shared.clone(),
        });
        let handle = std::thread::Builder::new()
            .name(format!("engine-{}", package.name))
            .spawn(move || worker.run(inbox))
            .map_err(|e| load_err(format!("spawning engine thread: {e}")))?;

        Ok(Engine {
            inner: Arc::new(EngineInner {
                info: ModelInfo {
                    name: package.name.clone(),
                    architecture: package.model.architecture.clone(),
                    context_length: package.context_length(),
                    vocab_size: model_cfg.vocab_size,
                    device: format!("{device:?}"),
                },
                tokenizer,
                grammars: OnceLock::new(),
                eos_token_ids: package.special_tokens.eos_token_ids.clone(),
                chat_template: package.chat_template.clone(),
                tool_parser: package.settings.tool_parser,
                add_bos: package.special_tokens.add_bos_token,
                bos_token_id: package.special_tokens.bos_token_id,
                max_waiting: config.scheduler.max_waiting,
                kv_capacity_tokens: kv_cfg.num_blocks * kv_cfg.block_size,
                submissions,
                shared,
                worker: Mutex::new(Some(handle)),
                adapters,
            }),
        })
    }

    /// The LoRA adapters this model serves (see [`AdapterRegistry`] and the adapter methods
    /// in `generation/adapters.rs`).
    pub(crate) fn adapters(&self) -> &AdapterRegistry {
        &self.inner.adapters
    }

    pub fn info(&self) -> &ModelInfo {
        &self.inner.info
    }

    pub fn stats(&self) -> EngineStats {
        self.inner.shared.stats.lock().map(|s| *s).unwrap_or_default()
    }

    /// Request latencies and outcomes since the engine started (see [`crate::generation::metrics`]).
    pub fn metrics(&self) -> MetricsSnapshot {
        self.inner.shared.metrics.snapshot()
    }

    /// Whether requests may carry an output grammar (structured outputs): false only for a
    /// tokenizer llguidance cannot read, whose requests are better served by another route.
    pub fn can_constrain(&self) -> bool {
        self.grammars().is_ok()
    }

    pub fn has_chat_template(&self) -> bool {
        self.inner.chat_template.is_some()
    }

    /// Formats a conversation with the package's chat template, ending with the assistant's turn.
    pub fn render_chat(&self, conversation: &Conversation) -> Result<String, EngineError> {
        let template = self.inner.chat_template.as_ref().ok_or(EngineError::NoChatTemplate)?;
        template.render(conversation, true).map_err(|e| EngineError::Template(e.to_string()))
    }

    /// What the chat template tells of the model: how it writes tool calls (`hearth.yaml`'s
    /// `tool_parser`, else the template's markers), whether the template prints tool
    /// declarations itself, and whether the model thinks before answering.
    pub fn chat_traits(&self) -> ChatTraits {
        let template = self.inner.chat_template.as_ref();
        let format = self
            .inner
            .tool_parser
            .or(template.map(|t| t.tool_format()))
            .unwrap_or(ToolFormat::Hermes);
        ChatTraits {
            format,
            template_renders_tools: template.is_some_and(|t| t.renders_tools()),
            thinks: template.is_some_and(|t| t.thinks()),
            call_marker_token: format
                .special_marker()
                .and_then(|marker| self.inner.tokenizer.token_to_id(marker)),
        }
    }

    /// Tokenizes `prompt` the way [`Engine::submit`] would.
    pub fn tokenize(&self, prompt: &Prompt) -> Result<Vec<u32>, SubmitError> {
        let (text, add_special) = match prompt {
            Prompt::Tokens(ids) => return Ok(ids.clone()),
            Prompt::Text(text) => (text, true),
            Prompt::Templated(text) => (text, false),
        };
        let encoding = self
            .inner
            .tokenizer
            .encode(text.as_str(), add_special)
            .map_err(|e| SubmitError::Tokenize(e.to_string()))?;
        let mut ids = encoding.get_ids().to_vec();
        // Tokenizers whose post-processor does not add BOS still expect it when the package's
        // tokenizer_config says `add_bos_token`; templated text carries its own.
        if add_special && self.inner.add_bos {
            if let Some(bos) = self.inner.bos_token_id {
                if ids.first() != Some(&bos) {
                    ids.insert(0, bos);
                }
            }
        }
        Ok(ids)
    }

    /// Queues a request. The stream's first events arrive after the engine's next step.
    pub fn submit(&self, request: GenerateRequest) -> Result<GenerationStream, SubmitError> {
        let inner = &self.inner;
        // Latencies count from here: tokenizing is part of the caller's wait.
        let submitted_at = std::time::Instant::now();
        if inner.shared.shutting_down.load(Ordering::Acquire) {
            return Err(SubmitError::ShuttingDown);
        }
        let prompt_ids = self.tokenize(&request.prompt)?;
        let mut sampling = request.sampling.into_inner();
        self.check_fits(&prompt_ids, &mut sampling)?;
        let constraint = request.constraint.as_ref().map(|c| self.compile(c)).transpose()?;
        let adapter = match &request.adapter {
            Some(name) => {
                Some(inner.adapters.get(name).map_err(|e| SubmitError::Adapter(e.to_string()))?)
            }
            None => None,
        };

        let num_waiting = inner.shared.num_queued.fetch_add(1, Ordering::AcqRel);
        if num_waiting >= inner.max_waiting {
            inner.shared.num_queued.fetch_sub(1, Ordering::AcqRel);
            return Err(SubmitError::Overloaded { num_waiting });
        }
        let (events_tx, events) = mpsc::unbounded_channel();
        let prompt_tokens = prompt_ids.len();
        let submission = Submission {
            prompt_ids,
            sampling,
            constraint,
            adapter,
            events: events_tx,
            submitted_at,
            phases: Phases::start(prompt_tokens),
        };
        if let Err(err) = inner.submissions.try_send(Command::Submit(Box::new(submission))) {
            inner.shared.num_queued.fetch_sub(1, Ordering::AcqRel);
            return Err(match err {
                mpsc::error::TrySendError::Full(_) => SubmitError::Overloaded { num_waiting },
                mpsc::error::TrySendError::Closed(_) => SubmitError::ShuttingDown,
            });
        }
        Ok(GenerationStream { prompt_tokens, events })
    }

    fn grammars(&self) -> &Result<GrammarCompiler, String> {
        let inner = &self.inner;
        inner.grammars.get_or_init(|| {
            let compiler =
                GrammarCompiler::new(&inner.tokenizer, &inner.eos_token_ids, inner.info.vocab_size);
            if let Err(why) = &compiler {
                tracing::warn!(model = %inner.info.name, %why, "structured outputs are unavailable for this tokenizer");
            }
            compiler
        })
    }

    /// A matcher for `constraint`, or why its grammar is refused.
    fn compile(&self, constraint: &OutputConstraint) -> Result<TokenConstraint, SubmitError> {
        let compiler = self.grammars().as_ref().map_err(|why| {
            SubmitError::Grammar(format!("this model's tokenizer cannot be constrained: {why}"))
        })?;
        compiler.compile(constraint).map_err(SubmitError::Grammar)
    }

    /// Refuses prompts that cannot fit, and caps `max_tokens` at what the context has left (the
    /// request then ends with `length`, as llama.cpp and Cog models do). A request must fit the
    /// KV cache alone: that is what lets preemption always make progress.
    fn check_fits(
        &self,
        prompt_ids: &[u32],
        sampling: &mut SamplingParams,
    ) -> Result<(), SubmitError> {
        let info = &self.inner.info;
        if prompt_ids.is_empty() {
            return Err(SubmitError::EmptyPrompt);
        }
        if let Some(&token) = prompt_ids.iter().find(|&&t| t as usize >= info.vocab_size) {
            return Err(SubmitError::BadToken { token, vocab_size: info.vocab_size });
        }
        // One rule on every surface: asking for more tokens than the context holds is an error
        // (as Cog's schema maximum and vLLM say); asking for more than the context has left
        // after this prompt ends the request at the context's end, with `length`.
        if sampling.max_tokens > info.context_length {
            return Err(SubmitError::Invalid(ValidationError::new(
                "max_tokens",
                format!(
                    "is {}, more than this model's context length ({})",
                    sampling.max_tokens, info.context_length
                ),
            )));
        }
        if prompt_ids.len() >= info.context_length {
            return Err(SubmitError::PromptTooLong {
                prompt_tokens: prompt_ids.len(),
                context_length: info.context_length,
            });
        }
        sampling.max_tokens = sampling.max_tokens.min(info.context_length - prompt_ids.len());
        let needed_tokens = prompt_ids.len() + sampling.max_tokens;
        if needed_tokens > self.inner.kv_capacity_tokens {
            return Err(SubmitError::TooLarge {
                needed_tokens,
                capacity_tokens: self.inner.kv_capacity_tokens,
            });
        }
        Ok(())
    }

    /// Stops taking requests, lets the worker finish what it has, and waits for it. In-flight
    /// requests whose callers have gone are cancelled as usual.
    pub fn shutdown(&self) {
        self.inner.shared.shutting_down.store(true, Ordering::Release);
        // A full inbox means the worker is busy and will see the flag after its next step.
        let _ = self.inner.submissions.try_send(Command::Wake);
        let handle = self.inner.worker.lock().ok().and_then(|mut w| w.take());
        if let Some(handle) = handle {
            if handle.join().is_err() {
                tracing::error!(model = %self.inner.info.name, "engine thread panicked during shutdown");
            }
        }
    }
}

/// The model over the package's weights: safetensors (quantized on load when hearth.yaml
/// `quantize` asks) or GGUF (kept as quantized as it is stored).
fn load_llama(
    package: &Package,
    model_cfg: &LlamaConfig,
    config: &EngineConfig,
    device: &Device,
    progress: Progress<'_>,
) -> Result<Llama, EngineError> {
    let load_err = |message: String| EngineError::Load { package: package.name.clone(), message };
    let expected = llama::expected_tensors(model_cfg);
    let source = if let Some(gguf) = package.weights.gguf() {
        let family = model_cfg.family().map_err(|e| load_err(e.to_string()))?;
        let experts = model_cfg.moe().ok().flatten().map_or(0, |moe| moe.num_experts);
        let layout = GgufLayout { tied: model_cfg.tie_word_embeddings(), family, experts };
        check_gguf_tensors(gguf, &expected, layout)?;
        if let Some(q) = package.settings.quantize {
            tracing::warn!(
                quantize = q.as_str(),
                "hearth.yaml `quantize` ignored: GGUF weights are stored quantized"
            );
        }
        let weights = GgufWeights::open(&gguf.path, model_cfg, config.dtype, device)
            .map_err(|e| load_err(format!("loading GGUF weights: {e}")))?;
        WeightSource::gguf(weights)
    } else {
        package.weights.check(&expected)?;
        let num_tensors = package.weights.names().count();
        let vb = var_builder(package.weights.files(), num_tensors, config.dtype, device, progress)
            .map_err(|e| load_err(format!("loading weights: {e}")))?;
        let quantize = package.settings.quantize.and_then(|q| {
            use candle_core::quantized::GgmlDType as G;
            use hearth_package::Quantize as Q;
            Quantization::new(match q {
                Q::Q8_0 => G::Q8_0,
                Q::Q4_0 => G::Q4_0,
                Q::Q4_1 => G::Q4_1,
                Q::Q5_0 => G::Q5_0,
                Q::Q5_1 => G::Q5_1,
                Q::Q2K => G::Q2K,
                Q::Q3K => G::Q3K,
                Q::Q4K => G::Q4K,
                Q::Q5K => G::Q5K,
                Q::Q6K => G::Q6K,
            })
        });
        WeightSource::var_builder(vb, quantize)
    };
    let model =
        Llama::load(model_cfg, source).map_err(|e| load_err(format!("building model: {e}")))?;
    if let Some(gguf) = package.weights.gguf() {
        progress(gguf.tensors.len(), gguf.tensors.len());
    }
    Ok(model)
}

/// A GGUF must hold the model's tensors under llama.cpp's names with the expected shapes; a
/// tied model may omit `output.weight`, and RoPE factors may come beside them
/// ([`ROPE_FACTOR_TENSORS`]).
/// What decides a model's GGUF tensor table besides its tensors' names.
struct GgufLayout {
    tied: bool,
    family: llama::Family,
    /// Experts per sparse layer (0 for a dense model): llama.cpp stacks them in one tensor.
    experts: usize,
}

fn check_gguf_tensors(
    gguf: &hearth_package::GgufFile,
    expected: &[(String, Vec<usize>)],
    layout: GgufLayout,
) -> Result<(), EngineError> {
    use hearth_package::{PackageError, TensorProblem};
    let GgufLayout { tied, family, experts } = layout;
    let mut problems = Vec::new();
    let mut wanted = std::collections::BTreeSet::new();
    for (hf, shape) in expected {
        let Some((name, expert)) = gguf_location(hf, family) else { continue };
        if wanted.contains(&name) {
            continue; // another expert of the same stacked tensor, already checked
        }
        let shape = match expert {
            Some(_) => [&[experts][..], shape].concat(),
            None => shape.clone(),
        };
        // A one-row weight may be stored as a vector (Qwen2-MoE's shared-expert gate).
        let vector = |actual: &[usize]| shape.len() == 2 && shape[0] == 1 && actual == [shape[1]];
        match gguf.tensors.get(&name) {
            None if tied && name == "output.weight" => {}
            None => problems.push(TensorProblem::Missing { name: name.clone() }),
            Some(t) if t.shape != shape && !vector(&t.shape) => {
                problems.push(TensorProblem::Shape {
                    name: name.clone(),
                    actual: t.shape.clone(),
                    expected: shape,
                })
            }
            Some(_) => {}
        }
        wanted.insert(name);
    }
    if tied {
        wanted.insert("output.weight".to_string());
    }
    for name in gguf.tensors.keys() {
        if !wanted.contains(name) && !ROPE_FACTOR_TENSORS.contains(&name.as_str()) {
            problems.push(TensorProblem::Unexpected { name: name.clone() });
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(PackageError::TensorMismatch { problems }.into())
    }
}

/// The cache's blocks: as many as the configured memory holds, never more than every admitted
/// sequence could use at full context. Logged, since it decides what stays cached.
fn kv_cache_config(
    model: &LlamaConfig,
    config: &EngineConfig,
    device: &Device,
    name: &str,
) -> KvCacheConfig {
    let mut kv = KvCacheConfig {
        num_blocks: 0,
        block_size: config.block_size,
        num_layers: model.num_hidden_layers,
        num_kv_heads: model.num_key_value_heads(),
        head_dim: model.head_dim(),
        dtype: config.dtype,
    };
    let max_useful =
        config.scheduler.max_num_seqs * model.max_position_embeddings.div_ceil(kv.block_size);
    let (bytes, sized_by) = config.kv_cache.resolve(device);
    let per_block = KvCache::bytes_per_block(&kv);
    kv.num_blocks = (bytes / per_block).clamp(1, max_useful.max(1));
    tracing::info!(
        model = name,
        sized_by,
        kv_cache_mb = (kv.num_blocks * per_block) >> 20,
        tokens = kv.num_blocks * kv.block_size,
        bytes_per_token = per_block / kv.block_size,
        capped_at_full_context = kv.num_blocks == max_useful,
        "KV cache"
    );
    kv
}
