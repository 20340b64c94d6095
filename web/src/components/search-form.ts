// The search control: where to search (the local archive or a remote AE of the registry) and the
// filters. It only edits a StudyQuery; the page decides what a search does (see components/study-list.ts).
import type { RemoteNode, StudyQuery } from "../api/studies";
import { emptyQuery } from "../api/studies";
import { type Mounted, h } from "../dom";

export interface SearchFormOptions {
  query: StudyQuery;
  /** Remote AEs the search may query (GET /api/nodes); an empty list hides the remote switch. */
  nodes: RemoteNode[];
  onSearch: (query: StudyQuery) => void;
}

export function mountSearchForm(root: HTMLElement, options: SearchFormOptions): Mounted {
  const q = options.query;
  const remote = h("input", { type: "checkbox", name: "remote", checked: q.source !== "local" });
  const node = h(
    "select",
    { name: "node", "aria-label": "Remote AE" },
    options.nodes.map((n) => h("option", { value: n.title, selected: n.title === q.source }, `${n.title}${n.description ? ` — ${n.description}` : ""}`)),
  );
  const input = (name: string, label: string, value: string, type = "text") =>
    h("label", null, label, h("input", { name, type, value, placeholder: type === "text" ? "any" : undefined }));
  const syncRemote = () => {
    node.disabled = !remote.checked;
    node.hidden = !remote.checked;
  };
  remote.addEventListener("change", syncRemote);
  syncRemote();

  const form = h(
    "form",
    { class: "search-form", role: "search", "aria-label": "Search studies" },
    h(
      "fieldset",
      { class: "source" },
      h("legend", null, "Search in"),
      options.nodes.length > 0 ? h("label", { class: "switch" }, remote, "Remote PACS") : null,
      options.nodes.length > 0 ? node : h("span", { class: "hint" }, "the local archive"),
    ),
    input("patientName", "Patient name", q.patientName),
    input("patientId", "Patient ID", q.patientId),
    input("accession", "Accession", q.accession),
    input("dateFrom", "Study date from", q.dateFrom, "date"),
    input("dateTo", "to", q.dateTo, "date"),
    input("modality", "Modality", q.modality),
    input("description", "Description", q.description),
    h("div", { class: "buttons" }, h("button", { type: "submit", class: "primary" }, "Search"), h("button", { type: "reset" }, "Clear")),
  );
  const read = (): StudyQuery => {
    const data = new FormData(form);
    const value = (name: string) => String(data.get(name) ?? "");
    return {
      ...q,
      source: remote.checked && node.value ? node.value : "local",
      patientName: value("patientName"),
      patientId: value("patientId"),
      accession: value("accession"),
      dateFrom: value("dateFrom"),
      dateTo: value("dateTo"),
      modality: value("modality"),
      description: value("description"),
      offset: 0,
    };
  };
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    options.onSearch(read());
  });
  form.addEventListener("reset", (event) => {
    event.preventDefault();
    options.onSearch({ ...emptyQuery(), source: read().source, limit: q.limit });
  });
  root.replaceChildren(form);
  return { destroy: () => form.remove() };
}
