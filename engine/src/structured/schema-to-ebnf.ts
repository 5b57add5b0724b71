// Translates a checked JSON Schema (or "any JSON object") into xgrammar EBNF whose every sentence is
// JSON that validates against the schema. Keyword refusal lives in schema-check.ts; matching in grammar.ts.
//
// Generated JSON may be a strict subset of what the schema allows: properties come in schema order,
// undeclared properties are generated only for objects that declare none, numbers stay within 15
// significant digits. Whitespace between tokens is off by default (compact JSON: it makes masks
// several times cheaper) and bounded when turned on.
import { ValidationError } from "../errors.js";
import { anyCharThen, jsonStringRest, lit, RuleSet } from "./ebnf.js";
import { formatString, isSupportedFormat } from "./formats.js";
import { integerBounds, integerRange, numberGrammar, type Bound } from "./numbers.js";
import { PatternError, patternString } from "./regex.js";
import { checkSchema, childPath, isSchemaObject, JSON_TYPES, type JsonType } from "./schema-check.js";

export interface ConvertOptions {
  /** Path of the schema in the request, prefixed to error messages. */
  path: string;
  /** The request field errors are attributed to (OpenAI's `param`). */
  param: string;
  /** Most whitespace characters allowed between two JSON tokens (0: compact JSON). */
  maxWhitespace: number;
}

type Schema = boolean | Record<string, unknown>;

const OBJECT_KEYWORDS = ["properties", "required", "additionalProperties"];
const ARRAY_KEYWORDS = ["items", "minItems", "maxItems"];
const STRING_KEYWORDS = ["minLength", "maxLength", "pattern", "format"];
const NUMBER_KEYWORDS = ["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"];

function jsonTypeOf(value: unknown): JsonType {
  if (value === null) return "null";
  if (Array.isArray(value)) return "array";
  if (typeof value === "number") return Number.isInteger(value) ? "integer" : "number";
  return typeof value as JsonType;
}

function typeAllows(types: readonly JsonType[], value: unknown): boolean {
  const t = jsonTypeOf(value);
  return types.includes(t) || (t === "integer" && types.includes("number"));
}

function deepEqual(a: unknown, b: unknown): boolean {
  return JSON.stringify(canonical(a)) === JSON.stringify(canonical(b));
}

/** The value with object keys sorted, so equal JSON has one spelling. */
export function canonical(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(canonical);
  if (isSchemaObject(value)) {
    return Object.fromEntries(Object.keys(value).sort().map((k) => [k, canonical(value[k])]));
  }
  return value;
}

/** "#/a/b~1c" → ["a", "b/c"]; schema-check.ts has already refused anything but "#" and "#/...". */
function decodePointer(ref: string): string[] {
  const fragment = decodeURIComponent(ref.slice(1));
  if (fragment === "") return [];
  return fragment.slice(1).split("/").map((s) => s.replace(/~1/g, "/").replace(/~0/g, "~"));
}

class Converter {
  readonly rules = new RuleSet();
  private readonly refRules = new Map<string, string>();
  /** Why the last schema found empty admits nothing, for the error that reports it. */
  emptyReason = "its schema admits no value";
  private anyObjectRule = "";

  constructor(
    private readonly root: Schema,
    private readonly opts: ConvertOptions,
  ) {}

  private fail(path: string, message: string): never {
    throw new ValidationError(`${path}: ${message}`, this.opts.param);
  }

  /** Marks a schema that admits no generable value; the caller decides whether that is fatal. */
  private empty(path: string, reason: string): undefined {
    this.emptyReason = `${path}: ${reason}`;
    return undefined;
  }

  private failEmpty(path: string, what: string): never {
    this.fail(path, `${what} can never be generated (${this.emptyReason})`);
  }

  /** Whitespace between JSON tokens: nothing by default (compact JSON), else up to maxWhitespace. */
  ws(): string {
    if (this.opts.maxWhitespace === 0) return "";
    return this.rules.memo("ws", () => this.rules.rule("ws", `[ \\n\\t]{0,${this.opts.maxWhitespace}}`));
  }

