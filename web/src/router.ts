// Hash routes of the app ("#/search?name=DOE"): the page and its parameters live in the URL, so a
// search or a filtered log can be bookmarked and shared.

export interface Route {
  page: string; // "search", "viewer", "jobs", "manager", "logs", "settings", "login"
  rest: string[]; // path segments after the page (e.g. the study UID of the viewer)
  params: URLSearchParams;
}

export function parseRoute(hash: string): Route {
  const text = hash.replace(/^#\/?/, "");
  const [path = "", query = ""] = text.split("?", 2);
  const segments = path.split("/").filter(Boolean).map(decodeURIComponent);
  return { page: segments[0] ?? "search", rest: segments.slice(1), params: new URLSearchParams(query) };
}

export function routeHash(page: string, rest: string[] = [], params?: URLSearchParams): string {
  const path = [page, ...rest.map(encodeURIComponent)].join("/");
  const query = params?.toString();
  return `#/${path}${query ? `?${query}` : ""}`;
}
