// The viewer component: a series panel, a toolbar, and a grid of Cornerstone3D stack viewports fed by
// WADO-RS. Mount it with mountViewer(element, options); everything it needs comes in the options.
import "./viewer.css";
import { core, dicomImageLoader, initCornerstone, setHeadersFor, tools } from "./cornerstone";
import { DicomWebClient, type DicomWebSource, type HeadersHook } from "./dicomweb";
import { type DicomJson, Tag, num, str } from "./dicomJson";
import { type StackImage, type ViewerSeries, groupSeries, mergeInstances, stackImages } from "./instances";
import { LAYOUTS, type LayoutName, assignSeries, parseLayout, viewportCount } from "./layout";
import { type DisplayState, overlayText } from "./overlay";
import { type Window, findPreset, fromRange, presetsFor, toRange } from "./voi";

/** What the primary (left) mouse button does. */
export const PRIMARY_TOOLS = {
  windowLevel: { tool: tools.WindowLevelTool.toolName, label: "W/L" },
  pan: { tool: tools.PanTool.toolName, label: "Pan" },
  zoom: { tool: tools.ZoomTool.toolName, label: "Zoom" },
  length: { tool: tools.LengthTool.toolName, label: "Length" },
  angle: { tool: tools.AngleTool.toolName, label: "Angle" },
  rectangleRoi: { tool: tools.RectangleROITool.toolName, label: "Rect ROI" },
  ellipseRoi: { tool: tools.EllipticalROITool.toolName, label: "Ellipse ROI" },
} as const;
export type PrimaryTool = keyof typeof PRIMARY_TOOLS;

/** The options of {@link mountViewer}. */
export interface ViewerOptions {
  /** base URL of the DICOMweb service (WADO-RS, QIDO-RS), e.g. "/dicom-web" */
  dicomwebUrl: string;
  /** the study to show */
  studyUid: string;
  /** the series to show first (default: the first series with images) */
  seriesUid?: string;
  /** headers for every request (e.g. a bearer token); same-origin cookies are sent anyway */
  headers?: HeadersHook;
  /** the fetch used for metadata and thumbnails (default: window.fetch) */
  fetch?: typeof fetch;
  /** initial layout (default "1x1") */
  layout?: LayoutName;
  /** how often to look for instances still arriving, in ms (default 3000; 0: never) */
  pollIntervalMs?: number;
  /** stop polling after this long without a new instance, in ms (default 120000; 0: never stop) */
  pollIdleMs?: number;
  /** show the series panel (default true) */
  seriesPanel?: boolean;
  /** smooth (linear) interpolation of magnified images; false shows image pixels as squares (default true) */
  smooth?: boolean;
  /**
   * how to draw: "gpu" (WebGL), "cpu" (Cornerstone's canvas renderer) or "auto" (default: WebGL on a real
   * GPU; the canvas renderer when WebGL is missing or is a software rasterizer such as SwiftShader or
   * llvmpipe, where it draws a 512x512 stack several times faster). Cornerstone keeps one choice per
   * page: the last viewer mounted sets it.
   */
  renderer?: "auto" | "gpu" | "cpu";
  /** frames per second of cine (default 15) */
  cineFps?: number;
  /** called with errors that the viewer also shows in its status line */
  onError?: (error: Error) => void;
}

/** What one viewport shows (see {@link ViewerHandle.state}). */
export interface ViewportState extends DisplayState {
  seriesUid: string | undefined;
  imageId: string | undefined;
  sopInstanceUid: string | undefined;
  /** scale of the displayed image: screen (CSS) pixels per image pixel */
  scale: number;
  /** linear interpolation on (false: nearest neighbour, every image pixel drawn as it is) */
  smooth: boolean;
  /** drawn by WebGL ("gpu") or Cornerstone's canvas renderer ("cpu") */
  renderer: "gpu" | "cpu";
}

/** The displayed grey level at the centre of every image pixel (row-major), read back from the canvas. */
export interface DisplayedImage {
  rows: number;
  cols: number;
  /** red channel of the canvas at each pixel centre (grey images: the displayed grey level) */
  grey: number[];
}

/** When things happened, as performance.now() values (ms since the page's navigation started). */
export interface ViewerTimings {
  mounted: number;
  /** the study's metadata arrived */
  metadata?: number;
  /** the first image was drawn */
  firstImage?: number;
}

