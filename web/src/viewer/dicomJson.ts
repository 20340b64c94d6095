// Reading the DICOM JSON model (PS3.18 F.2) as returned by QIDO-RS and WADO-RS /metadata.
// Tags are keyword-less 8-hex-digit strings; every value is an array under "Value".

/** One attribute of a DICOM JSON object. */
export interface DicomJsonAttribute {
  vr: string;
  Value?: unknown[];
  BulkDataURI?: string;
  InlineBinary?: string;
}

/** A DICOM JSON object (one study, series or instance). */
export type DicomJson = Record<string, DicomJsonAttribute | undefined>;

/** The tags the viewer reads, by keyword (hex, as in DICOM JSON). */
export const Tag = {
  SpecificCharacterSet: "00080005",
  SOPClassUID: "00080016",
  SOPInstanceUID: "00080018",
  StudyDate: "00080020",
  SeriesDate: "00080021",
  StudyTime: "00080030",
  AccessionNumber: "00080050",
  Modality: "00080060",
  ModalitiesInStudy: "00080061",
  InstitutionName: "00080080",
  StudyDescription: "00081030",
  SeriesDescription: "0008103E",
  PatientName: "00100010",
  PatientID: "00100020",
  PatientBirthDate: "00100030",
  PatientSex: "00100040",
  SliceThickness: "00180050",
  StudyInstanceUID: "0020000D",
  SeriesInstanceUID: "0020000E",
  StudyID: "00200010",
  SeriesNumber: "00200011",
  InstanceNumber: "00200013",
  ImagePositionPatient: "00200032",
  ImageOrientationPatient: "00200037",
  SliceLocation: "00201041",
  NumberOfStudyRelatedSeries: "00201206",
  NumberOfStudyRelatedInstances: "00201208",
  NumberOfSeriesRelatedInstances: "00201209",
  NumberOfFrames: "00280008",
  Rows: "00280010",
  Columns: "00280011",
  PixelSpacing: "00280030",
  BitsStored: "00280101",
  PixelRepresentation: "00280103",
  PhotometricInterpretation: "00280004",
  WindowCenter: "00281050",
  WindowWidth: "00281051",
  RescaleIntercept: "00281052",
  RescaleSlope: "00281053",
  TransferSyntaxUID: "00020010",
} as const;

/** All values of ``tag`` (an empty array when absent). */
export function values(obj: DicomJson, tag: string): unknown[] {
  return obj[tag]?.Value ?? [];
}

/** The first value of ``tag`` as a string ("" when absent). Person names give their Alphabetic form. */
export function str(obj: DicomJson, tag: string): string {
  const v = values(obj, tag)[0];
  if (v === undefined || v === null) return "";
  if (typeof v === "object") {
    const alphabetic = (v as { Alphabetic?: unknown }).Alphabetic;
    return typeof alphabetic === "string" ? alphabetic : "";
  }
  return String(v);
}

/** The first value of ``tag`` as a number (undefined when absent or not a number). */
export function num(obj: DicomJson, tag: string): number | undefined {
  const v = values(obj, tag)[0];
  if (v === undefined || v === null || v === "") return undefined;
  const n = typeof v === "number" ? v : Number(v);
  return Number.isFinite(n) ? n : undefined;
}

/** All values of ``tag`` as numbers (undefined when absent or any value is not a number). */
export function nums(obj: DicomJson, tag: string): number[] | undefined {
  const vs = values(obj, tag);
  if (vs.length === 0) return undefined;
  const out = vs.map((v) => (typeof v === "number" ? v : Number(v)));
  return out.every(Number.isFinite) ? out : undefined;
}

/** A person name for display: components separated by spaces ("DOE^JANE" -> "DOE JANE"). */
export function personName(obj: DicomJson, tag: string): string {
  return str(obj, tag).split("^").filter((p) => p !== "").join(" ");
}

// DA / TM for display: the app's own formatting (one definition for the search and the viewer)
export { formatDate, formatTime } from "../dicom";
