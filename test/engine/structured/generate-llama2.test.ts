// Structured generation on a SentencePiece vocabulary with byte fallback (llama2, 32000 tokens).
// The schemas and checks live in schemas.ts and generation.ts.
import { generationSuite } from "./generation.js";
import { SCHEMAS } from "./schemas.js";

generationSuite("llama2", SCHEMAS);
