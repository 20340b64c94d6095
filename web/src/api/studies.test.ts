import { describe, expect, it } from "vitest";
import { dateRange, emptyQuery, offsetOfPage, pageInfo, queryFromUrl, queryToUrl, studyParams, wildcard } from "./studies";

describe("study query building", () => {
  it("appends * to names unless the user wrote wildcards", () => {
    expect(wildcard("doe")).toBe("doe*");
    expect(wildcard(" do?e ")).toBe("do?e");
    expect(wildcard("*smith")).toBe("*smith");
    expect(wildcard("  ")).toBe("");
  });

  it("builds DICOM date ranges", () => {
    expect(dateRange("2024-01-02", "2024-03-04")).toBe("20240102-20240304");
    expect(dateRange("2024-01-02", "")).toBe("20240102-");
    expect(dateRange("", "2024-03-04")).toBe("-20240304");
    expect(dateRange("2024-01-02", "2024-01-02")).toBe("20240102");
    expect(dateRange("", "")).toBe("");
  });

  it("sends only the filters that are set", () => {
    const q = { ...emptyQuery(), patientName: "DOE", modality: "ct", description: "chest", dateFrom: "2020-05-01" };
    expect(studyParams(q)).toEqual({
      source: "local",
      PatientName: "DOE*",
      ModalitiesInStudy: "CT",
      StudyDescription: "*chest*",
      StudyDate: "20200501-",
      sort: "StudyDate",
      order: "desc",
      limit: 25,
      offset: 0,
    });
  });

  it("names the remote AE as the source", () => {
    expect(studyParams({ ...emptyQuery(), source: "ORTHANC", patientId: " 123 " })).toMatchObject({ source: "ORTHANC", PatientID: "123" });
  });

  it("round-trips through the page URL, leaving defaults out", () => {
    const q = { ...emptyQuery(), source: "ORTHANC", patientName: "Doe", sort: "PatientName", order: "asc" as const, offset: 50 };
    const url = queryToUrl(q);
    expect(url.toString()).toBe("source=ORTHANC&name=Doe&sort=PatientName&order=asc&offset=50");
    expect(queryFromUrl(url)).toEqual(q);
  });

  it("ignores bad URL values", () => {
    const q = queryFromUrl(new URLSearchParams("sort=DROP&order=up&limit=-3&offset=x"));
    expect(q).toEqual(emptyQuery());
  });
});

describe("paging", () => {
  it("describes the page shown", () => {
    expect(pageInfo(120, 50, 25)).toEqual({ page: 3, pages: 5, first: 51, last: 75, hasPrevious: true, hasNext: true });
    expect(pageInfo(120, 100, 25)).toMatchObject({ page: 5, last: 120, hasNext: false });
    expect(pageInfo(0, 0, 25)).toEqual({ page: 1, pages: 1, first: 0, last: 0, hasPrevious: false, hasNext: false });
  });

  it("clamps page numbers", () => {
    expect(offsetOfPage(3, 120, 25)).toBe(50);
    expect(offsetOfPage(99, 120, 25)).toBe(100);
    expect(offsetOfPage(0, 120, 25)).toBe(0);
  });
});
