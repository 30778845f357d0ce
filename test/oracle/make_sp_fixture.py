"""Builds a small SentencePiece tokenizer, offline, for the SentencePiece tests of test/tokenizer.test.ts.

usage: python make_sp_fixture.py OUT_DIR

1. trains a BPE SentencePiece model (byte fallback, 700 pieces) on English text found on this
   machine (Python's own docs strings and license texts) plus some accented/CJK lines;
2. writes OUT_DIR/tiny-sp.gguf (and tiny-sp-gemma.gguf, the same vocabulary under architecture "gemma2") the way llama.cpp's convert_hf_to_gguf.py writes a SentencePiece
   vocabulary (tokenizer.ggml.model = "llama", tokens, scores, token types, special ids, no merges)
   with a Llama-2 style chat template, and no tensors;
3. writes OUT_DIR/hf/ (tokenizer.json + tokenizer_config.json) saved by transformers from that GGUF;
4. prints JSON: {"gguf": ..., "gemma_gguf": ..., "hf_dir": ..., "model": ...}.
"""

import glob
import io
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import gguf  # noqa: E402
import sentencepiece as spm  # noqa: E402

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ ' ' + message['content'] + eos_token }}{% else %}{{ '<<SYS>>\\n' + message['content'] + '\\n<</SYS>>\\n\\n' }}"
    "{% endif %}{% endfor %}"
)


def corpus() -> str:
    import email, json as j, os as o, string, textwrap  # noqa: F401,E401  (their docstrings are text)

    parts = [m.__doc__ or "" for m in (email, j, o, string, textwrap, io, glob)]
    base = os.path.dirname(os.__file__)
    for p in sorted(glob.glob(os.path.join(base, "*.py")))[:60]:
        with open(p, encoding="utf-8", errors="ignore") as f:
            parts.append(f.read())
    parts += [
        "Café crème, naïve façade, jalapeño, Zürich, São Paulo, Ελληνικά, русский текст.",
        "日本語のテキストと中文文本。한국어 텍스트.",
        "Numbers 0123456789 and 3.14159, 2024-01-31, $99.95.",
    ] * 20
    return "\n".join(parts)


def main() -> None:
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    text_path = os.path.join(out, "corpus.txt")
    with open(text_path, "w", encoding="utf-8") as f:
        f.write(corpus())
    prefix = os.path.join(out, "tiny-sp")
    spm.SentencePieceTrainer.train(
        input=text_path,
        model_prefix=prefix,
        model_type="bpe",
        vocab_size=700,
        byte_fallback=True,
        character_coverage=0.9995,
        num_threads=1,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_file=prefix + ".model")

    # As llama.cpp's convert_hf_to_gguf.py (_create_vocab_sentencepiece) does it.
    tokens, scores, types = [], [], []
    for i in range(sp.vocab_size()):
        tokens.append(sp.id_to_piece(i))
        scores.append(sp.get_score(i))
        if sp.is_unknown(i):
            types.append(gguf.TokenType.UNKNOWN)
        elif sp.is_control(i):
            types.append(gguf.TokenType.CONTROL)
        elif sp.is_unused(i):
            types.append(gguf.TokenType.UNUSED)
        elif sp.is_byte(i):
            types.append(gguf.TokenType.BYTE)
        else:
            types.append(gguf.TokenType.NORMAL)

    path = write_gguf(out, "tiny-sp.gguf", "llama", tokens, scores, types)
    # The same vocabulary as a Gemma file: transformers' Gemma rules (no prefix space, merges in
    # vocabulary order, spaces normalised to '▁').
    gemma_path = write_gguf(out, "tiny-sp-gemma.gguf", "gemma2", tokens, scores, types)

    from transformers import AutoTokenizer

    hf_dir = os.path.join(out, "hf")
    tok = AutoTokenizer.from_pretrained(out, gguf_file="tiny-sp.gguf")
    tok.save_pretrained(hf_dir)
    json.dump({"gguf": path, "gemma_gguf": gemma_path, "hf_dir": hf_dir, "model": prefix + ".model"}, sys.stdout)


def write_gguf(out, name, arch, tokens, scores, types):
    path = os.path.join(out, name)
    w = gguf.GGUFWriter(path, arch)
    w.add_name("tiny-sp")
    w.add_context_length(256)
    w.add_embedding_length(64)
    w.add_block_count(1)
    w.add_feed_forward_length(128)
    w.add_head_count(2)
    w.add_head_count_kv(2)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_add_space_prefix(not arch.startswith("gemma"))
    w.add_chat_template(CHAT_TEMPLATE)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


if __name__ == "__main__":
    main()
