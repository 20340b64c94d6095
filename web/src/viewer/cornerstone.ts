// One-time set-up of Cornerstone3D for the page: core, tools, and the DICOM image loader (wadors:) with
// its web-worker decoders (JPEG baseline/lossless, JPEG-LS, JPEG 2000, HTJ2K, RLE, deflate).
// Cornerstone keeps its state in module globals (one rendering world per page), so this runs once; the
// request headers of every viewer on the page go through one hook that looks the image id up.
import * as core from "@cornerstonejs/core";
import * as dicomImageLoader from "@cornerstonejs/dicom-image-loader";
import * as tools from "@cornerstonejs/tools";
import type { HeadersHook } from "./dicomweb";

let ready: Promise<void> | undefined;

/** base URL -> headers hook of the viewers mounted on the page */
const headerHooks = new Map<string, HeadersHook>();

/** Register the headers hook of a DICOMweb base URL (frames under it get these headers). */
export function setHeadersFor(baseUrl: string, hook: HeadersHook | undefined): () => void {
  const key = new URL(baseUrl, location.href).href.replace(/\/+$/, "");
  if (hook) headerHooks.set(key, hook);
  return () => {
    if (headerHooks.get(key) === hook) headerHooks.delete(key);
  };
}

async function headersFor(imageId: string): Promise<Record<string, string>> {
  const url = imageId.replace(/^wadors:/, "");
  for (const [base, hook] of headerHooks) {
    if (url.startsWith(base + "/")) return await hook();
  }
  return {};
}

/** The tools the viewer binds (registered once per page). */
export const TOOL_CLASSES = [
  tools.WindowLevelTool,
  tools.PanTool,
  tools.ZoomTool,
  tools.StackScrollTool,
  tools.LengthTool,
  tools.AngleTool,
  tools.RectangleROITool,
  tools.EllipticalROITool,
] as const;

/**
 * Initialise Cornerstone (idempotent; every viewer awaits it). Rendering uses WebGL when the browser has
 * it and Cornerstone's CPU renderer otherwise.
 */
export function initCornerstone(): Promise<void> {
  ready ??= (async () => {
    core.init();
    dicomImageLoader.init({
      maxWebWorkers: Math.max(1, Math.min(4, navigator.hardwareConcurrency || 1)),
      beforeSend: (_xhr, imageId) => headersFor(imageId),
    });
    tools.init();
    for (const tool of TOOL_CLASSES) tools.addTool(tool);
  })();
  return ready;
}

export { core, dicomImageLoader, tools };
