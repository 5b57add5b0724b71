// Structured generation on the largest byte-level vocabulary (qwen3, ~151k tokens, with literal
// added tokens): json_object plus a handful of the schemas, to keep the suite short.
import { generationSuite } from "./generation.js";
import { SCHEMAS } from "./schemas.js";

const SUBSET = ["order with items", "recursive tree", "discriminated union", "formats", "patterns needing escapes", "unicode enum"];
generationSuite(
  "qwen3",
  SCHEMAS.filter((s) => SUBSET.includes(s.name)),
);
