// The search API: /api/nodes, /api/studies (local archive or a remote AE by C-FIND), series.
import { type ApiClient, queryString } from "./http";
import type { DicomJson } from "../dicom";
import { toDicomDate } from "../dicom";

export interface RemoteNode {
  title: string;
  host: string;
  port: number;
  description: string;
}

/** What the search form holds (the page's URL carries the same fields, so links can be shared). */
export interface StudyQuery {
  source: string; // "local" or an AE title
  patientName: string;
  patientId: string;
  accession: string;
  dateFrom: string; // yyyy-mm-dd (HTML date input) or ""
  dateTo: string;
  modality: string;
  description: string;
  sort: string; // a keyword of the study object, e.g. StudyDate
  order: "asc" | "desc";
  limit: number;
  offset: number;
}

export const SORTABLE = [
  "StudyDate",
  "PatientName",
  "PatientID",
  "AccessionNumber",
  "StudyDescription",
  "ModalitiesInStudy",
] as const;

export function emptyQuery(): StudyQuery {
  return {
    source: "local",
    patientName: "",
    patientId: "",
    accession: "",
    dateFrom: "",
    dateTo: "",
    modality: "",
    description: "",
    sort: "StudyDate",
    order: "desc",
    limit: 25,
    offset: 0,
  };
}

/** A C-FIND style match for free text: a trailing `*` unless the user wrote wildcards. */
export function wildcard(value: string): string {
  const v = value.trim();
  if (!v) return "";
  return /[*?]/.test(v) ? v : `${v}*`;
}

/** The DICOM date range `A-B`, `A-`, `-B` or a single date (both ends equal). */
export function dateRange(from: string, to: string): string {
  const a = from ? toDicomDate(from) : "";
  const b = to ? toDicomDate(to) : "";
  if (!a && !b) return "";
  if (a && a === b) return a;
  return `${a}-${b}`;
}

/** The query parameters of GET /api/studies for a form's state. */
export function studyParams(q: StudyQuery): Record<string, string | number> {
  const params: Record<string, string | number> = { source: q.source || "local" };
  const name = wildcard(q.patientName);
  if (name) params.PatientName = name;
  if (q.patientId.trim()) params.PatientID = q.patientId.trim();
  if (q.accession.trim()) params.AccessionNumber = q.accession.trim();
  const dates = dateRange(q.dateFrom, q.dateTo);
  if (dates) params.StudyDate = dates;
  if (q.modality.trim()) params.ModalitiesInStudy = q.modality.trim().toUpperCase();
  const description = q.description.trim();
  if (description) params.StudyDescription = /[*?]/.test(description) ? description : `*${description}*`;
  params.sort = q.sort;
  params.order = q.order;
  params.limit = q.limit;
  params.offset = q.offset;
  return params;
}

const QUERY_KEYS: Record<keyof StudyQuery, string> = {
  source: "source",
  patientName: "name",
  patientId: "id",
  accession: "acc",
  dateFrom: "from",
  dateTo: "to",
  modality: "mod",
  description: "desc",
  sort: "sort",
  order: "order",
  limit: "limit",
  offset: "offset",
};

/** The query as URL parameters of the page (short names, defaults left out). */
export function queryToUrl(q: StudyQuery): URLSearchParams {
  const defaults = emptyQuery();
  const out = new URLSearchParams();
  for (const key of Object.keys(QUERY_KEYS) as (keyof StudyQuery)[]) {
    if (q[key] !== defaults[key] && q[key] !== "") out.set(QUERY_KEYS[key], String(q[key]));
  }
  return out;
}

/** The query a page URL describes (unknown or bad values fall back to the defaults). */
export function queryFromUrl(params: URLSearchParams): StudyQuery {
  const q = emptyQuery();
  const str = (key: keyof StudyQuery): string | null => params.get(QUERY_KEYS[key]);
  for (const key of ["source", "patientName", "patientId", "accession", "dateFrom", "dateTo", "modality", "description"] as const) {
    const v = str(key);
    if (v !== null) q[key] = v;
  }
  const sort = str("sort");
  if (sort && (SORTABLE as readonly string[]).includes(sort)) q.sort = sort;
  const order = str("order");
  if (order === "asc" || order === "desc") q.order = order;
  const limit = Number(str("limit"));
  if (Number.isInteger(limit) && limit >= 1 && limit <= 1000) q.limit = limit;
  const offset = Number(str("offset"));
  if (Number.isInteger(offset) && offset >= 0) q.offset = offset;
  return q;
}

export interface StudyPage {
  source: string;
  total: number;
  items: DicomJson[];
}

/** Paging arithmetic shared by the study list and the log viewer. */
export interface PageInfo {
  page: number; // 1-based
  pages: number;
  first: number; // 1-based index of the first row shown (0 when empty)
  last: number;
  hasPrevious: boolean;
  hasNext: boolean;
}

export function pageInfo(total: number, offset: number, limit: number): PageInfo {
  const pages = Math.max(1, Math.ceil(total / limit));
  const page = Math.min(pages, Math.floor(offset / limit) + 1);
  const first = total === 0 ? 0 : Math.min(total, offset + 1);
  const last = Math.min(total, offset + limit);
  return { page, pages, first, last, hasPrevious: offset > 0, hasNext: offset + limit < total };
}

/** The offset of a 1-based page number (clamped to the pages there are). */
export function offsetOfPage(page: number, total: number, limit: number): number {
  const pages = Math.max(1, Math.ceil(total / limit));
  return (Math.min(Math.max(1, page), pages) - 1) * limit;
}

export class StudiesApi {
  constructor(private readonly client: ApiClient) {}

  nodes(): Promise<RemoteNode[]> {
    return this.client.get<RemoteNode[]>("/api/nodes");
  }

  search(q: StudyQuery, signal?: AbortSignal): Promise<StudyPage> {
    return this.client.get<StudyPage>(`/api/studies${queryString(studyParams(q))}`, signal);
  }

  series(studyUid: string, source: string): Promise<{ source: string; items: DicomJson[] }> {
    return this.client.get(`/api/studies/${encodeURIComponent(studyUid)}/series${queryString({ source })}`);
  }

  /** The PS3.18 thumbnail of a local study (image/jpeg; 404 when the server cannot make one). */
  thumbnailUrl(studyUid: string): string {
    return this.client.url(`/dicom-web/studies/${encodeURIComponent(studyUid)}/thumbnail`);
  }
}
