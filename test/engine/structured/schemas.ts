// JSON Schemas that structured-output generation tests run: real-world shapes (extraction, function
// calls, catalogs, events) covering every supported keyword. Data only; the tests decide what to check.

export interface NamedSchema {
  name: string;
  schema: Record<string, unknown>;
}

const address = {
  type: "object",
  properties: {
    street: { type: "string", maxLength: 12 },
    city: { type: "string", minLength: 1, maxLength: 10 },
    zip: { type: "string", pattern: "^\\d{5}(-\\d{4})?$" },
    country: { enum: ["US", "CA", "MX"] },
  },
  required: ["street", "city", "zip", "country"],
  additionalProperties: false,
};

export const SCHEMAS: NamedSchema[] = [
  {
    name: "person",
    schema: {
      type: "object",
      properties: { name: { type: "string" }, age: { type: "integer", minimum: 0, maximum: 150 }, email: { type: "string", format: "email" } },
      required: ["name", "age", "email"],
      additionalProperties: false,
    },
  },
  { name: "address", schema: address },
  {
    name: "order with items",
    schema: {
      type: "object",
      properties: {
        id: { type: "string", format: "uuid" },
        created: { type: "string", format: "date-time" },
        items: {
          type: "array",
          minItems: 1,
          maxItems: 4,
          items: {
            type: "object",
            properties: {
              sku: { type: "string", pattern: "^[A-Z]{3}-\\d{4}$" },
              qty: { type: "integer", minimum: 1, maximum: 99 },
              price: { type: "number", minimum: 0, exclusiveMaximum: 10000 },
            },
            required: ["sku", "qty", "price"],
            additionalProperties: false,
          },
        },
        status: { type: "string", enum: ["pending", "paid", "shipped", "cancelled"] },
      },
      required: ["id", "created", "items", "status"],
      additionalProperties: false,
    },
  },
  {
    name: "customer with $defs",
    schema: {
      $schema: "https://json-schema.org/draft/2020-12/schema",
      type: "object",
      properties: { name: { type: "string", maxLength: 12 }, billing: { $ref: "#/$defs/address" }, shipping: { $ref: "#/$defs/address", description: "where to ship" } },
      required: ["name", "billing"],
      additionalProperties: false,
      $defs: { address },
    },
  },
  {
    name: "recursive tree",
    schema: {
      $ref: "#/$defs/node",
      $defs: {
        node: {
          type: "object",
          properties: { value: { type: "integer" }, children: { type: "array", items: { $ref: "#/$defs/node" }, maxItems: 2 } },
          required: ["value", "children"],
          additionalProperties: false,
        },
      },
    },
  },
  {
    name: "nullable fields",
    schema: {
      type: "object",
      properties: { first: { type: "string", maxLength: 12 }, middle: { anyOf: [{ type: "string", maxLength: 10 }, { type: "null" }] }, nickname: { type: ["string", "null"] } },
      required: ["first", "middle", "nickname"],
      additionalProperties: false,
    },
  },
  {
    name: "discriminated union",
    schema: {
      type: "object",
      properties: {
        shape: {
          oneOf: [
            { type: "object", properties: { kind: { const: "circle" }, radius: { type: "number", exclusiveMinimum: 0, maximum: 100 } }, required: ["kind", "radius"], additionalProperties: false },
            { type: "object", properties: { kind: { const: "rect" }, w: { type: "number", minimum: 0 }, h: { type: "number", minimum: 0 } }, required: ["kind", "w", "h"], additionalProperties: false },
          ],
        },
      },
      required: ["shape"],
      additionalProperties: false,
    },
  },
  {
    name: "booleans and null",
    schema: { type: "object", properties: { active: { type: "boolean" }, deleted: { type: "null" }, flags: { type: "array", items: { type: "boolean" }, maxItems: 3 } }, required: ["active", "deleted", "flags"], additionalProperties: false },
  },
  {
    name: "consts",
    schema: { type: "object", properties: { version: { const: 2 }, kind: { const: "invoice" }, meta: { const: { a: [1, 2], b: null } } }, required: ["version", "kind", "meta"], additionalProperties: false },
  },
  {
    name: "mixed enum",
    schema: { type: "object", properties: { level: { enum: [1, 2.5, "high", null, true, { deep: "yes" }] } }, required: ["level"], additionalProperties: false },
  },
  {
    name: "geo bounds",
    schema: {
      type: "object",
      properties: { lat: { type: "number", minimum: -90, maximum: 90 }, lon: { type: "number", minimum: -180, maximum: 180 }, tempC: { type: "number", exclusiveMinimum: -273.15, maximum: 1e4 } },
      required: ["lat", "lon", "tempC"],
      additionalProperties: false,
    },
  },
  {
    name: "integer bounds",
    schema: {
      type: "object",
      properties: {
        digit: { type: "integer", exclusiveMinimum: 0, exclusiveMaximum: 10 },
        negative: { type: "integer", minimum: -5, maximum: -1 },
        year: { type: "integer", minimum: 1900, maximum: 2100 },
        big: { type: "integer", minimum: 1000000 },
      },
      required: ["digit", "negative", "year", "big"],
      additionalProperties: false,
    },
  },
  {
    name: "string lengths",
    schema: { type: "object", properties: { code: { type: "string", minLength: 2, maxLength: 4 }, nonEmpty: { type: "string", minLength: 1 }, short: { type: "string", maxLength: 3 } }, required: ["code", "nonEmpty", "short"], additionalProperties: false },
  },
  {
    name: "formats",
    schema: {
      type: "object",
      properties: { when: { type: "string", format: "date-time" }, day: { type: "string", format: "date" }, at: { type: "string", format: "time" }, id: { type: "string", format: "uuid" }, mail: { type: "string", format: "email" } },
      required: ["when", "day", "at", "id", "mail"],
      additionalProperties: false,
    },
  },
  {
    name: "sentiment",
    schema: { type: "object", properties: { label: { type: "string", enum: ["positive", "negative", "neutral"] }, confidence: { type: "number", minimum: 0, maximum: 1 } }, required: ["label", "confidence"], additionalProperties: false },
  },
  {
    name: "named entities",
    schema: {
      type: "object",
      properties: {
        entities: {
          type: "array",
          maxItems: 3,
          items: {
            type: "object",
            properties: { text: { type: "string", maxLength: 12 }, type: { enum: ["PER", "ORG", "LOC"] }, start: { type: "integer", minimum: 0 }, end: { type: "integer", minimum: 0 } },
            required: ["text", "type", "start", "end"],
            additionalProperties: false,
          },
        },
      },
      required: ["entities"],
      additionalProperties: false,
    },
  },
  {
    name: "product",
    schema: {
      type: "object",
      properties: {
        title: { type: "string", maxLength: 12 },
        tags: { type: "array", items: { type: "string", maxLength: 8 }, maxItems: 3 },
        price: { type: "number", minimum: 0 },
        currency: { type: "string", pattern: "^[A-Z]{3}$" },
        inStock: { type: "boolean" },
      },
      required: ["title", "tags", "price", "currency", "inStock"],
      additionalProperties: false,
    },
  },
  {
    name: "calendar event",
    schema: {
      type: "object",
      properties: {
        title: { type: "string", maxLength: 12 },
        start: { type: "string", format: "date-time" },
        end: { type: "string", format: "date-time" },
        attendees: { type: "array", items: { type: "string", format: "email" }, minItems: 1, maxItems: 2 },
      },
      required: ["title", "start", "end", "attendees"],
      additionalProperties: false,
    },
  },
  {
    name: "free-form metadata",
    schema: { type: "object", properties: { id: { type: "integer" }, metadata: { type: "object" } }, required: ["id", "metadata"] },
  },
  { name: "map of integers", schema: { type: "object", additionalProperties: { type: "integer", minimum: 0, maximum: 100 } } },
  { name: "array root", schema: { type: "array", items: { type: "integer", minimum: 0, maximum: 9 }, minItems: 2, maxItems: 4 } },
  { name: "string root pattern", schema: { type: "string", pattern: "^(yes|no|maybe)$" } },
  {
    name: "unanchored patterns",
    schema: { type: "object", properties: { ref: { type: "string", pattern: "^ID-" }, tail: { type: "string", pattern: "[0-9]$" } }, required: ["ref", "tail"], additionalProperties: false },
  },
  {
    name: "type arrays",
    schema: { type: "object", properties: { value: { type: ["string", "number", "null"] }, count: { type: ["integer", "boolean"] } }, required: ["value", "count"], additionalProperties: false },
  },
  {
    name: "matrix",
    schema: { type: "object", properties: { rows: { type: "array", maxItems: 3, items: { type: "array", maxItems: 3, items: { type: "number" } } } }, required: ["rows"], additionalProperties: false },
  },
  {
    name: "all optional",
    schema: { type: "object", properties: { a: { type: "string", maxLength: 5 }, b: { type: "integer" }, c: { type: "boolean" } }, additionalProperties: false },
  },
  {
    name: "allOf single ref (definitions)",
    schema: {
      type: "object",
      properties: { item: { allOf: [{ $ref: "#/definitions/item" }], description: "the item" } },
      required: ["item"],
      additionalProperties: false,
      definitions: { item: { type: "object", properties: { sku: { type: "string", maxLength: 8 }, qty: { type: "integer", minimum: 1 } }, required: ["sku", "qty"], additionalProperties: false } },
    },
  },
  {
    name: "function call",
    schema: {
      type: "object",
      properties: {
        name: { const: "get_weather" },
        arguments: { type: "object", properties: { location: { type: "string", maxLength: 12 }, unit: { enum: ["celsius", "fahrenheit"] }, days: { type: "integer", minimum: 1, maximum: 7 } }, required: ["location", "unit"], additionalProperties: false },
      },
      required: ["name", "arguments"],
      additionalProperties: false,
    },
  },
  {
    name: "deep nesting",
    schema: {
      type: "object",
      properties: {
        a: { type: "object", properties: { b: { type: "object", properties: { c: { type: "object", properties: { d: { type: "array", items: { type: "string", maxLength: 4 }, maxItems: 2 } }, required: ["d"], additionalProperties: false } }, required: ["c"], additionalProperties: false } }, required: ["b"], additionalProperties: false },
      },
      required: ["a"],
      additionalProperties: false,
    },
  },
  {
    name: "oneOf by type",
    schema: { type: "object", properties: { id: { oneOf: [{ type: "string", format: "uuid" }, { type: "integer", minimum: 1 }] } }, required: ["id"], additionalProperties: false },
  },
  {
    name: "phone pattern",
    schema: { type: "object", properties: { phone: { type: "string", pattern: "^\\+?[0-9]{1,3}[- ]?\\(?[0-9]{3}\\)?[- ]?[0-9]{3}[- ]?[0-9]{4}$" } }, required: ["phone"], additionalProperties: false },
  },
  {
    name: "linked list via #",
    schema: { type: "object", properties: { value: { type: "integer", minimum: 0, maximum: 9 }, next: { anyOf: [{ $ref: "#" }, { type: "null" }] } }, required: ["value", "next"], additionalProperties: false },
  },
  {
    name: "patterns needing escapes",
    schema: {
      type: "object",
      properties: { quoted: { type: "string", pattern: '^"[a-z]{1,5}"$' }, path: { type: "string", pattern: "^[A-Z]:\\\\[a-z]{1,6}$" }, tabbed: { type: "string", pattern: "^a\\tb\\n?$" }, dotted: { type: "string", pattern: "^.{2}$" } },
      required: ["quoted", "path", "tabbed", "dotted"],
      additionalProperties: false,
    },
  },
  {
    name: "unicode enum",
    schema: { type: "object", properties: { word: { enum: ["café", 'say "hi"', "line\nbreak", "😀", "back\\slash"] } }, required: ["word"], additionalProperties: false },
  },
  {
    name: "invoice extraction",
    schema: {
      type: "object",
      properties: {
        invoice_number: { type: "string", pattern: "^INV-[0-9]{4,6}$" },
        date: { type: "string", format: "date" },
        vendor: { $ref: "#/$defs/party" },
        lines: { type: "array", minItems: 1, maxItems: 3, items: { $ref: "#/$defs/line" } },
        total: { type: "number", minimum: 0, maximum: 1000000 },
        paid: { type: "boolean" },
      },
      required: ["invoice_number", "date", "vendor", "lines", "total", "paid"],
      additionalProperties: false,
      $defs: {
        party: { type: "object", properties: { name: { type: "string", maxLength: 12 }, vat: { anyOf: [{ type: "string", pattern: "^[A-Z]{2}[0-9]{8}$" }, { type: "null" }] } }, required: ["name", "vat"], additionalProperties: false },
        line: { type: "object", properties: { description: { type: "string", maxLength: 12 }, quantity: { type: "integer", minimum: 1, maximum: 1000 }, unit_price: { type: "number", minimum: 0 } }, required: ["description", "quantity", "unit_price"], additionalProperties: false },
      },
    },
  },
];
