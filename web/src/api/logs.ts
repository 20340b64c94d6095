// The log viewer's data: the transaction log and the audit trail (/api/logs/...).
import { type ApiClient, queryString } from "./http";

export type LogKind = "transactions" | "audit";

export type LogEntry = Record<string, unknown>;

export interface LogPage {
  total: number;
  items: LogEntry[];
}

/** The filters each log takes (a field the log does not know is not sent). */
export const LOG_FILTERS: Record<LogKind, readonly string[]> = {
  transactions: ["since", "until", "ae", "operation", "status", "patient", "study"],
  audit: ["since", "until", "user", "event", "outcome", "patient"],
};

/** The columns shown, in order. */
export const LOG_COLUMNS: Record<LogKind, readonly string[]> = {
  transactions: ["time", "calling_ae", "called_ae", "operation", "status_hex", "patient_id", "patient_name", "study_uid", "duration_ms"],
  audit: ["time", "user", "event", "action", "outcome", "patient_id", "study_uid"],
};

export interface LogQuery {
  kind: LogKind;
  filters: Record<string, string>;
  limit: number;
  offset: number;
}

/** `datetime-local` input values ("2024-01-31T13:45") become ISO 8601 in UTC for the server. */
export function toIsoUtc(local: string): string {
  if (!local) return "";
  const date = new Date(local);
  return Number.isNaN(date.getTime()) ? local : date.toISOString();
}

export function logParams(q: LogQuery, format?: "csv"): Record<string, string | number> {
  const params: Record<string, string | number> = {};
  for (const key of LOG_FILTERS[q.kind]) {
    const raw = (q.filters[key] ?? "").trim();
    if (!raw) continue;
    params[key] = key === "since" || key === "until" ? toIsoUtc(raw) : raw;
  }
  if (format) params.format = format;
  else {
    params.limit = q.limit;
    params.offset = q.offset;
  }
  return params;
}

/** A CSV field per RFC 4180 (quoted when it holds a comma, quote or line break). */
export function csvField(value: unknown): string {
  const text = value === null || value === undefined ? "" : typeof value === "object" ? JSON.stringify(value) : String(value);
  return /[",\r\n]/.test(text) ? `"${text.replaceAll('"', '""')}"` : text;
}

/** Rows as CSV text (used to export what is on screen, e.g. the live tail). */
export function toCsv(columns: readonly string[], rows: readonly LogEntry[]): string {
  const lines = [columns.map(csvField).join(",")];
  for (const row of rows) lines.push(columns.map((c) => csvField(row[c])).join(","));
  return `${lines.join("\r\n")}\r\n`;
}

/** True when a live-tail entry passes the filters shown (so the tail obeys them like the table). */
export function entryMatches(kind: LogKind, entry: LogEntry, filters: Record<string, string>): boolean {
  const has = (field: unknown, wanted: string) => String(field ?? "").toLowerCase().includes(wanted.toLowerCase());
  for (const key of LOG_FILTERS[kind]) {
    const wanted = (filters[key] ?? "").trim();
    if (!wanted) continue;
    switch (key) {
      case "since":
        if (String(entry.time ?? "") < toIsoUtc(wanted)) return false;
        break;
      case "until":
        if (String(entry.time ?? "") > toIsoUtc(wanted)) return false;
        break;
      case "ae":
        if (!has(entry.calling_ae, wanted) && !has(entry.called_ae, wanted)) return false;
        break;
      case "patient":
        if (!has(entry.patient_id, wanted) && !has(entry.patient_name, wanted)) return false;
        break;
      case "study":
        if (!has(entry.study_uid, wanted)) return false;
        break;
      case "status": {
        // "success" / "warning" / "failure" or a hex code, as the server filters
        const code = typeof entry.status === "number" ? entry.status : Number.parseInt(String(entry.status_hex ?? ""), 16);
        const w = wanted.toLowerCase();
        const kind = code === 0 ? "success" : code === 0x0001 || (code >= 0xb000 && code <= 0xbfff) ? "warning" : code === 0xff00 || code === 0xff01 ? "pending" : "failure";
        if (w === "success" || w === "warning" || w === "failure") {
          if (kind !== w) return false;
        } else if (Number.parseInt(w.replace(/^0x/, ""), 16) !== code) return false;
        break;
      }
      default:
        if (!has(entry[key], wanted)) return false;
    }
  }
  return true;
}

export class LogsApi {
  constructor(private readonly client: ApiClient) {}

  page(q: LogQuery, signal?: AbortSignal): Promise<LogPage> {
    return this.client.get<LogPage>(`/api/logs/${q.kind}${queryString(logParams(q))}`, signal);
  }

  /** The URL of the server's CSV export of every row matching the filters. */
  csvUrl(q: LogQuery): string {
    return this.client.url(`/api/logs/${q.kind}${queryString(logParams(q, "csv"))}`);
  }

  /** New entries as they are written. Returns the closer. */
  tail(kind: LogKind, onEntry: (entry: LogEntry) => void, onError?: () => void, onOpen?: () => void): () => void {
    return this.client.events(`/api/logs/${kind}/tail`, { entry: (data) => onEntry(data as LogEntry) }, onError, onOpen);
  }
}
