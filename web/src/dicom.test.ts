import { describe, expect, it } from "vitest";
import { TAG, formatDate, formatTime, personName, text, texts, toDicomDate } from "./dicom";

describe("DICOM JSON", () => {
  const study = {
    [TAG.PatientName]: { vr: "PN", Value: [{ Alphabetic: "DOE^JANE^M" }] },
    [TAG.ModalitiesInStudy]: { vr: "CS", Value: ["CT", "SR"] },
    [TAG.NumberOfStudyRelatedInstances]: { vr: "IS", Value: [12] },
    [TAG.StudyDescription]: { vr: "LO" },
  };

  it("reads values of every kind", () => {
    expect(text(study, TAG.PatientName)).toBe("DOE^JANE^M");
    expect(texts(study, TAG.ModalitiesInStudy)).toEqual(["CT", "SR"]);
    expect(text(study, TAG.NumberOfStudyRelatedInstances)).toBe("12");
    expect(text(study, TAG.StudyDescription)).toBe("");
    expect(text(study, TAG.PatientID)).toBe("");
  });

  it("formats names, dates and times", () => {
    expect(personName("DOE^JANE^M")).toBe("DOE, JANE M");
    expect(personName("DOE")).toBe("DOE");
    expect(formatDate("20240131")).toBe("2024-01-31");
    expect(formatTime("134502.123")).toBe("13:45:02");
    expect(formatTime("13")).toBe("13:00:00");
    expect(toDicomDate("2024-01-31")).toBe("20240131");
  });
});
