// The study list: one page of a search with sortable columns, paging, a selection, and thumbnails for
// studies of the local archive. It shows what it is given; the page fetches (see pages/search.ts).
import type { StudyPage, StudyQuery } from "../api/studies";
import { SORTABLE, pageInfo } from "../api/studies";
import { TAG, type DicomJson, formatDate, formatTime, personName, text, texts } from "../dicom";
import { type Mounted, h } from "../dom";
import { ThumbnailQueue } from "./thumbnails";

export interface StudyListOptions {
  page: StudyPage;
  query: StudyQuery;
  /** The thumbnail URL of a local study; omit for no thumbnails. */
  thumbnailUrl?: (studyUid: string) => string;
  onSort: (sort: string, order: "asc" | "desc") => void;
  onPage: (offset: number) => void;
  /** Open a study (local studies only); omit to make rows not clickable. */
  onOpen?: (studyUid: string) => void;
  onSelectionChange?: (studyUids: string[]) => void;
  /** The series of a study (GET /api/studies/{uid}/series); omit for no series rows. */
  loadSeries?: (studyUid: string) => Promise<DicomJson[]>;
  /** The series ticked, by study (only studies with some). */
  onSeriesSelectionChange?: (seriesByStudy: Record<string, string[]>) => void;
}

const COLUMNS: { key: string; label: string; tag: string; render?: (item: DicomJson) => string }[] = [
  { key: "PatientName", label: "Patient", tag: TAG.PatientName, render: (i) => personName(text(i, TAG.PatientName)) },
  { key: "PatientID", label: "Patient ID", tag: TAG.PatientID },
  { key: "StudyDate", label: "Date", tag: TAG.StudyDate, render: (i) => `${formatDate(text(i, TAG.StudyDate))} ${formatTime(text(i, TAG.StudyTime))}`.trim() },
  { key: "AccessionNumber", label: "Accession", tag: TAG.AccessionNumber },
  { key: "ModalitiesInStudy", label: "Modalities", tag: TAG.ModalitiesInStudy, render: (i) => texts(i, TAG.ModalitiesInStudy).join(", ") },
  { key: "StudyDescription", label: "Description", tag: TAG.StudyDescription },
  { key: "NumberOfStudyRelatedSeries", label: "Series", tag: TAG.NumberOfStudyRelatedSeries },
  { key: "NumberOfStudyRelatedInstances", label: "Images", tag: TAG.NumberOfStudyRelatedInstances },
];