/** The viewer, as returned by {@link mountViewer}. */
export interface ViewerHandle {
  readonly element: HTMLElement;
  /** resolves when the study's metadata is read and the first image is on screen */
  readonly ready: Promise<void>;
  /** the study's series, in panel order */
  series(): readonly ViewerSeries[];
  /** index of the viewport the toolbar and keyboard act on */
  readonly activeViewport: number;
  setActiveViewport(index: number): void;
  setLayout(name: LayoutName): Promise<void>;
  /** show a series in a viewport (default: the active one) */
  showSeries(seriesUid: string, viewport?: number): Promise<void>;
  /** show image ``index`` (0-based) of the stack; resolves when it is rendered */
  scrollTo(index: number, viewport?: number): Promise<void>;
  scroll(delta: number, viewport?: number): Promise<void>;
  /** render the viewport now; resolves when what was asked so far (window, invert, ...) is on the canvas */
  whenRendered(viewport?: number): Promise<void>;
  setWindow(window: Window, viewport?: number): void;
  /** apply a preset by name or key ("Lung", "2"); false when the modality has no such preset */
  applyPreset(name: string, viewport?: number): boolean;
  setInvert(invert: boolean, viewport?: number): void;
  /** linear interpolation (true) or nearest neighbour (false) in every viewport */
  setSmooth(smooth: boolean): void;
  /** back to the image's own window, no inversion, zoom to fit, no pan */
  reset(viewport?: number): void;
  setPrimaryTool(tool: PrimaryTool): void;
  playCine(fps?: number, viewport?: number): void;
  stopCine(viewport?: number): void;
  state(viewport?: number): ViewportState;
  /** the displayed image read back from the canvas (for tests and export) */
  readDisplayedImage(viewport?: number): DisplayedImage;
  /** the Cornerstone3D viewport behind a viewport of the grid (for what the handle does not cover) */
  cornerstoneViewport(viewport?: number): core.StackViewport;
  /** how many images of a viewport's stack are loaded (decoded, in Cornerstone's cache) */
  progress(viewport?: number): { loaded: number; total: number };
  readonly timings: ViewerTimings;
  /** look for new instances now; resolves with how many arrived */
  refresh(): Promise<number>;
  destroy(): void;
}

let viewerCount = 0;

interface Slot {
  index: number;
  id: string;
  host: HTMLDivElement;
  box: HTMLDivElement;
  corners: Record<"topLeft" | "topRight" | "bottomLeft" | "bottomRight", HTMLDivElement>;
  seriesUid: string | undefined;
  images: StackImage[];
  cine: boolean;
}

function el<K extends keyof HTMLElementTagNameMap>(tag: K, className = "", text = ""): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text) node.textContent = text;
  return node;
}

class Viewer implements ViewerHandle {
  readonly element: HTMLElement;
  readonly ready: Promise<void>;
  activeViewport = 0;
  readonly timings: ViewerTimings = { mounted: performance.now() };

  private readonly client: DicomWebClient;
  private readonly options: Required<Pick<ViewerOptions, "pollIntervalMs" | "pollIdleMs" | "cineFps">> & ViewerOptions;
  private readonly id = `pacskit-viewer-${++viewerCount}`;
  private engine: core.RenderingEngine | undefined;
  private toolGroup: tools.Types.IToolGroup | undefined;
  private seriesList: ViewerSeries[] = [];
  private slots: Slot[] = [];
  private primaryTool: PrimaryTool = "windowLevel";
  private smooth: boolean;
  private registered = new Set<string>();
  private thumbnails: string[] = [];
  private pollTimer: number | undefined;
  private lastGrowth = Date.now();
  private lastCount: number | undefined;
  private destroyed = false;
  private readonly unsetHeaders: () => void;
  private readonly resizeObserver: ResizeObserver;
  private readonly cleanups: (() => void)[] = [];

  // DOM parts
  private readonly root: HTMLDivElement;
  private readonly toolbar: HTMLDivElement;
  private readonly panel: HTMLElement;
  private readonly grid: HTMLDivElement;
  private readonly status: HTMLSpanElement;
  private readonly presetSelect: HTMLSelectElement;

  constructor(element: HTMLElement, options: ViewerOptions) {
    this.element = element;
    this.options = { pollIntervalMs: 3000, pollIdleMs: 120000, cineFps: 15, ...options };
    this.smooth = options.smooth ?? true;
    const source: DicomWebSource = { url: options.dicomwebUrl, headers: options.headers, fetch: options.fetch };
    this.client = new DicomWebClient(source);
    this.unsetHeaders = setHeadersFor(this.client.base, options.headers);

    this.root = el("div", "pk-viewer");
    this.root.tabIndex = 0;
    this.toolbar = el("div", "pk-toolbar");
    this.panel = el("aside", "pk-series");
    this.grid = el("div", "pk-grid");
    this.status = el("span", "pk-status");
    this.presetSelect = el("select", "pk-presets");
    const body = el("div", "pk-body");
    if (options.seriesPanel !== false) body.append(this.panel);
    body.append(this.grid);
    this.root.append(this.toolbar, body);
    element.replaceChildren(this.root);
    this.buildToolbar();

    // "Loading 120/300" in the status line while the stacks are prefetched (once per frame at most)
    let progressQueued = false;
    const onCached = (): void => {
      if (progressQueued) return;
      progressQueued = true;
      requestAnimationFrame(() => {
        progressQueued = false;
        this.showProgress();
      });
    };
    core.eventTarget.addEventListener(core.Enums.Events.IMAGE_CACHE_IMAGE_ADDED, onCached);
    this.cleanups.push(() => core.eventTarget.removeEventListener(core.Enums.Events.IMAGE_CACHE_IMAGE_ADDED, onCached));
    // an image of one of this viewer's stacks that cannot be fetched or decoded: say which, keep going
    const onLoadError = (event: Event): void => {
      const detail = (event as CustomEvent<{ imageId?: string; error?: unknown }>).detail;
      const image = this.slots.flatMap((s) => s.images).find((i) => i.imageId === detail?.imageId);
      if (!image) return;
      const cause = detail.error instanceof Error ? detail.error.message : (detail.error as { status?: number })?.status;
      this.fail(new Error(`image ${image.instance.instanceNumber ?? image.instance.sopInstanceUid}` +
        `${image.instance.frames > 1 ? ` frame ${image.frame}` : ""} could not be loaded` + (cause ? ` (${cause})` : "")));
    };
    core.eventTarget.addEventListener(core.Enums.Events.IMAGE_LOAD_FAILED, onLoadError);
    this.cleanups.push(() => core.eventTarget.removeEventListener(core.Enums.Events.IMAGE_LOAD_FAILED, onLoadError));
    // Cornerstone's loader also leaves the failed request's promise unhandled (the XMLHttpRequest as the
    // reason); the failure is reported above, so those of this viewer's server are marked handled.
    const base = new URL(this.client.base, location.href).href.replace(/\/+$/, "") + "/";
    const onUnhandled = (event: PromiseRejectionEvent): void => {
      const reason: unknown = event.reason;
      if (reason instanceof XMLHttpRequest && reason.responseURL.startsWith(base)) {
        event.preventDefault();
      }
    };
    window.addEventListener("unhandledrejection", onUnhandled);
    this.cleanups.push(() => window.removeEventListener("unhandledrejection", onUnhandled));

    this.resizeObserver = new ResizeObserver(() => this.engine?.resize(true, true));
    this.resizeObserver.observe(this.grid);
    const onKey = (e: KeyboardEvent): void => this.onKey(e);
    this.root.addEventListener("keydown", onKey);
    this.cleanups.push(() => this.root.removeEventListener("keydown", onKey));

    this.ready = this.start();
    this.ready.catch((err: unknown) => this.fail(err));
  }

