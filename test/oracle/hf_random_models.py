"""Random-weight Llama / Gemma checkpoints and their reference outputs from Hugging Face
transformers (torch, CPU, float32), for test/oracle.test.ts.

Reads one JSON request on stdin, prints one JSON answer on stdout:
  request: {"out_dir": "/tmp/x", "seq_len": 32, "prompt_len": 8, "new_tokens": 16, "min_margin": 0.1}
  answer:  {"torch": version, "transformers": version, "models": [{
              "name", "dir" (config.json + model.safetensors + tokenizer.json), "config": {...},
              "vocab", "seq": [ids], "logits": [seq_len * vocab floats, f32 values],
              "logits_bf16w": the same with every weight matrix rounded to bf16 (f32 compute),
              "logits_absmax", "logits_std",
              "prompt": [ids], "prompt_text": "t5 t17 ...", "greedy": [new_tokens ids],
              "greedy_margin": smallest top1 - top2 logit gap over the greedy steps,
              "prompt_seed": the seed that gave that prompt}]}

Every model is built with a fixed torch.manual_seed, then all its weights are redrawn at scales
that give O(1) activations and logits with a spread of a few units (transformers' default init,
std 0.02 and zero/one norms, makes every logit ~0 and every step a near-tie, and would leave the
norm weights untested). Gemma's norms are stored as w with the model using (1 + w).

The greedy prompt is the first of a deterministic list of seeds whose greedy continuation has a
top-1/top-2 margin >= min_margin at every step, so an f32 rounding difference cannot flip a token.

Each checkpoint gets a word-level tokenizer.json (tokens "t0".."t{V-1}", whitespace split, no
special tokens and no BOS), so the prompt text "t5 t17 t3" is exactly the ids [5, 17, 3].
Runs offline.
"""

import copy
import json
import math
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
import transformers  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402
from transformers import GemmaConfig, GemmaForCausalLM, LlamaConfig, LlamaForCausalLM  # noqa: E402

COMMON = dict(hidden_size=64, num_hidden_layers=2, max_position_embeddings=128)

VARIANTS = [
    {
        # GQA (2 query heads per KV head), tied head, Llama defaults otherwise.
        "name": "llama-gqa-tied",
        "cls": LlamaForCausalLM,
        "config": LlamaConfig(vocab_size=300, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                              tie_word_embeddings=True, rms_norm_eps=1e-6, **COMMON),
        "seed": 1234,
    },
    {
        # GQA, separate lm_head, another epsilon and a wider MLP.
        "name": "llama-gqa-untied",
        "cls": LlamaForCausalLM,
        "config": LlamaConfig(vocab_size=300, intermediate_size=160, num_attention_heads=4, num_key_value_heads=2,
                              tie_word_embeddings=False, rms_norm_eps=1e-5, **COMMON),
        "seed": 5678,
    },
    {
        # A non-default RoPE base. transformers 5 writes it as config.json "rope_parameters":
        # {"rope_theta": ..., "rope_type": "default"} (older versions: top-level "rope_theta").
        "name": "llama-rope-theta",
        "cls": LlamaForCausalLM,
        "config": LlamaConfig(vocab_size=300, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                              tie_word_embeddings=True, rms_norm_eps=1e-6,
                              rope_parameters={"rope_type": "default", "rope_theta": 500000.0}, **COMMON),
        "seed": 2468,
    },
    {
        # MQA (one KV head), head_dim 32 != hidden / heads = 16, GELU-tanh, (1 + w) norms, sqrt(d) embedding scale.
        "name": "gemma-mqa",
        "cls": GemmaForCausalLM,
        "config": GemmaConfig(vocab_size=320, intermediate_size=96, num_attention_heads=4, num_key_value_heads=1,
                              head_dim=32, rms_norm_eps=1e-6, **COMMON),
        "seed": 4321,
    },
]


# Layers that write strongly into the residual stream, small embeddings and a final norm of ~4:
# with transformers-like proportions a tied head mostly sees the input embedding and greedy
# decoding repeats one token forever (a test of nothing). Logits end up with a spread of ~3.
OUT_SCALE = 4.0
EMBED_STD = 0.1
FINAL_NORM = 4.0


