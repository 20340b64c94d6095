// The HTTP client every API module uses: one per server (its base URL), carrying the session's CSRF
// token on every unsafe request and turning RFC 9457 problem+json answers into ApiError.

/** An RFC 9457 problem (or a plain FastAPI `{"detail"}`) answered by the server. */
export class ApiError extends Error {
  readonly status: number;
  readonly title: string;
  readonly detail: string;

  constructor(status: number, title: string, detail: string) {
    super(detail ? `${title}: ${detail}` : title);
    this.name = "ApiError";
    this.status = status;
    this.title = title;
    this.detail = detail;
  }
}

export type FetchLike = (input: string, init?: RequestInit) => Promise<Response>;

export interface ApiClientOptions {
  /** Where `/api` and `/dicom-web` live, e.g. "" (same origin) or "https://pacs.example:8042". */
  baseUrl?: string;
  /** A bearer token (admin API token) instead of the session cookie; no CSRF header is then needed. */
  bearerToken?: string;
  /** Replaces `fetch` (tests, or a host application's own fetch with its auth). */
  fetch?: FetchLike;
}

const SAFE_METHODS = new Set(["GET", "HEAD", "OPTIONS"]);

/** Builds `?a=1&b=2`, leaving out undefined, null and empty values. */
export function queryString(params: Record<string, string | number | boolean | undefined | null>): string {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value === undefined || value === null || value === "") continue;
    search.set(key, String(value));
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

/** Reads the error of a failed response: problem+json, `{"detail"}` (string or FastAPI's list), or text. */
export async function errorFromResponse(response: Response): Promise<ApiError> {
  let title = response.statusText || `HTTP ${response.status}`;
  let detail = "";
  const text = await response.text().catch(() => "");
  try {
    const body = JSON.parse(text) as { title?: unknown; detail?: unknown };
    if (typeof body.title === "string") title = body.title;
    if (typeof body.detail === "string") detail = body.detail;
    else if (Array.isArray(body.detail)) {
      detail = body.detail
        .map((d: { loc?: unknown[]; msg?: string }) => `${(d.loc ?? []).join(".")}: ${d.msg ?? ""}`)
        .join("; ");
    }
  } catch {
    detail = text.slice(0, 500);
  }
  return new ApiError(response.status, title, detail);
}

export class ApiClient {
  readonly baseUrl: string;
  private readonly bearerToken: string | undefined;
  private readonly fetchImpl: FetchLike;
  private csrf: string | null = null;
  /** Called with every 401 (the session expired or was never there): the app shows its login. */
  onUnauthorized: ((error: ApiError) => void) | null = null;

  constructor(options: ApiClientOptions = {}) {
    this.baseUrl = (options.baseUrl ?? "").replace(/\/+$/, "");
    this.bearerToken = options.bearerToken;
    this.fetchImpl = options.fetch ?? ((input, init) => fetch(input, init));
  }

  /** The CSRF token of the session (set by the session API after login or on start). */
  set csrfToken(token: string | null) {
    this.csrf = token;
  }

  get csrfToken(): string | null {
    return this.csrf;
  }

  url(path: string): string {
    return `${this.baseUrl}${path}`;
  }

  /** The credentials header for requests made by others (the viewer's DICOMweb): the bearer token, if any. */
  authHeaders(): Record<string, string> {
    return this.bearerToken ? { Authorization: `Bearer ${this.bearerToken}` } : {};
  }

  /** The headers a request needs: bearer token, or the CSRF token for unsafe methods. */
  headersFor(method: string, extra: Record<string, string> = {}): Record<string, string> {
    const headers: Record<string, string> = { Accept: "application/json", ...extra };
    if (this.bearerToken) headers.Authorization = `Bearer ${this.bearerToken}`;
    else if (!SAFE_METHODS.has(method.toUpperCase()) && this.csrf) headers["X-CSRF-Token"] = this.csrf;
    return headers;
  }

  async request(method: string, path: string, body?: unknown, signal?: AbortSignal): Promise<Response> {
    const extra: Record<string, string> = body === undefined ? {} : { "Content-Type": "application/json" };
    const response = await this.fetchImpl(this.url(path), {
      method,
      headers: this.headersFor(method, extra),
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "same-origin",
      signal,
    });
    if (!response.ok) {
      const error = await errorFromResponse(response);
      if (response.status === 401 && this.onUnauthorized) this.onUnauthorized(error);
      throw error;
    }
    return response;
  }

  async json<T>(method: string, path: string, body?: unknown, signal?: AbortSignal): Promise<T> {
    const response = await this.request(method, path, body, signal);
    if (response.status === 204) return undefined as T;
    return (await response.json()) as T;
  }

  get<T>(path: string, signal?: AbortSignal): Promise<T> {
    return this.json<T>("GET", path, undefined, signal);
  }

  post<T>(path: string, body?: unknown): Promise<T> {
    return this.json<T>("POST", path, body ?? {});
  }

  put<T>(path: string, body: unknown): Promise<T> {
    return this.json<T>("PUT", path, body);
  }

  patch<T>(path: string, body: unknown): Promise<T> {
    return this.json<T>("PATCH", path, body);
  }

  delete<T = void>(path: string): Promise<T> {
    return this.json<T>("DELETE", path);
  }

  /**
   * Server-Sent Events from `path`, one callback per event of the named types. EventSource sends the
   * session cookie (same origin) but no headers: with a bearer token, streams need the cookie.
   * Returns the function that closes the stream.
   */
  events(path: string, handlers: Record<string, (data: unknown) => void>, onError?: () => void, onOpen?: () => void): () => void {
    const source = new EventSource(this.url(path), { withCredentials: this.baseUrl !== "" });
    if (onOpen) source.onopen = onOpen;
    for (const [name, handler] of Object.entries(handlers)) {
      source.addEventListener(name, (event) => {
        const text = (event as MessageEvent<string>).data;
        try {
          handler(JSON.parse(text));
        } catch {
          handler(text);
        }
      });
    }
    if (onError) source.onerror = onError;
    return () => source.close();
  }
}
