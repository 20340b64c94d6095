// The viewer page: web/src/viewer's component (Cornerstone3D over DICOMweb) on one study. It is
// imported on demand: Cornerstone3D is large and the other pages need none of it.
import type { ApiClient } from "../api/http";
import { type Mounted, errorText, h, message } from "../dom";

export interface ViewerPageOptions {
  client: ApiClient;
  studyUid: string;
  seriesUid?: string;
  /** "Back" goes here (the search the study was opened from). */
  backHref: string;
}

/** What the page puts on `window.pacskitViewer` (scripts, tests and benchmarks drive the viewer through it). */
type ViewerHandle = import("../viewer").ViewerHandle;

export function mountViewerPage(root: HTMLElement, options: ViewerPageOptions): Mounted {
  const host = h("div", { class: "viewer-host" });
  const status = h("div", { class: "form-status" });
  const page = h("div", { class: "page viewer-page" },
    h("div", { class: "bar" }, h("a", { class: "button", href: options.backHref }, "‹ Back to the search")), status, host);
  root.replaceChildren(page);
  let handle: ViewerHandle | null = null;
  let destroyed = false;
  import("../viewer")
    .then(({ mountViewer }) => {
      if (destroyed) return;
      handle = mountViewer(host, {
        dicomwebUrl: options.client.url("/dicom-web"),
        studyUid: options.studyUid,
        seriesUid: options.seriesUid,
        headers: () => options.client.authHeaders(),
        onError: (error) => status.replaceChildren(message(errorText(error))),
      });
      (window as unknown as { pacskitViewer?: ViewerHandle }).pacskitViewer = handle;
    })
    .catch((error: unknown) => status.replaceChildren(message(`The viewer could not be loaded: ${errorText(error)}`)));
  return {
    destroy: () => {
      destroyed = true;
      if (handle) {
        handle.destroy();
        const w = window as unknown as { pacskitViewer?: ViewerHandle };
        if (w.pacskitViewer === handle) delete w.pacskitViewer;
      }
      page.remove();
    },
  };
}
