/**
 * cascade-xla: cascaded speculative decoding on XLA through the PJRT C API.
 *
 * @example
 * ```ts
 * import { Runtime } from 'cascade-xla';
 * await using rt = await Runtime.open({ plugin: 'cpu', devices: 4 });
 * console.log(rt.platform, rt.devices.map((d) => d.kind));
 * ```
 * @module
 */
export { Runtime, Executable } from './runtime/runtime.js';
export { Cascade } from './cascade/cascade.js';
export { KV_CACHE_TYPES, PRECISIONS } from './cascade/types.js';
export { ChatSession } from './cascade/chat-session.js';
export { ConversationCache } from './cascade/conversation-cache.js';
export type { ChatSessionOptions } from './cascade/chat-session.js';
export { distillTiny } from './cascade/distill.js';
export { cpuCaches } from './cascade/placement.js';
export type { PlacementReport, ModelPlacement, CpuCache } from './cascade/placement.js';
export type { DistillOptions, DistillReport } from './cascade/distill.js';
export type {
  CascadeLoadOptions,
  GenerateOptions,
  GenerationResult,
  StreamPiece,
  CascadeStats,
  StageTimes,
  Precision,
  KvCacheType,
  DecodeMode,
  ModelInfo,
} from './cascade/cascade.js';
export { Tokenizer, TokenStreamDecoder } from './tokenizer/index.js';
export type { ChatMessage, EncodeOptions, DecodeOptions, ChatTemplateOptions } from './tokenizer/index.js';
export type { RuntimeOptions, CompileOptions, ExecuteOptions, DeviceInfo, MemoryInfo } from './runtime/runtime.js';
export { tensor, toNumbers, bf16FromNumber, numberFromBf16, f16FromNumber, numberFromF16 } from './runtime/tensor.js';
export type { DType, Tensor, TensorType, TypedArray, DTypeArrays } from './runtime/tensor.js';
export {
  CascadeError,
  PjrtError,
  PjrtErrorCode,
  PluginNotFoundError,
  PluginIncompatibleError,
  InvalidArgumentError,
  DisposedError,
  ModelFormatError,
  DownloadError,
  OutOfMemoryError,
} from './errors.js';
export { NativeAddonError } from './native.js';
export { resolvePlugin, ensurePlugin, pluginCacheInfo } from './plugin/index.js';
export { serve, createServer } from './server/server.js';
export type { ServerOptions, ServeOptions, CascadeServer, ServerGenerateDefaults, RequestLogEntry } from './server/server.js';
export { ServerRequestError } from './server/errors.js';
export type {
  OpenAIChatCompletionRequest,
  OpenAICompletionRequest,
  OpenAISamplingFields,
  OpenAIChatMessage,
  OpenAIContentPart,
  OpenAIChatCompletion,
  OpenAIChatCompletionChunk,
  OpenAICompletion,
  OpenAIUsage,
  OpenAIFinishReason,
  OpenAIModel,
  OpenAIErrorBody,
} from './server/openai-types.js';
export { ensureDefaultModel, defaultModelPath, DEFAULT_MODEL, ModelNotFoundError } from './models/default-model.js';
export type { EnsureModelOptions, EnsuredModel, DefaultModelSpec } from './models/default-model.js';
export { downloadModel, isModelUrl, urlCacheDir, ChecksumMismatchError, HttpStatusError } from './models/download.js';
export type { DownloadModelOptions, DownloadedModel, DownloadProgress } from './models/download.js';
export { resolveModel, findCatalogModel, MODEL_CATALOG } from './models/catalog.js';
export type { CatalogModel, ResolveModelOptions, ResolvedModel, ResolveProgress } from './models/catalog.js';
export type { PluginKind, ResolvedPlugin, ResolveOptions, EnsureOptions, CachedPlugin, PluginCacheInfo } from './plugin/index.js';
