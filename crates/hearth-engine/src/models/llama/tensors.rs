//! The exact tensor names and shapes a Llama-family checkpoint must hold, checked before any
//! weight is read (safetensors headers, GGUF tensor tables).

use super::config::LlamaConfig;
use super::moe;

/// Every tensor of `cfg`'s checkpoint, by Hugging Face name, with its shape.
pub fn expected_tensors(cfg: &LlamaConfig) -> Vec<(String, Vec<usize>)> {
    let (h, hd, inter) = (cfg.hidden_size, cfg.head_dim(), cfg.intermediate_size);
    let (q_out, kv_out) = (cfg.num_attention_heads * hd, cfg.num_key_value_heads() * hd);
    let layout = cfg.layout();
    // A config that failed validation has no experts here; loading reports its error.
    let moe = cfg.moe().ok().flatten();
    let mut out = vec![("model.embed_tokens.weight".to_owned(), vec![cfg.vocab_size, h])];
    for i in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{i}");
        let mut norms = vec!["input_layernorm", "post_attention_layernorm"];
        if layout.sandwich_norms {
            norms.extend(["pre_feedforward_layernorm", "post_feedforward_layernorm"]);
        }
        if layout.qk_norm {
            norms.extend(["self_attn.q_norm", "self_attn.k_norm"]);
        }
        for norm in norms {
            let size = if norm.starts_with("self_attn") { hd } else { h };
            out.push((format!("{p}.{norm}.weight"), vec![size]));
        }
        // (name, rows, columns, bias)
        let mut linears = if layout.fused_projections {
            vec![("self_attn.qkv_proj", q_out + 2 * kv_out, h, layout.qkv_bias)]
        } else {
            vec![
                ("self_attn.q_proj", q_out, h, layout.qkv_bias),
                ("self_attn.k_proj", kv_out, h, layout.qkv_bias),
                ("self_attn.v_proj", kv_out, h, layout.qkv_bias),
            ]
        };
        linears.push(("self_attn.o_proj", h, q_out, layout.o_bias));
        match moe.as_ref().filter(|spec| spec.sparse_layers[i]) {
            Some(spec) => out.extend(moe::expected_tensors(spec, &p, h)),
            None if layout.fused_projections => linears.extend([
                ("mlp.gate_up_proj", 2 * inter, h, layout.mlp_bias),
                ("mlp.down_proj", h, inter, layout.mlp_bias),
            ]),
            None => linears.extend([
                ("mlp.gate_proj", inter, h, layout.mlp_bias),
                ("mlp.up_proj", inter, h, layout.mlp_bias),
                ("mlp.down_proj", h, inter, layout.mlp_bias),
            ]),
        }
        for (name, rows, cols, bias) in linears {
            out.push((format!("{p}.{name}.weight"), vec![rows, cols]));
            if bias {
                out.push((format!("{p}.{name}.bias"), vec![rows]));
            }
        }
    }
    out.push(("model.norm.weight".to_owned(), vec![h]));
    if !cfg.tie_word_embeddings() {
        out.push(("lm_head.weight".to_owned(), vec![cfg.vocab_size, h]));
    }
    out
}
