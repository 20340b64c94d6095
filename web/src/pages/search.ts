// The search page: the search form, the study list, and what can be done with selected studies
// (retrieve from a remote AE into the archive, send local studies to an AE).
import type { ApiClient } from "../api/http";
import { JobsApi } from "../api/jobs";
import { type RemoteNode, type StudyPage, type StudyQuery, StudiesApi } from "../api/studies";
import { type Mounted, errorText, h, message } from "../dom";
import { mountSearchForm } from "../components/search-form";
import { mountStudyList } from "../components/study-list";

export interface SearchPageOptions {
  client: ApiClient;
  query: StudyQuery;
  canRetrieve: boolean;
  canSend: boolean;
  retrieveMethod: "move" | "get";
  /** The app puts the query in the URL (and calls back into this page). */
  onQuery: (query: StudyQuery) => void;
  onOpen: (studyUid: string) => void;
  jobsHref: string;
  /** The answer to `query` when the app asked for it already (at start, while it checked the session). */
  prefetched?: Promise<StudyPage>;
}

export function mountSearchPage(root: HTMLElement, options: SearchPageOptions): Mounted {
  const studies = new StudiesApi(options.client);
  const jobs = new JobsApi(options.client);
  const q = options.query;
  const formEl = h("div", { class: "search-form-slot" });
  const actions = h("div", { class: "bar actions" });
  const status = h("div", { class: "form-status" });
  const listEl = h("div", { class: "study-list-slot" }, h("p", { class: "loading" }, "Searching…"));
  const page = h("div", { class: "page search-page" }, formEl, status, actions, listEl);
  root.replaceChildren(page);
  const abort = new AbortController();
  let selection: string[] = [];
  let seriesSelection: Record<string, string[]> = {};
  /** One job per ticked study, and one per study of which only some series are ticked. */
  const targets = (): { study_uid: string; series_uids?: string[] }[] => [
    ...selection.map((uid) => ({ study_uid: uid })),
    ...Object.entries(seriesSelection)
      .filter(([uid]) => !selection.includes(uid))
      .map(([uid, series]) => ({ study_uid: uid, series_uids: series })),
  ];
  let nodes: RemoteNode[] = [];
  let children: Mounted[] = [];

  const queued = (count: number, what: string) =>
    status.replaceChildren(h("p", { class: "message info", role: "status" }, `${count} ${what} queued — `, h("a", { href: options.jobsHref }, "see the loader queue")));

  const renderActions = (source: string) => {
    actions.replaceChildren();
    const chosen = targets();
    const none = chosen.length === 0;
    if (source !== "local" && options.canRetrieve) {
      actions.append(h("button", { type: "button", class: "primary", disabled: none, on: { click: () => {
        Promise.all(chosen.map((t) => jobs.create({
          kind: "retrieve", source, method: options.retrieveMethod, ...t, level: t.series_uids ? "SERIES" : "STUDY",
        })))
          .then((made) => queued(made.length, made.length === 1 ? "retrieve" : "retrieves"))
          .catch((error: unknown) => status.replaceChildren(message(errorText(error))));
      } } }, `Retrieve selected (${chosen.length})`));
    }
    if (source === "local" && options.canSend && nodes.length > 0) {
      const destination = h("select", { name: "destination", "aria-label": "Send to" }, nodes.map((n) => h("option", { value: n.title }, n.title)));
      actions.append(h("label", null, "Send to ", destination), h("button", { type: "button", disabled: none, on: { click: () => {
        Promise.all(chosen.map((t) => jobs.create({ kind: "send", destination: destination.value, ...t })))
          .then((made) => queued(made.length, made.length === 1 ? "send" : "sends"))
          .catch((error: unknown) => status.replaceChildren(message(errorText(error))));
      } } }, `Send selected (${chosen.length})`));
    }
  };

  const nodesLoaded = studies.nodes().catch(() => [] as RemoteNode[]);
  const searched = options.prefetched ?? studies.search(q, abort.signal);

  let shownSource: string | null = null;
  nodesLoaded.then((list) => {
    nodes = list;
    children.push(mountSearchForm(formEl, { query: q, nodes, onSearch: options.onQuery }));
    if (shownSource !== null) renderActions(shownSource);
  });

  // the rows go on screen as soon as the search answers (the node list only feeds the form and "send")
  searched
    .then((result) => {
      children.push(mountStudyList(listEl, {
        page: result,
        query: q,
        thumbnailUrl: (uid) => studies.thumbnailUrl(uid),
        onSort: (sort, order) => options.onQuery({ ...q, sort, order, offset: 0 }),
        onPage: (offset) => options.onQuery({ ...q, offset }),
        onOpen: options.onOpen,
        onSelectionChange: (uids) => {
          selection = uids;
          renderActions(result.source);
        },
        loadSeries: (uid) => studies.series(uid, result.source).then((answer) => answer.items),
        onSeriesSelectionChange: (bySeries) => {
          seriesSelection = bySeries;
          renderActions(result.source);
        },
      }));
      shownSource = result.source;
      renderActions(result.source);
    })
    .catch((error: unknown) => {
      if ((error as Error).name === "AbortError") return;
      listEl.replaceChildren(message(errorText(error)));
    });

  return {
    destroy: () => {
      abort.abort();
      for (const child of children) child.destroy();
      children = [];
      page.remove();
    },
  };
}
