/**
 * Host tensors: what {@link Executable.execute} takes and returns.
 * @module
 */
import { InvalidArgumentError } from '../errors.js';

/** Element types the runtime moves between host and device. */
export type DType = 'f32' | 'f16' | 'bf16' | 's32' | 's8' | 'u8' | 'pred' | 's64' | 'u32' | 'f64';

/** The typed array that holds each dtype (f16 and bf16 hold raw bits; pred holds 0 or 1). */
export interface DTypeArrays {
  f32: Float32Array;
  f16: Uint16Array;
  bf16: Uint16Array;
  s32: Int32Array;
  s8: Int8Array;
  u8: Uint8Array;
  pred: Uint8Array;
  s64: BigInt64Array;
  u32: Uint32Array;
  f64: Float64Array;
}

/** Any typed array a tensor can hold. */
export type TypedArray = DTypeArrays[DType];

/**
 * A dense, row-major array in host memory.
 *
 * @example
 * ```ts
 * const x: Tensor = { dtype: 'f32', shape: [2, 2], data: new Float32Array([1, 2, 3, 4]) };
 * ```
 */
export interface Tensor<D extends DType = DType> {
  dtype: D;
  shape: number[];
  data: DTypeArrays[D];
}

/** The shape and dtype of a program parameter or result. */
export interface TensorType {
  dtype: DType;
  shape: number[];
}

const ARRAYS: { [D in DType]: new (n: number) => DTypeArrays[D] } = {
  f32: Float32Array,
  f16: Uint16Array,
  bf16: Uint16Array,
  s32: Int32Array,
  s8: Int8Array,
  u8: Uint8Array,
  pred: Uint8Array,
  s64: BigInt64Array,
  u32: Uint32Array,
  f64: Float64Array,
};

const scratch = new DataView(new ArrayBuffer(4));

/** Rounds a number to bfloat16 (round to nearest even) and returns its 16 bits. */
export function bf16FromNumber(x: number): number {
  scratch.setFloat32(0, x);
  const bits = scratch.getUint32(0);
  if (Number.isNaN(x)) return 0x7fc0;
  const rounded = bits + 0x7fff + ((bits >>> 16) & 1);
  return (rounded >>> 16) & 0xffff;
}

/** The number a bfloat16 bit pattern stands for. */
export function numberFromBf16(bits: number): number {
  scratch.setUint32(0, (bits & 0xffff) << 16);
  return scratch.getFloat32(0);
}

/** Rounds a number to IEEE half precision (round to nearest even) and returns its 16 bits. */
export function f16FromNumber(x: number): number {
  scratch.setFloat32(0, x);
  const f = scratch.getUint32(0);
  const sign = (f >>> 16) & 0x8000;
  const exp = (f >>> 23) & 0xff;
  let mant = f & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  let e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    let half = mant >>> shift;
    const rem = mant & ((1 << shift) - 1);
    const mid = 1 << (shift - 1);
    if (rem > mid || (rem === mid && half & 1)) half++;
    return sign | half;
  }
  let half = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && half & 1)) half++;
  e = half >>> 10;
  return sign | half;
}

/** The number an IEEE half bit pattern stands for. */
export function numberFromF16(bits: number): number {
  const sign = bits & 0x8000 ? -1 : 1;
  const exp = (bits >>> 10) & 0x1f;
  const mant = bits & 0x3ff;
  if (exp === 0) return sign * mant * 2 ** -24;
  if (exp === 0x1f) return mant ? NaN : sign * Infinity;
  return sign * (1 + mant / 1024) * 2 ** (exp - 15);
}

function elementCount(shape: readonly number[]): number {
  let n = 1;
  for (const [i, d] of shape.entries()) {
    if (!Number.isInteger(d) || d < 0) throw new InvalidArgumentError(`shape[${i}] must be a non-negative integer, got ${d}`);
    n *= d;
  }
  return n;
}

/** Whether `buffer` was transferred away (ArrayBuffer.prototype.detached is newer than Node 20). */
function isDetached(buffer: ArrayBufferLike): boolean {
  const flag = (buffer as ArrayBuffer & { detached?: boolean }).detached;
  if (typeof flag === 'boolean') return flag;
  try {
    new Uint8Array(buffer, 0, 0);
    return false;
  } catch {
    return true;
  }
}