  // --- start-up -------------------------------------------------------------------------------------

  /**
   * Open the study in two steps, so that the first image does not wait for the metadata of every
   * instance (which a server builds from each file: seconds for a large study): the first instance of
   * the first series is found with QIDO-RS and shown from its own metadata while the study's metadata
   * is on its way; then the stack grows to the whole series around the image on screen.
   */
  private async start(): Promise<void> {
    this.setStatus("Loading study…");
    const studyUid = this.options.studyUid;
    // The study's metadata is asked for once the first instance's is here: a server building it (a
    // CPU-bound job) would otherwise hold up the small requests of the first image.
    const first = await Promise.all([this.firstInstance().catch(() => undefined), initCornerstone()])
      .then(([instance]) => instance);
    let fullArrived = false;
    const full = this.client.studyMetadata(studyUid).finally(() => { fullArrived = true; });
    full.catch(() => undefined); // awaited below; this only keeps an early destroy() from an unhandled rejection
    if (this.destroyed) return;
    const renderer = this.options.renderer ?? "auto";
    const capabilities = core.getRenderingCapabilities();
    core.setUseCPURendering(renderer === "cpu" ||
      (renderer === "auto" && (!capabilities.webgl || capabilities.softwareRasterizer)));
    this.engine = new core.RenderingEngine(this.id);
    this.toolGroup = this.createToolGroup();
    const layout = parseLayout(this.options.layout ?? "1x1");
    if (first && !fullArrived) {
      this.seriesList = groupSeries(studyUid, [first]);
      await this.buildGrid(layout.rows, layout.cols, [this.seriesList[0].uid]);
    }
    const metadata = await full;
    if (this.destroyed) return;
    this.timings.metadata = performance.now();
    this.seriesList = groupSeries(studyUid, metadata);
    this.lastCount = metadata.length;
    this.renderPanel();
    const uids = this.seriesList.map((s) => s.uid);
    const wanted = this.options.seriesUid ?? uids[0];
    if (this.slots.length === 0) {
      await this.buildGrid(layout.rows, layout.cols,
        assignSeries(wanted ? [wanted] : [], uids, viewportCount(layout)));
    } else {
      const assigned = assignSeries(this.slots.map((s) => s.seriesUid).slice(0, 1), uids, this.slots.length);
      await Promise.all(this.slots.map((slot) => {
        const uid = assigned[slot.index];
        if (!uid) return Promise.resolve();
        return uid === slot.seriesUid ? this.extendStack(slot) : this.showSeries(uid, slot.index);
      }));
    }
    this.setStatus(metadata.length ? "" : "No images in this study yet");
    this.root.dataset.ready = "1";
    this.schedulePoll();
  }

  /** The metadata of the instance to show first (lowest instance number of the first series), by QIDO-RS. */
  private async firstInstance(): Promise<DicomJson | undefined> {
    const studyUid = this.options.studyUid;
    let seriesUid = this.options.seriesUid;
    if (!seriesUid) {
      const series = (await this.client.studySeries(studyUid))
        .filter((s) => (num(s, Tag.NumberOfSeriesRelatedInstances) ?? 1) > 0)
        .map((s) => ({ uid: str(s, Tag.SeriesInstanceUID), number: num(s, Tag.SeriesNumber) ?? Infinity }))
        .sort((a, b) => a.number - b.number || (a.uid < b.uid ? -1 : a.uid > b.uid ? 1 : 0));
      seriesUid = series[0]?.uid;
    }
    if (!seriesUid) return undefined;
    // Instance 1 is usually there, and matching it is cheap where listing a large series is not.
    let found = await this.client.seriesInstances(studyUid, seriesUid, { InstanceNumber: "1" });
    if (found.length === 0) found = await this.client.seriesInstances(studyUid, seriesUid);
    const instances = found
      .map((i) => ({ uid: str(i, Tag.SOPInstanceUID), number: num(i, Tag.InstanceNumber) ?? Infinity }))
      .sort((a, b) => a.number - b.number || (a.uid < b.uid ? -1 : a.uid > b.uid ? 1 : 0));
    if (!instances[0]?.uid) return undefined;
    const [metadata] = await this.client.instanceMetadata(studyUid, seriesUid, instances[0].uid);
    return metadata;
  }