  freeString(): string {
    return this.rules.memo("free-string", () => this.rules.rule("string", `"\\"" ${jsonStringRest(this.rules)}`));
  }

  anyValue(): string {
    return this.rules.memo("any-value", () => {
      const ws = this.ws();
      const str = this.freeString();
      const value = this.rules.reserve("any_value");
      const object = this.freeObject(value);
      this.anyObjectRule = object;
      const arrayMore = this.rules.reserve("any_array_more");
      this.rules.define(arrayMore, `${ws} "," ${ws} ${value} ${arrayMore} | ${ws} "]"`);
      const array = this.rules.rule("any_array", `"[" ${ws} ("]" | ${value} ${arrayMore})`);
      const number = this.rules.rule("any_number", numberGrammar(undefined, undefined) ?? '"0"');
      this.rules.define(value, `${object} | ${array} | ${str} | ${number} | "true" | "false" | "null"`);
      return value;
    });
  }

  anyObject(): string {
    this.anyValue();
    return this.anyObjectRule;
  }

  /** An object with any keys whose values all match `value`. */
  private freeObject(value: string): string {
    const ws = this.ws();
    const member = `${this.freeString()} ${ws} ":" ${ws} ${value}`;
    const more = this.rules.reserve("object_more");
    this.rules.define(more, `${ws} "," ${ws} ${member} ${more} | ${ws} "}"`);
    return this.rules.rule("object", `"{" ${ws} ("}" | ${member} ${more})`);
  }

  /** The EBNF for values of `schema`, or undefined when none can be generated. */
  value(schema: Schema, path: string, hint: string): string | undefined {
    if (schema === true) return this.anyValue();
    if (schema === false) return this.empty(path, "the schema is false");
    if (typeof schema.$ref === "string") return this.ref(schema.$ref, path);
    if (Array.isArray(schema.allOf)) return this.value(schema.allOf[0] as Schema, childPath(childPath(path, "allOf"), 0), hint);
    if (Array.isArray(schema.anyOf)) return this.alternatives(schema.anyOf as Schema[], childPath(path, "anyOf"), hint);
    if (Array.isArray(schema.oneOf)) {
      this.checkDisjoint(schema.oneOf as Schema[], childPath(path, "oneOf"));
      return this.alternatives(schema.oneOf as Schema[], childPath(path, "oneOf"), hint);
    }
    const types = this.types(schema);
    if (schema.type === undefined && types.length === JSON_TYPES.length - 1 && schema.const === undefined && schema.enum === undefined) {
      return this.anyValue();
    }
    if (schema.const !== undefined || Array.isArray(schema.enum)) return this.literals(schema, types, path, hint);
    const parts: string[] = [];
    for (const type of types) {
      const part = this.typed(schema, type, path, hint);
      if (part !== undefined) parts.push(part);
    }
    if (parts.length === 0) return undefined;
    return parts.length === 1 ? parts[0] : this.rules.rule(hint, parts.join(" | "));
  }

  /** The types a schema's values may take: its "type", else what its keywords imply, else all. */
  private types(schema: Record<string, unknown>): JsonType[] {
    let types: JsonType[];
    if (schema.type !== undefined) types = (Array.isArray(schema.type) ? schema.type : [schema.type]) as JsonType[];
    else {
      const has = (keys: string[]) => keys.some((k) => schema[k] !== undefined);
      types = [];
      if (has(OBJECT_KEYWORDS)) types.push("object");
      if (has(ARRAY_KEYWORDS)) types.push("array");
      if (has(STRING_KEYWORDS)) types.push("string");
      if (has(NUMBER_KEYWORDS)) types.push("number");
      if (types.length === 0) types = [...JSON_TYPES];
    }
    return types.includes("number") ? types.filter((t) => t !== "integer") : types;
  }

