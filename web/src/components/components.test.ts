// @vitest-environment jsdom
import { describe, expect, it } from "vitest";
import { emptyQuery } from "../api/studies";
import { TAG } from "../dicom";
import { mountStudyList } from "./study-list";
import { schemaForm } from "./schema-form";
import { mountSearchForm } from "./search-form";

const study = (uid: string, name: string) => ({
  [TAG.StudyInstanceUID]: { vr: "UI", Value: [uid] },
  [TAG.PatientName]: { vr: "PN", Value: [{ Alphabetic: name }] },
  [TAG.StudyDate]: { vr: "DA", Value: ["20240131"] },
});

describe("study list", () => {
  it("shows where results come from, sorts, pages and selects", () => {
    const root = document.body.appendChild(document.createElement("div")); // change events need a connected input
    const calls: unknown[] = [];
    const selections: string[][] = [];
    mountStudyList(root, {
      page: { source: "ORTHANC", total: 60, items: [study("1.1", "DOE^A"), study("1.2", "ROE^B")] },
      query: { ...emptyQuery(), source: "ORTHANC", offset: 25 },
      thumbnailUrl: (uid) => `/t/${uid}`,
      onSort: (sort, order) => calls.push(["sort", sort, order]),
      onPage: (offset) => calls.push(["page", offset]),
      onSelectionChange: (uids) => selections.push(uids),
    });
    expect(root.querySelector(".source-note")!.textContent).toBe("60 studies from remote AE ORTHANC");
    expect(root.querySelectorAll("tbody tr")).toHaveLength(2);
    expect(root.querySelector("img")).toBeNull(); // no thumbnails for a remote AE
    expect(root.querySelector(".page-info")!.textContent).toBe("26–50 of 60 · page 2 / 3");
    // the active sort column (StudyDate desc) flips to asc; another column starts asc
    const buttons = [...root.querySelectorAll<HTMLButtonElement>("th button.sort")];
    buttons.find((b) => b.textContent!.startsWith("Date"))!.click();
    buttons.find((b) => b.textContent!.startsWith("Patient ID"))!.click();
    const pager = [...root.querySelectorAll<HTMLButtonElement>(".pager button")];
    pager[0]!.click();
    pager[1]!.click();
    expect(calls).toEqual([["sort", "StudyDate", "asc"], ["sort", "PatientID", "asc"], ["page", 0], ["page", 50]]);
    root.querySelector<HTMLInputElement>("tbody input[value='1.2']")!.click();
    root.querySelector<HTMLInputElement>("thead input")!.click();
    expect(selections).toEqual([["1.2"], ["1.2", "1.1"]]);
  });

  it("opens local studies and shows their thumbnails", () => {
    const root = document.createElement("div");
    const opened: string[] = [];
    mountStudyList(root, {
      page: { source: "local", total: 1, items: [study("1.1", "DOE^A")] },
      query: emptyQuery(),
      thumbnailUrl: (uid) => `/t/${uid}`,
      onSort: () => undefined,
      onPage: () => undefined,
      onOpen: (uid) => opened.push(uid),
    });
    expect(root.querySelector<HTMLImageElement>("img")!.dataset.src).toBe("/t/1.1");
    root.querySelector<HTMLElement>("tbody tr")!.click();
    expect(opened).toEqual(["1.1"]);
    expect(root.querySelector(".source-note")!.textContent).toBe("1 study from the local archive");
  });
});

describe("series of a study", () => {
  it("expands a study into its series and reports the ticked ones", async () => {
    const root = document.body.appendChild(document.createElement("div"));
    const asked: string[] = [];
    const seen: Record<string, string[]>[] = [];
    mountStudyList(root, {
      page: { source: "ORTHANC", total: 1, items: [study("1.1", "DOE^A")] },
      query: emptyQuery(),
      onSort: () => undefined,
      onPage: () => undefined,
      loadSeries: (uid) => {
        asked.push(uid);
        return Promise.resolve([
          { [TAG.SeriesInstanceUID]: { vr: "UI", Value: ["1.1.1"] }, [TAG.SeriesNumber]: { vr: "IS", Value: [1] } },
          { [TAG.SeriesInstanceUID]: { vr: "UI", Value: ["1.1.2"] }, [TAG.SeriesNumber]: { vr: "IS", Value: [2] } },
        ]);
      },
      onSeriesSelectionChange: (by) => seen.push(by),
    });
    root.querySelector<HTMLButtonElement>("button.expand")!.click();
    await new Promise((done) => setTimeout(done, 0));
    expect(asked).toEqual(["1.1"]);
    expect(root.querySelectorAll("tr[data-series-of='1.1'] tr[data-series-uid]")).toHaveLength(2);
    root.querySelector<HTMLInputElement>("tr[data-series-uid='1.1.2'] input")!.click();
    expect(seen).toEqual([{ "1.1": ["1.1.2"] }]);
    // "select all" ticks studies, not series
    root.querySelector<HTMLInputElement>("thead input")!.click();
    expect(root.querySelector<HTMLInputElement>("tr[data-series-uid='1.1.1'] input")!.checked).toBe(false);
    root.querySelector<HTMLButtonElement>("button.expand")!.click();
    expect(root.querySelector("tr[data-series-of]")).toBeNull();
  });
});

describe("search form", () => {
  it("reads the filters and the remote switch", () => {
    const root = document.createElement("div");
    const seen: unknown[] = [];
    mountSearchForm(root, {
      query: emptyQuery(),
      nodes: [{ title: "ORTHANC", host: "h", port: 1, description: "" }],
      onSearch: (q) => seen.push(q),
    });
    const form = root.querySelector("form")!;
    (form.elements.namedItem("patientName") as HTMLInputElement).value = "doe";
    (form.elements.namedItem("modality") as HTMLInputElement).value = "CT";
    form.requestSubmit();
    (form.elements.namedItem("remote") as HTMLInputElement).click();
    form.requestSubmit();
    expect(seen).toMatchObject([{ source: "local", patientName: "doe", modality: "CT" }, { source: "ORTHANC", patientName: "doe" }]);
  });
});

describe("schema form", () => {
  it("edits options and reports the bad one", () => {
    const form = schemaForm(
      { type: "object", properties: { days: { type: "integer", minimum: 1 }, on: { type: "boolean" }, aes: { type: "array", items: { type: "string" } } } },
      { days: 30, on: false, aes: ["A"] },
    );
    const days = form.element.querySelector<HTMLInputElement>("input[name=days]")!;
    expect(days.value).toBe("30");
    days.value = "7";
    form.element.querySelector<HTMLInputElement>("input[name=on]")!.checked = true;
    form.element.querySelector<HTMLInputElement>("input[name=aes]")!.value = "A, B";
    expect(form.values()).toEqual({ days: 7, on: true, aes: ["A", "B"] });
    days.value = "0";
    expect(() => form.values()).toThrow("days: must be at least 1");
  });
});