  private createToolGroup(): tools.Types.IToolGroup {
    const group = tools.ToolGroupManager.createToolGroup(this.id);
    if (!group) throw new Error(`tool group ${this.id} exists already`);
    for (const { tool } of Object.values(PRIMARY_TOOLS)) group.addTool(tool);
    group.addTool(tools.StackScrollTool.toolName);
    const { MouseBindings } = tools.Enums;
    group.setToolActive(tools.WindowLevelTool.toolName, { bindings: [{ mouseButton: MouseBindings.Primary }] });
    group.setToolActive(tools.PanTool.toolName, { bindings: [{ mouseButton: MouseBindings.Auxiliary }] });
    group.setToolActive(tools.ZoomTool.toolName, { bindings: [{ mouseButton: MouseBindings.Secondary }] });
    group.setToolActive(tools.StackScrollTool.toolName, { bindings: [{ mouseButton: MouseBindings.Wheel }] });
    for (const name of ["length", "angle", "rectangleRoi", "ellipseRoi"] as const) {
      group.setToolPassive(PRIMARY_TOOLS[name].tool);
    }
    return group;
  }

  series(): readonly ViewerSeries[] {
    return this.seriesList;
  }

  // --- DOM ---------------------------------------------------------------------------------------------

  private button(label: string, title: string, action: () => void, data: Record<string, string> = {}): HTMLButtonElement {
    const b = el("button", "pk-button", label);
    b.type = "button";
    b.title = title;
    for (const [k, v] of Object.entries(data)) b.dataset[k] = v;
    b.addEventListener("click", () => {
      action();
      this.root.focus({ preventScroll: true });
    });
    return b;
  }

  private buildToolbar(): void {
    const group = (...nodes: Node[]): HTMLDivElement => {
      const g = el("div", "pk-group");
      g.append(...nodes);
      return g;
    };
    const toolButtons = Object.entries(PRIMARY_TOOLS).map(([name, { label }]) =>
      this.button(label, `left mouse button: ${label}`, () => this.setPrimaryTool(name as PrimaryTool), { tool: name }));
    this.presetSelect.title = "window presets (keys 1-9)";
    this.presetSelect.addEventListener("change", () => {
      if (this.presetSelect.value) this.applyPreset(this.presetSelect.value);
      this.presetSelect.value = "";
      this.root.focus({ preventScroll: true });
    });
    const layoutButtons = LAYOUTS.map((name) =>
      this.button(name, `layout ${name}`, () => this.setLayout(name).catch((err: unknown) => this.fail(err)),
        { layout: name }));
    this.toolbar.append(
      group(...toolButtons),
      group(
        this.presetSelect,
        this.button("Invert", "invert (I)", () => this.setInvert(!this.state().invert), { action: "invert" }),
        this.button("Reset", "reset (R)", () => this.reset(), { action: "reset" }),
        this.button("Smooth", "smooth / pixel-exact display (S)", () => this.setSmooth(!this.smooth), { action: "smooth" }),
      ),
      group(...layoutButtons),
      group(this.button("Cine", "play / stop (space)", () => this.toggleCine(), { action: "cine" })),
      this.status,
    );
    this.markTool();
  }

  private markTool(): void {
    for (const b of this.toolbar.querySelectorAll<HTMLButtonElement>("button[data-tool]")) {
      b.classList.toggle("pk-on", b.dataset.tool === this.primaryTool);
    }
    this.toolbar.querySelector("button[data-action='smooth']")?.classList.toggle("pk-on", this.smooth);
  }

  private interpolation(): core.Enums.InterpolationType {
    return this.smooth ? core.Enums.InterpolationType.LINEAR : core.Enums.InterpolationType.NEAREST;
  }

  setSmooth(smooth: boolean): void {
    this.smooth = smooth;
    for (const slot of this.slots) {
      if (!slot.images.length) continue;
      const vp = this.viewport(slot);
      vp.setProperties({ interpolationType: this.interpolation() });
      vp.render();
    }
    this.markTool();
  }

  private renderPanel(): void {
    for (const url of this.thumbnails) URL.revokeObjectURL(url);
    this.thumbnails = [];
    this.panel.replaceChildren();
    for (const series of this.seriesList) {
      const item = el("button", "pk-series-item");
      item.type = "button";
      item.dataset.series = series.uid;
      const thumb = el("div", "pk-thumb", series.modality);
      const frames = series.instances.reduce((n, i) => n + i.frames, 0);
      const text = el("div", "pk-series-text");
      text.append(
        el("div", "pk-series-title", `${series.number ?? "-"} ${series.description || "(no description)"}`),
        el("div", "pk-series-count", `${series.modality} · ${frames} image${frames === 1 ? "" : "s"}`),
      );
      item.append(thumb, text);
      item.addEventListener("click", () => this.showSeries(series.uid).catch((err: unknown) => this.fail(err)));
      this.panel.append(item);
      void this.client.seriesThumbnail(series.studyUid, series.uid).then(
        (url) => {
          if (!url || this.destroyed) return;
          this.thumbnails.push(url);
          const img = el("img");
          img.alt = "";
          img.src = url;
          thumb.replaceChildren(img);
        },
        () => undefined, // a thumbnail is a nicety: the list works without it
      );
    }
    this.markShownSeries();
  }

