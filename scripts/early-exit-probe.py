# Would a self-speculative draft (the target's first L layers, then a small trained adapter, the
# final norm and the head) agree with the target often enough to pay? Writes text with the
# target (greedy and T = 0.8, alternating, on 20 chat prompts), then per depth L measures on
# held-out sequences how often the early exit's top token is the target's: read as it is
# (`direct`), through a ridge-fitted linear map to the final normed state (`ridge`), and through a
# linear or a residual 2-layer map trained with Adam on the KL to the target's distribution
# (`linear-KL`, `mlp-KL`; their training-set agreement in brackets). Issue #14; the figures are in
# docs/how-the-cascade-works.md (session 31).
#
# Runs in the oracle's virtual environment (scripts/oracle-env.mjs: torch, transformers, gguf),
# which lacks `accelerate` (transformers needs it to read a GGUF):
#
#   V=~/.cache/cascade-xla/oracle-venv/bin/python
#   $V -m pip install --no-deps --target /tmp/accelerate-lib accelerate
#   PYTHONPATH=/tmp/accelerate-lib $V scripts/early-exit-probe.py \
#     ~/.cache/cascade-xla/models/SmolLM2-135M-Instruct-Q4_1.gguf [depths, default 8,12,15,18,21,24]
#
# ~35 minutes on 2 cores (the 300 Adam steps per adapter over the 49,152-row head dominate).
import os
import sys
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

PROMPTS = [
    "Explain how a refrigerator works.", "Write a short poem about the sea.",
    "What are the benefits of regular exercise?", "Give me three tips for learning a new language.",
    "Describe the water cycle.", "How do I make a cup of tea?",
    "What is the capital of France and what is it known for?", "Write a Python function that reverses a string.",
    "Summarize the plot of Romeo and Juliet.", "Why is the sky blue?", "List five fruits and their colors.",
    "How does a computer store data?", "What should I pack for a beach vacation?",
    "Explain photosynthesis to a child.", "Write a haiku about autumn.",
    "What are the main causes of climate change?", "How do vaccines work?",
    "Tell me a fun fact about octopuses.", "What is machine learning?", "Give me a recipe for pancakes.",
]
HELD_OUT_FROM = 15  # sequences 15.. are the test set


def main():
    gguf = os.path.expanduser(sys.argv[1])
    depths = [int(x) for x in (sys.argv[2] if len(sys.argv) > 2 else "8,12,15,18,21,24").split(",")]
    torch.set_num_threads(os.cpu_count() or 2)
    torch.manual_seed(0)
    folder, name = os.path.dirname(gguf), os.path.basename(gguf)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()

    seqs, t0 = [], time.time()
    for i, p in enumerate(PROMPTS):
        ids = tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)["input_ids"]
        torch.manual_seed(i)
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=200, do_sample=i % 2 == 1, temperature=0.8, top_k=0, top_p=1.0)
        seqs.append((ids.shape[1], out[0].tolist()))
    print(f"text: {sum(len(s) - p for p, s in seqs)} tokens in {time.time() - t0:.0f} s", flush=True)

    hidden = {L: [] for L in depths}
    final, target, logp, is_test = [], [], [], []
    with torch.no_grad():
        for si, (plen, ids) in enumerate(seqs):
            out = model(torch.tensor([ids]), output_hidden_states=True)
            rows = slice(plen - 1, len(ids) - 1)  # the positions whose next token the target wrote
            for L in depths:
                hidden[L].append(out.hidden_states[L][0, rows])
            final.append(out.hidden_states[-1][0, rows])
            logits = out.logits[0, rows]
            target.append(logits.argmax(-1))
            logp.append(torch.log_softmax(logits, -1))
            is_test += [si >= HELD_OUT_FROM] * (len(ids) - plen)
    test = torch.tensor(is_test)
    train = ~test
    final, target, logp = torch.cat(final), torch.cat(target), torch.cat(logp)
    head, norm = model.lm_head.weight, model.model.norm
    d = head.shape[1]
    print(f"positions: train {int(train.sum())}, held out {int(test.sum())}", flush=True)

    def agreement(states, rows):
        return float((states[rows] @ head.T).argmax(-1).eq(target[rows]).float().mean())

    for L in depths:
        x = torch.cat(hidden[L])
        with torch.no_grad():
            direct = agreement(norm(x), test)
            xb = torch.cat([x, torch.ones(len(x), 1)], 1)
            a = torch.linalg.solve(xb[train].T @ xb[train] + 1e-2 * torch.eye(d + 1), xb[train].T @ final[train])
            ridge = agreement(xb @ a, test)
        linear = torch.nn.Linear(d, d)
        torch.nn.init.eye_(linear.weight)
        torch.nn.init.zeros_(linear.bias)
        mlp = torch.nn.Sequential(torch.nn.Linear(d, 1024), torch.nn.SiLU(), torch.nn.Linear(1024, d))
        torch.nn.init.zeros_(mlp[2].weight)
        torch.nn.init.zeros_(mlp[2].bias)
        trained = {}
        for label, f, params in (("linear-KL", linear, linear.parameters()),
                                 ("mlp-KL", lambda v: v + mlp(v), mlp.parameters())):
            opt = torch.optim.Adam(params, lr=1e-3)
            xt, pt = x[train], logp[train]
            for _ in range(300):
                idx = torch.randint(0, len(xt), (256,))
                lp = torch.log_softmax(norm(f(xt[idx])) @ head.T, -1)
                loss = torch.nn.functional.kl_div(lp, pt[idx], log_target=True, reduction="batchmean")
                opt.zero_grad()
                loss.backward()
                opt.step()
            with torch.no_grad():
                trained[label] = (agreement(norm(f(x)), test), agreement(norm(f(x)), train))
        print(f"L={L:2d} direct {direct:.3f} ridge {ridge:.3f} " +
              " ".join(f"{k} {v[0]:.3f} (train {v[1]:.3f})" for k, v in trained.items()), flush=True)


if __name__ == "__main__":
    main()
