// Refuses, before any grammar is built, every JSON Schema keyword or combination that constrained
// decoding would otherwise drop: a ValidationError names the keyword and its JSON path. It builds nothing.
import { ValidationError } from "../errors.js";
import { FORMAT_LENGTHS, isSupportedFormat, SUPPORTED_FORMATS } from "./formats.js";
import { checkPattern, PatternError } from "./regex.js";

/** Keywords that only describe a schema; they never constrain what is generated. */
export const ANNOTATION_KEYWORDS = [
  "title", "description", "default", "examples", "$comment", "deprecated", "readOnly", "writeOnly", "$schema",
] as const;

/** Keywords whose constraint the grammar enforces. */
export const CONSTRAINT_KEYWORDS = [
  "type", "enum", "const",
  "properties", "required", "additionalProperties",
  "items", "minItems", "maxItems",
  "minLength", "maxLength", "pattern", "format",
  "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
  "anyOf", "oneOf", "allOf", "$ref", "$defs", "definitions",
] as const;

export const SUPPORTED_KEYWORDS: readonly string[] = [...ANNOTATION_KEYWORDS, ...CONSTRAINT_KEYWORDS, "$id"];

export const JSON_TYPES = ["object", "array", "string", "number", "integer", "boolean", "null"] as const;
export type JsonType = (typeof JSON_TYPES)[number];

/** Longest minLength/maxLength we constrain: every counted character is one grammar state per vocabulary. */
export const MAX_COUNTED_LENGTH = 64;
/** Largest minItems/maxItems we constrain: every counted item is one (cheap) grammar rule. */
export const MAX_COUNTED_ITEMS = 1000;
const MAX_SCHEMA_NODES = 5000;
const MAX_SCHEMA_DEPTH = 64;

const IDENTIFIER = /^[A-Za-z_$][A-Za-z0-9_$]*$/;

/** `base.key`, or `base["odd key"]` when the key is not an identifier. */
export function childPath(base: string, key: string | number): string {
  if (typeof key === "number") return `${base}[${key}]`;
  return IDENTIFIER.test(key) ? `${base}.${key}` : `${base}[${JSON.stringify(key)}]`;
}

type SchemaObject = Record<string, unknown>;

function decodable(ref: string): boolean {
  try {
    decodeURIComponent(ref);
    return true;
  } catch {
    return false;
  }
}