  private markShownSeries(): void {
    const active = this.slots[this.activeViewport]?.seriesUid;
    for (const item of this.panel.querySelectorAll<HTMLElement>(".pk-series-item")) {
      item.classList.toggle("pk-on", item.dataset.series === active);
    }
  }

  private async buildGrid(rows: number, cols: number, assigned: (string | undefined)[]): Promise<void> {
    const engine = this.engine as core.RenderingEngine;
    const group = this.toolGroup as tools.Types.IToolGroup;
    for (const slot of this.slots) {
      this.stopCine(slot.index);
      tools.utilities.stackPrefetch.disable(slot.host);
      group.removeViewports(engine.id, slot.id);
      engine.disableElement(slot.id);
    }
    this.slots = [];
    this.grid.replaceChildren();
    this.grid.style.gridTemplateRows = `repeat(${rows}, minmax(0, 1fr))`;
    this.grid.style.gridTemplateColumns = `repeat(${cols}, minmax(0, 1fr))`;
    for (let index = 0; index < rows * cols; index++) {
      const box = el("div", "pk-viewport");
      box.dataset.viewport = String(index);
      const host = el("div", "pk-canvas-host");
      host.addEventListener("contextmenu", (e) => e.preventDefault());
      const corners = {
        topLeft: el("div", "pk-corner pk-tl"),
        topRight: el("div", "pk-corner pk-tr"),
        bottomLeft: el("div", "pk-corner pk-bl"),
        bottomRight: el("div", "pk-corner pk-br"),
      };
      box.append(host, ...Object.values(corners));
      box.addEventListener("pointerdown", () => this.setActiveViewport(index), { capture: true });
      this.grid.append(box);
      const slot: Slot = { index, id: `${this.id}-vp${index}-${Date.now()}`, host, box, corners,
        seriesUid: undefined, images: [], cine: false };
      this.slots.push(slot);
    }
    engine.setViewports(this.slots.map((slot) => ({
      viewportId: slot.id,
      type: core.Enums.ViewportType.STACK,
      element: slot.host,
      defaultOptions: { background: [0, 0, 0] as core.Types.Point3 },
    })));
    for (const slot of this.slots) {
      group.addViewport(slot.id, engine.id);
      const update = (): void => this.updateOverlay(slot);
      slot.host.addEventListener(core.Enums.Events.IMAGE_RENDERED, () => {
        if (slot.images.length) this.timings.firstImage ??= performance.now();
      });
      for (const name of [core.Enums.Events.IMAGE_RENDERED, core.Enums.Events.STACK_NEW_IMAGE,
        core.Enums.Events.VOI_MODIFIED, core.Enums.Events.CAMERA_MODIFIED]) {
        slot.host.addEventListener(name, update);
      }
    }
    this.activeViewport = Math.min(this.activeViewport, this.slots.length - 1);
    this.markActive();
    await Promise.all(this.slots.map((slot) => {
      const uid = assigned[slot.index];
      return uid ? this.showSeries(uid, slot.index) : Promise.resolve();
    }));
  }

  private markActive(): void {
    for (const slot of this.slots) slot.box.classList.toggle("pk-active", slot.index === this.activeViewport);
  }

  // --- stacks -------------------------------------------------------------------------------------------

  private slot(viewport?: number): Slot {
    const slot = this.slots[viewport ?? this.activeViewport];
    if (!slot) throw new RangeError(`no viewport ${viewport}`);
    return slot;
  }

  progress(viewport?: number): { loaded: number; total: number } {
    const slot = this.slot(viewport);
    const loaded = slot.images.filter((i) => core.cache.isLoaded(i.imageId)).length;
    return { loaded, total: slot.images.length };
  }

  cornerstoneViewport(viewport?: number): core.StackViewport {
    return this.viewport(this.slot(viewport));
  }

  private viewport(slot: Slot): core.StackViewport {
    return (this.engine as core.RenderingEngine).getViewport(slot.id) as core.StackViewport;
  }

  private register(images: StackImage[]): void {
    for (const { imageId, instance, frame } of images) {
      if (this.registered.has(imageId)) continue;
      if (instance.frames > 1 && frame !== 1) continue; // frames 2.. come from frame 1's metadata
      dicomImageLoader.wadors.metaDataManager.add(imageId, instance.metadata as never);
      this.registered.add(imageId);
    }
  }

