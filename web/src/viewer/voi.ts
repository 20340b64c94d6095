// Window/level: the linear VOI LUT of PS3.3 C.11.2.1.2.1, presets, and the mouse-drag arithmetic.
import { type DicomJson, Tag, num, nums, str } from "./dicomJson";

/** A window: centre and width in modality units (Hounsfield units for CT). */
export interface Window {
  center: number;
  width: number;
}

/** A named window preset; ``key`` is the keyboard shortcut (1-9) in the viewer. */
export interface WindowPreset extends Window {
  name: string;
  key?: string;
}

/**
 * Window presets by modality (the usual radiology values, in HU for CT). The viewer offers the presets
 * of the displayed modality; keys 1..9 select them in order.
 */
export const PRESETS: Readonly<Record<string, readonly WindowPreset[]>> = {
  CT: [
    { name: "Soft tissue / abdomen", center: 40, width: 400, key: "1" },
    { name: "Lung", center: -600, width: 1500, key: "2" },
    { name: "Bone", center: 400, width: 1800, key: "3" },
    { name: "Brain", center: 40, width: 80, key: "4" },
    { name: "Subdural", center: 75, width: 215, key: "5" },
    { name: "Stroke", center: 40, width: 40, key: "6" },
    { name: "Mediastinum", center: 50, width: 350, key: "7" },
    { name: "Liver", center: 30, width: 150, key: "8" },
    { name: "Temporal bone", center: 600, width: 2800, key: "9" },
  ],
};

/** The presets offered for a modality (none for modalities without calibrated units). */
export function presetsFor(modality: string): readonly WindowPreset[] {
  return PRESETS[modality.toUpperCase()] ?? [];
}

/** The preset named ``name`` (case-insensitive) of a modality, or undefined. */
export function findPreset(modality: string, name: string): WindowPreset | undefined {
  const wanted = name.trim().toLowerCase();
  return presetsFor(modality).find((p) => p.name.toLowerCase() === wanted || p.key === wanted);
}

/**
 * The linear VOI LUT function (PS3.3 C.11.2.1.2.1) mapping a modality value ``x`` to the output range
 * [yMin, yMax] (default 0..255, a grey level before rounding). Width must be >= 1.
 */
export function applyWindow(x: number, window: Window, yMin = 0, yMax = 255): number {
  const { center: c, width: w } = window;
  if (w < 1) throw new RangeError(`window width must be >= 1 (got ${w})`);
  if (x <= c - 0.5 - (w - 1) / 2) return yMin;
  if (x > c - 0.5 + (w - 1) / 2) return yMax;
  return ((x - (c - 0.5)) / (w - 1) + 0.5) * (yMax - yMin) + yMin;
}

/** The modality values mapped to the ends of the output range (what Cornerstone calls the VOI range). */
export function toRange(window: Window): { lower: number; upper: number } {
  return {
    lower: window.center - 0.5 - (window.width - 1) / 2,
    upper: window.center - 0.5 + (window.width - 1) / 2,
  };
}

/** The window whose VOI range is [lower, upper] (inverse of {@link toRange}). */
export function fromRange(lower: number, upper: number): Window {
  return { width: upper - lower + 1, center: (lower + upper) / 2 + 0.5 };
}

/**
 * The window after dragging the mouse by (dx, dy) screen pixels from ``start``: right widens, down raises
 * the centre (the usual workstation convention). ``unitsPerPixel`` scales the motion (a good value is the
 * displayed value range / 1000, at least 1 for CT). The width never drops below 1.
 */
export function dragWindow(start: Window, dx: number, dy: number, unitsPerPixel = 1): Window {
  return {
    width: Math.max(1, start.width + dx * unitsPerPixel),
    center: start.center + dy * unitsPerPixel,
  };
}

/** The modality value of a stored value (Rescale Slope/Intercept; identity when absent). */
export function modalityValue(stored: number, metadata: DicomJson): number {
  const slope = num(metadata, Tag.RescaleSlope) ?? 1;
  const intercept = num(metadata, Tag.RescaleIntercept) ?? 0;
  return stored * slope + intercept;
}

/**
 * The window an image asks for: its first Window Center / Window Width values (PS3.3 C.11.2.1.2), else
 * the full range its Bits Stored can hold after the modality LUT. Undefined only for colour images.
 */
export function defaultWindow(metadata: DicomJson): Window | undefined {
  const centers = nums(metadata, Tag.WindowCenter);
  const widths = nums(metadata, Tag.WindowWidth);
  if (centers && widths && widths[0] >= 1) return { center: centers[0], width: widths[0] };
  const photometric = str(metadata, Tag.PhotometricInterpretation);
  if (photometric && !photometric.startsWith("MONOCHROME")) return undefined;
  const bits = num(metadata, Tag.BitsStored) ?? 16;
  const signed = num(metadata, Tag.PixelRepresentation) === 1;
  const lo = signed ? -(2 ** (bits - 1)) : 0;
  const hi = signed ? 2 ** (bits - 1) - 1 : 2 ** bits - 1;
  const a = modalityValue(lo, metadata);
  const b = modalityValue(hi, metadata);
  return fromRange(Math.min(a, b), Math.max(a, b));
}

/** "W 400 L 40" style text (rounded to integers unless the window is narrower than 10 units). */
export function formatWindow(window: Window): string {
  const digits = window.width < 10 ? 2 : 0;
  return `W ${window.width.toFixed(digits)} L ${window.center.toFixed(digits)}`;
}
