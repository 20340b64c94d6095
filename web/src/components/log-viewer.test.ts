// @vitest-environment jsdom
import { describe, expect, it } from "vitest";
import { ApiClient } from "../api/http";
import type { LogQuery } from "../api/logs";
import { mountLogViewer } from "./log-viewer";

const settle = () => new Promise((done) => setTimeout(done, 0));

describe("log viewer", () => {
  it("asks for the filtered page, pages on, points the CSV export at the same filters", async () => {
    const urls: string[] = [];
    const client = new ApiClient({
      fetch: (url) => {
        urls.push(url);
        const items = [{ time: "2026-01-02T10:00:00Z", calling_ae: "MOD", called_ae: "PACSKIT", operation: "C-ECHO", status_hex: "0x0000" }];
        return Promise.resolve(new Response(JSON.stringify({ total: 120, items })));
      },
    });
    const changes: LogQuery[] = [];
    const root = document.body.appendChild(document.createElement("div"));
    mountLogViewer(root, { client, query: { kind: "transactions", filters: {}, limit: 50, offset: 0 }, onQueryChange: (q) => changes.push(q) });
    await settle();
    expect(urls).toEqual(["/api/logs/transactions?limit=50&offset=0"]);
    expect(root.querySelector(".page-info")!.textContent).toBe("1–50 of 120 · page 1 / 3");
    expect(root.querySelector(".col-status_hex")!.textContent).toBe("0x0000");

    const form = root.querySelector<HTMLFormElement>("form.log-filters")!;
    (form.elements.namedItem("ae") as HTMLInputElement).value = "MOD";
    (form.elements.namedItem("operation") as HTMLInputElement).value = " C-ECHO ";
    form.requestSubmit();
    await settle();
    expect(urls.at(-1)).toBe("/api/logs/transactions?ae=MOD&operation=C-ECHO&limit=50&offset=0");
    expect(root.querySelector<HTMLAnchorElement>("a[download]")!.getAttribute("href")).toBe("/api/logs/transactions?ae=MOD&operation=C-ECHO&format=csv");

    [...root.querySelectorAll<HTMLButtonElement>(".pager button")].find((b) => b.textContent === "Older ›")!.click();
    await settle();
    expect(urls.at(-1)).toBe("/api/logs/transactions?ae=MOD&operation=C-ECHO&limit=50&offset=50");
    expect(changes.at(-1)).toEqual({ kind: "transactions", filters: { ae: "MOD", operation: "C-ECHO" }, limit: 50, offset: 50 });

    const kind = root.querySelector<HTMLSelectElement>("select[name=kind]")!;
    kind.value = "audit";
    kind.dispatchEvent(new Event("change"));
    await settle();
    expect(urls.at(-1)).toBe("/api/logs/audit?limit=50&offset=0"); // the transaction filters do not apply
    expect(root.querySelector("input[name=user]")).not.toBeNull();
    expect(root.querySelector("input[name=ae]")).toBeNull();
  });
});
