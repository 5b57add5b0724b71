// Loads the xgrammar WebAssembly build (@mlc-ai/web-xgrammar) into Node and types the few calls we use.
// It knows nothing of schemas or vocabularies; grammar.ts decides what to compile and when.
//
// The package declares "type": "module" but ships a UMD bundle that calls require() and reads
// __filename, so a plain import throws in Node. We evaluate the bundle as CommonJS ourselves, swap
// its one dynamic import('module') for require (evaluated code has no import() under vm-based
// runners such as vitest), and add one export that hands out its embind module, so masks can be
// copied synchronously.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname } from "node:path";

/** An embind std::vector<int32_t>; free it with delete(). */
export interface WasmIntVector {
  size(): number;
  delete(): void;
}

/** xgrammar's C++ GrammarMatcher as embind exposes it. */
export interface WasmMatcher {
  AcceptToken(tokenId: number, verbose: boolean): boolean;
  GetNextTokenBitmask(vocabSize: number): WasmIntVector;
  IsTerminated(): boolean;
  Rollback(numTokens: number): void;
  delete(): void;
}

export interface WasmBinding {
  GrammarMatcher: new (
    compiledGrammar: unknown,
    overrideStopTokens: WasmIntVector | undefined,
    terminateWithoutStopToken: boolean,
    maxRollbackTokens: number,
  ) => WasmMatcher;
  /** A view on the WASM heap: valid until the next allocation, so copy it at once. */
  vecIntToView(vector: WasmIntVector): Int32Array;
}

export interface XgTokenizerInfo {
  getVocabSize(): number;
  dispose(): void;
}

export interface XgCompiledGrammar {
  handle: unknown;
  dispose(): void;
}

export interface XgGrammar {
  handle: unknown;
  dispose(): void;
}

export interface XgGrammarCompiler {
  compileGrammar(grammar: XgGrammar): Promise<XgCompiledGrammar>;
  dispose(): void;
}

export interface Xgrammar {
  binding: WasmBinding;
  Grammar: {
    fromEBNF(ebnf: string, rootRule?: string): Promise<XgGrammar>;
  };
  TokenizerInfo: {
    createTokenizerInfo(
      encodedVocab: string[],
      vocabType: string,
      prependSpaceInTokenization: boolean,
      vocabSize: number,
      stopTokenIds: number[],
    ): Promise<XgTokenizerInfo>;
  };
  GrammarCompiler: {
    createGrammarCompiler(tokenizerInfo: XgTokenizerInfo, cacheEnabled: boolean): Promise<XgGrammarCompiler>;
  };
}

const EXPORT_ANCHOR = "exports.default = index;";
const DYNAMIC_IMPORT = "await import('module')";
const EXPORT_BINDING =
  "exports.loadBinding = async () => { await asyncInitBinding(); return binding; };";

let loading: Promise<Xgrammar> | undefined;

/** The xgrammar module, loaded once per process (about 50 ms the first time). */
export function loadXgrammar(): Promise<Xgrammar> {
  loading ??= load();
  return loading;
}

async function load(): Promise<Xgrammar> {
  const require = createRequire(import.meta.url);
  const file = require.resolve("@mlc-ai/web-xgrammar");
  const source = readFileSync(file, "utf8");
  if (!source.includes(EXPORT_ANCHOR) || !source.includes(DYNAMIC_IMPORT) || !source.includes("asyncInitBinding")) {
    throw new Error(
      `@mlc-ai/web-xgrammar at ${file} has an unexpected layout (no "${EXPORT_ANCHOR}" or "${DYNAMIC_IMPORT}"); ` +
        "engine/src/structured/xgrammar.ts was written against 0.1.27 — check the installed version",
    );
  }
  const module = { exports: {} as Record<string, unknown> };
  const run = new Function("exports", "module", "require", "__filename", "__dirname", source.replace(DYNAMIC_IMPORT, 'require("module")').replace(EXPORT_ANCHOR, `${EXPORT_ANCHOR} ${EXPORT_BINDING}`));
  run(module.exports, module, createRequire(file), file, dirname(file));
  const exported = module.exports as unknown as Omit<Xgrammar, "binding"> & { loadBinding(): Promise<WasmBinding> };
  const binding = await exported.loadBinding();
  return { binding, Grammar: exported.Grammar, TokenizerInfo: exported.TokenizerInfo, GrammarCompiler: exported.GrammarCompiler };
}
