// The four-corner overlay: who and what is on screen, and how it is displayed.
import { type DicomJson, Tag, formatDate, formatTime, num, personName, str } from "./dicomJson";
import { type Window, formatWindow } from "./voi";

/** What the viewport shows now (the display state the overlay reports). */
export interface DisplayState {
  /** 0-based position in the stack */
  index: number;
  /** number of images in the stack */
  count: number;
  /** 1-based frame number in a multi-frame instance (1 for single-frame images) */
  frame: number;
  frames: number;
  window: Window | undefined;
  /** displayed size / image size (1 = one image pixel per screen pixel) */
  zoom: number;
  invert: boolean;
}

/** The text of each corner, one line per entry (empty lines are left out). */
export interface OverlayText {
  topLeft: string[];
  topRight: string[];
  bottomLeft: string[];
  bottomRight: string[];
}

function lines(...items: string[]): string[] {
  return items.map((s) => s.trim()).filter((s) => s !== "");
}

/**
 * The overlay of an image: patient (top left), study (top right), series and image position (bottom
 * left), window, zoom and image size (bottom right). ``metadata`` is the displayed instance's DICOM JSON.
 */
export function overlayText(metadata: DicomJson, state: DisplayState): OverlayText {
  const sex = str(metadata, Tag.PatientSex);
  const birth = formatDate(str(metadata, Tag.PatientBirthDate));
  const seriesNumber = num(metadata, Tag.SeriesNumber);
  const instanceNumber = num(metadata, Tag.InstanceNumber);
  const thickness = num(metadata, Tag.SliceThickness);
  const location = num(metadata, Tag.SliceLocation);
  const rows = num(metadata, Tag.Rows);
  const cols = num(metadata, Tag.Columns);
  const studyDate = formatDate(str(metadata, Tag.StudyDate));
  const studyTime = str(metadata, Tag.StudyTime);
  return {
    topLeft: lines(
      personName(metadata, Tag.PatientName),
      str(metadata, Tag.PatientID) && `ID: ${str(metadata, Tag.PatientID)}`,
      [birth, sex].filter((s) => s !== "").join("  "),
    ),
    topRight: lines(
      str(metadata, Tag.InstitutionName),
      str(metadata, Tag.StudyDescription),
      [studyDate, studyTime && formatTime(studyTime)].filter((s) => s).join(" "),
      str(metadata, Tag.AccessionNumber) && `Acc: ${str(metadata, Tag.AccessionNumber)}`,
    ),
    bottomLeft: lines(
      [seriesNumber !== undefined ? `Se: ${seriesNumber}` : "", str(metadata, Tag.SeriesDescription)].join(" "),
      `Im: ${instanceNumber ?? "-"} (${state.index + 1}/${state.count})` +
        (state.frames > 1 ? ` Fr: ${state.frame}/${state.frames}` : ""),
      [thickness !== undefined ? `T: ${thickness} mm` : "", location !== undefined ? `L: ${location.toFixed(1)} mm` : ""]
        .filter((s) => s).join("  "),
    ),
    bottomRight: lines(
      state.window ? formatWindow(state.window) + (state.invert ? " (inv)" : "") : state.invert ? "Inverted" : "",
      `Zoom: ${Math.round(state.zoom * 100)}%`,
      rows !== undefined && cols !== undefined ? `${cols} x ${rows}` : "",
      str(metadata, Tag.Modality),
    ),
  };
}
