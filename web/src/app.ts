// The workstation app: the shell (navigation by role, login, logout) and the pages of the hash routes.
// Every page is built from the components, which a host application can also mount one at a time.
import { ApiClient } from "./api/http";
import type { LogKind, LogQuery } from "./api/logs";
import { type Session, SessionApi } from "./api/session";
import { type StudyPage, StudiesApi, type StudyQuery, queryFromUrl, queryToUrl } from "./api/studies";
import { type Mounted, h, message, replace } from "./dom";
import { can } from "./roles";
import { type Route, parseRoute, routeHash } from "./router";
import { mountLogin } from "./components/login";
import { mountLoaderQueue } from "./components/loader-queue";
import { mountLogViewer } from "./components/log-viewer";
import { MANAGER_TABS, type ManagerTab, mountServerManager } from "./components/server-manager";
import { loadPreferences, mountSettings } from "./components/settings";
import { mountSearchPage } from "./pages/search";
import { mountViewerPage } from "./pages/viewer";

export interface AppOptions {
  /** Where the server is; "" for the server that served the page. */
  baseUrl?: string;
}

interface NavItem {
  page: string;
  label: string;
  allowed: (session: Session) => boolean;
}

const NAV: NavItem[] = [
  { page: "search", label: "Search", allowed: (s) => can(s.role, "search") },
  { page: "jobs", label: "Loader queue", allowed: (s) => can(s.role, "search") },
  { page: "manager", label: "Service manager", allowed: (s) => can(s.role, "manager-read") },
  { page: "logs", label: "Logs", allowed: (s) => can(s.role, "logs") },
  { page: "settings", label: "Settings", allowed: () => true },
];

/** The search a route describes, with this browser's page size unless the URL gives one. */
function searchQuery(route: Route): StudyQuery {
  const query = queryFromUrl(route.params);
  if (!route.params.has("limit")) query.limit = loadPreferences().pageSize;
  return query;
}

export function startApp(root: HTMLElement, options: AppOptions = {}): Mounted {
  const client = new ApiClient({ baseUrl: options.baseUrl ?? "" });
  const sessions = new SessionApi(client);
  let session: Session | null = null;
  let current: Mounted | null = null;
  let lastSearch = "#/search";
  // At start, the search of the URL is asked for while the session is checked (one round trip less
  // before the first page is on screen); used only if the session is there and the query is the same.
  let prefetch: { key: string; page: Promise<StudyPage> } | null = null;
  const nav = h("nav", { class: "main-nav", "aria-label": "Main" });
  const userBox = h("div", { class: "user" });
  const header = h("header", { class: "app-header" }, h("a", { class: "brand", href: "#/search" }, "pacskit"), nav, userBox);
  const main = h("main", { class: "app-main" });
  root.replaceChildren(header, main);

  const unmount = () => {
    current?.destroy();
    current = null;
  };

  const showLogin = (notice?: string) => {
    unmount();
    session = null;
    prefetch = null; // asked for without a session: refused
    header.hidden = true;
    current = mountLogin(main, {
      client,
      notice,
      onLogin: (s) => {
        session = s;
        const route = parseRoute(location.hash);
        if (route.page === "login") location.hash = "#/search";
        else render();
      },
    });
  };

  client.onUnauthorized = () => {
    if (session) showLogin("Your session has ended: please log in again.");
  };

  const renderHeader = (s: Session, route: Route) => {
    header.hidden = false;
    replace(
      nav,
      NAV.filter((item) => item.allowed(s)).map((item) =>
        h("a", { href: `#/${item.page}`, class: item.page === route.page ? "active" : "", "aria-current": item.page === route.page ? "page" : undefined }, item.label),
      ),
    );
    replace(
      userBox,
      h("span", { class: "who" }, `${s.user} · ${s.role}`),
      h("button", { type: "button", on: { click: () => { sessions.logout().finally(() => showLogin()); } } }, "Log out"),
    );
  };

  const render = () => {
    if (!session) return;
    const s = session;
    const route = parseRoute(location.hash);
    unmount();
    renderHeader(s, route);
    const item = NAV.find((n) => n.page === route.page);
    if (item && !item.allowed(s)) {
      replace(main, message(`Your role (${s.role}) may not open this page.`));
      return;
    }
    const prefs = loadPreferences();
    switch (route.page) {
      case "login":
      case "search": {
        lastSearch = routeHash("search", [], route.params);
        const query = searchQuery(route);
        const key = JSON.stringify(query);
        const prefetched = prefetch?.key === key ? prefetch.page : undefined;
        prefetch = null;
        current = mountSearchPage(main, {
          prefetched,
          client,
          query,
          canRetrieve: can(s.role, "retrieve"),
          canSend: can(s.role, "send"),
          retrieveMethod: prefs.retrieveMethod,
          onQuery: (q) => {
            location.hash = routeHash("search", [], queryToUrl(q));
          },
          onOpen: (uid) => {
            location.hash = routeHash("viewer", [uid]);
          },
          jobsHref: "#/jobs",
        });
        break;
      }
      case "viewer":
        if (!route.rest[0]) {
          replace(main, message("No study given."));
          return;
        }
        current = mountViewerPage(main, {
          client,
          studyUid: route.rest[0],
          seriesUid: route.rest[1],
          backHref: lastSearch,
        });
        break;
      case "jobs":
        current = mountLoaderQueue(main, {
          client,
          canManage: can(s.role, "manage-jobs"),
          onOpen: (uid) => {
            location.hash = routeHash("viewer", [uid]);
          },
        });
        break;
      case "manager": {
        const tab = (MANAGER_TABS.find((t) => t.id === route.rest[0])?.id ?? "overview") as ManagerTab;
        current = mountServerManager(main, {
          client,
          canWrite: can(s.role, "manager-write"),
          tab,
          onTabChange: (t) => history.replaceState(null, "", routeHash("manager", [t])),
        });
        break;
      }
      case "logs": {
        const kind: LogKind = route.params.get("kind") === "audit" ? "audit" : "transactions";
        const filters: Record<string, string> = {};
        for (const [k, v] of route.params) if (k !== "kind" && k !== "offset") filters[k] = v;
        const query: LogQuery = { kind, filters, limit: 50, offset: Number(route.params.get("offset")) || 0 };
        current = mountLogViewer(main, {
          client,
          query,
          onQueryChange: (q) => {
            const params = new URLSearchParams({ kind: q.kind, ...q.filters });
            if (q.offset) params.set("offset", String(q.offset));
            history.replaceState(null, "", routeHash("logs", [], params));
          },
        });
        break;
      }
      case "settings":
        current = mountSettings(main, { client, session: s, canManageUsers: can(s.role, "users") });
        break;
      default:
        replace(main, message(`No page "${route.page}".`));
    }
  };

  window.addEventListener("hashchange", render);
  const startRoute = parseRoute(location.hash);
  if (startRoute.page === "search") {
    const query = searchQuery(startRoute);
    const page = new StudiesApi(client).search(query);
    page.catch(() => undefined); // a 401 here is answered by the login page
    prefetch = { key: JSON.stringify(query), page };
  }
  sessions
    .current()
    .then((s) => {
      if (s) {
        session = s;
        render();
      } else showLogin();
    })
    .catch(() => showLogin());

  return {
    destroy: () => {
      window.removeEventListener("hashchange", render);
      unmount();
      root.replaceChildren();
    },
  };
}
