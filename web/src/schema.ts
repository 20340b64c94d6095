// Add-in options edited from their JSON schema (pydantic's model_json_schema): which input each
// option gets, and the values read back from the form. Pure logic, the form itself is in
// components/schema-form.ts.

export interface JsonSchema {
  type?: string | string[];
  title?: string;
  description?: string;
  default?: unknown;
  enum?: unknown[];
  const?: unknown;
  properties?: Record<string, JsonSchema>;
  required?: string[];
  items?: JsonSchema;
  anyOf?: JsonSchema[];
  oneOf?: JsonSchema[];
  allOf?: JsonSchema[];
  $ref?: string;
  $defs?: Record<string, JsonSchema>;
  minimum?: number;
  maximum?: number;
  [key: string]: unknown;
}

export type FieldKind = "string" | "integer" | "number" | "boolean" | "enum" | "list" | "json";

export interface FieldSpec {
  name: string;
  label: string;
  description: string;
  kind: FieldKind;
  nullable: boolean;
  choices: string[]; // enum
  itemKind: "string" | "integer" | "number" | null; // list
  defaultValue: unknown;
  minimum?: number;
  maximum?: number;
}

function resolve(schema: JsonSchema, root: JsonSchema): JsonSchema {
  let s = schema;
  for (let i = 0; i < 10 && s.$ref; i++) {
    const name = s.$ref.replace(/^#\/(\$defs|definitions)\//, "");
    const target = root.$defs?.[name] ?? (root.definitions as Record<string, JsonSchema> | undefined)?.[name];
    if (!target) break;
    const { $ref: _ref, ...rest } = s;
    s = { ...target, ...rest };
  }
  if (s.allOf && s.allOf.length === 1) {
    const { allOf, ...rest } = s;
    s = { ...resolve(allOf[0]!, root), ...rest };
  }
  return s;
}

function typesOf(s: JsonSchema): string[] {
  if (Array.isArray(s.type)) return s.type;
  return s.type ? [s.type] : [];
}

/** The input for one option: a simple one where the schema allows, JSON text for the rest. */
export function fieldSpec(name: string, raw: JsonSchema, root: JsonSchema): FieldSpec {
  let s = resolve(raw, root);
  let nullable = false;
  const variants = s.anyOf ?? s.oneOf;
  if (variants) {
    const notNull = variants.filter((v) => !typesOf(v).includes("null"));
    nullable = notNull.length < variants.length;
    if (notNull.length === 1) s = { ...resolve(notNull[0]!, root), ...withoutVariants(s) };
  }
  let types = typesOf(s);
  if (types.includes("null")) {
    nullable = true;
    types = types.filter((t) => t !== "null");
  }
  const spec: FieldSpec = {
    name,
    label: s.title ?? name,
    description: s.description ?? "",
    kind: "json",
    nullable,
    choices: [],
    itemKind: null,
    defaultValue: raw.default ?? s.default,
    minimum: s.minimum,
    maximum: s.maximum,
  };
  if ((s.anyOf ?? s.oneOf) && types.length === 0) return spec;
  if (s.enum && s.enum.every((v) => typeof v === "string")) {
    spec.kind = "enum";
    spec.choices = s.enum as string[];
  } else if (types.length === 1) {
    const t = types[0]!;
    if (t === "string" || t === "integer" || t === "number" || t === "boolean") spec.kind = t;
    else if (t === "array") {
      const items = s.items ? resolve(s.items, root) : {};
      const it = typesOf(items);
      if (it.length === 1 && (it[0] === "string" || it[0] === "integer" || it[0] === "number") && !items.enum) {
        spec.kind = "list";
        spec.itemKind = it[0] as "string" | "integer" | "number";
      }
    }
  }
  return spec;
}

function withoutVariants(s: JsonSchema): JsonSchema {
  const { anyOf: _a, oneOf: _o, ...rest } = s;
  return rest;
}

/** Every option of an add-in's schema, in the schema's order. */
export function fieldSpecs(schema: JsonSchema): FieldSpec[] {
  const root = schema;
  const top = resolve(schema, root);
  return Object.entries(top.properties ?? {}).map(([name, prop]) => fieldSpec(name, prop, root));
}

/** The text an input shows for a value. */
export function formatValue(spec: FieldSpec, value: unknown): string {
  if (value === null || value === undefined) return "";
  switch (spec.kind) {
    case "list":
      return Array.isArray(value) ? value.map(String).join(", ") : String(value);
    case "json":
      return JSON.stringify(value, null, 2);
    case "boolean":
      return value ? "true" : "false";
    default:
      return String(value);
  }
}

export class FieldError extends Error {
  constructor(
    readonly field: string,
    message: string,
  ) {
    super(`${field}: ${message}`);
    this.name = "FieldError";
  }
}

/** The value an input's text stands for (throws FieldError with a reason when it cannot be one). */
export function parseValue(spec: FieldSpec, text: string | boolean): unknown {
  if (spec.kind === "boolean") return Boolean(text);
  const t = String(text).trim();
  if (t === "" && spec.kind !== "string") {
    if (spec.nullable) return null;
    if (spec.kind === "list") return [];
    throw new FieldError(spec.name, "a value is required");
  }
  switch (spec.kind) {
    case "integer": {
      if (!/^[-+]?\d+$/.test(t)) throw new FieldError(spec.name, `"${t}" is not a whole number`);
      return checkRange(spec, Number(t));
    }
    case "number": {
      const n = Number(t);
      if (!Number.isFinite(n)) throw new FieldError(spec.name, `"${t}" is not a number`);
      return checkRange(spec, n);
    }
    case "enum":
      if (!spec.choices.includes(t)) throw new FieldError(spec.name, `must be one of ${spec.choices.join(", ")}`);
      return t;
    case "list": {
      const parts = t.split(",").map((p) => p.trim()).filter(Boolean);
      if (spec.itemKind === "string") return parts;
      return parts.map((p) => {
        const n = Number(p);
        if (!Number.isFinite(n) || (spec.itemKind === "integer" && !Number.isInteger(n)))
          throw new FieldError(spec.name, `"${p}" is not a ${spec.itemKind === "integer" ? "whole number" : "number"}`);
        return n;
      });
    }
    case "json":
      try {
        return JSON.parse(t) as unknown;
      } catch {
        throw new FieldError(spec.name, "is not valid JSON");
      }
    case "string":
      return spec.nullable && t === "" ? null : String(text);
  }
  return t;
}

function checkRange(spec: FieldSpec, n: number): number {
  if (spec.minimum !== undefined && n < spec.minimum) throw new FieldError(spec.name, `must be at least ${spec.minimum}`);
  if (spec.maximum !== undefined && n > spec.maximum) throw new FieldError(spec.name, `must be at most ${spec.maximum}`);
  return n;
}

function same(a: unknown, b: unknown): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

/** The options that differ from the current ones: the body of PATCH /api/admin/addins/{name}. */
export function changedOptions(current: Record<string, unknown>, edited: Record<string, unknown>): Record<string, unknown> {
  const changes: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(edited)) {
    if (!same(current[key], value)) changes[key] = value;
  }
  return changes;
}
