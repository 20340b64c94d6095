import { describe, expect, it } from "vitest";
import type { DicomJson } from "./dicomJson";
import { applyWindow, defaultWindow, dragWindow, findPreset, formatWindow, fromRange, presetsFor, toRange } from "./voi";

describe("applyWindow (PS3.3 C.11.2.1.2.1 linear VOI LUT)", () => {
  const w = { center: 40, width: 400 };

  it("maps the window ends to 0 and 255 and the centre to the middle", () => {
    expect(applyWindow(-160, w)).toBe(0); // c - 0.5 - (w-1)/2 = -160: still yMin
    expect(applyWindow(-1000, w)).toBe(0);
    expect(applyWindow(240, w)).toBe(255); // above c - 0.5 + (w-1)/2 = 239
    expect(applyWindow(239, w)).toBeCloseTo(255, 6);
    expect(applyWindow(39.5, w)).toBeCloseTo(127.5, 6);
  });

  it("is linear in between", () => {
    const a = applyWindow(0, w);
    const b = applyWindow(100, w);
    const c = applyWindow(200, w);
    expect(b - a).toBeCloseTo(c - b, 9);
    expect(b - a).toBeCloseTo((100 / 399) * 255, 9);
  });

  it("refuses a width below 1", () => {
    expect(() => applyWindow(0, { center: 0, width: 0.5 })).toThrow(RangeError);
  });

  it("width 1 is a threshold at the centre", () => {
    const t = { center: 100, width: 1 };
    expect(applyWindow(99.5, t)).toBe(0);
    expect(applyWindow(99.51, t)).toBe(255);
  });
});

describe("toRange / fromRange", () => {
  it("are inverse of each other and agree with applyWindow's ends", () => {
    for (const w of [{ center: 40, width: 400 }, { center: -600, width: 1500 }, { center: 0.25, width: 2.5 }]) {
      const { lower, upper } = toRange(w);
      expect(applyWindow(lower, w)).toBe(0);
      expect(applyWindow(upper, w)).toBeCloseTo(255, 9);
      const back = fromRange(lower, upper);
      expect(back.center).toBeCloseTo(w.center, 9);
      expect(back.width).toBeCloseTo(w.width, 9);
    }
  });
});

describe("presets", () => {
  it("CT has the usual windows, with keys 1..9 in order", () => {
    const ct = presetsFor("ct");
    expect(ct.map((p) => p.key)).toEqual(["1", "2", "3", "4", "5", "6", "7", "8", "9"]);
    expect(findPreset("CT", "lung")).toMatchObject({ center: -600, width: 1500 });
    expect(findPreset("CT", "Brain")).toMatchObject({ center: 40, width: 80 });
    expect(findPreset("CT", "3")?.name).toBe("Bone");
    expect(findPreset("CT", "soft tissue / abdomen")).toMatchObject({ center: 40, width: 400 });
  });

  it("modalities without calibrated units have none", () => {
    expect(presetsFor("MR")).toEqual([]);
    expect(findPreset("MR", "Lung")).toBeUndefined();
  });
});

describe("dragWindow", () => {
  it("right widens, down raises the centre, scaled by units per pixel", () => {
    expect(dragWindow({ center: 40, width: 400 }, 10, -5, 2)).toEqual({ center: 30, width: 420 });
  });

  it("never goes below width 1", () => {
    expect(dragWindow({ center: 40, width: 10 }, -100, 0).width).toBe(1);
  });
});

describe("defaultWindow", () => {
  const ct: DicomJson = {
    "00280004": { vr: "CS", Value: ["MONOCHROME2"] },
    "00280101": { vr: "US", Value: [12] },
    "00280103": { vr: "US", Value: [0] },
    "00281052": { vr: "DS", Value: [-1024] },
    "00281053": { vr: "DS", Value: [1] },
  };

  it("takes the first Window Center / Width of the image", () => {
    const m = { ...ct, "00281050": { vr: "DS", Value: [40, 300] }, "00281051": { vr: "DS", Value: [400, 1500] } };
    expect(defaultWindow(m)).toEqual({ center: 40, width: 400 });
  });

  it("falls back to the range Bits Stored can hold after the modality LUT", () => {
    const w = defaultWindow(ct) as { center: number; width: number };
    expect(toRange(w)).toEqual({ lower: -1024, upper: 3071 });
  });

  it("handles signed pixels and has no window for colour images", () => {
    const signed = { ...ct, "00280103": { vr: "US", Value: [1] }, "00281052": { vr: "DS", Value: [0] } };
    expect(toRange(defaultWindow(signed) as { center: number; width: number })).toEqual({ lower: -2048, upper: 2047 });
    expect(defaultWindow({ "00280004": { vr: "CS", Value: ["RGB"] } })).toBeUndefined();
  });
});

describe("formatWindow", () => {
  it("rounds wide windows and keeps decimals of narrow ones", () => {
    expect(formatWindow({ center: 40.4, width: 400.2 })).toBe("W 400 L 40");
    expect(formatWindow({ center: 0.5, width: 2.25 })).toBe("W 2.25 L 0.50");
  });
});
