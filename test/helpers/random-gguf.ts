// A small random Llama GGUF with a real model's tokenizer, for tests that need a real target
// whose step costs about a millisecond (test/reliability.test.ts, test/faults.test.ts).
import { closeSync, openSync, readSync } from 'node:fs';

/** The raw bytes of the `tokenizer.*` key/value entries of a GGUF (v2/v3) file's header. */
function tokenizerKvs(file: string): { count: number; bytes: Buffer } {
  const size = 16 << 20;
  const b = Buffer.alloc(size);
  const fd = openSync(file, 'r');
  try {
    readSync(fd, b, 0, size, 0);
  } finally {
    closeSync(fd);
  }
  if (b.toString('latin1', 0, 4) !== 'GGUF') throw new Error(`${file} is not a GGUF file`);
  let at = 16;
  const kvCount = Number(b.readBigUInt64LE(at));
  at += 8;
  const fixed: Record<number, number> = { 0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8 };
  const skipValue = (type: number): void => {
    if (type === 8) {
      at += 8 + Number(b.readBigUInt64LE(at));
    } else if (type === 9) {
      const inner = b.readUInt32LE(at);
      const n = Number(b.readBigUInt64LE(at + 4));
      at += 12;
      if (inner in fixed) at += n * fixed[inner]!;
      else for (let i = 0; i < n; i++) skipValue(inner);
    } else {
      at += fixed[type]!;
    }
  };
  const parts: Buffer[] = [];
  let count = 0;
  for (let i = 0; i < kvCount; i++) {
    const start = at;
    const keyLength = Number(b.readBigUInt64LE(at));
    const key = b.toString('utf8', at + 8, at + 8 + keyLength);
    at += 8 + keyLength;
    const type = b.readUInt32LE(at);
    at += 4;
    skipValue(type);
    if (key.startsWith('tokenizer.')) {
      parts.push(Buffer.from(b.subarray(start, at)));
      count++;
    }
  }
  return { count, bytes: Buffer.concat(parts) };
}

/**
 * A random Llama GGUF (F32, tied embeddings) with the tokenizer of `tokenizerFrom`: a real target
 * model, small enough that a step costs about a millisecond.
 */
export function randomTarget(tokenizerFrom: string, m: { vocab: number; d: number; ffn: number; layers: number; heads: number; kvHeads: number; ctx: number }): Buffer {
  const parts: Buffer[] = [];
  const u32 = (v: number) => {
    const x = Buffer.alloc(4);
    x.writeUInt32LE(v);
    parts.push(x);
  };
  const u64 = (v: number) => {
    const x = Buffer.alloc(8);
    x.writeBigUInt64LE(BigInt(v));
    parts.push(x);
  };
  const str = (s: string) => {
    const x = Buffer.from(s, 'utf8');
    u64(x.length);
    parts.push(x);
  };
  const hd = m.d / m.heads;
  const specs: Array<[string, number[]]> = [['token_embd.weight', [m.d, m.vocab]], ['output_norm.weight', [m.d]]];
  for (let i = 0; i < m.layers; i++) {
    const p = `blk.${i}.`;
    specs.push(
      [`${p}attn_norm.weight`, [m.d]],
      [`${p}attn_q.weight`, [m.d, m.heads * hd]],
      [`${p}attn_k.weight`, [m.d, m.kvHeads * hd]],
      [`${p}attn_v.weight`, [m.d, m.kvHeads * hd]],
      [`${p}attn_output.weight`, [m.heads * hd, m.d]],
      [`${p}ffn_norm.weight`, [m.d]],
      [`${p}ffn_gate.weight`, [m.d, m.ffn]],
      [`${p}ffn_up.weight`, [m.d, m.ffn]],
      [`${p}ffn_down.weight`, [m.ffn, m.d]],
    );
  }
  const tok = tokenizerKvs(tokenizerFrom);
  const kv: Array<[string, number]> = [
    ['llama.context_length', m.ctx],
    ['llama.embedding_length', m.d],
    ['llama.block_count', m.layers],
    ['llama.feed_forward_length', m.ffn],
    ['llama.attention.head_count', m.heads],
    ['llama.attention.head_count_kv', m.kvHeads],
    ['llama.vocab_size', m.vocab],
  ];
  parts.push(Buffer.from('GGUF'));
  u32(3);
  u64(specs.length);
  u64(kv.length + 2 + tok.count);
  str('general.architecture');
  u32(8);
  str('llama');
  for (const [key, value] of kv) {
    str(key);
    u32(4);
    u32(value);
  }
  str('llama.attention.layer_norm_rms_epsilon');
  u32(6);
  const eps = Buffer.alloc(4);
  eps.writeFloatLE(1e-5);
  parts.push(eps);
  parts.push(tok.bytes);
  let offset = 0;
  const sizes: number[] = [];
  for (const [name, ne] of specs) {
    str(name);
    u32(ne.length);
    for (const n of ne) u64(n);
    u32(0); // F32
    u64(offset);
    const bytes = ne.reduce((p, q) => p * q, 1) * 4;
    sizes.push(bytes);
    offset += bytes + ((32 - (bytes % 32)) % 32);
  }
  const head = Buffer.concat(parts);
  const data = Buffer.alloc(offset);
  let s = 12345;
  let at = 0;
  specs.forEach(([name], i) => {
    const norm = name.endsWith('norm.weight');
    const values = new Float32Array(data.buffer, data.byteOffset + at, sizes[i]! / 4);
    for (let j = 0; j < values.length; j++) {
      s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
      values[j] = norm ? 1 : (s / 2 ** 32 - 0.5) * 0.2;
    }
    at += sizes[i]! + ((32 - (sizes[i]! % 32)) % 32);
  });
  return Buffer.concat([head, Buffer.alloc((32 - (head.length % 32)) % 32), data]);
}

