// A form for an object described by a JSON schema (an add-in's options): one input per option, the
// values read back as JSON (see ../schema.ts for the rules).
import { type FieldSpec, FieldError, type JsonSchema, fieldSpecs, formatValue, parseValue } from "../schema";
import { h } from "../dom";

export interface SchemaForm {
  element: HTMLElement;
  /** The values of every option (throws FieldError naming the first bad one). */
  values(): Record<string, unknown>;
}

export function schemaForm(schema: JsonSchema, values: Record<string, unknown>, disabled = false): SchemaForm {
  const specs = fieldSpecs(schema);
  const inputs = new Map<string, { spec: FieldSpec; input: HTMLInputElement | HTMLSelectElement | HTMLTextAreaElement }>();
  const rows = specs.map((spec) => {
    const value = values[spec.name] ?? null;
    const id = `opt-${spec.name}-${Math.random().toString(36).slice(2, 8)}`;
    let input: HTMLInputElement | HTMLSelectElement | HTMLTextAreaElement;
    switch (spec.kind) {
      case "boolean":
        input = h("input", { type: "checkbox", checked: Boolean(value) });
        break;
      case "enum":
        input = h(
          "select",
          null,
          spec.nullable ? h("option", { value: "" }, "(none)") : null,
          spec.choices.map((c) => h("option", { value: c, selected: c === value }, c)),
        );
        break;
      case "json":
        input = h("textarea", { rows: Math.min(8, formatValue(spec, value).split("\n").length + 1), spellcheck: false });
        input.value = formatValue(spec, value);
        break;
      default:
        input = h("input", {
          type: spec.kind === "integer" || spec.kind === "number" ? "number" : "text",
          step: spec.kind === "number" ? "any" : undefined,
          value: formatValue(spec, value),
          placeholder: spec.kind === "list" ? "comma-separated" : spec.nullable ? "(none)" : undefined,
        });
    }
    input.id = id;
    input.name = spec.name;
    input.disabled = disabled;
    inputs.set(spec.name, { spec, input });
    return h(
      "div",
      { class: `field kind-${spec.kind}`, dataset: { option: spec.name } },
      h("label", { for: id }, spec.name),
      input,
      spec.description ? h("small", null, spec.description) : null,
    );
  });
  const element = h("div", { class: "schema-form" }, rows.length ? rows : h("p", { class: "empty" }, "This add-in has no options."));
  return {
    element,
    values() {
      const out: Record<string, unknown> = {};
      for (const [name, { spec, input }] of inputs) {
        const raw = spec.kind === "boolean" ? (input as HTMLInputElement).checked : input.value;
        try {
          out[name] = parseValue(spec, raw);
        } catch (error) {
          if (error instanceof FieldError) input.focus();
          throw error;
        }
      }
      return out;
    },
  };
}
