// Viewport layouts: rows x columns of viewports.

/** The layouts the toolbar offers. */
export const LAYOUTS = ["1x1", "1x2", "2x2"] as const;
export type LayoutName = (typeof LAYOUTS)[number];

/** A grid of viewports. */
export interface Layout {
  rows: number;
  cols: number;
}

/** The grid of a layout name ("RxC": rows x columns, 1..4 each); throws on anything else. */
export function parseLayout(name: string): Layout {
  const m = /^([1-4])x([1-4])$/.exec(name.trim());
  if (!m) throw new RangeError(`layout must look like 1x1, 1x2 or 2x2 (got "${name}")`);
  return { rows: Number(m[1]), cols: Number(m[2]) };
}

/** How many viewports a layout has. */
export function viewportCount(layout: Layout): number {
  return layout.rows * layout.cols;
}

/**
 * Which series each viewport of a new layout shows: the viewports keep what they showed, new viewports
 * take the next series not already shown (in series panel order), then repeat the last one.
 */
export function assignSeries(current: readonly (string | undefined)[], seriesUids: readonly string[],
  count: number): (string | undefined)[] {
  const out = current.slice(0, count);
  const shown = new Set(out.filter((s): s is string => s !== undefined));
  const unused = seriesUids.filter((s) => !shown.has(s));
  while (out.length < count) {
    out.push(unused.shift() ?? out[out.length - 1] ?? seriesUids[0]);
  }
  return out;
}
