// The background loader and send jobs (/api/jobs) and the reducer that keeps a page's list of jobs
// current from the Server-Sent Events stream.
import type { ApiClient } from "./http";

export type JobState = "queued" | "running" | "done" | "failed" | "cancelled";

export interface Job {
  id: string;
  kind: "retrieve" | "send";
  state: JobState;
  source: string | null;
  destination: string | null;
  level?: string;
  method?: string;
  study_uid: string;
  series_uids?: string[] | null;
  patient_name: string;
  description: string;
  total: number | null;
  completed: number;
  failed: number;
  warning: number;
  rate: number | null;
  error: string | null;
  created_at: string;
  updated_at: string;
}

export interface RetrieveRequest {
  kind: "retrieve";
  source: string;
  study_uid: string;
  level?: "STUDY" | "SERIES";
  series_uids?: string[];
  method?: "move" | "get";
}

export interface SendRequest {
  kind: "send";
  destination: string;
  study_uid: string;
  series_uids?: string[];
}

export const FINISHED: ReadonlySet<JobState> = new Set(["done", "failed", "cancelled"]);

/** Percent done (0..100) of a job; null while the total is unknown. A finished `done` job is 100. */
export function jobPercent(job: Job): number | null {
  if (job.state === "done") return 100;
  if (job.total === null || job.total === undefined) return null;
  if (job.total === 0) return 0;
  const processed = job.completed + job.failed + job.warning;
  return Math.min(100, Math.floor((processed * 100) / job.total));
}

/** "12 / 40 (3 failed)" */
export function jobProgressText(job: Job): string {
  const done = job.completed + job.warning;
  const total = job.total === null || job.total === undefined ? "?" : String(job.total);
  const extra = [job.failed ? `${job.failed} failed` : "", job.warning ? `${job.warning} warnings` : ""]
    .filter(Boolean)
    .join(", ");
  return `${done} / ${total}${extra ? ` (${extra})` : ""}`;
}

export function canCancel(job: Job): boolean {
  return job.state === "queued" || job.state === "running";
}

export function canRetry(job: Job): boolean {
  return job.state === "failed" || job.state === "cancelled";
}

export type JobAction = { type: "reset"; jobs: Job[] } | { type: "upsert"; job: Job } | { type: "remove"; id: string };

/**
 * The job list after an action, newest first (by created_at, then id). An update older than the one
 * held (updated_at) is ignored: events and a GET answer may arrive out of order.
 */
export function jobsReducer(jobs: readonly Job[], action: JobAction): Job[] {
  let next: Job[];
  switch (action.type) {
    case "reset":
      next = [...action.jobs];
      break;
    case "remove":
      next = jobs.filter((j) => j.id !== action.id);
      break;
    case "upsert": {
      const index = jobs.findIndex((j) => j.id === action.job.id);
      if (index < 0) next = [...jobs, action.job];
      else {
        const held = jobs[index]!;
        if (held.updated_at && action.job.updated_at && action.job.updated_at < held.updated_at) return [...jobs];
        next = [...jobs];
        next[index] = action.job;
      }
      break;
    }
  }
  return next.sort((a, b) => (a.created_at === b.created_at ? (a.id < b.id ? 1 : -1) : a.created_at < b.created_at ? 1 : -1));
}

export class JobsApi {
  constructor(private readonly client: ApiClient) {}

  list(): Promise<Job[]> {
    return this.client.get<Job[]>("/api/jobs");
  }

  get(id: string): Promise<Job> {
    return this.client.get<Job>(`/api/jobs/${encodeURIComponent(id)}`);
  }

  create(request: RetrieveRequest | SendRequest): Promise<Job> {
    return this.client.post<Job>("/api/jobs", request);
  }

  cancel(id: string): Promise<Job> {
    return this.client.delete<Job>(`/api/jobs/${encodeURIComponent(id)}`);
  }

  retry(id: string): Promise<Job> {
    return this.client.post<Job>(`/api/jobs/${encodeURIComponent(id)}/retry`);
  }

  /** Every change of every job (and each job once on connect). Returns the closer. */
  subscribe(onJob: (job: Job) => void, onError?: () => void, onOpen?: () => void): () => void {
    return this.client.events("/api/jobs/events", { job: (data) => onJob(data as Job) }, onError, onOpen);
  }
}
