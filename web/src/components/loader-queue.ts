// The loader queue: retrieve and send jobs with their progress, live from /api/jobs/events.
import type { ApiClient } from "../api/http";
import { type Job, JobsApi, canCancel, canRetry, jobPercent, jobProgressText, jobsReducer } from "../api/jobs";
import { personName } from "../dicom";
import { type Mounted, errorText, formatTimestamp, h, message } from "../dom";

export interface LoaderQueueOptions {
  client: ApiClient;
  /** May the user cancel and retry (role operator)? */
  canManage: boolean;
  /** Open a retrieved study (shown once some of it is here); omit for no "Open" button. */
  onOpen?: (studyUid: string) => void;
}

export function mountLoaderQueue(root: HTMLElement, options: LoaderQueueOptions): Mounted {
  const api = new JobsApi(options.client);
  let jobs: Job[] = [];
  const status = h("div", { class: "form-status" });
  const body = h("tbody");
  const live = h("span", { class: "live", "aria-live": "polite" }, "connecting…");
  const section = h(
    "section",
    { class: "loader-queue", "aria-label": "Jobs" },
    h("header", { class: "bar" }, h("h2", null, "Loader queue"), live),
    status,
    h(
      "table",
      { class: "grid jobs" },
      h("thead", null, h("tr", null, ["Kind", "Study", "Peer", "State", "Progress", "Rate", "Updated", ""].map((c) => h("th", null, c)))),
      body,
    ),
  );

  const act = (promise: Promise<Job>) => {
    status.replaceChildren();
    promise.then((job) => dispatchJob(job)).catch((error: unknown) => status.replaceChildren(message(errorText(error))));
  };

  const row = (job: Job): HTMLTableRowElement => {
    const percent = jobPercent(job);
    const bar = h("progress", { max: 100, "aria-label": "Progress" });
    if (percent !== null) bar.value = percent;
    return h(
      "tr",
      { dataset: { jobId: job.id, state: job.state, studyUid: job.study_uid, updated: job.updated_at } },
      h("td", null, job.kind === "retrieve" ? `Retrieve (${job.method ?? "move"})` : "Send"),
      h("td", null, h("div", null, personName(job.patient_name || "")), h("div", { class: "sub" }, job.description || job.study_uid)),
      h("td", null, job.kind === "retrieve" ? `from ${job.source ?? ""}` : `to ${job.destination ?? ""}`),
      h("td", { class: `state state-${job.state}` }, job.state, job.error ? h("div", { class: "sub error" }, job.error) : null),
      h("td", { class: "progress" }, bar, h("span", { class: "percent" }, percent === null ? "" : `${percent}%`), h("div", { class: "sub" }, jobProgressText(job))),
      h("td", null, job.rate ? `${job.rate.toFixed(1)}/s` : ""),
      h("td", null, formatTimestamp(job.updated_at)),
      h(
        "td",
        { class: "actions" },
        options.canManage && canCancel(job) ? h("button", { type: "button", on: { click: () => act(api.cancel(job.id)) } }, "Cancel") : null,
        options.canManage && canRetry(job) ? h("button", { type: "button", on: { click: () => act(api.retry(job.id)) } }, "Retry") : null,
        options.onOpen && job.kind === "retrieve" && job.completed > 0
          ? h("button", { type: "button", on: { click: () => options.onOpen?.(job.study_uid) } }, "Open")
          : null,
      ),
    );
  };

  const render = () => {
    body.replaceChildren(...jobs.map(row));
    if (jobs.length === 0) body.appendChild(h("tr", null, h("td", { colSpan: 8, class: "empty" }, "No jobs yet.")));
  };

  const dispatchJob = (job: Job) => {
    jobs = jobsReducer(jobs, { type: "upsert", job });
    render();
  };

  render();
  api
    .list()
    .then((list) => {
      // events that came first are newer than or as new as the list: the reducer keeps the newest
      for (const job of list) jobs = jobsReducer(jobs, { type: "upsert", job });
      render();
    })
    .catch((error: unknown) => status.replaceChildren(message(errorText(error))));
  const close = api.subscribe(
    (job) => {
      live.textContent = "live";
      dispatchJob(job);
    },
    () => {
      live.textContent = "reconnecting…";
    },
    () => {
      live.textContent = "live";
    },
  );
  root.replaceChildren(section);
  return {
    destroy: () => {
      close();
      section.remove();
    },
  };
}