  private alternatives(branches: Schema[], path: string, hint: string): string | undefined {
    const parts: string[] = [];
    branches.forEach((branch, i) => {
      const part = this.value(branch, childPath(path, i), `${hint}_${i}`);
      if (part !== undefined) parts.push(part);
    });
    if (parts.length === 0) return this.empty(path, `no alternative can be generated (${this.emptyReason})`);
    return this.rules.rule(hint, [...new Set(parts)].join(" | "));
  }

  private literals(schema: Record<string, unknown>, types: JsonType[], path: string, hint: string): string | undefined {
    const values = schema.const !== undefined ? [schema.const] : (schema.enum as unknown[]);
    const kept = values.filter((v) => schema.type === undefined || typeAllows(types, v));
    if (kept.length === 0) return this.empty(path, `no enum/const value has type ${JSON.stringify(schema.type)}`);
    const texts = [...new Set(kept.map((v) => JSON.stringify(v)))];
    return this.rules.rule(hint, texts.map(lit).join(" | "));
  }

  private typed(schema: Record<string, unknown>, type: JsonType, path: string, hint: string): string | undefined {
    switch (type) {
      case "object":
        return this.object(schema, path, hint);
      case "array":
        return this.array(schema, path, hint);
      case "string":
        return this.string(schema, path, hint);
      case "integer": {
        const range = integerBounds(this.bound(schema, "minimum", "exclusiveMinimum"), this.bound(schema, "maximum", "exclusiveMaximum"));
        if (range === undefined) return this.empty(path, "no integer within ±999999999999999 lies inside its bounds");
        return this.rules.rule(`${hint}_int`, integerRange(range[0], range[1]));
      }
      case "number": {
        const grammar = numberGrammar(this.bound(schema, "minimum", "exclusiveMinimum"), this.bound(schema, "maximum", "exclusiveMaximum"));
        if (grammar === undefined) return this.empty(path, "no number within ±999999999999999 lies inside its bounds");
        return this.rules.rule(`${hint}_num`, grammar);
      }
      case "boolean":
        return this.rules.rule("boolean", '"true" | "false"');
      case "null":
        return '"null"';
    }
  }

  /** The tighter of an inclusive and an exclusive bound on one side. */
  private bound(schema: Record<string, unknown>, inclusiveKey: string, exclusiveKey: string): Bound | undefined {
    const inclusive = schema[inclusiveKey] as number | undefined;
    const exclusive = schema[exclusiveKey] as number | undefined;
    if (inclusive === undefined) return exclusive === undefined ? undefined : { value: exclusive, exclusive: true };
    if (exclusive === undefined) return { value: inclusive, exclusive: false };
    const lower = inclusiveKey === "minimum";
    const exclusiveTighter = lower ? exclusive >= inclusive : exclusive <= inclusive;
    return exclusiveTighter ? { value: exclusive, exclusive: true } : { value: inclusive, exclusive: false };
  }