  async showSeries(seriesUid: string, viewport?: number): Promise<void> {
    const slot = this.slot(viewport);
    const series = this.seriesList.find((s) => s.uid === seriesUid);
    if (!series) throw new RangeError(`series ${seriesUid} is not in the study`);
    this.stopCine(slot.index);
    const images = stackImages(this.client.base, series);
    this.register(images);
    slot.seriesUid = seriesUid;
    slot.images = images;
    slot.box.dataset.series = seriesUid;
    this.markShownSeries();
    const vp = this.viewport(slot);
    tools.utilities.stackPrefetch.disable(slot.host);
    if (images.length === 0) return;
    await vp.setStack(images.map((i) => i.imageId), 0);
    if (!this.isCurrent(slot)) return; // the layout changed while the stack loaded: that viewport is gone
    vp.setProperties({ interpolationType: this.interpolation() });
    vp.render();
    tools.utilities.stackPrefetch.enable(slot.host);
    this.updateOverlay(slot);
  }

  private nextRender(slot: Slot): Promise<void> {
    return new Promise<void>((resolve) => {
      const done = (): void => {
        slot.host.removeEventListener(core.Enums.Events.IMAGE_RENDERED, done);
        resolve();
      };
      slot.host.addEventListener(core.Enums.Events.IMAGE_RENDERED, done);
    });
  }

  async scrollTo(index: number, viewport?: number): Promise<void> {
    const slot = this.slot(viewport);
    if (slot.images.length === 0) return;
    const target = Math.max(0, Math.min(slot.images.length - 1, Math.trunc(index)));
    const vp = this.viewport(slot);
    if (vp.getCurrentImageIdIndex() === target) return this.whenRendered(slot.index);
    const rendered = this.nextRender(slot);
    await vp.setImageIdIndex(target);
    await rendered;
  }

  whenRendered(viewport?: number): Promise<void> {
    const slot = this.slot(viewport);
    if (slot.images.length === 0) return Promise.resolve();
    const rendered = this.nextRender(slot);
    this.viewport(slot).render();
    return rendered;
  }

  scroll(delta: number, viewport?: number): Promise<void> {
    const slot = this.slot(viewport);
    return this.scrollTo(this.viewport(slot).getCurrentImageIdIndex() + delta, slot.index);
  }

  // --- display --------------------------------------------------------------------------------------------

  setWindow(window: Window, viewport?: number): void {
    if (!(window.width >= 1)) throw new RangeError(`window width must be >= 1 (got ${window.width})`);
    const vp = this.viewport(this.slot(viewport));
    vp.setProperties({ voiRange: toRange(window) });
    vp.render();
  }

  applyPreset(name: string, viewport?: number): boolean {
    const slot = this.slot(viewport);
    const preset = findPreset(this.modalityOf(slot), name);
    if (!preset) return false;
    this.setWindow(preset, slot.index);
    return true;
  }

  setInvert(invert: boolean, viewport?: number): void {
    const vp = this.viewport(this.slot(viewport));
    vp.setProperties({ invert });
    vp.render();
  }

  reset(viewport?: number): void {
    const slot = this.slot(viewport);
    const vp = this.viewport(slot);
    vp.resetProperties();
    vp.setProperties({ interpolationType: this.interpolation() });
    vp.resetCamera();
    vp.render();
    this.updateOverlay(slot);
  }

  setPrimaryTool(tool: PrimaryTool): void {
    const group = this.toolGroup;
    if (!group || !(tool in PRIMARY_TOOLS)) return;
    group.setToolPassive(PRIMARY_TOOLS[this.primaryTool].tool);
    group.setToolActive(PRIMARY_TOOLS[tool].tool, { bindings: [{ mouseButton: tools.Enums.MouseBindings.Primary }] });
    this.primaryTool = tool;
    this.markTool();
  }

  setActiveViewport(index: number): void {
    if (index < 0 || index >= this.slots.length || index === this.activeViewport) return;
    this.activeViewport = index;
    this.markActive();
    this.markShownSeries();
    this.updatePresets();
  }

  async setLayout(name: LayoutName): Promise<void> {
    const layout = parseLayout(name);
    const current = this.slots.map((s) => s.seriesUid);
    const assigned = assignSeries(current, this.seriesList.map((s) => s.uid), viewportCount(layout));
    await this.buildGrid(layout.rows, layout.cols, assigned);
    for (const b of this.toolbar.querySelectorAll<HTMLButtonElement>("button[data-layout]")) {
      b.classList.toggle("pk-on", b.dataset.layout === name);
    }
  }

  playCine(fps?: number, viewport?: number): void {
    const slot = this.slot(viewport);
    if (slot.images.length < 2) return;
    tools.utilities.cine.playClip(slot.host, { framesPerSecond: fps ?? this.options.cineFps, loop: true });
    slot.cine = true;
    slot.box.classList.add("pk-cine");
  }

  stopCine(viewport?: number): void {
    const slot = this.slots[viewport ?? this.activeViewport];
    if (!slot?.cine) return;
    tools.utilities.cine.stopClip(slot.host);
    slot.cine = false;
    slot.box.classList.remove("pk-cine");
  }

  private toggleCine(): void {
    if (this.slot().cine) this.stopCine();
    else this.playCine();
  }

  // --- state and overlay -------------------------------------------------------------------------------------

  private modalityOf(slot: Slot): string {
    return this.seriesList.find((s) => s.uid === slot.seriesUid)?.modality ?? "";
  }

