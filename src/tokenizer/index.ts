/**
 * Tokenizers: from a GGUF's embedded vocabulary or a Hugging Face tokenizer.json.
 * @module
 */

export {
  Tokenizer,
  TokenStreamDecoder,
  type ChatMessage,
  type ChatTemplateOptions,
  type DecodeOptions,
  type EncodeOptions,
} from './tokenizer.js';
export { readGgufTokenizerMetadata, GgufTokenType, type GgufTokenizerMetadata } from './gguf-metadata.js';
export {
  tokenizerJsonFromGguf,
  generateMerges,
  bytesToUnicode,
  PRE_TOKENIZER_SPLITS,
  type TokenizerJson,
  type TokenizerSettings,
  type AddedTokenJson,
} from './from-gguf.js';