  private object(schema: Record<string, unknown>, path: string, hint: string): string | undefined {
    const ws = this.ws();
    const properties = (schema.properties ?? {}) as Record<string, Schema>;
    const required = new Set((schema.required ?? []) as string[]);
    const additional = (schema.additionalProperties ?? true) as Schema;
    const names = [...Object.keys(properties), ...[...required].filter((r) => !Object.hasOwn(properties, r))];
    if (names.length === 0) {
      if (additional === false) return this.rules.rule("empty_object", `"{" ${ws} "}"`);
      const value = this.value(additional, childPath(path, "additionalProperties"), `${hint}_value`);
      return value === undefined ? this.rules.rule("empty_object", `"{" ${ws} "}"`) : this.freeObject(value);
    }
    const members: { expr: string; required: boolean }[] = [];
    for (const name of names) {
      const declared = Object.hasOwn(properties, name);
      const propPath = declared ? childPath(childPath(path, "properties"), name) : childPath(path, "additionalProperties");
      const value = this.value(declared ? properties[name] : additional, propPath, `${hint}_${name}`);
      if (value === undefined) {
        if (required.has(name)) return this.empty(propPath, `required property ${JSON.stringify(name)} can never be generated (${this.emptyReason})`);
        continue;
      }
      members.push({ expr: `${lit(JSON.stringify(name))} ${ws} ":" ${ws} ${value}`, required: required.has(name) });
    }
    // after: members i.. once one was written (each needs a comma); first: none written yet, which
    // is only reachable at i when every member before i is optional.
    const firstNeeded = members.map((_, i) => members.slice(0, i).every((m) => !m.required));
    let after = this.rules.rule(`${hint}_end`, `${ws} "}"`);
    let first = '"}"';
    for (let i = members.length - 1; i >= 0; i--) {
      const { expr, required: needed } = members[i];
      if (firstNeeded[i]) {
        const firstHere = `${expr} ${after}`;
        first = this.rules.rule(`${hint}_first${i}`, needed ? firstHere : `${firstHere} | ${first}`);
      }
      const withThis = `${ws} "," ${ws} ${expr} ${after}`;
      after = this.rules.rule(`${hint}_after${i}`, needed ? withThis : `${withThis} | ${after}`);
    }
    return this.rules.rule(hint, `"{" ${ws} ${first}`);
  }

  private array(schema: Record<string, unknown>, path: string, hint: string): string | undefined {
    const ws = this.ws();
    const min = (schema.minItems as number | undefined) ?? 0;
    const max = (schema.maxItems as number | undefined) ?? Infinity;
    const items = (schema.items ?? true) as Schema;
    const item = this.value(items, childPath(path, "items"), `${hint}_item`);
    if (item === undefined || max === 0) {
      if (min > 0) this.failEmpty(childPath(path, "items"), `an array with minItems ${min}`);
      return this.rules.rule("empty_array", `"[" ${ws} "]"`);
    }
    const close = `${ws} "]"`;
    // after(k): the rule once k >= 1 items are written.
    let tail: string;
    const counted = max === Infinity ? min : max;
    if (max === Infinity) {
      const loop = this.rules.reserve(`${hint}_more`);
      this.rules.define(loop, `${ws} "," ${ws} ${item} ${loop} | ${close}`);
      tail = loop;
    } else {
      tail = this.rules.rule(`${hint}_full`, close);
    }
    for (let k = counted - 1; k >= 1; k--) {
      const more = `${ws} "," ${ws} ${item} ${tail}`;
      tail = this.rules.rule(`${hint}_at${k}`, k >= min ? `${more} | ${close}` : more);
    }
    const start = min === 0 ? `"]" | ${item} ${tail}` : `${item} ${tail}`;
    return this.rules.rule(hint, `"[" ${ws} (${start})`);
  }

  private string(schema: Record<string, unknown>, path: string, hint: string): string | undefined {
    if (typeof schema.format === "string" && isSupportedFormat(schema.format)) return formatString(this.rules, schema.format);
    if (typeof schema.pattern === "string") {
      try {
        return patternString(this.rules, schema.pattern, `${hint}_pattern`);
      } catch (err) {
        if (err instanceof PatternError) this.fail(childPath(path, "pattern"), err.message);
        throw err;
      }
    }
    const min = (schema.minLength as number | undefined) ?? 0;
    const max = (schema.maxLength as number | undefined) ?? Infinity;
    if (min === 0 && max === Infinity) return this.freeString();
    return this.rules.memo(`string:${min}:${max}`, () => this.countedString(min, max));
  }

