// The pacskit viewer component (Cornerstone3D, fed by DICOMweb). See docs/web-viewer.md.
export { mountViewer, PRIMARY_TOOLS } from "./viewer";
export type { DisplayedImage, PrimaryTool, ViewerHandle, ViewerOptions, ViewerTimings, ViewportState } from "./viewer";
export { DicomWebClient, DicomWebError } from "./dicomweb";
export type { DicomWebSource, HeadersHook, StudyCounts } from "./dicomweb";
export { groupSeries, mergeInstances, sortInstances, stackImages } from "./instances";
export type { StackImage, ViewerInstance, ViewerSeries } from "./instances";
export { LAYOUTS, parseLayout } from "./layout";
export type { Layout, LayoutName } from "./layout";
export { overlayText } from "./overlay";
export type { DisplayState, OverlayText } from "./overlay";
export { PRESETS, applyWindow, defaultWindow, dragWindow, findPreset, presetsFor } from "./voi";
export type { Window, WindowPreset } from "./voi";
