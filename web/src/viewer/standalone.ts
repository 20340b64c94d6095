// The standalone viewer page (viewer.html?study=<StudyInstanceUID>[&series=<uid>][&layout=2x2]
// [&dicomweb=<base URL>]): the viewer alone, for development, tests and links from other tools.
// The DICOMweb base URL defaults to /dicom-web of the page's server; a bearer token may be given in the
// page's fragment (#token=...) so that it never reaches server logs.
import { type LayoutName, LAYOUTS, mountViewer } from "./index";

const params = new URLSearchParams(location.search);
const fragment = new URLSearchParams(location.hash.replace(/^#/, ""));
const root = document.getElementById("viewer") as HTMLElement;
const study = params.get("study");
const layout = params.get("layout") ?? "1x1";

if (!study) {
  root.textContent = "Give the study to show: viewer.html?study=<StudyInstanceUID>";
} else {
  const token = fragment.get("token");
  const viewer = mountViewer(root, {
    dicomwebUrl: params.get("dicomweb") ?? new URL("/dicom-web", location.href).href,
    studyUid: study,
    seriesUid: params.get("series") ?? undefined,
    layout: (LAYOUTS as readonly string[]).includes(layout) ? (layout as LayoutName) : "1x1",
    headers: token ? () => ({ Authorization: `Bearer ${token}` }) : undefined,
    pollIntervalMs: Number(params.get("poll") ?? 3000),
    renderer: (["cpu", "gpu"] as const).find((r) => r === params.get("renderer")) ?? "auto",
  });
  // for scripts driving the page (tests, benchmarks): the viewer's public handle
  (window as unknown as { pacskitViewer: typeof viewer }).pacskitViewer = viewer;
}
