import { describe, expect, it } from "vitest";
import type { DicomJson } from "./dicomJson";
import { type DisplayState, overlayText } from "./overlay";

const meta: DicomJson = {
  "00100010": { vr: "PN", Value: [{ Alphabetic: "DOE^JANE^^DR" }] },
  "00100020": { vr: "LO", Value: ["PID42"] },
  "00100030": { vr: "DA", Value: ["19700102"] },
  "00100040": { vr: "CS", Value: ["F"] },
  "00080080": { vr: "LO", Value: ["General"] },
  "00081030": { vr: "LO", Value: ["CT chest"] },
  "00080020": { vr: "DA", Value: ["20261206"] },
  "00080030": { vr: "TM", Value: ["130501.25"] },
  "00080050": { vr: "SH", Value: ["ACC7"] },
  "00200011": { vr: "IS", Value: [3] },
  "0008103E": { vr: "LO", Value: ["Lung 1mm"] },
  "00200013": { vr: "IS", Value: [17] },
  "00180050": { vr: "DS", Value: [1.25] },
  "00201041": { vr: "DS", Value: [-42.5] },
  "00280010": { vr: "US", Value: [512] },
  "00280011": { vr: "US", Value: [500] },
  "00080060": { vr: "CS", Value: ["CT"] },
};

const state: DisplayState = { index: 16, count: 120, frame: 1, frames: 1, window: { center: -600, width: 1500 },
  zoom: 1.5, invert: false };

describe("overlayText", () => {
  it("puts patient, study, series/image and display in the four corners", () => {
    const t = overlayText(meta, state);
    expect(t.topLeft).toEqual(["DOE JANE DR", "ID: PID42", "1970-01-02  F"]);
    expect(t.topRight).toEqual(["General", "CT chest", "2026-12-06 13:05:01", "Acc: ACC7"]);
    expect(t.bottomLeft).toEqual(["Se: 3 Lung 1mm", "Im: 17 (17/120)", "T: 1.25 mm  L: -42.5 mm"]);
    expect(t.bottomRight).toEqual(["W 1500 L -600", "Zoom: 150%", "500 x 512", "CT"]);
  });

  it("shows frames of multi-frame images, inversion, and leaves out what is missing", () => {
    const t = overlayText({ "00200013": { vr: "IS", Value: [1] } },
      { ...state, index: 4, count: 10, frame: 5, frames: 10, invert: true, window: undefined, zoom: 0.5 });
    expect(t.topLeft).toEqual([]);
    expect(t.topRight).toEqual([]);
    expect(t.bottomLeft).toEqual(["Im: 1 (5/10) Fr: 5/10"]);
    expect(t.bottomRight).toEqual(["Inverted", "Zoom: 50%"]);
  });
});
