// The viewer's data layer: the few DICOMweb requests it makes (QIDO-RS, WADO-RS metadata, thumbnails),
// with the caller's authentication. Images themselves are fetched by Cornerstone's wadors: loader.
import { type DicomJson, Tag, num } from "./dicomJson";

/** Extra request headers (e.g. ``Authorization: Bearer ...``), computed per request. */
export type HeadersHook = () => Record<string, string> | Promise<Record<string, string>>;

/** Where the viewer gets its data from. */
export interface DicomWebSource {
  /** base URL of the DICOMweb service, e.g. ``/dicom-web`` or ``https://pacs.example/dicom-web`` */
  url: string;
  /** headers added to every request (metadata, thumbnails and image frames) */
  headers?: HeadersHook;
  /** the fetch to use (default: the global fetch; cookies of the same origin are sent) */
  fetch?: typeof fetch;
}

/** A request answered with an error status; ``detail`` is the problem+json detail when there is one. */
export class DicomWebError extends Error {
  constructor(readonly status: number, readonly url: string, readonly detail: string) {
    super(`${status} from ${url}${detail ? `: ${detail}` : ""}`);
    this.name = "DicomWebError";
  }
}

/** Counts of a study from its QIDO-RS study record. */
export interface StudyCounts {
  series: number | undefined;
  instances: number | undefined;
}

export class DicomWebClient {
  readonly base: string;

  constructor(readonly source: DicomWebSource) {
    this.base = source.url.replace(/\/+$/, "");
  }

  private async get(path: string, accept: string): Promise<Response> {
    const url = this.base + path;
    const headers = { Accept: accept, ...(await this.source.headers?.()) };
    const doFetch = this.source.fetch ?? fetch;
    const response = await doFetch(url, { headers, credentials: "same-origin" });
    if (!response.ok) {
      let detail = "";
      try {
        const body = (await response.json()) as { detail?: unknown; title?: unknown };
        detail = String(body.detail ?? body.title ?? "");
      } catch {
        detail = response.statusText;
      }
      throw new DicomWebError(response.status, url, detail);
    }
    return response;
  }

  private async json(path: string): Promise<DicomJson[]> {
    const response = await this.get(path, "application/dicom+json");
    if (response.status === 204) return [];
    const body = (await response.json()) as unknown;
    if (!Array.isArray(body)) throw new DicomWebError(response.status, this.base + path, "not a DICOM JSON array");
    return body as DicomJson[];
  }

  /** WADO-RS metadata of every instance of a study. */
  studyMetadata(studyUid: string): Promise<DicomJson[]> {
    return this.json(`/studies/${encodeURIComponent(studyUid)}/metadata`);
  }

  /** WADO-RS metadata of every instance of one series. */
  seriesMetadata(studyUid: string, seriesUid: string): Promise<DicomJson[]> {
    return this.json(`/studies/${encodeURIComponent(studyUid)}/series/${encodeURIComponent(seriesUid)}/metadata`);
  }

  /** WADO-RS metadata of one instance. */
  instanceMetadata(studyUid: string, seriesUid: string, sopInstanceUid: string): Promise<DicomJson[]> {
    const e = encodeURIComponent;
    return this.json(`/studies/${e(studyUid)}/series/${e(seriesUid)}/instances/${e(sopInstanceUid)}/metadata`);
  }

  /**
   * QIDO-RS instances of a series (SOP Instance UID, Instance Number, Number of Frames), optionally only
   * those matching ``match`` (keyword or tag -> value, e.g. ``{ InstanceNumber: "1" }``).
   */
  seriesInstances(studyUid: string, seriesUid: string, match: Record<string, string> = {}): Promise<DicomJson[]> {
    const e = encodeURIComponent;
    const keys = Object.entries(match).map(([k, v]) => `&${e(k)}=${e(v)}`).join("");
    return this.json(`/studies/${e(studyUid)}/series/${e(seriesUid)}/instances` +
      `?includefield=${Tag.InstanceNumber}&includefield=${Tag.NumberOfFrames}${keys}`);
  }

  /** QIDO-RS series of a study (series number, description, modality, instance count). */
  studySeries(studyUid: string): Promise<DicomJson[]> {
    return this.json(`/studies/${encodeURIComponent(studyUid)}/series`);
  }

  /** The study's series and instance counts (QIDO-RS); undefined when the study is not (yet) there. */
  async studyCounts(studyUid: string): Promise<StudyCounts | undefined> {
    const found = await this.json(
      `/studies?StudyInstanceUID=${encodeURIComponent(studyUid)}` +
        `&includefield=${Tag.NumberOfStudyRelatedSeries}&includefield=${Tag.NumberOfStudyRelatedInstances}`,
    );
    if (found.length === 0) return undefined;
    return {
      series: num(found[0], Tag.NumberOfStudyRelatedSeries),
      instances: num(found[0], Tag.NumberOfStudyRelatedInstances),
    };
  }

  /**
   * The series thumbnail (PS3.18 thumbnail resource) as an object URL, or undefined when the server has
   * none (404/406/501: thumbnails are optional). The caller revokes the URL.
   */
  async seriesThumbnail(studyUid: string, seriesUid: string): Promise<string | undefined> {
    try {
      const response = await this.get(
        `/studies/${encodeURIComponent(studyUid)}/series/${encodeURIComponent(seriesUid)}/thumbnail`,
        "image/jpeg, image/png, image/*",
      );
      return URL.createObjectURL(await response.blob());
    } catch (err) {
      if (err instanceof DicomWebError && [404, 406, 415, 501].includes(err.status)) return undefined;
      throw err;
    }
  }
}
