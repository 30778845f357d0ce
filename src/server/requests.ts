/**
 * From a validated OpenAI request body to a generation: the prompt (chat messages or text), the
 * {@link GenerateOptions}, and the checks a JSON schema cannot express (supported features, the
 * model name, the context length, token ids of `logit_bias`).
 * @module
 */
import { randomInt } from 'node:crypto';

import type { Cascade, GenerateOptions } from '../cascade/cascade.js';
import type { ChatMessage } from '../tokenizer/index.js';
import { ServerRequestError } from './errors.js';
import type { OpenAIChatCompletionRequest, OpenAICompletionRequest, OpenAISamplingFields } from './openai-types.js';

/** What a handler runs: the prompt, the options, and how to answer. */
export interface GenerationPlan {
  /** Chat messages (rendered with the chat template by the Cascade) or raw text. */
  prompt: string | ChatMessage[];
  /** Tokens of the prompt as the Cascade will encode it. */
  promptTokens: number;
  /** Their ids (what slot routing compares). */
  promptIds: number[];
  /** Options of `Cascade.generate` / `stream` (the signal is added by the handler). */
  options: GenerateOptions;
  /** Answer as server-sent events. */
  stream: boolean;
  /** With `stream`: end with a chunk carrying `usage`. */
  includeUsage: boolean;
  /** `/v1/completions` with `echo`: the prompt text to put before the completion. */
  echo?: string;
}

/** What the plan builders need from the server. */
export interface PlanContext {
  /** The loaded model (tokenizer, context length, vocabulary). */
  cascade: Cascade;
  /** The served model's id (what responses say). */
  modelId: string;
  /** The names a request may give in `model`: the id and its aliases; another name is a 400. */
  modelNames: ReadonlySet<string>;
  /** Decoding options every request starts from (mode, k0, k1, branches, ...). */
  defaults: GenerateOptions;
  /** Tokens to generate when the request gives no limit (default: the context's room). */
  defaultMaxTokens: number | undefined;
}

const unsupported = (param: string, message: string) => new ServerRequestError(400, message, { param, code: 'unsupported_parameter' });

/** The text of a message's content: a string, text parts (concatenated) or null (assistant only). */
function messageText(content: OpenAIChatCompletionRequest['messages'][number]['content'], role: string, index: number): string {
  if (typeof content === 'string') return content;
  if (content === null || content === undefined) {
    if (role === 'assistant') return '';
    throw new ServerRequestError(400, `messages[${index}].content is required for a '${role}' message`, { param: `messages[${index}].content` });
  }
  return content
    .map((part, j) => {
      if (part.type !== 'text' || typeof part.text !== 'string') {
        throw unsupported(
          `messages[${index}].content[${j}]`,
          `messages[${index}].content[${j}]: only text content parts ({ type: 'text', text }) are supported, got type '${part.type}'`,
        );
      }
      return part.text;
    })
    .join('');
}

function checkModel(body: OpenAISamplingFields, ctx: PlanContext): void {
  if (body.model !== undefined && !ctx.modelNames.has(body.model)) {
    throw new ServerRequestError(400, `The model '${body.model}' does not exist on this server; it serves '${ctx.modelId}' (see GET /v1/models)`, {
      param: 'model',
      code: 'model_not_found',
    });
  }
}

/** Sampling and limits shared by both endpoints. */
function commonOptions(body: OpenAISamplingFields, maxTokens: number | null | undefined, promptTokens: number, promptParam: string, ctx: PlanContext) {
  if (body.n !== undefined && body.n !== null && body.n !== 1) {
    throw unsupported('n', `'n' must be 1: this server returns one choice per request (got ${body.n})`);
  }
  const maxContext = ctx.cascade.info.maxContext;
  if (promptTokens >= maxContext) {
    throw new ServerRequestError(
      400,
      `This model's context holds ${maxContext} tokens and the prompt has ${promptTokens}; shorten the prompt (room for at least one generated token is needed), or restart the server with a larger --max-context`,
      { param: promptParam, code: 'context_length_exceeded' },
    );
  }
  const vocab = ctx.cascade.info.target.vocabSize;
  let logitBias: Record<string, number> | undefined;
  if (body.logit_bias) {
    for (const id of Object.keys(body.logit_bias)) {
      if (Number(id) >= vocab) {
        throw new ServerRequestError(400, `logit_bias: token id ${id} is outside the vocabulary (0..${vocab - 1})`, { param: 'logit_bias' });
      }
    }
    if (Object.keys(body.logit_bias).length) logitBias = { ...body.logit_bias };
  }
  const topP = body.top_p ?? 1;
  // OpenAI's default temperature is 1; top_p 0 keeps only the most likely token, which is greedy decoding.
  const temperature = topP === 0 ? 0 : (body.temperature ?? 1);
  const stop = body.stop === undefined || body.stop === null ? undefined : typeof body.stop === 'string' ? [body.stop] : body.stop;
  const options: GenerateOptions = {
    ...ctx.defaults,
    maxTokens: maxTokens ?? ctx.defaultMaxTokens ?? maxContext - promptTokens,
    temperature,
    topP: topP === 0 ? 1 : topP,
    // Without a seed, each request samples differently (as OpenAI does).
    seed: body.seed ?? randomInt(0, 2 ** 32),
    ...(stop && stop.length ? { stop } : {}),
    ...(body.top_k !== undefined && body.top_k !== null ? { topK: body.top_k } : {}),
    ...(body.min_p !== undefined && body.min_p !== null ? { minP: body.min_p } : {}),
    ...(body.presence_penalty !== undefined && body.presence_penalty !== null ? { presencePenalty: body.presence_penalty } : {}),
    ...(body.frequency_penalty !== undefined && body.frequency_penalty !== null ? { frequencyPenalty: body.frequency_penalty } : {}),
    ...(body.repeat_penalty !== undefined && body.repeat_penalty !== null ? { repeatPenalty: body.repeat_penalty } : {}),
    ...(body.repeat_last_n !== undefined && body.repeat_last_n !== null ? { penaltyLastN: body.repeat_last_n } : {}),
    ...(logitBias ? { logitBias } : {}),
  };
  return { options, stream: body.stream === true, includeUsage: body.stream === true && body.stream_options?.include_usage === true };
}

