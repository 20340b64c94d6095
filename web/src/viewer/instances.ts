// From WADO-RS metadata (DICOM JSON instances) to the viewer's model: series with their instances in
// display order, and Cornerstone image ids (one per frame) for the wadors: loader.
import { type DicomJson, Tag, num, nums, str } from "./dicomJson";

/** One instance of a series, with what the sort and the image ids need. */
export interface ViewerInstance {
  sopInstanceUid: string;
  seriesUid: string;
  instanceNumber: number | undefined;
  /** ImagePositionPatient (x, y, z), when present */
  position: number[] | undefined;
  /** ImageOrientationPatient (row cosines, column cosines), when present */
  orientation: number[] | undefined;
  /** NumberOfFrames (1 for single-frame images) */
  frames: number;
  metadata: DicomJson;
}

/** One series of the study, instances in display order (see {@link sortInstances}). */
export interface ViewerSeries {
  uid: string;
  studyUid: string;
  number: number | undefined;
  description: string;
  modality: string;
  instances: ViewerInstance[];
}

/** The viewer's view of one instance's metadata. Instances without a SOP Instance UID are refused. */
export function toInstance(metadata: DicomJson): ViewerInstance {
  const sopInstanceUid = str(metadata, Tag.SOPInstanceUID);
  if (!sopInstanceUid) throw new Error("instance metadata without SOPInstanceUID (0008,0018)");
  const position = nums(metadata, Tag.ImagePositionPatient);
  const orientation = nums(metadata, Tag.ImageOrientationPatient);
  return {
    sopInstanceUid,
    seriesUid: str(metadata, Tag.SeriesInstanceUID),
    instanceNumber: num(metadata, Tag.InstanceNumber),
    position: position?.length === 3 ? position : undefined,
    orientation: orientation?.length === 6 ? orientation : undefined,
    frames: Math.max(1, Math.trunc(num(metadata, Tag.NumberOfFrames) ?? 1)),
    metadata,
  };
}

function cross(a: number[], b: number[]): number[] {
  return [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]];
}

function dot(a: number[], b: number[]): number {
  return a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
}

/** The slice normal (row cosines x column cosines) of an ImageOrientationPatient value. */
export function sliceNormal(orientation: number[]): number[] {
  return cross(orientation.slice(0, 3), orientation.slice(3, 6));
}

function byInstanceNumber(a: ViewerInstance, b: ViewerInstance): number {
  const na = a.instanceNumber ?? Number.POSITIVE_INFINITY;
  const nb = b.instanceNumber ?? Number.POSITIVE_INFINITY;
  if (na !== nb) return na < nb ? -1 : 1;
  return a.sopInstanceUid < b.sopInstanceUid ? -1 : a.sopInstanceUid > b.sopInstanceUid ? 1 : 0;
}

/**
 * The display order of a series' instances.
 *
 * Parallel slices (every instance has a position and the same orientation, within 1e-3) are ordered by
 * their position along the slice normal, in the direction in which the instance numbers grow (so a CT
 * acquired head first shows the head first, as its instance numbers say, and a stack with shuffled
 * instance numbers is still anatomically ordered); equal positions fall back to the instance number.
 * Anything else (localizers, mixed orientations, missing positions, multi-frame objects) is ordered
 * by instance number, then SOP Instance UID. The input is not modified.
 */
export function sortInstances(instances: readonly ViewerInstance[]): ViewerInstance[] {
  const out = [...instances];
  const first = out[0]?.orientation;
  const parallel =
    out.length > 1 &&
    first !== undefined &&
    out.every(
      (i) => i.position !== undefined && i.orientation !== undefined &&
        i.orientation.every((v, k) => Math.abs(v - first[k]) < 1e-3),
    );
  if (!parallel) return out.sort(byInstanceNumber);
  const normal = sliceNormal(first);
  const distance = new Map(out.map((i) => [i, dot(i.position as number[], normal)]));
  out.sort((a, b) => {
    const d = (distance.get(a) as number) - (distance.get(b) as number);
    return Math.abs(d) > 1e-4 ? d : byInstanceNumber(a, b);
  });
  // Orient the stack as the instance numbers run: compare the numbers at both ends.
  const numbered = out.filter((i) => i.instanceNumber !== undefined);
  if (numbered.length >= 2) {
    const head = numbered[0].instanceNumber as number;
    const tail = numbered[numbered.length - 1].instanceNumber as number;
    if (head > tail) out.reverse();
  }
  return out;
}

