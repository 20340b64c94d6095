// @vitest-environment jsdom
import { afterEach, describe, expect, it } from "vitest";
import { ApiClient } from "../api/http";
import type { Job } from "../api/jobs";
import { mountLoaderQueue } from "./loader-queue";

/** An EventSource the test drives: `emit(name, data)`. */
class FakeEventSource {
  static last: FakeEventSource | null = null;
  readonly listeners = new Map<string, ((event: MessageEvent<string>) => void)[]>();
  onopen: (() => void) | null = null;
  onerror: (() => void) | null = null;
  closed = false;

  constructor(readonly url: string) {
    FakeEventSource.last = this;
  }

  addEventListener(name: string, listener: (event: MessageEvent<string>) => void): void {
    this.listeners.set(name, [...(this.listeners.get(name) ?? []), listener]);
  }

  emit(name: string, data: unknown): void {
    for (const listener of this.listeners.get(name) ?? []) listener(new MessageEvent(name, { data: JSON.stringify(data) }));
  }

  close(): void {
    this.closed = true;
  }
}

const job = (over: Partial<Job>): Job => ({
  id: "j1", kind: "retrieve", state: "running", source: "ORTHANC", destination: null, study_uid: "1.2.3",
  patient_name: "DOE^JANE", description: "CT", total: 10, completed: 0, failed: 0, warning: 0, rate: null,
  error: null, created_at: "2026-01-01T10:00:00.000Z", updated_at: "2026-01-01T10:00:00.000Z", ...over,
});

const settle = () => new Promise((done) => setTimeout(done, 0));

afterEach(() => {
  FakeEventSource.last = null;
});

describe("loader queue", () => {
  it("shows the list, then progress from the event stream, and closes the stream on destroy", async () => {
    (globalThis as unknown as { EventSource: unknown }).EventSource = FakeEventSource;
    const calls: { url: string; method: string }[] = [];
    const client = new ApiClient({
      fetch: (url, init) => {
        calls.push({ url, method: init?.method ?? "GET" });
        if (init?.method === "DELETE") return Promise.resolve(new Response(JSON.stringify(job({ state: "cancelled", updated_at: "2026-01-01T10:00:09.000Z" })), { status: 200 }));
        return Promise.resolve(new Response(JSON.stringify([job({ completed: 2 })]), { status: 200 }));
      },
    });
    const root = document.body.appendChild(document.createElement("div"));
    const mounted = mountLoaderQueue(root, { client, canManage: true });
    await settle();
    const row = () => root.querySelector<HTMLTableRowElement>("tr[data-job-id='j1']")!;
    expect(row().querySelector(".percent")!.textContent).toBe("20%");
    expect(FakeEventSource.last!.url).toBe("/api/jobs/events");

    FakeEventSource.last!.onopen?.();
    expect(root.querySelector(".live")!.textContent).toBe("live");
    FakeEventSource.last!.emit("job", job({ completed: 7, failed: 1, rate: 12.5, updated_at: "2026-01-01T10:00:05.000Z" }));
    expect(row().querySelector(".percent")!.textContent).toBe("80%");
    expect(row().querySelector(".progress .sub")!.textContent).toBe("7 / 10 (1 failed)");
    expect(row().textContent).toContain("12.5/s");

    row().querySelector<HTMLButtonElement>(".actions button")!.click(); // Cancel
    await settle();
    expect(calls.at(-1)).toEqual({ url: "/api/jobs/j1", method: "DELETE" });
    expect(row().dataset.state).toBe("cancelled");
    expect(row().querySelector(".actions")!.textContent).toBe("Retry");

    mounted.destroy();
    expect(FakeEventSource.last!.closed).toBe(true);
  });

  it("offers no cancel or retry to a role that may not", async () => {
    (globalThis as unknown as { EventSource: unknown }).EventSource = FakeEventSource;
    const client = new ApiClient({ fetch: () => Promise.resolve(new Response(JSON.stringify([job({ state: "failed" })]))) });
    const root = document.body.appendChild(document.createElement("div"));
    mountLoaderQueue(root, { client, canManage: false });
    await settle();
    expect(root.querySelector("tr[data-job-id='j1'] .actions")!.textContent).toBe("");
  });
});
