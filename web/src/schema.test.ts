import { describe, expect, it } from "vitest";
import { FieldError, changedOptions, fieldSpecs, formatValue, parseValue } from "./schema";

// the shape pydantic's model_json_schema() gives an add-in's Options
const schema = {
  title: "Options",
  type: "object",
  $defs: { Mode: { enum: ["fast", "safe"], title: "Mode", type: "string" } },
  properties: {
    retention_days: { type: "integer", default: 30, minimum: 1, description: "days to keep" },
    ratio: { type: "number", default: 0.5 },
    enabled: { type: "boolean", default: false },
    mode: { $ref: "#/$defs/Mode", default: "safe" },
    label: { anyOf: [{ type: "string" }, { type: "null" }], default: null },
    aes: { type: "array", items: { type: "string" }, default: [] },
    ports: { type: "array", items: { type: "integer" } },
    routes: { type: "object", additionalProperties: { type: "string" } },
  },
};

describe("fieldSpecs", () => {
  const specs = Object.fromEntries(fieldSpecs(schema).map((s) => [s.name, s]));

  it("gives each option its input kind", () => {
    expect(Object.fromEntries(Object.entries(specs).map(([k, s]) => [k, s.kind]))).toEqual({
      retention_days: "integer",
      ratio: "number",
      enabled: "boolean",
      mode: "enum",
      label: "string",
      aes: "list",
      ports: "list",
      routes: "json",
    });
    expect(specs.mode!.choices).toEqual(["fast", "safe"]);
    expect(specs.label!.nullable).toBe(true);
    expect(specs.retention_days!.description).toBe("days to keep");
  });

  it("parses and checks values", () => {
    expect(parseValue(specs.retention_days!, "7")).toBe(7);
    expect(() => parseValue(specs.retention_days!, "0")).toThrow(FieldError);
    expect(() => parseValue(specs.retention_days!, "1.5")).toThrow("whole number");
    expect(parseValue(specs.ratio!, "0.25")).toBe(0.25);
    expect(parseValue(specs.label!, "")).toBeNull();
    expect(parseValue(specs.aes!, "A, B ,,C")).toEqual(["A", "B", "C"]);
    expect(parseValue(specs.ports!, "104, 11112")).toEqual([104, 11112]);
    expect(() => parseValue(specs.ports!, "104, x")).toThrow(FieldError);
    expect(parseValue(specs.routes!, '{"CT": "ARCHIVE"}')).toEqual({ CT: "ARCHIVE" });
    expect(() => parseValue(specs.routes!, "{")).toThrow("not valid JSON");
    expect(() => parseValue(specs.mode!, "slow")).toThrow("one of fast, safe");
    expect(parseValue(specs.enabled!, true)).toBe(true);
  });

  it("formats values for the inputs", () => {
    expect(formatValue(specs.aes!, ["A", "B"])).toBe("A, B");
    expect(formatValue(specs.label!, null)).toBe("");
    expect(formatValue(specs.routes!, { a: "b" })).toBe('{\n  "a": "b"\n}');
  });
});

describe("changedOptions", () => {
  it("sends only what changed", () => {
    expect(changedOptions({ a: 1, b: [1, 2], c: "x" }, { a: 1, b: [1, 3], c: "x" })).toEqual({ b: [1, 3] });
    expect(changedOptions({ a: 1 }, { a: 1 })).toEqual({});
  });
});