export function mountStudyList(root: HTMLElement, options: StudyListOptions): Mounted {
  const { page, query } = options;
  const selected = new Set<string>();
  const local = page.source === "local";
  const changed = () => options.onSelectionChange?.([...selected]);
  const thumbnails = new ThumbnailQueue();
  const seriesSelected = new Map<string, Set<string>>();
  const seriesChanged = () => {
    const out: Record<string, string[]> = {};
    for (const [study, set] of seriesSelected) if (set.size) out[study] = [...set];
    options.onSeriesSelectionChange?.(out);
  };
  const columnCount = 1 + (options.thumbnailUrl && local ? 1 : 0) + COLUMNS.length + (options.loadSeries ? 1 : 0);

  const seriesRow = (studyUid: string): HTMLTableRowElement => {
    const cell = h("td", { colSpan: columnCount, class: "series-cell" }, h("p", { class: "loading" }, "Loading the series…"));
    const row = h("tr", { class: "series-row", dataset: { seriesOf: studyUid } }, cell);
    options.loadSeries!(studyUid)
      .then((items) => {
        const set = seriesSelected.get(studyUid) ?? new Set<string>();
        seriesSelected.set(studyUid, set);
        cell.replaceChildren(h("table", { class: "grid series" },
          h("thead", null, h("tr", null, ["", "Number", "Modality", "Description", "Images"].map((c) => h("th", null, c)))),
          h("tbody", null, items.map((s) => {
            const uid = text(s, TAG.SeriesInstanceUID);
            return h("tr", { dataset: { seriesUid: uid } },
              h("td", { class: "select" }, h("input", {
                type: "checkbox", value: uid, checked: set.has(uid), "aria-label": `Select series ${text(s, TAG.SeriesNumber)}`,
                on: { change: (event: Event) => {
                  if ((event.target as HTMLInputElement).checked) set.add(uid);
                  else set.delete(uid);
                  seriesChanged();
                } },
              })),
              h("td", null, text(s, TAG.SeriesNumber)), h("td", null, text(s, TAG.Modality)),
              h("td", null, text(s, TAG.SeriesDescription)), h("td", null, text(s, TAG.NumberOfSeriesRelatedInstances)));
          }))));
      })
      .catch((error: unknown) => cell.replaceChildren(h("p", { class: "message error", role: "alert" }, String((error as Error).message ?? error))));
    return row;
  };

  const header = h(
    "tr",
    null,
    h("th", { class: "select" }, h("input", {
      type: "checkbox",
      "aria-label": "Select all",
      on: {
        change: (event: Event) => {
          const on = (event.target as HTMLInputElement).checked;
          for (const box of body.querySelectorAll<HTMLInputElement>(":scope > tr[data-study-uid] > td.select > input")) {
            box.checked = on;
            if (on) selected.add(box.value);
            else selected.delete(box.value);
          }
          changed();
        },
      },
    })),
    options.loadSeries ? h("th", { class: "expand" }, "") : null,
    options.thumbnailUrl && local ? h("th", { class: "thumb" }, "") : null,
    COLUMNS.map((c) => {
      if (!(SORTABLE as readonly string[]).includes(c.key)) return h("th", null, c.label);
      const active = query.sort === c.key;
      const next: "asc" | "desc" = active && query.order === "asc" ? "desc" : "asc";
      return h(
        "th",
        { "aria-sort": active ? (query.order === "asc" ? "ascending" : "descending") : "none" },
        h("button", { type: "button", class: "sort", on: { click: () => options.onSort(c.key, active ? next : "asc") } }, c.label, active ? (query.order === "asc" ? " ▲" : " ▼") : ""),
      );
    }),
  );

  const body = h("tbody");
  for (const item of page.items) {
    const uid = text(item, TAG.StudyInstanceUID);
    const box = h("input", {
      type: "checkbox",
      value: uid,
      "aria-label": `Select ${personName(text(item, TAG.PatientName))}`,
      on: {
        change: (event: Event) => {
          if ((event.target as HTMLInputElement).checked) selected.add(uid);
          else selected.delete(uid);
          changed();
        },
        click: (event: Event) => event.stopPropagation(),
      },
    });
    let thumb: HTMLElement | null = null;
    if (options.thumbnailUrl && local) {
      const img = h("img", { alt: "", width: 64, height: 64 });
      thumbnails.add(img, options.thumbnailUrl(uid), () => img.replaceWith(h("span", { class: "no-thumb" }, "—")));
      thumb = h("td", { class: "thumb" }, img);
    }
    let expander: HTMLElement | null = null;
    if (options.loadSeries) {
      let open: HTMLTableRowElement | null = null;
      const button = h("button", { type: "button", class: "expand", "aria-expanded": "false", "aria-label": "Series", title: "Show the series" }, "▸");
      button.addEventListener("click", (event) => {
        event.stopPropagation();
        if (open) {
          open.remove();
          open = null;
        } else {
          open = seriesRow(uid);
          row.after(open);
        }
        button.setAttribute("aria-expanded", String(open !== null));
        button.textContent = open ? "▾" : "▸";
      });
      expander = h("td", { class: "expand" }, button);
    }
    const row = h(
      "tr",
      { dataset: { studyUid: uid }, class: options.onOpen && local ? "openable" : "" },
      h("td", { class: "select" }, box),
      expander,
      thumb,
      COLUMNS.map((c) => h("td", { class: `col-${c.key}` }, c.render ? c.render(item) : text(item, c.tag))),
    );
    if (options.onOpen && local) {
      row.title = "Open in the viewer";
      row.addEventListener("click", () => options.onOpen?.(uid));
    }
    body.appendChild(row);
  }

  const info = pageInfo(page.total, query.offset, query.limit);
  const where = local ? "the local archive" : `remote AE ${page.source}`;
  const pager = h(
    "nav",
    { class: "pager", "aria-label": "Pages" },
    h("button", { type: "button", disabled: !info.hasPrevious, on: { click: () => options.onPage(Math.max(0, query.offset - query.limit)) } }, "‹ Previous"),
    h("span", { class: "page-info" }, `${info.first}–${info.last} of ${page.total} · page ${info.page} / ${info.pages}`),
    h("button", { type: "button", disabled: !info.hasNext, on: { click: () => options.onPage(query.offset + query.limit) } }, "Next ›"),
  );
  const container = h(
    "section",
    { class: "study-list", "aria-label": "Studies" },
    h("p", { class: "source-note", dataset: { source: page.source } }, `${page.total} ${page.total === 1 ? "study" : "studies"} from ${where}`),
    page.items.length ? h("table", { class: "grid" }, h("thead", null, header), body) : h("p", { class: "empty" }, "No study matches."),
    pager,
  );
  root.replaceChildren(container);
  thumbnails.start();
  return {
    destroy: () => {
      thumbnails.stop();
      container.remove();
    },
  };
}