export function isSchemaObject(value: unknown): value is SchemaObject {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

const ALONE_WITH_COMBINATOR = new Set<string>([...ANNOTATION_KEYWORDS, "$defs", "definitions", "$id"]);
const ALONGSIDE_ENUM = new Set<string>([...ANNOTATION_KEYWORDS, "$defs", "definitions", "$id", "type"]);

class Checker {
  private nodes = 0;

  constructor(private readonly param: string) {}

  fail(path: string, message: string): never {
    throw new ValidationError(`${path}: ${message}`, this.param);
  }

  schema(node: unknown, path: string, depth: number): void {
    if (++this.nodes > MAX_SCHEMA_NODES) this.fail(path, `schema has more than ${MAX_SCHEMA_NODES} subschemas (split it or simplify it)`);
    if (depth > MAX_SCHEMA_DEPTH) this.fail(path, `schema nests deeper than ${MAX_SCHEMA_DEPTH} levels (use $defs and $ref for recursion)`);
    if (typeof node === "boolean") return;
    if (!isSchemaObject(node)) this.fail(path, `a schema must be an object or a boolean, got ${JSON.stringify(node)}`);
    for (const key of Object.keys(node)) {
      if (!SUPPORTED_KEYWORDS.includes(key)) {
        this.fail(childPath(path, key), `unsupported keyword "${key}" (supported: ${CONSTRAINT_KEYWORDS.join(", ")}; annotations are ignored)`);
      }
    }
    if (node.$id !== undefined && depth > 0) this.fail(childPath(path, "$id"), `"$id" is supported only on the root schema`);
    this.combinations(node, path);
    this.values(node, path, depth);
  }

  private combinations(node: SchemaObject, path: string): void {
    for (const combinator of ["anyOf", "oneOf", "allOf", "$ref"]) {
      if (node[combinator] === undefined) continue;
      for (const key of Object.keys(node)) {
        if (key !== combinator && !ALONE_WITH_COMBINATOR.has(key)) {
          this.fail(childPath(path, key), `"${key}" alongside "${combinator}" is not supported (move it into the referenced or each alternative schema)`);
        }
      }
    }
    for (const keyword of ["enum", "const"]) {
      if (node[keyword] === undefined) continue;
      for (const key of Object.keys(node)) {
        if (key !== keyword && !ALONGSIDE_ENUM.has(key)) {
          this.fail(childPath(path, key), `"${key}" alongside "${keyword}" is not supported (list only the values that satisfy it)`);
        }
      }
    }
    const hasLength = node.minLength !== undefined || node.maxLength !== undefined;
    if (node.pattern !== undefined && (hasLength || node.format !== undefined)) {
      this.fail(childPath(path, "pattern"), `"pattern" combined with ${hasLength ? "minLength/maxLength" : "format"} is not supported (fold the length into the pattern, e.g. ^[a-z]{2,8}$)`);
    }
  }

  private nonNegativeInteger(node: SchemaObject, key: string, path: string): number | undefined {
    const value = node[key];
    if (value === undefined) return undefined;
    if (typeof value !== "number" || !Number.isInteger(value) || value < 0) {
      this.fail(childPath(path, key), `must be a non-negative integer, got ${JSON.stringify(value)}`);
    }
    return value;
  }

  private subschemas(node: SchemaObject, key: string, path: string, depth: number, asArray: boolean): void {
    const value = node[key];
    if (value === undefined) return;
    const here = childPath(path, key);
    if (asArray) {
      if (!Array.isArray(value) || value.length === 0) this.fail(here, `must be a non-empty array of schemas, got ${JSON.stringify(value)}`);
      value.forEach((sub, i) => this.schema(sub, childPath(here, i), depth + 1));
      return;
    }
    if (!isSchemaObject(value)) this.fail(here, `must be an object mapping names to schemas, got ${JSON.stringify(value)}`);
    for (const [name, sub] of Object.entries(value)) this.schema(sub, childPath(here, name), depth + 1);
  }

  private values(node: SchemaObject, path: string, depth: number): void {
    const type = node.type;
    if (type !== undefined) {
      const types = Array.isArray(type) ? type : [type];
      if (types.length === 0 || types.some((t) => !(JSON_TYPES as readonly unknown[]).includes(t)) || new Set(types).size !== types.length) {
        this.fail(childPath(path, "type"), `must be one of ${JSON_TYPES.join(", ")} or a non-empty array of distinct ones, got ${JSON.stringify(type)}`);
      }
    }
    if (node.enum !== undefined && (!Array.isArray(node.enum) || node.enum.length === 0)) {
      this.fail(childPath(path, "enum"), `must be a non-empty array, got ${JSON.stringify(node.enum)}`);
    }
    if (node.required !== undefined && (!Array.isArray(node.required) || node.required.some((r) => typeof r !== "string"))) {
      this.fail(childPath(path, "required"), `must be an array of property names, got ${JSON.stringify(node.required)}`);
    }
    this.subschemas(node, "properties", path, depth, false);
    if (node.additionalProperties !== undefined) this.schema(node.additionalProperties, childPath(path, "additionalProperties"), depth + 1);
    if (Array.isArray(node.items)) {
      this.fail(childPath(path, "items"), `an array of schemas (draft-04 tuple form) is not supported; give one schema for every item`);
    }
    if (node.items !== undefined) this.schema(node.items, childPath(path, "items"), depth + 1);
    this.counts(node, path, "minItems", "maxItems", MAX_COUNTED_ITEMS);
    this.counts(node, path, "minLength", "maxLength", MAX_COUNTED_LENGTH);
    this.string(node, path);
    for (const key of ["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"]) {
      const value = node[key];
      if (value === undefined) continue;
      if (typeof value === "boolean") this.fail(childPath(path, key), `draft-04 boolean "${key}" is not supported; give the bound as a number`);
      if (typeof value !== "number" || !Number.isFinite(value)) this.fail(childPath(path, key), `must be a finite number, got ${JSON.stringify(value)}`);
    }
    this.subschemas(node, "anyOf", path, depth, true);
    this.subschemas(node, "oneOf", path, depth, true);
    this.subschemas(node, "allOf", path, depth, true);
    if (Array.isArray(node.allOf) && node.allOf.length > 1) {
      this.fail(childPath(path, "allOf"), `allOf with ${node.allOf.length} schemas is not supported; merge them into one schema (allOf with one schema is fine)`);
    }
    if (node.$ref !== undefined && (typeof node.$ref !== "string" || !/^#(\/.*)?$/.test(node.$ref) || !decodable(node.$ref))) {
      this.fail(childPath(path, "$ref"), `only local JSON-pointer references ("#", "#/$defs/Name") are supported, got ${JSON.stringify(node.$ref)}`);
    }
    this.subschemas(node, "$defs", path, depth, false);
    this.subschemas(node, "definitions", path, depth, false);
  }

  private counts(node: SchemaObject, path: string, minKey: string, maxKey: string, limit: number): void {
    const min = this.nonNegativeInteger(node, minKey, path);
    const max = this.nonNegativeInteger(node, maxKey, path);
    if (min !== undefined && max !== undefined && min > max) this.fail(childPath(path, minKey), `${minKey} ${min} is above ${maxKey} ${max}; no value can satisfy both`);
    for (const [key, value] of [[minKey, min], [maxKey, max]] as const) {
      if (value !== undefined && value > limit && !(key === maxKey && node.format !== undefined)) {
        this.fail(childPath(path, key), `${key} ${value} is above the ${limit} that constrained decoding supports (each counted unit is a grammar state; use a smaller bound or omit it)`);
      }
    }
  }

  private string(node: SchemaObject, path: string): void {
    if (node.pattern !== undefined) {
      if (typeof node.pattern !== "string") this.fail(childPath(path, "pattern"), `must be a string, got ${JSON.stringify(node.pattern)}`);
      try {
        checkPattern(node.pattern);
      } catch (err) {
        if (err instanceof PatternError) this.fail(childPath(path, "pattern"), err.message);
        throw err;
      }
    }
    const format = node.format;
    if (format === undefined) return;
    if (typeof format !== "string" || !isSupportedFormat(format)) {
      this.fail(childPath(path, "format"), `unsupported format ${JSON.stringify(format)} (supported: ${SUPPORTED_FORMATS.join(", ")})`);
    }
    const [shortest, longest] = FORMAT_LENGTHS[format];
    const min = node.minLength;
    const max = node.maxLength;
    if ((typeof min === "number" && min > shortest) || (typeof max === "number" && max < longest)) {
      this.fail(
        childPath(path, typeof max === "number" && max < longest ? "maxLength" : "minLength"),
        `minLength/maxLength with format "${format}" must not cut into its lengths ${shortest}..${longest === Infinity ? "unbounded" : longest} (drop them, or use a pattern instead of the format)`,
      );
    }
  }
}

/**
 * Throws a ValidationError naming the first keyword or combination the grammar would not enforce.
 * `path` prefixes messages (e.g. "response_format.json_schema.schema"); `param` goes on the error.
 */
export function checkSchema(schema: unknown, path: string, param: string): void {
  new Checker(param).schema(schema, path, 0);
}
