// The public face of structured output (issue 12) for the engine and server: vocabularies, response
// formats compiled to grammars, per-sequence matchers, and the schema keyword check. Nothing else.
export {
  type CompiledGrammar,
  type CompileOptions,
  compileResponseFormat,
  type GrammarMatcher,
  GrammarVocab,
  type GrammarVocabInput,
  type GrammarVocabOptions,
  type ResponseFormat,
  type VocabType,
  vocabInputFromTokenizerJson,
} from "./grammar.js";
export { checkSchema, CONSTRAINT_KEYWORDS, MAX_COUNTED_ITEMS, MAX_COUNTED_LENGTH, SUPPORTED_KEYWORDS } from "./schema-check.js";
export { SUPPORTED_FORMATS } from "./formats.js";
