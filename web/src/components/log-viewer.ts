// The log viewer: the transaction log or the audit trail, with filters, paging, a live tail and CSV
// export (the server's export of every matching row).
import type { ApiClient } from "../api/http";
import { LOG_COLUMNS, LOG_FILTERS, type LogEntry, type LogKind, type LogQuery, LogsApi, entryMatches } from "../api/logs";
import { pageInfo } from "../api/studies";
import { type Mounted, errorText, formatTimestamp, h, message, replace } from "../dom";

export interface LogViewerOptions {
  client: ApiClient;
  query: LogQuery;
  /** Called when the user changes the log, filters or page (the app puts them in the URL). */
  onQueryChange?: (query: LogQuery) => void;
}

const FILTER_LABELS: Record<string, string> = {
  since: "From",
  until: "Until",
  ae: "AE title",
  operation: "Operation",
  status: "Status",
  patient: "Patient",
  study: "Study UID",
  user: "User",
  event: "Event",
  outcome: "Outcome",
};

const PLACEHOLDERS: Record<string, string> = {
  ae: "calling or called",
  operation: "C-STORE, C-FIND…",
  status: "success, warning, failure or 0xA700",
  patient: "ID or name",
  outcome: "success, failure…",
};

const MAX_TAIL = 500;

/** RFC 3881 / DICOM audit EventOutcomeIndicator. */
const OUTCOMES: Record<string, string> = { "0": "success", "4": "minor failure", "8": "serious failure", "12": "major failure" };

function cell(column: string, value: unknown): string {
  if (column === "time") return formatTimestamp(value);
  if (column === "outcome" && value !== null && value !== undefined) return OUTCOMES[String(value)] ?? String(value);
  if (value === null || value === undefined) return "";
  return typeof value === "object" ? JSON.stringify(value) : String(value);
}

export function mountLogViewer(root: HTMLElement, options: LogViewerOptions): Mounted {
  const api = new LogsApi(options.client);
  let query: LogQuery = { ...options.query, filters: { ...options.query.filters } };
  let closeTail: (() => void) | null = null;
  let abort: AbortController | null = null;
  const status = h("div", { class: "form-status" });
  const table = h("div", { class: "log-table" });
  const tailBox = h("input", { type: "checkbox", name: "tail" });
  const filtersEl = h("form", { class: "log-filters", "aria-label": "Log filters" });
  const kindSelect = h("select", { name: "kind", "aria-label": "Log" },
    h("option", { value: "transactions" }, "Transaction log"), h("option", { value: "audit" }, "Audit trail"));
  const csvLink = h("a", { class: "button", download: "", href: "#" }, "Export CSV");
  const section = h("section", { class: "log-viewer", "aria-label": "Logs" },
    h("div", { class: "bar" }, kindSelect, h("label", { class: "switch" }, tailBox, "Live tail"), csvLink),
    filtersEl, status, table);

  const changed = () => options.onQueryChange?.({ ...query, filters: { ...query.filters } });

  const renderFilters = () => {
    kindSelect.value = query.kind;
    replace(
      filtersEl,
      LOG_FILTERS[query.kind].map((key) =>
        h("label", null, FILTER_LABELS[key] ?? key,
          h("input", { name: key, type: key === "since" || key === "until" ? "datetime-local" : "text", value: query.filters[key] ?? "", placeholder: PLACEHOLDERS[key] })),
      ),
      h("div", { class: "buttons" }, h("button", { type: "submit", class: "primary" }, "Filter"), h("button", { type: "reset" }, "Clear")),
    );
  };

  const rows = (items: LogEntry[]) => {
    const columns = LOG_COLUMNS[query.kind];
    return h("table", { class: `grid log log-${query.kind}` },
      h("thead", null, h("tr", null, columns.map((c) => h("th", null, c.replace(/_hex$/, "").replaceAll("_", " "))))),
      h("tbody", null, items.map((item) => h("tr", null, columns.map((c) => h("td", { class: `col-${c}` }, cell(c, item[c])))))));
  };

  const load = () => {
    abort?.abort();
    abort = new AbortController();
    csvLink.href = api.csvUrl(query);
    status.replaceChildren();
    api
      .page(query, abort.signal)
      .then((page) => {
        const info = pageInfo(page.total, query.offset, query.limit);
        const go = (offset: number) => { query = { ...query, offset }; changed(); load(); };
        replace(
          table,
          h("p", { class: "source-note" }, `${page.total} ${query.kind === "audit" ? "audit events" : "transactions"}`),
          page.items.length ? rows(page.items) : h("p", { class: "empty" }, "No entry matches."),
          h("nav", { class: "pager", "aria-label": "Pages" },
            h("button", { type: "button", disabled: !info.hasPrevious, on: { click: () => go(Math.max(0, query.offset - query.limit)) } }, "‹ Newer"),
            h("span", { class: "page-info" }, `${info.first}–${info.last} of ${page.total} · page ${info.page} / ${info.pages}`),
            h("button", { type: "button", disabled: !info.hasNext, on: { click: () => go(query.offset + query.limit) } }, "Older ›")),
        );
      })
      .catch((error: unknown) => {
        if ((error as Error).name === "AbortError") return;
        status.replaceChildren(message(errorText(error)));
      });
  };

  const startTail = () => {
    closeTail?.();
    closeTail = null;
    delete table.dataset.live;
    if (!tailBox.checked) {
      load();
      return;
    }
    const entries: LogEntry[] = [];
    replace(table, h("p", { class: "source-note live" }, "Live: new entries appear at the top"), rows([]));
    csvLink.href = api.csvUrl(query);
    closeTail = api.tail(query.kind, (entry) => {
      if (!entryMatches(query.kind, entry, query.filters)) return;
      entries.unshift(entry);
      if (entries.length > MAX_TAIL) entries.pop();
      table.querySelector("table")?.replaceWith(rows(entries));
    }, () => status.replaceChildren(message("The live tail lost its connection; reconnecting…", "info")),
    () => {
      status.replaceChildren();
      table.dataset.live = "open";
    });
  };

  filtersEl.addEventListener("submit", (event) => {
    event.preventDefault();
    const data = new FormData(filtersEl);
    const filters: Record<string, string> = {};
    for (const key of LOG_FILTERS[query.kind]) {
      const value = String(data.get(key) ?? "").trim();
      if (value) filters[key] = value;
    }
    query = { ...query, filters, offset: 0 };
    changed();
    if (tailBox.checked) startTail();
    else load();
  });
  filtersEl.addEventListener("reset", (event) => {
    event.preventDefault();
    query = { ...query, filters: {}, offset: 0 };
    changed();
    renderFilters();
    if (tailBox.checked) startTail();
    else load();
  });
  kindSelect.addEventListener("change", () => {
    query = { kind: kindSelect.value as LogKind, filters: {}, limit: query.limit, offset: 0 };
    changed();
    renderFilters();
    startTail();
  });
  tailBox.addEventListener("change", startTail);

  renderFilters();
  root.replaceChildren(section);
  load();
  return {
    destroy: () => {
      abort?.abort();
      closeTail?.();
      section.remove();
    },
  };
}
