// The viewer page: the study's series (from /api/studies/{uid}/series) and the image viewer
// component of web/src/viewer (loaded on demand: Cornerstone3D is large and the search needs none of it).
import type { ApiClient } from "../api/http";
import { StudiesApi } from "../api/studies";
import { TAG, text } from "../dicom";
import { type Mounted, errorText, h, message } from "../dom";

export interface ViewerPageOptions {
  client: ApiClient;
  studyUid: string;
}

export function mountViewerPage(root: HTMLElement, options: ViewerPageOptions): Mounted {
  const studies = new StudiesApi(options.client);
  const page = h("div", { class: "page viewer-page" });
  root.replaceChildren(page);
  studies
    .series(options.studyUid, "local")
    .then((result) => {
      page.replaceChildren(
        message("The image viewer is not merged into this branch yet.", "info"),
        h("ul", null, result.items.map((s) => h("li", null, `${text(s, TAG.Modality)} ${text(s, TAG.SeriesNumber)} ${text(s, TAG.SeriesDescription)}`))),
      );
    })
    .catch((error: unknown) => page.replaceChildren(message(errorText(error))));
  return { destroy: () => page.remove() };
}
