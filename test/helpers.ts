/** Shared test helpers: guest loading, wat assembly with binaryen, hashing. */
import binaryen from 'binaryen';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { loadGuest, type LoadedGuest } from '../src/machine/guest.js';

export const ROOT = fileURLToPath(new URL('../../', import.meta.url));
export const guestPath = (name: string): string => `${ROOT}build/guests/${name}.wasm`;

const cache = new Map<string, LoadedGuest>();
export function guest(name: string): LoadedGuest {
  let g = cache.get(name);
  if (!g) {
    g = loadGuest(new Uint8Array(readFileSync(guestPath(name))));
    cache.set(name, g);
  }
  return g;
}

/** Assembles WebAssembly text with binaryen (with the given features enabled). */
export function wat(text: string, features: number = binaryen.Features.MutableGlobals | binaryen.Features.SignExt): Uint8Array {
  const m = binaryen.parseText(text);
  try {
    m.setFeatures(features);
    return m.emitBinary();
  } finally {
    m.dispose();
  }
}

export const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');
export { binaryen };
