/**
 * Turns the JSON-schema errors of a request body (ajv's, as fastify reports them) into one
 * message that names the field, OpenAI style: `Invalid type for 'temperature': expected a number
 * or null`.
 * @module
 */
import { ServerRequestError } from './errors.js';

/** The parts of an ajv error object the formatter reads. */
export interface SchemaError {
  keyword: string;
  instancePath: string;
  schemaPath: string;
  params: Record<string, unknown>;
  message?: string;
  parentSchema?: Record<string, unknown>;
}

/** `/messages/0/content` -> `messages[0].content`. */
export function paramName(instancePath: string): string {
  return instancePath
    .split('/')
    .slice(1)
    .map((part) => part.replace(/~1/g, '/').replace(/~0/g, '~'))
    .reduce((name, part) => (/^\d+$/.test(part) ? `${name}[${part}]` : name ? `${name}.${part}` : part), '');
}

const article: Record<string, string> = {
  string: 'a string',
  number: 'a number',
  integer: 'an integer',
  boolean: 'a boolean',
  object: 'an object',
  null: 'null',
};

/** A schema in words: `a string, an array of strings or null`. */
function describe(schema: Record<string, unknown> | undefined): string {
  if (!schema) return 'another type';
  if (Array.isArray(schema['anyOf'])) {
    const parts = (schema['anyOf'] as Record<string, unknown>[]).map(describe);
    return parts.length > 1 ? `${parts.slice(0, -1).join(', ')} or ${parts[parts.length - 1]}` : (parts[0] ?? 'another type');
  }
  const type = schema['type'];
  if (type === 'array') {
    const items = schema['items'] as Record<string, unknown> | undefined;
    const itemType = items?.['type'];
    if (itemType === 'string') return 'an array of strings';
    if (itemType === 'object') return 'an array of objects';
    return 'an array';
  }
  if (typeof type === 'string') return article[type] ?? type;
  return 'another type';
}

/**
 * The one error to report: inside an `anyOf`, an error of a branch whose type was right (a
 * constraint, or something deeper in the value) beats the `anyOf` itself.
 */
function explain(errors: readonly SchemaError[], error: SchemaError): ServerRequestError {
  if (error.keyword === 'anyOf') {
    const inner = errors.filter(
      (e) => e !== error && e.schemaPath.startsWith(`${error.schemaPath}/`) && (e.keyword !== 'type' || e.instancePath !== error.instancePath),
    );
    const chosen = inner[inner.length - 1];
    if (chosen) return explain(errors, chosen);
    return invalidType(error);
  }
  const param = paramName(error.instancePath);
  if (error.keyword === 'required') {
    const missing = String(error.params['missingProperty']);
    const full = param ? `${param}.${missing}` : missing;
    return new ServerRequestError(400, `Missing required parameter: '${full}'`, { param: full, code: 'missing_required_parameter' });
  }
  if (error.keyword === 'type') return invalidType(error);
  if (error.keyword === 'enum') {
    const allowed = (error.params['allowedValues'] as unknown[] | undefined)?.map((v) => `'${String(v)}'`).join(', ');
    return new ServerRequestError(400, `Invalid value for '${param}': must be one of ${allowed}`, { param, code: 'invalid_value' });
  }
  if (error.keyword === 'propertyNames' || error.keyword === 'pattern') {
    const name = param || 'body';
    return new ServerRequestError(400, `Invalid value for '${name}': keys must be token ids (non-negative integers as strings)`, {
      param: name,
      code: 'invalid_value',
    });
  }
  return new ServerRequestError(400, `Invalid value for '${param || 'body'}': ${error.message ?? 'not allowed'}`, {
    param: param || null,
    code: 'invalid_value',
  });
}

function invalidType(error: SchemaError): ServerRequestError {
  const param = paramName(error.instancePath);
  if (!param) return new ServerRequestError(400, 'The request body must be a JSON object', { code: 'invalid_type' });
  return new ServerRequestError(400, `Invalid type for '${param}': expected ${describe(error.parentSchema)}`, { param, code: 'invalid_type' });
}

/** The 400 for a body that failed its schema. */
export function validationError(errors: readonly SchemaError[]): ServerRequestError {
  const last = errors[errors.length - 1];
  if (!last) return new ServerRequestError(400, 'The request body is invalid', { code: 'invalid_value' });
  return explain(errors, last);
}
