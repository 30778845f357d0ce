"""Reference tokenization by Hugging Face transformers, for test/tokenizer.test.ts.

Reads one JSON request on stdin, prints one JSON answer on stdout:
  request: {"gguf": "/path/model.gguf"} or {"tokenizer_dir": "/dir/with/tokenizer.json"},
           "texts": [...], "decode": [[ids], ...], "chats": [{"messages": [...], "add_generation_prompt": bool}]
  answer:  {"encode": [[ids] per text, no special tokens added], "encode_special": [[ids] with the
           tokenizer's own special-token handling], "decode": [text per id list],
           "chats": [rendered string], "bos_token_id", "eos_token_id", "vocab_size",
           "spm_encode": [[ids]] (when the request names an "spm_model")}
  "save_to": a folder where the tokenizer is saved (tokenizer.json, tokenizer_config.json).
Runs offline: local files only (HF_HUB_OFFLINE=1).
"""

import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from transformers import AutoTokenizer  # noqa: E402


def main() -> None:
    req = json.load(sys.stdin)
    if "gguf" in req:
        path = req["gguf"]
        tok = AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
    else:
        tok = AutoTokenizer.from_pretrained(req["tokenizer_dir"])
    out = {
        "encode": [tok.encode(t, add_special_tokens=False) for t in req.get("texts", [])],
        "encode_special": [tok.encode(t) for t in req.get("texts", [])],
        "decode": [tok.decode(ids) for ids in req.get("decode", [])],
        "chats": [
            tok.apply_chat_template(c["messages"], tokenize=False, add_generation_prompt=c.get("add_generation_prompt", False))
            for c in req.get("chats", [])
        ],
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "vocab_size": len(tok),
    }
    if "spm_model" in req:  # the sentencepiece library itself, an independent second reference
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=req["spm_model"])
        out["spm_encode"] = [sp.encode(t) for t in req.get("texts", [])]
    if "save_to" in req:  # tokenizer.json + tokenizer_config.json, for the fromTokenizerJson tests
        tok.save_pretrained(req["save_to"])
    json.dump(out, sys.stdout, ensure_ascii=True)


if __name__ == "__main__":
    main()
