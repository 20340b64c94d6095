// Reading DICOM JSON (PS3.18 F.2) objects as QIDO-RS and /api/studies return them.

export interface DicomAttribute {
  vr: string;
  Value?: unknown[];
}

export type DicomJson = Record<string, DicomAttribute | undefined>;

/** Tags the study list shows, by keyword. */
export const TAG = {
  StudyInstanceUID: "0020000D",
  PatientName: "00100010",
  PatientID: "00100020",
  PatientBirthDate: "00100030",
  PatientSex: "00100040",
  AccessionNumber: "00080050",
  StudyDate: "00080020",
  StudyTime: "00080030",
  StudyDescription: "00081030",
  ModalitiesInStudy: "00080061",
  NumberOfStudyRelatedSeries: "00201206",
  NumberOfStudyRelatedInstances: "00201208",
  SeriesInstanceUID: "0020000E",
  Modality: "00080060",
  SeriesNumber: "00200011",
  SeriesDescription: "0008103E",
  NumberOfSeriesRelatedInstances: "00201209",
} as const;

/** The first value of a tag as text ("" when absent); person names as their alphabetic form. */
export function text(item: DicomJson, tag: string): string {
  const values = item[tag]?.Value;
  if (!values || values.length === 0) return "";
  return valueText(values[0]);
}

/** Every value of a tag as text (e.g. ModalitiesInStudy). */
export function texts(item: DicomJson, tag: string): string[] {
  return (item[tag]?.Value ?? []).map(valueText).filter((v) => v !== "");
}

function valueText(value: unknown): string {
  if (value === null || value === undefined) return "";
  if (typeof value === "object") {
    const name = value as { Alphabetic?: string };
    return name.Alphabetic ?? "";
  }
  return String(value);
}

/** A person name for people: "DOE^JOHN" → "DOE, JOHN". */
export function personName(name: string): string {
  const [family = "", given = "", middle = "", prefix = "", suffix = ""] = name.split("^");
  const rest = [prefix, given, middle].filter(Boolean).join(" ");
  const full = [family, rest].filter(Boolean).join(", ");
  return suffix ? `${full} ${suffix}` : full;
}

/** DA "20240131" → "2024-01-31" (other text unchanged). */
export function formatDate(da: string): string {
  return /^\d{8}$/.test(da) ? `${da.slice(0, 4)}-${da.slice(4, 6)}-${da.slice(6, 8)}` : da;
}

/** TM "134502.123" → "13:45:02". */
export function formatTime(tm: string): string {
  const m = /^(\d{2})(\d{2})?(\d{2})?/.exec(tm);
  if (!m) return tm;
  return [m[1], m[2] ?? "00", m[3] ?? "00"].join(":");
}

/** An HTML date input's "2024-01-31" → DA "20240131". */
export function toDicomDate(isoDate: string): string {
  return isoDate.replaceAll("-", "");
}