/**
 * Group instances by series (series ordered by series number, then UID), each series' instances in
 * display order. Instances whose SOP Instance UID repeats keep their first occurrence.
 */
export function groupSeries(studyUid: string, metadata: readonly DicomJson[]): ViewerSeries[] {
  const bySeries = new Map<string, { first: DicomJson; instances: ViewerInstance[] }>();
  const seen = new Set<string>();
  for (const m of metadata) {
    const instance = toInstance(m);
    if (seen.has(instance.sopInstanceUid)) continue;
    seen.add(instance.sopInstanceUid);
    let entry = bySeries.get(instance.seriesUid);
    if (!entry) {
      entry = { first: m, instances: [] };
      bySeries.set(instance.seriesUid, entry);
    }
    entry.instances.push(instance);
  }
  const series = [...bySeries.entries()].map(([uid, { first, instances }]) => ({
    uid,
    studyUid,
    number: num(first, Tag.SeriesNumber),
    description: str(first, Tag.SeriesDescription),
    modality: str(first, Tag.Modality),
    instances: sortInstances(instances),
  }));
  return series.sort((a, b) => {
    const na = a.number ?? Number.POSITIVE_INFINITY;
    const nb = b.number ?? Number.POSITIVE_INFINITY;
    return na !== nb ? (na < nb ? -1 : 1) : a.uid < b.uid ? -1 : a.uid > b.uid ? 1 : 0;
  });
}

/** The WADO-RS URL of an instance (no trailing slash), under the DICOMweb base URL. */
export function instanceUrl(dicomwebUrl: string, studyUid: string, instance: ViewerInstance): string {
  const base = dicomwebUrl.replace(/\/+$/, "");
  const e = encodeURIComponent;
  return `${base}/studies/${e(studyUid)}/series/${e(instance.seriesUid)}/instances/${e(instance.sopInstanceUid)}`;
}

/** One image of a stack: its Cornerstone image id and where it comes from. */
export interface StackImage {
  imageId: string;
  instance: ViewerInstance;
  /** 1-based frame number in the instance */
  frame: number;
}

/**
 * The images of a series in display order: one wadors: image id per frame
 * (``wadors:<base>/studies/<study>/series/<series>/instances/<sop>/frames/<n>``).
 */
export function stackImages(dicomwebUrl: string, series: ViewerSeries): StackImage[] {
  const out: StackImage[] = [];
  for (const instance of series.instances) {
    const url = instanceUrl(dicomwebUrl, series.studyUid, instance);
    for (let frame = 1; frame <= instance.frames; frame++) {
      out.push({ imageId: `wadors:${url}/frames/${frame}`, instance, frame });
    }
  }
  return out;
}

/**
 * Merge newly received instance metadata into a study's series: returns the new series list and the
 * UIDs of the series that changed (gained instances). Known instances keep their metadata objects.
 */
export function mergeInstances(
  studyUid: string,
  current: readonly ViewerSeries[],
  metadata: readonly DicomJson[],
): { series: ViewerSeries[]; changed: Set<string> } {
  const known = new Set(current.flatMap((s) => s.instances.map((i) => i.sopInstanceUid)));
  const fresh = metadata.filter((m) => !known.has(str(m, Tag.SOPInstanceUID)));
  const changed = new Set(fresh.map((m) => str(m, Tag.SeriesInstanceUID)));
  if (fresh.length === 0) return { series: [...current], changed };
  const all = [...current.flatMap((s) => s.instances.map((i) => i.metadata)), ...fresh];
  return { series: groupSeries(studyUid, all), changed };
}