  /**
   * A string of min..max code points. Rules count what is left ("up to j more", "i more needed"),
   * so strings with different bounds share their states; each state costs compile time per token.
   */
  private countedString(min: number, max: number): string {
    const upTo = (j: number): string =>
      this.rules.memo(`string-up-to:${j}`, () =>
        j === 0 ? this.rules.rule("string_close", '"\\""') : this.rules.rule(`string_up_to_${j}`, `"\\"" | ${anyCharThen(this.rules, upTo(j - 1), true)}`),
      );
    const tailKey = max === Infinity ? "free" : `${max - min}`;
    const need = (i: number): string =>
      this.rules.memo(`string-need:${i}:${tailKey}`, () =>
        i === 0
          ? max === Infinity
            ? jsonStringRest(this.rules)
            : upTo(max - min)
          : this.rules.rule(`string_need_${i}_then_${tailKey}`, anyCharThen(this.rules, need(i - 1), true)),
      );
    return this.rules.rule(`string_${min}_${max === Infinity ? "inf" : max}`, `"\\"" ${need(min)}`);
  }

  private resolve(ref: string, path: string): { schema: Schema; path: string } {
    let node: unknown = this.root;
    let at = this.opts.path;
    for (const segment of decodePointer(ref)) {
      const next: unknown = Array.isArray(node) ? node[Number(segment)] : isSchemaObject(node) ? node[segment] : undefined;
      if (next === undefined) {
        const defs = isSchemaObject(this.root) ? Object.keys({ ...(this.root.$defs as object), ...(this.root.definitions as object) }) : [];
        this.fail(childPath(path, "$ref"), `${JSON.stringify(ref)} does not resolve (no ${JSON.stringify(segment)}; defined: ${defs.length === 0 ? "none" : defs.join(", ")})`);
      }
      node = next;
      at = childPath(at, Array.isArray(node) ? Number(segment) : segment);
    }
    if (typeof node !== "boolean" && !isSchemaObject(node)) this.fail(childPath(path, "$ref"), `${JSON.stringify(ref)} points at ${JSON.stringify(node)}, not a schema`);
    return { schema: node, path: at };
  }

  private ref(ref: string, path: string): string | undefined {
    const known = this.refRules.get(ref);
    if (known !== undefined) return known;
    const target = this.resolve(ref, path);
    const segments = decodePointer(ref);
    const name = this.rules.reserve(`def_${segments[segments.length - 1] ?? "root"}`);
    this.refRules.set(ref, name);
    const body = this.value(target.schema, target.path, `${name}_v`);
    if (body === undefined) this.failEmpty(target.path, `the schema that ${JSON.stringify(ref)} names`);
    this.rules.define(name, body);
    return name;
  }

  private deref(schema: Schema, seen = new Set<string>()): Schema {
    let current = schema;
    while (isSchemaObject(current)) {
      if (typeof current.$ref === "string" && !seen.has(current.$ref)) {
        seen.add(current.$ref);
        current = this.resolve(current.$ref, this.opts.path).schema;
      } else if (Array.isArray(current.allOf)) current = current.allOf[0] as Schema;
      else break;
    }
    return current;
  }

  /** Types a schema's generated values may have; "integer" counts as "number". */
  private outputTypes(schema: Schema, depth = 0): Set<JsonType> {
    const s = this.deref(schema);
    const all = new Set<JsonType>(JSON_TYPES.filter((t) => t !== "integer"));
    if (s === true || depth > 16) return all;
    if (s === false) return new Set();
    const branches = (s.anyOf ?? s.oneOf) as Schema[] | undefined;
    if (branches !== undefined) return new Set(branches.flatMap((b) => [...this.outputTypes(b, depth + 1)]));
    if (s.const !== undefined || Array.isArray(s.enum)) {
      const values = s.const !== undefined ? [s.const] : (s.enum as unknown[]);
      return new Set(values.filter((v) => s.type === undefined || typeAllows(this.types(s), v)).map((v) => (jsonTypeOf(v) === "integer" ? "number" : jsonTypeOf(v))));
    }
    return new Set(this.types(s).map((t) => (t === "integer" ? "number" : t)));
  }