  /** screen (CSS) pixels per image pixel along the rows of the displayed image (1 before it is drawn) */
  private scaleOf(vp: core.StackViewport, imageId: string): number {
    if (!vp.getImageData()) return 1;
    const a = vp.worldToCanvas(core.utilities.imageToWorldCoords(imageId, [0.5, 0.5]) as core.Types.Point3);
    const b = vp.worldToCanvas(core.utilities.imageToWorldCoords(imageId, [1.5, 0.5]) as core.Types.Point3);
    return Math.hypot(b[0] - a[0], b[1] - a[1]);
  }

  state(viewport?: number): ViewportState {
    const slot = this.slot(viewport);
    const vp = this.viewport(slot);
    const index = slot.images.length ? vp.getCurrentImageIdIndex() : 0;
    const image: StackImage | undefined = slot.images[index];
    const props = slot.images.length ? vp.getProperties() : {};
    const range = props.voiRange;
    const scale = image && vp.getCurrentImageId() ? this.scaleOf(vp, image.imageId) : 1;
    return {
      seriesUid: slot.seriesUid,
      imageId: image?.imageId,
      sopInstanceUid: image?.instance.sopInstanceUid,
      index,
      count: slot.images.length,
      frame: image?.frame ?? 1,
      frames: image?.instance.frames ?? 1,
      window: range ? fromRange(range.lower, range.upper) : undefined,
      invert: props.invert ?? false,
      zoom: scale,
      scale,
      smooth: this.smooth,
      renderer: core.getShouldUseCPURendering() ? "cpu" : "gpu",
    };
  }

  /** Whether ``slot`` is still on screen: a layout change replaces every slot, and events or loads
   * of the old ones may still arrive afterwards (they are then ignored). */
  private isCurrent(slot: Slot): boolean {
    return this.slots[slot.index] === slot;
  }

  private updateOverlay(slot: Slot): void {
    if (!this.engine || !slot.images.length || !this.isCurrent(slot)) return;
    const state = this.state(slot.index);
    const image = slot.images[state.index];
    if (!image) return;
    const text = overlayText(image.instance.metadata, state);
    for (const key of Object.keys(slot.corners) as (keyof typeof slot.corners)[]) {
      slot.corners[key].replaceChildren(...text[key].map((line) => el("div", "", line)));
    }
    slot.box.dataset.index = String(state.index);
    if (slot.index === this.activeViewport) this.updatePresets();
  }

  private updatePresets(): void {
    const slot = this.slots[this.activeViewport];
    const presets = slot ? presetsFor(this.modalityOf(slot)) : [];
    const key = presets.map((p) => p.name).join("|");
    if (this.presetSelect.dataset.key === key) return;
    this.presetSelect.dataset.key = key;
    const first = el("option", "", presets.length ? "Presets" : "No presets");
    first.value = "";
    this.presetSelect.replaceChildren(first, ...presets.map((p) => {
      const o = el("option", "", `${p.key ? p.key + " " : ""}${p.name} (W ${p.width} L ${p.center})`);
      o.value = p.name;
      return o;
    }));
    this.presetSelect.disabled = presets.length === 0;
  }

  readDisplayedImage(viewport?: number): DisplayedImage {
    const slot = this.slot(viewport);
    const vp = this.viewport(slot);
    const imageId = vp.getCurrentImageId();
    const image = slot.images.find((i) => i.imageId === imageId);
    if (!imageId || !image) throw new Error("no image displayed");
    const rows = num(image.instance.metadata, Tag.Rows) ?? 0;
    const cols = num(image.instance.metadata, Tag.Columns) ?? 0;
    const canvas = vp.getCanvas();
    const ctx = canvas.getContext("2d");
    if (!ctx) throw new Error("the viewport canvas has no 2D context");
    const pixels = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
    const ratio = canvas.width / canvas.clientWidth;
    // Image coordinates [c + 0.5, r + 0.5] are the centre of pixel (c, r) (imageToWorldCoords puts
    // ImagePositionPatient at [0.5, 0.5]). Cornerstone 5.14's canvas (CPU) renderer draws the image half a
    // pixel right of and below where its worldToCanvas says (measured: pixel (c, r) is drawn around
    // [c + 1, r + 1]); read where it draws.
    const centre = core.getShouldUseCPURendering() ? 1 : 0.5;
    const grey: number[] = new Array(rows * cols);
    for (let r = 0; r < rows; r++) {
      for (let c = 0; c < cols; c++) {
        const world = core.utilities.imageToWorldCoords(imageId, [c + centre, r + centre]) as core.Types.Point3;
        const [x, y] = vp.worldToCanvas(world);
        const px = Math.min(canvas.width - 1, Math.max(0, Math.floor(x * ratio)));
        const py = Math.min(canvas.height - 1, Math.max(0, Math.floor(y * ratio)));
        grey[r * cols + c] = pixels[(py * canvas.width + px) * 4];
      }
    }
    return { rows, cols, grey };
  }

  // --- keyboard -----------------------------------------------------------------------------------------------

