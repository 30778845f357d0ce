"""Reference outputs of a GGUF model (the default SmolLM2-135M-Instruct Q4_1) from Hugging Face
transformers, which dequantises it to float32 (`from_pretrained(dir, gguf_file=name)`), for
test/oracle.test.ts. The token ids come from the caller (cascade-xla's tokenizer), so the
comparison checks the model, not the tokenizer.

Reads one JSON request on stdin, prints one JSON answer on stdout:
  request: {"gguf": "/path/model.gguf", "prompts": [[ids], ...], "new_tokens": 32,
            "logits_prompt": [ids], "logits_out": "/path/logits.f32"}
  answer:  {"greedy": [[new_tokens ids] per prompt], "margins": [smallest top1 - top2 logit gap
            per prompt], "min_margin_at": [[step, top1, top2] per prompt], "vocab": V,
            "logits_shape": [T, V], "load_s": seconds to load the model, "loader": how it was loaded}
  The logits of "logits_prompt" (all positions, float32 little-endian, [T, V]) go to "logits_out".
Runs offline.
"""

import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402


def load(path: str):
    """from_pretrained(dir, gguf_file=name), or, where `accelerate` is missing (from_pretrained
    insists on it for GGUF files, the oracle venv does not have it), the same steps by hand:
    transformers' GGUF config, then its GGUF reader (dequantisation, Q/K un-permutation, names)."""
    d, name = os.path.dirname(path), os.path.basename(path)
    try:
        import accelerate  # noqa: F401

        return AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32).eval(), "from_pretrained"
    except ImportError:
        pass
    from transformers import AutoConfig
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    config = AutoConfig.from_pretrained(d, gguf_file=name)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    tensors = load_gguf_checkpoint(path, return_tensors=True, model_to_load=model)["tensors"]
    result = model.load_state_dict(tensors, strict=False)
    missing = [k for k in result.missing_keys if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or result.unexpected_keys:
        raise RuntimeError(f"GGUF state dict: missing {missing}, unexpected {result.unexpected_keys}")
    model.tie_weights()
    if config.tie_word_embeddings and model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr():
        raise RuntimeError("the tied head is not tied")
    return model, "load_gguf_checkpoint"


def main() -> None:
    req = json.load(sys.stdin)
    path = req["gguf"]
    t0 = time.time()
    model, loader = load(path)
    load_s = time.time() - t0
    model.generation_config.eos_token_id = None  # nothing stops the greedy runs early
    model.generation_config.pad_token_id = 0
    n = req["new_tokens"]
    greedy, margins, where = [], [], []
    with torch.no_grad():
        for prompt in req["prompts"]:
            ids = torch.tensor([prompt])
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n,
                                 min_new_tokens=n)
            gen = out[0, len(prompt):].tolist()
            if len(gen) != n:
                raise RuntimeError(f"generate gave {len(gen)} tokens, expected {n}")
            logits = model(out[:, :-1]).logits[0, len(prompt) - 1:]
            top = torch.topk(logits, 2, dim=-1)
            gap = top.values[:, 0] - top.values[:, 1]
            step = int(gap.argmin())
            greedy.append(gen)
            margins.append(float(gap[step]))
            where.append([step, int(top.indices[step, 0]), int(top.indices[step, 1])])
        logits = model(torch.tensor([req["logits_prompt"]])).logits[0].float().contiguous()
    with open(req["logits_out"], "wb") as f:
        f.write(logits.numpy().astype("<f4").tobytes())
    json.dump({"greedy": greedy, "margins": margins, "min_margin_at": where, "vocab": logits.shape[1],
               "logits_shape": list(logits.shape), "load_s": load_s, "loader": loader}, sys.stdout)


if __name__ == "__main__":
    main()