  private literalValues(schema: Schema): unknown[] | undefined {
    const s = this.deref(schema);
    if (!isSchemaObject(s)) return undefined;
    if (s.const !== undefined) return [s.const];
    return Array.isArray(s.enum) ? (s.enum as unknown[]) : undefined;
  }

  /** True when nothing generated from `a` can validate against `b`. */
  private excludes(a: Record<string, unknown>, b: Record<string, unknown>): boolean {
    const aProps = (a.properties ?? {}) as Record<string, Schema>;
    const bProps = (b.properties ?? {}) as Record<string, Schema>;
    const aRequired = (a.required ?? []) as string[];
    const bRequired = (b.required ?? []) as string[];
    const aKeys = new Set([...Object.keys(aProps), ...aRequired]);
    for (const key of aRequired) {
      const mine = Object.hasOwn(aProps, key) ? this.literalValues(aProps[key]) : undefined;
      const theirs = Object.hasOwn(bProps, key) ? this.literalValues(bProps[key]) : undefined;
      if (mine !== undefined && theirs !== undefined && !mine.some((m) => theirs.some((t) => deepEqual(m, t)))) return true;
      if (b.additionalProperties === false && !Object.hasOwn(bProps, key)) return true;
    }
    return aKeys.size > 0 && bRequired.some((key) => !aKeys.has(key));
  }

  /** oneOf needs exactly one branch to match; refuse branches we cannot prove disjoint. */
  private checkDisjoint(branches: Schema[], path: string): void {
    for (let i = 0; i < branches.length; i++) {
      for (let j = i + 1; j < branches.length; j++) {
        if (this.disjoint(branches[i], branches[j])) continue;
        this.fail(
          path,
          `branches ${i} and ${j} may both match one value, and oneOf requires exactly one (use anyOf, or make them differ by type, by a required property with different const/enum values, or by additionalProperties: false)`,
        );
      }
    }
  }

  private disjoint(x: Schema, y: Schema): boolean {
    const tx = this.outputTypes(x);
    const ty = this.outputTypes(y);
    const shared = [...tx].filter((t) => ty.has(t));
    if (shared.length === 0) return true;
    const vx = this.literalValues(x);
    const vy = this.literalValues(y);
    if (vx !== undefined && vy !== undefined) return !vx.some((a) => vy.some((b) => deepEqual(a, b)));
    if (shared.length !== 1 || shared[0] !== "object") return false;
    const a = this.deref(x);
    const b = this.deref(y);
    if (!isSchemaObject(a) || !isSchemaObject(b) || a.anyOf !== undefined || a.oneOf !== undefined || b.anyOf !== undefined || b.oneOf !== undefined) return false;
    return this.excludes(a, b) && this.excludes(b, a);
  }
}

/** The root: the value, with whitespace around it, or one optional leading space in compact mode
 * (SentencePiece vocabularies start words with a space). */
function grammarText(converter: Converter, value: string, maxWhitespace: number): string {
  const ws = converter.ws();
  return converter.rules.toString(maxWhitespace === 0 ? `" "? ${value}` : `${ws} ${value} ${ws}`);
}

/** EBNF for JSON values valid against `schema`; throws ValidationError for what it cannot enforce. */
export function schemaToEbnf(schema: unknown, opts: ConvertOptions): string {
  checkSchema(schema, opts.path, opts.param);
  const converter = new Converter(schema as Schema, opts);
  const value = converter.value(schema as Schema, opts.path, "root_value");
  if (value === undefined) {
    throw new ValidationError(`${opts.path}: no JSON value satisfies this schema as constrained decoding generates it (${converter.emptyReason})`, opts.param);
  }
  return grammarText(converter, value, opts.maxWhitespace);
}

/** EBNF for any JSON object (response_format json_object). */
export function jsonObjectEbnf(maxWhitespace: number): string {
  const converter = new Converter(true, { path: "response_format", param: "response_format", maxWhitespace });
  return grammarText(converter, converter.anyObject(), maxWhitespace);
}