/** The chat template's view of the messages: text content, `developer` as `system`. */
export function chatMessages(messages: OpenAIChatCompletionRequest['messages']): ChatMessage[] {
  return messages.map((m, i) => {
    const message: ChatMessage = { role: m.role === 'developer' ? 'system' : m.role, content: messageText(m.content, m.role, i) };
    if (m.name !== undefined) message.name = m.name;
    return message;
  });
}

/** Token ids of `prompt` as {@link Cascade.generate} encodes it (chat: the rendered template, no extra BOS). */
export function promptTokenIds(cascade: Cascade, prompt: string | ChatMessage[]): number[] {
  if (typeof prompt === 'string') return cascade.tokenizer.encode(prompt);
  const text = cascade.tokenizer.applyChatTemplate(prompt, { addGenerationPrompt: true });
  return cascade.tokenizer.encode(text, { addBos: false });
}

/** The plan of a `/v1/chat/completions` request. */
export function planChat(body: OpenAIChatCompletionRequest, ctx: PlanContext): GenerationPlan {
  checkModel(body, ctx);
  if (body.logprobs === true || (body.top_logprobs ?? 0) > 0) {
    throw unsupported(body.logprobs === true ? 'logprobs' : 'top_logprobs', 'logprobs are not supported by this server');
  }
  if (body.tools && body.tools.length > 0) throw unsupported('tools', 'tools (function calling) are not supported by this server');
  if (body.response_format && body.response_format.type !== 'text') {
    throw unsupported('response_format', `response_format '${body.response_format.type}' is not supported by this server (only 'text')`);
  }
  const prompt = chatMessages(body.messages);
  const promptIds = promptTokenIds(ctx.cascade, prompt);
  const promptTokens = promptIds.length;
  const common = commonOptions(body, body.max_completion_tokens ?? body.max_tokens, promptTokens, 'messages', ctx);
  return { prompt, promptTokens, promptIds, ...common };
}

/** The plan of a `/v1/completions` request (OpenAI's default `max_tokens` there is 16). */
export function planCompletion(body: OpenAICompletionRequest, ctx: PlanContext): GenerationPlan {
  checkModel(body, ctx);
  let prompt: string;
  if (typeof body.prompt === 'string') {
    prompt = body.prompt;
  } else if (body.prompt.length === 1) {
    prompt = body.prompt[0]!;
  } else {
    throw unsupported('prompt', `prompt: one prompt per request is supported, got an array of ${body.prompt.length}`);
  }
  if (prompt === '') throw new ServerRequestError(400, 'prompt must not be empty', { param: 'prompt' });
  if ((body.best_of ?? 1) !== 1) throw unsupported('best_of', "'best_of' must be 1: this server returns one choice per request");
  if ((body.logprobs ?? 0) > 0) throw unsupported('logprobs', 'logprobs are not supported by this server');
  if (body.suffix) throw unsupported('suffix', 'suffix (insertion) is not supported by this server');
  const promptIds = promptTokenIds(ctx.cascade, prompt);
  const promptTokens = promptIds.length;
  const common = commonOptions(body, body.max_tokens ?? ctx.defaultMaxTokens ?? 16, promptTokens, 'prompt', ctx);
  return { prompt, promptTokens, promptIds, ...common, ...(body.echo === true ? { echo: prompt } : {}) };
}
