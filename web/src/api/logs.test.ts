import { describe, expect, it } from "vitest";
import { csvField, entryMatches, logParams, toCsv } from "./logs";

describe("log filters", () => {
  it("sends only the filters of the chosen log", () => {
    const params = logParams({ kind: "audit", filters: { user: "ann", ae: "X", outcome: " " }, limit: 50, offset: 100 });
    expect(params).toEqual({ user: "ann", limit: 50, offset: 100 });
  });

  it("sends times as UTC ISO 8601 and no paging for CSV", () => {
    const params = logParams({ kind: "transactions", filters: { since: "2026-01-02T03:04", status: "failure" }, limit: 50, offset: 0 }, "csv");
    expect(params.since).toBe(new Date("2026-01-02T03:04").toISOString());
    expect(params).toMatchObject({ status: "failure", format: "csv" });
    expect(params.limit).toBeUndefined();
  });

  it("applies the filters to live-tail entries", () => {
    const entry = { time: "2026-01-02T10:00:00Z", calling_ae: "MODALITY", called_ae: "PACSKIT", operation: "C-STORE", status: 0, status_hex: "0x0000", patient_id: "P1", patient_name: "DOE^JANE" };
    expect(entryMatches("transactions", entry, { ae: "modal" })).toBe(true);
    expect(entryMatches("transactions", entry, { ae: "ORTHANC" })).toBe(false);
    expect(entryMatches("transactions", entry, { patient: "jane" })).toBe(true);
    expect(entryMatches("transactions", entry, { operation: "C-FIND" })).toBe(false);
    expect(entryMatches("transactions", entry, { since: "2026-01-03T00:00" })).toBe(false);
    expect(entryMatches("audit", { user: "ann", event: "login" }, { user: "bob" })).toBe(false);
    expect(entryMatches("transactions", entry, { status: "success" })).toBe(true);
    expect(entryMatches("transactions", entry, { status: "failure" })).toBe(false);
    expect(entryMatches("transactions", { ...entry, status: 0xa700 }, { status: "failure" })).toBe(true);
    expect(entryMatches("transactions", { ...entry, status: 0xa700 }, { status: "0xA700" })).toBe(true);
    expect(entryMatches("transactions", { ...entry, status: 0xb000 }, { status: "warning" })).toBe(true);
  });
});

describe("CSV", () => {
  it("quotes what needs quoting (RFC 4180)", () => {
    expect(csvField('say "hi"')).toBe('"say ""hi"""');
    expect(csvField("a,b")).toBe('"a,b"');
    expect(csvField("plain")).toBe("plain");
    expect(csvField(null)).toBe("");
    expect(csvField({ a: 1 })).toBe('"{""a"":1}"');
  });

  it("writes a header and rows with CRLF", () => {
    expect(toCsv(["a", "b"], [{ a: 1, b: "x\ny" }, { a: 2 }])).toBe('a,b\r\n1,"x\ny"\r\n2,\r\n');
  });
});
