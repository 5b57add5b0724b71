// Tokenizer of a model or adapter directory: encoding and decoding through @huggingface/tokenizers (reads
// tokenizer.json), chat templates through @huggingface/jinja, and incremental detokenization for streaming.
// Knows nothing of models or requests.
import fs from "node:fs";
import path from "node:path";

import { Template } from "@huggingface/jinja";
import { Tokenizer as HfTokenizer } from "@huggingface/tokenizers";

import { ValidationError } from "./errors.js";

export interface ChatMessage {
  role: string;
  content: string;
  [k: string]: unknown;
}

type Json = Record<string, any>;

function tokenContent(v: unknown): string | undefined {
  if (typeof v === "string") return v;
  if (v && typeof v === "object" && typeof (v as Json).content === "string") return (v as Json).content;
  return undefined;
}

export class Tokenizer {
  readonly vocabSize: number;
  readonly bosId?: number;
  readonly eosIds: number[];
  readonly bosToken?: string;
  readonly eosToken?: string;
  readonly chatTemplate?: string;
  readonly vocabType: "byte_level" | "sentencepiece";
  private readonly special: Set<number>;
  private readonly addBos: boolean;
  private template?: Template;

  private constructor(
    private readonly hf: HfTokenizer,
    /** tokenizer.json as parsed (grammar vocabularies read it). */
    readonly json: Json,
    private readonly config: Json,
    extraEos: number[],
  ) {
    const vocab = json.model?.vocab ?? {};
    let max = (Array.isArray(vocab) ? vocab.length : Object.keys(vocab).length) - 1;
    this.special = new Set();
    for (const t of json.added_tokens ?? []) {
      max = Math.max(max, t.id);
      if (t.special) this.special.add(t.id);
    }
    this.vocabSize = max + 1;
    this.bosToken = tokenContent(config.bos_token);
    this.eosToken = tokenContent(config.eos_token);
    this.bosId = this.bosToken !== undefined ? hf.token_to_id(this.bosToken) : undefined;
    const eos = new Set(extraEos);
    const e = this.eosToken !== undefined ? hf.token_to_id(this.eosToken) : undefined;
    if (e !== undefined) eos.add(e);
    this.eosIds = [...eos];
    const tpl = config.chat_template;
    this.chatTemplate = typeof tpl === "string" ? tpl : Array.isArray(tpl) ? tpl.find((t: Json) => t.name === "default")?.template : undefined;
    const pre = JSON.stringify(json.pre_tokenizer ?? {}) + JSON.stringify(json.decoder ?? {});
    this.vocabType = pre.includes("ByteLevel") ? "byte_level" : "sentencepiece";
    // Whether encode() adds BOS by itself (post-processor) — used to avoid a double BOS after chat templates.
    this.addBos = this.bosId !== undefined && hf.encode("a", { add_special_tokens: true }).ids[0] === this.bosId;
  }

  /** Loads tokenizer.json and tokenizer_config.json from dir; extraEos: ids from config/generation_config. */
  static load(dir: string, extraEos: number[] = []): Tokenizer {
    const read = (f: string, required: boolean): Json => {
      const p = path.join(dir, f);
      if (!fs.existsSync(p)) {
        if (required) throw new Error(`${p} not found: the model directory needs a tokenizer.json`);
        return {};
      }
      try {
        return JSON.parse(fs.readFileSync(p, "utf8"));
      } catch (e) {
        throw new Error(`cannot parse ${p}: ${(e as Error).message}`);
      }
    };
    const json = read("tokenizer.json", true);
    const config = read("tokenizer_config.json", false);
    return new Tokenizer(new HfTokenizer(json, config), json, config, extraEos);
  }

  encode(text: string, addSpecialTokens = true): number[] {
    return this.hf.encode(text, { add_special_tokens: addSpecialTokens }).ids;
  }

  decode(ids: number[], skipSpecialTokens = true): string {
    if (ids.length === 0) return "";
    return this.hf.decode(ids, { skip_special_tokens: skipSpecialTokens, clean_up_tokenization_spaces: false });
  }