  private onKey(e: KeyboardEvent): void {
    if (e.target instanceof HTMLSelectElement || e.ctrlKey || e.metaKey || e.altKey || !this.slots.length) return;
    const slot = this.slot();
    const page = Math.max(1, Math.round(slot.images.length / 10));
    const steps: Record<string, number> = { ArrowDown: 1, ArrowRight: 1, ArrowUp: -1, ArrowLeft: -1, PageDown: page, PageUp: -page };
    const report = (err: unknown): void => this.fail(err);
    if (e.key in steps) this.scroll(steps[e.key]).catch(report);
    else if (e.key === "Home") this.scrollTo(0).catch(report);
    else if (e.key === "End") this.scrollTo(slot.images.length - 1).catch(report);
    else if (e.key === "i" || e.key === "I") this.setInvert(!this.state().invert);
    else if (e.key === "r" || e.key === "R") this.reset();
    else if (e.key === "s" || e.key === "S") this.setSmooth(!this.smooth);
    else if (e.key === " ") this.toggleCine();
    else if (/^[1-9]$/.test(e.key)) this.applyPreset(e.key);
    else return;
    e.preventDefault();
  }

  // --- a study still arriving ---------------------------------------------------------------------------------

  private schedulePoll(): void {
    const { pollIntervalMs, pollIdleMs } = this.options;
    if (this.destroyed || pollIntervalMs <= 0) return;
    if (pollIdleMs > 0 && Date.now() - this.lastGrowth > pollIdleMs) return;
    this.pollTimer = window.setTimeout(() => {
      this.refresh().then(() => this.schedulePoll(), (err: unknown) => {
        this.fail(err);
        this.schedulePoll();
      });
    }, pollIntervalMs);
  }

  async refresh(): Promise<number> {
    const counts = await this.client.studyCounts(this.options.studyUid);
    if (this.destroyed || counts?.instances === undefined || counts.instances === this.lastCount) return 0;
    const metadata = await this.client.studyMetadata(this.options.studyUid);
    if (this.destroyed) return 0;
    this.lastCount = metadata.length;
    const { series, changed } = mergeInstances(this.options.studyUid, this.seriesList, metadata);
    if (changed.size === 0) return 0;
    const before = this.seriesList.reduce((n, s) => n + s.instances.length, 0);
    this.seriesList = series;
    this.lastGrowth = Date.now();
    this.renderPanel();
    for (const slot of this.slots) {
      if (slot.seriesUid && changed.has(slot.seriesUid)) await this.extendStack(slot);
    }
    const empty = this.slots.filter((s) => !s.seriesUid);
    for (const slot of empty) {
      const next = this.seriesList.find((s) => !this.slots.some((o) => o.seriesUid === s.uid)) ?? this.seriesList[0];
      if (next) await this.showSeries(next.uid, slot.index);
    }
    this.setStatus("");
    return series.reduce((n, s) => n + s.instances.length, 0) - before;
  }

  /** Give a viewport the grown stack of its series, keeping the image, window, invert and camera. */
  private async extendStack(slot: Slot): Promise<void> {
    const series = this.seriesList.find((s) => s.uid === slot.seriesUid);
    if (!series) return;
    const vp = this.viewport(slot);
    const images = stackImages(this.client.base, series);
    this.register(images);
    const hadImages = slot.images.length > 0;
    const current = hadImages ? vp.getCurrentImageId() : undefined;
    const camera = hadImages ? vp.getCamera() : undefined;
    const props = hadImages ? vp.getProperties() : undefined;
    slot.images = images;
    const index = Math.max(0, images.findIndex((i) => i.imageId === current));
    tools.utilities.stackPrefetch.disable(slot.host);
    await vp.setStack(images.map((i) => i.imageId), index);
    if (camera) vp.setCamera(camera);
    vp.setProperties({ voiRange: props?.voiRange, invert: props?.invert, interpolationType: this.interpolation() });
    vp.render();
    tools.utilities.stackPrefetch.enable(slot.host);
  }

  // --- status and teardown ---------------------------------------------------------------------------------------

  private showProgress(): void {
    if (this.destroyed || this.status.classList.contains("pk-error") || !this.engine) return;
    let loaded = 0;
    let total = 0;
    for (const slot of this.slots) {
      const p = this.progress(slot.index);
      loaded += p.loaded;
      total += p.total;
    }
    if (total > 0 && this.root.dataset.ready === "1") this.setStatus(loaded < total ? `Loading ${loaded}/${total}` : "");
  }

  private setStatus(text: string, error = false): void {
    this.status.textContent = text;
    this.status.classList.toggle("pk-error", error);
  }

  private fail(err: unknown): void {
    const error = err instanceof Error ? err : new Error(String(err));
    this.setStatus(error.message, true);
    this.root.dataset.error = error.message;
    this.options.onError?.(error);
  }

  destroy(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    window.clearTimeout(this.pollTimer);
    for (const slot of this.slots) {
      this.stopCine(slot.index);
      tools.utilities.stackPrefetch.disable(slot.host);
    }
    this.resizeObserver.disconnect();
    for (const cleanup of this.cleanups) cleanup();
    if (this.toolGroup) tools.ToolGroupManager.destroyToolGroup(this.id);
    this.engine?.destroy();
    this.unsetHeaders();
    for (const url of this.thumbnails) URL.revokeObjectURL(url);
    this.element.replaceChildren();
  }
}

/**
 * Mount a viewer of one study into ``element`` (which it fills; give it a size). Fetches the study's
 * WADO-RS metadata, lists its series, shows the first (or ``options.seriesUid``) and keeps polling for
 * instances still arriving. Call ``destroy()`` on the handle before removing the element.
 */
export function mountViewer(element: HTMLElement, options: ViewerOptions): ViewerHandle {
  return new Viewer(element, options);
}

