// Structured generation on a byte-level BPE vocabulary (llama3, 128256 tokens).
// The schemas and checks live in schemas.ts and generation.ts.
import { generationSuite } from "./generation.js";
import { SCHEMAS } from "./schemas.js";

generationSuite("llama3", SCHEMAS);
