// Settings: this browser's preferences (page size, retrieve method) and, for admins, the users.
import type { ApiClient } from "../api/http";
import type { Role, Session } from "../api/session";
import { UsersApi } from "../api/users";
import { type Mounted, errorText, h, message, replace } from "../dom";

export interface Preferences {
  pageSize: number;
  retrieveMethod: "move" | "get";
}

const KEY = "pacskit.preferences";
const DEFAULTS: Preferences = { pageSize: 25, retrieveMethod: "move" };

/** The preferences stored in this browser (defaults for anything missing or bad). */
export function loadPreferences(storage: Pick<Storage, "getItem"> = localStorage): Preferences {
  try {
    const raw = JSON.parse(storage.getItem(KEY) ?? "{}") as Partial<Preferences>;
    const pageSize = Number(raw.pageSize);
    return {
      pageSize: Number.isInteger(pageSize) && pageSize >= 5 && pageSize <= 500 ? pageSize : DEFAULTS.pageSize,
      retrieveMethod: raw.retrieveMethod === "get" ? "get" : "move",
    };
  } catch {
    return { ...DEFAULTS };
  }
}

export function savePreferences(prefs: Preferences, storage: Pick<Storage, "setItem"> = localStorage): void {
  storage.setItem(KEY, JSON.stringify(prefs));
}

export interface SettingsOptions {
  client: ApiClient;
  session: Session;
  /** May the user manage users (role admin)? */
  canManageUsers: boolean;
  onPreferences?: (prefs: Preferences) => void;
}

const ROLES: Role[] = ["viewer", "operator", "admin"];

export function mountSettings(root: HTMLElement, options: SettingsOptions): Mounted {
  const status = h("div", { class: "form-status" });
  const prefs = loadPreferences();
  const pageSize = h("input", { type: "number", name: "pageSize", min: 5, max: 500, value: String(prefs.pageSize) });
  const method = h("select", { name: "retrieveMethod" },
    h("option", { value: "move", selected: prefs.retrieveMethod === "move" }, "C-MOVE (the remote sends to this server)"),
    h("option", { value: "get", selected: prefs.retrieveMethod === "get" }, "C-GET (on the same association)"));
  const prefsForm = h("form", { class: "inline-form", "aria-label": "Preferences" }, h("h3", null, "Preferences (this browser)"),
    h("label", null, "Studies per page", pageSize), h("label", null, "Retrieve with", method),
    h("button", { type: "submit", class: "primary" }, "Save"));
  prefsForm.addEventListener("submit", (e) => {
    e.preventDefault();
    const next: Preferences = { pageSize: Math.min(500, Math.max(5, Number(pageSize.value) || DEFAULTS.pageSize)), retrieveMethod: method.value === "get" ? "get" : "move" };
    savePreferences(next);
    options.onPreferences?.(next);
    status.replaceChildren(message("Preferences saved.", "info"));
  });

  const usersEl = h("div", { class: "users" });
  const section = h("section", { class: "settings", "aria-label": "Settings" },
    h("p", null, `Logged in as ${options.session.user} (${options.session.role}).`), status, prefsForm, usersEl);

  if (options.canManageUsers) {
    const api = new UsersApi(options.client);
    const fail = (error: unknown) => status.replaceChildren(message(errorText(error)));
    const roleSelect = (value: Role) => h("select", { "aria-label": "Role" }, ROLES.map((r) => h("option", { value: r, selected: r === value }, r)));
    const showUsers = () => {
      api.list().then((users) => {
        const name = h("input", { name: "username", required: true });
        const password = h("input", { name: "password", type: "password", required: true, autocomplete: "new-password" });
        const role = roleSelect("viewer");
        const add = h("form", { class: "inline-form", "aria-label": "New user" }, h("h3", null, "New user"),
          h("label", null, "User name", name), h("label", null, "Password", password), h("label", null, "Role", role),
          h("button", { type: "submit" }, "Add"));
        add.addEventListener("submit", (e) => {
          e.preventDefault();
          api.add(name.value.trim(), password.value, role.value as Role).then(() => { status.replaceChildren(message(`${name.value} added`, "info")); showUsers(); }).catch(fail);
        });
        replace(usersEl, h("h3", null, "Users"),
          h("table", { class: "grid" }, h("thead", null, h("tr", null, h("th", null, "User"), h("th", null, "Role"), h("th", null, ""))),
            h("tbody", null, users.map((u) => {
              const r = roleSelect(u.role);
              r.addEventListener("change", () => api.update(u.username, { role: r.value as Role }).then(() => status.replaceChildren(message(`${u.username} is now ${r.value}`, "info"))).catch(fail));
              return h("tr", { dataset: { user: u.username } }, h("td", null, u.username), h("td", null, r),
                h("td", { class: "actions" },
                  h("button", { type: "button", on: { click: () => {
                    const pw = window.prompt(`New password for ${u.username}`);
                    if (pw) api.update(u.username, { password: pw }).then(() => status.replaceChildren(message(`password of ${u.username} changed`, "info"))).catch(fail);
                  } } }, "Set password"),
                  u.username === options.session.user ? null : h("button", { type: "button", on: { click: () => {
                    if (window.confirm(`Remove user ${u.username}?`)) api.remove(u.username).then(showUsers).catch(fail);
                  } } }, "Remove")));
            }))),
          add);
      }).catch(fail);
    };
    showUsers();
  }
  root.replaceChildren(section);
  return { destroy: () => section.remove() };
}