/**
 * Checks that `t` is a tensor the runtime can move: an object with a known dtype, a shape of
 * non-negative integers, and `data` a typed array of that dtype's class, over a plain (not shared,
 * not detached) ArrayBuffer, holding exactly the shape's element count. Throws
 * {@link InvalidArgumentError} naming `where` (e.g. "execute: inputs[0][1]").
 */
export function checkTensor(t: unknown, where: string): asserts t is Tensor {
  if (t === null || typeof t !== 'object') throw new InvalidArgumentError(`${where} must be a tensor { dtype, shape, data }, got ${t === null ? 'null' : typeof t}`);
  const { dtype, shape, data } = t as { dtype?: unknown; shape?: unknown; data?: unknown };
  if (typeof dtype !== 'string' || !Object.hasOwn(ARRAYS, dtype)) {
    throw new InvalidArgumentError(`${where}.dtype must be one of ${Object.keys(ARRAYS).join(', ')}, got ${JSON.stringify(dtype)}`);
  }
  if (!Array.isArray(shape)) throw new InvalidArgumentError(`${where}.shape must be an array of non-negative integers`);
  let n: number;
  try {
    n = elementCount(shape as number[]);
  } catch (e) {
    throw new InvalidArgumentError(`${where}.${(e as Error).message}`);
  }
  const Ctor = ARRAYS[dtype as DType];
  if (!(data instanceof Ctor)) {
    const got = data === null ? 'null' : Array.isArray(data) ? 'a plain array' : ArrayBuffer.isView(data) ? data.constructor.name : typeof data;
    throw new InvalidArgumentError(`${where}: dtype ${dtype} needs a ${Ctor.name} as data, got ${got}`);
  }
  const view = data as TypedArray;
  if (typeof SharedArrayBuffer !== 'undefined' && view.buffer instanceof SharedArrayBuffer) {
    throw new InvalidArgumentError(`${where}.data is a view of a SharedArrayBuffer; copy it into a plain ArrayBuffer first`);
  }
  if (isDetached(view.buffer)) {
    throw new InvalidArgumentError(`${where}.data's ArrayBuffer has been detached (transferred)`);
  }
  if (view.length !== n) {
    throw new InvalidArgumentError(`${where}: shape [${(shape as number[]).join(', ')}] has ${n} elements but data has ${view.length}`);
  }
}

/**
 * Builds a tensor from plain numbers, converting to the dtype's storage (bf16 and f16 are
 * rounded to nearest even; pred stores 0/1).
 *
 * @example
 * ```ts
 * const w = tensor('bf16', [2, 2], [0.5, -1, 2, 3.25]);
 * const ids = tensor('s32', [3], [1, 2, 3]);
 * ```
 */
export function tensor<D extends DType>(dtype: D, shape: number[], values: ArrayLike<number> | ArrayLike<bigint>): Tensor<D> {
  const Ctor = ARRAYS[dtype];
  if (!Ctor) throw new InvalidArgumentError(`unknown dtype '${String(dtype)}'`);
  const n = elementCount(shape);
  if (values.length !== n) {
    throw new InvalidArgumentError(`shape [${shape.join(', ')}] has ${n} elements but ${values.length} values were given`);
  }
  const data = new Ctor(n);
  for (let i = 0; i < n; i++) {
    const v = values[i] as number | bigint;
    if (dtype === 's64') (data as BigInt64Array)[i] = BigInt(v);
    else if (dtype === 'bf16') (data as Uint16Array)[i] = bf16FromNumber(Number(v));
    else if (dtype === 'f16') (data as Uint16Array)[i] = f16FromNumber(Number(v));
    else if (dtype === 'pred') (data as Uint8Array)[i] = v ? 1 : 0;
    else (data as Exclude<TypedArray, BigInt64Array>)[i] = Number(v);
  }
  return { dtype, shape: [...shape], data };
}

/**
 * The tensor's values as plain numbers (bf16/f16 decoded, s64 converted with Number()).
 *
 * @example
 * ```ts
 * toNumbers(tensor('bf16', [2], [1.5, -2])); // [1.5, -2]
 * ```
 */
export function toNumbers(t: Tensor): number[] {
  const out = new Array<number>(t.data.length);
  for (let i = 0; i < t.data.length; i++) {
    const v = t.data[i] as number | bigint;
    if (t.dtype === 'bf16') out[i] = numberFromBf16(v as number);
    else if (t.dtype === 'f16') out[i] = numberFromF16(v as number);
    else out[i] = Number(v);
  }
  return out;
}
