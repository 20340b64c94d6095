import { describe, expect, it } from "vitest";
import type { DicomJson } from "./dicomJson";
import { groupSeries, mergeInstances, sortInstances, stackImages, toInstance } from "./instances";

const STUDY = "1.2.3";

function instance(sop: string, opts: { series?: string; number?: number; z?: number; frames?: number;
  orientation?: number[]; seriesNumber?: number } = {}): DicomJson {
  const m: DicomJson = {
    "00080018": { vr: "UI", Value: [sop] },
    "0020000E": { vr: "UI", Value: [opts.series ?? "1.2.3.4"] },
    "00080060": { vr: "CS", Value: ["CT"] },
  };
  if (opts.number !== undefined) m["00200013"] = { vr: "IS", Value: [opts.number] };
  if (opts.seriesNumber !== undefined) m["00200011"] = { vr: "IS", Value: [opts.seriesNumber] };
  if (opts.z !== undefined) {
    m["00200032"] = { vr: "DS", Value: [-100, -100, opts.z] };
    m["00200037"] = { vr: "DS", Value: opts.orientation ?? [1, 0, 0, 0, 1, 0] };
  }
  if (opts.frames !== undefined) m["00280008"] = { vr: "IS", Value: [opts.frames] };
  return m;
}

const sops = (list: { sopInstanceUid: string }[]): string[] => list.map((i) => i.sopInstanceUid);

describe("sortInstances", () => {
  it("orders parallel slices by position, in the direction the instance numbers run", () => {
    // head first: instance 1 at the top (highest z), stored shuffled
    const head = [instance("c", { number: 3, z: 8 }), instance("a", { number: 1, z: 10 }), instance("b", { number: 2, z: 9 })];
    expect(sops(sortInstances(head.map(toInstance)))).toEqual(["a", "b", "c"]);
    // feet first: instance 1 at the bottom
    const feet = [instance("c", { number: 3, z: 12 }), instance("a", { number: 1, z: 10 }), instance("b", { number: 2, z: 11 })];
    expect(sops(sortInstances(feet.map(toInstance)))).toEqual(["a", "b", "c"]);
  });

  it("puts slices in anatomical order even when instance numbers are shuffled", () => {
    const list = [instance("top", { number: 1, z: 30 }), instance("mid", { number: 5, z: 20 }),
      instance("bottom", { number: 3, z: 10 })];
    expect(sops(sortInstances(list.map(toInstance)))).toEqual(["top", "mid", "bottom"]);
  });

  it("uses the slice normal, not z, for oblique and sagittal stacks", () => {
    // sagittal: rows along y, columns along -z: the normal is -x
    const sag = [0, 1, 0, 0, 0, -1];
    const list = [5, 1, 3].map((x, k) => {
      const m = instance(`s${x}`, { number: k + 1, z: 0, orientation: sag });
      m["00200032"] = { vr: "DS", Value: [x, 0, 0] };
      return m;
    });
    expect(sops(sortInstances(list.map(toInstance)))).toEqual(["s5", "s3", "s1"]);
  });

  it("falls back to instance number (then SOP UID) without positions or with mixed orientations", () => {
    const plain = [instance("x", { number: 2 }), instance("y", { number: 1 }), instance("w"), instance("v")];
    expect(sops(sortInstances(plain.map(toInstance)))).toEqual(["y", "x", "v", "w"]);
    const mixed = [instance("p", { number: 2, z: 1 }), instance("q", { number: 1, z: 2, orientation: [0, 1, 0, 0, 0, -1] })];
    expect(sops(sortInstances(mixed.map(toInstance)))).toEqual(["q", "p"]);
  });

  it("breaks ties of equal positions by instance number and leaves its input alone", () => {
    const list = [instance("b", { number: 2, z: 5 }), instance("a", { number: 1, z: 5 })].map(toInstance);
    const copy = [...list];
    expect(sops(sortInstances(list))).toEqual(["a", "b"]);
    expect(list).toEqual(copy);
  });

  it("refuses metadata without a SOP Instance UID", () => {
    expect(() => toInstance({})).toThrow(/SOPInstanceUID/);
  });
});

describe("groupSeries", () => {
  it("groups by series (ordered by series number), drops repeated instances", () => {
    const list = [
      instance("b1", { series: "S2", seriesNumber: 2, number: 1 }),
      instance("a2", { series: "S1", seriesNumber: 1, number: 2 }),
      instance("a1", { series: "S1", seriesNumber: 1, number: 1 }),
      instance("a1", { series: "S1", seriesNumber: 1, number: 1 }),
      instance("c1", { series: "S0", number: 1 }),
    ];
    const series = groupSeries(STUDY, list);
    expect(series.map((s) => s.uid)).toEqual(["S1", "S2", "S0"]);
    expect(sops(series[0].instances)).toEqual(["a1", "a2"]);
    expect(series[0]).toMatchObject({ studyUid: STUDY, number: 1, modality: "CT" });
  });
});

describe("stackImages (metadata -> image ids)", () => {
  it("gives one wadors: image id per frame under the DICOMweb base", () => {
    const [series] = groupSeries(STUDY, [instance("m", { frames: 3, number: 1 }), instance("s", { number: 2 })]);
    const images = stackImages("http://pacs/dicom-web/", series);
    expect(images.map((i) => i.imageId)).toEqual([
      "wadors:http://pacs/dicom-web/studies/1.2.3/series/1.2.3.4/instances/m/frames/1",
      "wadors:http://pacs/dicom-web/studies/1.2.3/series/1.2.3.4/instances/m/frames/2",
      "wadors:http://pacs/dicom-web/studies/1.2.3/series/1.2.3.4/instances/m/frames/3",
      "wadors:http://pacs/dicom-web/studies/1.2.3/series/1.2.3.4/instances/s/frames/1",
    ]);
    expect(images.map((i) => i.frame)).toEqual([1, 2, 3, 1]);
  });

  it("escapes what is not a UID character", () => {
    const [series] = groupSeries("1 2", [instance("a/b")]);
    expect(stackImages("/dicom-web", series)[0].imageId).toBe(
      "wadors:/dicom-web/studies/1%202/series/1.2.3.4/instances/a%2Fb/frames/1");
  });
});

describe("mergeInstances (a study still arriving)", () => {
  it("adds what is new and says which series changed", () => {
    const first = groupSeries(STUDY, [instance("a", { number: 1, z: 3 }), instance("b", { number: 2, z: 2 })]);
    const { series, changed } = mergeInstances(STUDY, first, [
      instance("a", { number: 1, z: 3 }), instance("b", { number: 2, z: 2 }), instance("c", { number: 3, z: 1 }),
      instance("x", { series: "S9", number: 1 }),
    ]);
    expect([...changed].sort()).toEqual(["1.2.3.4", "S9"]);
    expect(sops(series[0].instances)).toEqual(["a", "b", "c"]);
    expect(series[0].instances[0].metadata).toBe(first[0].instances[0].metadata);
    expect(mergeInstances(STUDY, series, []).changed.size).toBe(0);
  });
});