  isSpecial(id: number): boolean {
    return this.special.has(id);
  }

  /** Token strings by id as tokenizer.json stores them (byte-level symbols or ▁-pieces). */
  tokenStrings(): string[] {
    const out: string[] = new Array(this.vocabSize).fill("");
    for (const [s, id] of Object.entries(this.json.model?.vocab ?? {})) out[id as number] = s;
    for (const t of this.json.added_tokens ?? []) out[t.id] = t.content;
    return out;
  }

  /**
   * Renders a chat with this tokenizer's template (or `template` from an adapter) and encodes it. The rendered
   * text already carries BOS when the template writes it, so encoding adds special tokens only if it does not.
   */
  applyChatTemplate(messages: ChatMessage[], opts: { addGenerationPrompt?: boolean; template?: string; tools?: unknown[] } = {}): { text: string; ids: number[] } {
    const src = opts.template ?? this.chatTemplate;
    if (!src) throw new ValidationError("this model has no chat template (tokenizer_config.json chat_template): use /v1/completions or /generate with a plain prompt", "messages");
    let tpl: Template;
    try {
      tpl = src === this.chatTemplate ? (this.template ??= new Template(src)) : new Template(src);
    } catch (e) {
      throw new ValidationError(`the chat template does not parse: ${(e as Error).message}`, "messages");
    }
    let text: string;
    try {
      text = tpl.render({
        messages,
        // As transformers renders it: the tools as JSON-schema function specs, or none.
        tools: opts.tools ?? null,
        add_generation_prompt: opts.addGenerationPrompt ?? true,
        bos_token: this.bosToken ?? "",
        eos_token: this.eosToken ?? "",
      });
    } catch (e) {
      throw new ValidationError(`chat template failed on these messages: ${(e as Error).message}`, "messages");
    }
    const startsWithBos = this.bosToken !== undefined && text.startsWith(this.bosToken);
    return { text, ids: this.encode(text, this.addBos && !startsWithBos) };
  }
}

/**
 * Streams text from tokens as they come: decodes a short window of tokens and emits only what is new and
 * complete, so a multi-byte character split over tokens is held back until whole and SentencePiece's leading
 * space is handled by the context. `context` are the last prompt tokens.
 */
export class IncrementalDecoder {
  private tokens: number[];
  private prefixOffset: number;
  private readOffset: number;

  constructor(
    private readonly tok: Tokenizer,
    context: number[] = [],
    private readonly skipSpecial = true,
  ) {
    this.tokens = context.slice(-6);
    this.prefixOffset = 0;
    this.readOffset = this.tokens.length;
  }

  /** Adds a token; returns the text it completes (maybe ""). */
  push(id: number): string {
    this.tokens.push(id);
    const prefix = this.tok.decode(this.tokens.slice(this.prefixOffset, this.readOffset), this.skipSpecial);
    const full = this.tok.decode(this.tokens.slice(this.prefixOffset), this.skipSpecial);
    if (full.length > prefix.length && !full.endsWith("\uFFFD") && full.startsWith(prefix)) {
      const text = full.slice(prefix.length);
      this.prefixOffset = this.readOffset;
      this.readOffset = this.tokens.length;
      this.compact();
      return text;
    }
    return "";
  }

  /** Whatever is still held back (an incomplete character at the end), decoded as is. */
  flush(): string {
    const prefix = this.tok.decode(this.tokens.slice(this.prefixOffset, this.readOffset), this.skipSpecial);
    const full = this.tok.decode(this.tokens.slice(this.prefixOffset), this.skipSpecial);
    this.prefixOffset = this.readOffset = this.tokens.length;
    return full.startsWith(prefix) ? full.slice(prefix.length) : "";
  }

  private compact(): void {
    if (this.prefixOffset > 64) {
      this.tokens = this.tokens.slice(this.prefixOffset);
      this.readOffset -= this.prefixOffset;
      this.prefixOffset = 0;
    }
  }
}