def randomize(model: torch.nn.Module, gemma: bool) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                # Llama: w ~ scale + noise; Gemma stores w and uses 1 + w.
                scale = FINAL_NORM if name == "model.norm.weight" else 1.0
                p.copy_(scale * (1.0 + 0.2 * torch.randn_like(p)) - (1.0 if gemma else 0.0))
            elif name.endswith("embed_tokens.weight") or name == "lm_head.weight":
                p.normal_(0.0, EMBED_STD)
            elif name.endswith(("o_proj.weight", "down_proj.weight")):
                p.normal_(0.0, OUT_SCALE / math.sqrt(p.shape[1]))
            elif p.dim() == 2:
                p.normal_(0.0, 1.0 / math.sqrt(p.shape[1]))
            else:
                raise RuntimeError(f"unexpected parameter {name} {tuple(p.shape)}")


def write_tokenizer(path: str, vocab: int) -> None:
    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab)}, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(path)


def greedy(model, prompt: list, new_tokens: int):
    ids = torch.tensor([prompt])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=new_tokens,
                         min_new_tokens=new_tokens)
    gen = out[0, len(prompt):].tolist()
    if len(gen) != new_tokens:
        raise RuntimeError(f"generate gave {len(gen)} tokens, expected {new_tokens}")
    # Margins at each decision, from one full forward pass (also a cross-check of generate).
    with torch.no_grad():
        logits = model(out[:, :-1]).logits[0, len(prompt) - 1:]
    top = torch.topk(logits, 2, dim=-1)
    if top.indices[:, 0].tolist() != gen:
        raise RuntimeError("generate disagrees with the argmax of a full forward pass")
    return gen, float((top.values[:, 0] - top.values[:, 1]).min())


def main() -> None:
    req = json.load(sys.stdin)
    torch.set_num_threads(1)
    seq_len, prompt_len, new_tokens = req["seq_len"], req["prompt_len"], req["new_tokens"]
    min_margin = req.get("min_margin", 0.1)
    min_distinct = req.get("min_distinct", 6)
    answer = {"torch": torch.__version__, "transformers": transformers.__version__, "models": []}
    for v in VARIANTS:
        cfg = v["config"]
        gemma = v["cls"] is GemmaForCausalLM
        torch.manual_seed(v["seed"])
        model = v["cls"](cfg).eval()
        randomize(model, gemma)
        # Nothing stops the greedy runs early.
        model.generation_config.eos_token_id = None
        model.generation_config.pad_token_id = 0
        d = os.path.join(req["out_dir"], v["name"])
        model.save_pretrained(d, safe_serialization=True)
        write_tokenizer(os.path.join(d, "tokenizer.json"), cfg.vocab_size)

        g = torch.Generator().manual_seed(v["seed"] + 1)
        seq = torch.randint(0, cfg.vocab_size, (seq_len,), generator=g).tolist()
        with torch.no_grad():
            logits = model(torch.tensor([seq])).logits[0].float()
            # The same model with every matrix rounded to bf16 (norms stay f32), computed in f32:
            # what a bf16-weight engine would give without any activation rounding.
            rounded = copy.deepcopy(model)
            for p in rounded.parameters():
                if p.dim() == 2:
                    p.copy_(p.to(torch.bfloat16).float())
            logits_bf16w = rounded(torch.tensor([seq])).logits[0].float()

        chosen = None
        for prompt_seed in range(100):
            gp = torch.Generator().manual_seed(10_000 + prompt_seed)
            prompt = torch.randint(0, cfg.vocab_size, (prompt_len,), generator=gp).tolist()
            gen, margin = greedy(model, prompt, new_tokens)
            if margin >= min_margin and len(set(gen)) >= min_distinct:
                chosen = (prompt_seed, prompt, gen, margin)
                break
        if chosen is None:
            raise RuntimeError(f"{v['name']}: no prompt with a greedy margin >= {min_margin} and {min_distinct} distinct tokens")
        prompt_seed, prompt, gen, margin = chosen
        answer["models"].append({
            "name": v["name"],
            "dir": d,
            "config": {k: getattr(cfg, k) for k in ("hidden_size", "num_attention_heads", "num_key_value_heads",
                                                    "head_dim", "tie_word_embeddings", "rms_norm_eps")},
            "vocab": cfg.vocab_size,
            "seq": seq,
            "logits": logits.reshape(-1).tolist(),
            "logits_bf16w": logits_bf16w.reshape(-1).tolist(),
            "logits_absmax": float(logits.abs().max()),
            "logits_std": float(logits.std()),
            "prompt": prompt,
            "prompt_text": " ".join(f"t{i}" for i in prompt),
            "prompt_seed": prompt_seed,
            "greedy": gen,
            "greedy_margin": margin,
        })
    json.dump(answer, sys.stdout)


if __name__ == "__main__":
    main()
