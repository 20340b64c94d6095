// The service manager: the servers of the servers root, and for this server its status and
// statistics, AE titles, connected clients, add-ins (options from their JSON schema, reload) and the
// live event feed. Read-only unless `canWrite`.
import { type AdminEvent, AdminApi, type AeTitle, type ManagedServer } from "../api/admin";
import type { ApiClient } from "../api/http";
import { changedOptions } from "../schema";
import { type Mounted, errorText, formatBytes, formatTimestamp, h, message, replace } from "../dom";
import { schemaForm } from "./schema-form";

export type ManagerTab = "overview" | "servers" | "ae-titles" | "clients" | "addins" | "events";

export const MANAGER_TABS: { id: ManagerTab; label: string }[] = [
  { id: "overview", label: "Status" },
  { id: "servers", label: "Servers" },
  { id: "ae-titles", label: "AE titles" },
  { id: "clients", label: "Clients" },
  { id: "addins", label: "Add-ins" },
  { id: "events", label: "Events" },
];

export interface ServerManagerOptions {
  client: ApiClient;
  canWrite: boolean;
  tab?: ManagerTab;
  onTabChange?: (tab: ManagerTab) => void;
}

const MAX_EVENTS = 200;

export function mountServerManager(root: HTMLElement, options: ServerManagerOptions): Mounted {
  const api = new AdminApi(options.client);
  let tab: ManagerTab = options.tab ?? "overview";
  let cleanup: (() => void) | null = null;
  const status = h("div", { class: "form-status" });
  const content = h("div", { class: "tab-content" });
  const tabs = h("nav", { class: "tabs", role: "tablist" });
  const section = h("section", { class: "server-manager", "aria-label": "Service manager" }, tabs, status, content);

  const fail = (error: unknown) => status.replaceChildren(message(errorText(error)));
  const ok = (text: string) => status.replaceChildren(message(text, "info"));

  const show = (next: ManagerTab) => {
    cleanup?.();
    cleanup = null;
    tab = next;
    status.replaceChildren();
    replace(
      tabs,
      MANAGER_TABS.map((t) =>
        h("button", { type: "button", role: "tab", "aria-selected": String(t.id === tab), on: { click: () => { options.onTabChange?.(t.id); show(t.id); } } }, t.label),
      ),
    );
    replace(content, h("p", { class: "loading" }, "Loading…"));
    const views: Record<ManagerTab, () => void> = {
      overview: showOverview,
      servers: showServers,
      "ae-titles": showAeTitles,
      clients: showClients,
      addins: showAddins,
      events: showEvents,
    };
    views[tab]();
  };

  // ---------------------------------------------------------------- status and statistics
  function showOverview(): void {
    Promise.all([api.status(), api.statistics()])
      .then(([s, stats]) => {
        const dl = (pairs: [string, unknown][]) => h("dl", { class: "facts" }, pairs.map(([k, v]) => [h("dt", null, k), h("dd", null, String(v ?? ""))]));
        const operations = Object.entries(stats.operations ?? {});
        replace(
          content,
          h("h3", null, `${s.ae_title} on port ${s.port}`),
          dl([
            ["Process", s.pid],
            ["Up for", `${Math.round(s.uptime_seconds)} s`],
            ["Associations", `${s.associations_active} active / ${s.max_associations} max`],
            ["Pending requests", s.pending_requests],
            ["Add-ins", s.addins.join(", ")],
          ]),
          h("h3", null, "Statistics"),
          dl([
            ["Connections", stats.connections_total],
            ["Associations", stats.associations_total],
            ["Rejected", stats.associations_rejected],
            ["Aborted", stats.associations_aborted],
            ["Outgoing associations", stats.outgoing_associations_total],
            ["Received", formatBytes(stats.bytes_in)],
            ["Sent", formatBytes(stats.bytes_out)],
          ]),
          operations.length
            ? h(
                "table",
                { class: "grid operations" },
                h("thead", null, h("tr", null, h("th", null, "Service"), h("th", null, "Operations"))),
                h("tbody", null, operations.map(([name, op]) => h("tr", null, h("td", null, name), h("td", null, h("code", null, JSON.stringify(op)))))),
              )
            : h("p", { class: "empty" }, "No DIMSE operation yet."),
          h("button", { type: "button", on: { click: () => show("overview") } }, "Refresh"),
        );
      })
      .catch(fail);
  }

  // ---------------------------------------------------------------- servers root
  function showServers(): void {
    api
      .servers()
      .then((servers) => {
        if (servers === null) {
          replace(content, h("p", { class: "empty" }, "This server runs standalone: it does not belong to a servers root (pacskit servers)."));
          return;
        }
        const action = (s: ManagedServer, verb: "start" | "stop" | "restart") =>
          h("button", {
            type: "button",
            on: {
              click: () => {
                api.serverAction(s.name, verb).then(() => { ok(`${s.name}: ${verb} done`); showServers(); }).catch(fail);
              },
            },
          }, verb[0]!.toUpperCase() + verb.slice(1));
        const form = newServerForm();
        replace(
          content,
          h(
            "table",
            { class: "grid servers" },
            h("thead", null, h("tr", null, ["Name", "AE title", "Port", "State", "PID", ""].map((c) => h("th", null, c)))),
            h("tbody", null, servers.map((s) => h("tr", { dataset: { server: s.name } },
              h("td", null, s.name), h("td", null, s.ae_title), h("td", null, String(s.port)),
              h("td", { class: `state state-${s.state}` }, s.state), h("td", null, s.pid ? String(s.pid) : ""),
              h("td", { class: "actions" }, options.canWrite ? [action(s, "start"), action(s, "stop"), action(s, "restart")] : null),
            ))),
          ),
          options.canWrite ? form : null,
        );
      })
      .catch(fail);
  }

  function newServerForm(): HTMLElement {
    const name = h("input", { name: "name", required: true });
    const ae = h("input", { name: "ae_title", required: true, maxLength: 16 });
    const port = h("input", { name: "port", type: "number", min: 1, max: 65535, required: true });
    const form = h("form", { class: "inline-form", "aria-label": "New server" }, h("h3", null, "New server"),
      h("label", null, "Name", name), h("label", null, "AE title", ae), h("label", null, "Port", port),
      h("button", { type: "submit" }, "Create"));
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      api.createServer({ name: name.value.trim(), ae_title: ae.value.trim(), port: Number(port.value) })
        .then(() => { ok(`server ${name.value} created`); showServers(); })
        .catch(fail);
    });
    return form;
  }

  // ---------------------------------------------------------------- AE titles
  function showAeTitles(): void {
    api
      .aeTitles()
      .then((entries) => {
        const editor = h("div", { class: "ae-editor" });
        const openEditor = (entry: AeTitle | null) => replace(editor, aeForm(entry));
        replace(
          content,
          h(
            "table",
            { class: "grid ae-titles" },
            h("thead", null, h("tr", null, ["AE title", "Host", "Port", "TLS", "Description", ""].map((c) => h("th", null, c)))),
            h("tbody", null, entries.map((e) => h("tr", { dataset: { ae: e.title } },
              h("td", null, e.title), h("td", null, e.host), h("td", null, String(e.port)), h("td", null, e.tls ? "yes" : ""),
              h("td", null, e.description ?? ""),
              h("td", { class: "actions" }, options.canWrite ? [
                h("button", { type: "button", on: { click: () => openEditor(e) } }, "Edit"),
                h("button", { type: "button", on: { click: () => {
                  if (!window.confirm(`Remove AE ${e.title}?`)) return;
                  api.removeAeTitle(e.title).then(() => { ok(`${e.title} removed`); showAeTitles(); }).catch(fail);
                } } }, "Remove"),
              ] : null),
            ))),
          ),
          options.canWrite ? h("button", { type: "button", on: { click: () => openEditor(null) } }, "Add an AE title") : null,
          editor,
        );
      })
      .catch(fail);
  }

  function aeForm(entry: AeTitle | null): HTMLElement {
    const title = h("input", { name: "title", required: true, maxLength: 16, value: entry?.title ?? "", readOnly: entry !== null });
    const host = h("input", { name: "host", required: true, value: entry?.host ?? "" });
    const port = h("input", { name: "port", type: "number", min: 1, max: 65535, required: true, value: entry ? String(entry.port) : "104" });
    const description = h("input", { name: "description", value: entry?.description ?? "" });
    const tls = h("input", { name: "tls", type: "checkbox", checked: Boolean(entry?.tls) });
    const form = h("form", { class: "inline-form", "aria-label": entry ? `Edit ${entry.title}` : "New AE title" },
      h("h3", null, entry ? `Edit ${entry.title}` : "New AE title"),
      h("label", null, "AE title", title), h("label", null, "Host", host), h("label", null, "Port", port),
      h("label", null, "Description", description), h("label", { class: "switch" }, tls, "TLS"),
      h("button", { type: "submit", class: "primary" }, "Save"),
      h("button", { type: "button", on: { click: () => form.remove() } }, "Cancel"));
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      // keep the fields this form does not show (access control etc.)
      const body: AeTitle = { ...(entry ?? {}), title: title.value.trim(), host: host.value.trim(), port: Number(port.value), description: description.value, tls: tls.checked };
      (entry ? api.editAeTitle(entry.title, body) : api.addAeTitle(body))
        .then(() => { ok(`${body.title} saved`); showAeTitles(); })
        .catch(fail);
    });
    return form;
  }

  // ---------------------------------------------------------------- clients
  function showClients(): void {
    api
      .clients()
      .then((clients) => {
        replace(
          content,
          clients.length === 0
            ? h("p", { class: "empty" }, "No client is connected.")
            : h(
                "table",
                { class: "grid clients" },
                h("thead", null, h("tr", null, ["Calling AE", "Called AE", "Address", "Since", "State", "Operations", "In / out", ""].map((c) => h("th", null, c)))),
                h("tbody", null, clients.map((c) => h("tr", { dataset: { client: String(c.id) } },
                  h("td", null, c.calling_ae), h("td", null, c.called_ae), h("td", null, c.address), h("td", null, formatTimestamp(c.since)),
                  h("td", null, c.state), h("td", null, String(c.operations ?? "")), h("td", null, `${formatBytes(c.bytes_in)} / ${formatBytes(c.bytes_out)}`),
                  h("td", { class: "actions" }, options.canWrite ? h("button", { type: "button", on: { click: () => {
                    api.disconnect(c.id).then(() => { ok(`${c.calling_ae} disconnected`); showClients(); }).catch(fail);
                  } } }, "Disconnect") : null),
                ))),
              ),
          h("button", { type: "button", on: { click: () => showClients() } }, "Refresh"),
        );
      })
      .catch(fail);
  }

  // ---------------------------------------------------------------- add-ins
  function showAddins(): void {
    api
      .addins()
      .then((addins) => {
        const reload = h("button", { type: "button", class: "primary", on: { click: () => {
          api.reload().then((r) => {
            ok(`Reloaded: ${r.addins.join(", ")}${r.restart_needed.length ? `; restart needed for ${r.restart_needed.join(", ")}` : ""}`);
          }).catch(fail);
        } } }, "Reload the server's settings");
        replace(
          content,
          options.canWrite ? h("div", { class: "bar" }, reload) : null,
          addins.map((a) => {
            const form = schemaForm(a.schema, a.options ?? a.configured ?? {}, !options.canWrite);
            const save = (andReload: boolean) => {
              let values: Record<string, unknown>;
              try {
                values = form.values();
              } catch (error) {
                fail(error);
                return;
              }
              const changes = changedOptions(a.options ?? {}, values);
              if (Object.keys(changes).length === 0) {
                ok(`${a.name}: nothing changed`);
                return;
              }
              api.editAddin(a.name, changes, andReload)
                .then(() => ok(`${a.name}: ${Object.keys(changes).join(", ")} saved${andReload ? " and reloaded" : " (applied at the next reload)"}`))
                .catch(fail);
            };
            return h(
              "details",
              { class: "addin", dataset: { addin: a.name } },
              h("summary", null, h("strong", null, a.name), " ", h("span", { class: a.loaded ? "badge on" : "badge" }, a.loaded ? "loaded" : "off"), " ", h("span", { class: "sub" }, a.description)),
              a.error ? message(a.error) : null,
              form.element,
              options.canWrite
                ? h("div", { class: "buttons" },
                    h("button", { type: "button", class: "primary", on: { click: () => save(true) } }, "Save and reload"),
                    h("button", { type: "button", on: { click: () => save(false) } }, "Save"))
                : null,
            );
          }),
        );
      })
      .catch(fail);
  }

  // ---------------------------------------------------------------- live events
  function showEvents(): void {
    const list = h("ol", { class: "events", reversed: true });
    const state = h("span", { class: "live" }, "connecting…");
    replace(content, h("div", { class: "bar" }, h("h3", null, "Live events"), state), list);
    const close = api.events(
      (event: AdminEvent) => {
        state.textContent = "live";
        const { event: kind, ...rest } = event;
        const time = typeof rest.time === "string" ? rest.time : new Date().toISOString();
        delete rest.time;
        list.prepend(h("li", { class: `event event-${kind}` }, h("time", null, formatTimestamp(time)), " ", h("strong", null, kind), " ", h("code", null, JSON.stringify(rest))));
        while (list.childElementCount > MAX_EVENTS) list.lastElementChild?.remove();
      },
      () => {
        state.textContent = "reconnecting…";
      },
      () => {
        state.textContent = "live";
      },
    );
    cleanup = close;
  }

  root.replaceChildren(section);
  show(tab);
  return {
    destroy: () => {
      cleanup?.();
      section.remove();
    },
  };
}
