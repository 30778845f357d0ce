"""Hugging Face transformers worker of `cascade-xla bench --suite compare`: greedy `generate` and
assisted generation (`assistant_model`) on the same GGUF, dequantised to float32 by transformers,
torch CPU with `torch.set_num_threads(2)`. Run with the oracle venv's python
(`node scripts/oracle-env.mjs --with-torch`); a separate process, so its peak RSS is its own.

The assistant (draft) is the first `draft_layers` decoder layers of a deep copy of the target
(`model.model.layers` truncated, `config.num_hidden_layers` set to match) sharing the same
embedding, final norm and tied head: the same "first N layers" draft as cascade-xla's
self-speculative mode; with `"int8": true` the copy's Linear layers (and so the head) are
quantised to int8 by torch's dynamic quantisation (per-channel int8 weights, like cascade-xla's
INT8 draft). It proposes a constant `num_assistant_tokens` (= k1) tokens per round
with the confidence threshold off, like cascade-xla's fixed k1.

Protocol (JSON lines):
  argv[1]: {"gguf": "/path/model.gguf", "draft_layers": 4, "int8": false, "k1": 4, "threads": 2}
  out: {"ready": true, "load_s", "loader", "torch", "transformers", "threads"}
  in:  {"variant": "greedy" | "assisted", "tokens": [prompt ids], "maxTokens": 64}
  out: {"tokens", "ttftMs", "decodeMs", "firstChunk", "targetCalls", "draftCalls"}
  in:  {"cmd": "exit"}  ->  out: {"maxRssBytes"}
Time to first token is from the generate call to the streamer's first new token; decode time from
there to the end. Runs offline.
"""

import copy
import json
import os
import resource
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers.generation.streamers import BaseStreamer  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hf_gguf_model import load  # noqa: E402


def send(obj) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


class TimingStreamer(BaseStreamer):
    """Records when new tokens arrive (the first put() is the prompt)."""

    def __init__(self) -> None:
        self.seen_prompt = False
        self.first = None
        self.first_chunk = 0

    def put(self, value) -> None:
        if not self.seen_prompt:
            self.seen_prompt = True
            return
        if self.first is None:
            self.first = time.perf_counter()
            self.first_chunk = int(value.numel())

    def end(self) -> None:
        pass


class CallCounter:
    def __init__(self, module) -> None:
        self.calls = 0
        module.register_forward_pre_hook(self.hook)

    def hook(self, *_args) -> None:
        self.calls += 1


def main() -> None:
    cfg = json.loads(sys.argv[1])
    threads = int(cfg.get("threads", 2))
    torch.set_num_threads(threads)
    t0 = time.time()
    model, loader = load(cfg["gguf"])
    n = int(cfg.get("draft_layers", 4))
    draft = copy.deepcopy(model)
    draft.model.layers = draft.model.layers[:n]
    draft.config.num_hidden_layers = n
    if getattr(draft.config, "layer_types", None) is not None:
        draft.config.layer_types = draft.config.layer_types[:n]
    draft.eval()
    if cfg.get("int8"):
        # Dynamic quantisation swaps every nn.Linear (the tied head too, as its own int8 copy).
        draft = torch.ao.quantization.quantize_dynamic(draft, {torch.nn.Linear}, dtype=torch.qint8)
    for m in (model, draft):
        m.generation_config.eos_token_id = None
        m.generation_config.pad_token_id = 0
    draft.generation_config.num_assistant_tokens = int(cfg.get("k1", 4))
    draft.generation_config.num_assistant_tokens_schedule = "constant"
    draft.generation_config.assistant_confidence_threshold = 0.0
    target_calls, draft_calls = CallCounter(model), CallCounter(draft)
    send({"ready": True, "load_s": time.time() - t0, "loader": loader, "torch": torch.__version__,
          "transformers": transformers.__version__, "threads": torch.get_num_threads(), "draft_layers": n, "int8": bool(cfg.get("int8")),
          "k1": draft.generation_config.num_assistant_tokens})
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        if req.get("cmd") == "exit":
            break
        ids = torch.tensor([req["tokens"]])
        new = int(req["maxTokens"])
        extra = {"assistant_model": draft} if req["variant"] == "assisted" else {}
        streamer = TimingStreamer()
        target_calls.calls = draft_calls.calls = 0
        with torch.no_grad():
            t = time.perf_counter()
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=new,
                                 min_new_tokens=new, streamer=streamer, **extra)
            t_end = time.perf_counter()
        first = streamer.first if streamer.first is not None else t_end
        send({"tokens": out[0, ids.shape[1]:].tolist(), "ttftMs": (first - t) * 1e3, "decodeMs": (t_end - first) * 1e3,
              "firstChunk": streamer.first_chunk, "targetCalls": target_calls.calls, "draftCalls": draft_calls.calls})
    send({"maxRssBytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024})


if __name__ == "__main__":
    try:
        main()
    except Exception as error:  # reported as a blocked row, not a crash of the suite
        import traceback

        send({"ready": False, "error": traceback.format_exc(limit=3) + str(error)})
