import { describe, expect, it } from "vitest";
import { LAYOUTS, assignSeries, parseLayout, viewportCount } from "./layout";

describe("layouts", () => {
  it("parses rows x columns", () => {
    expect(LAYOUTS.map(parseLayout)).toEqual([{ rows: 1, cols: 1 }, { rows: 1, cols: 2 }, { rows: 2, cols: 2 }]);
    expect(viewportCount(parseLayout("2x2"))).toBe(4);
    expect(() => parseLayout("0x1")).toThrow(RangeError);
    expect(() => parseLayout("2by2")).toThrow(RangeError);
  });

  it("keeps what viewports show and gives new ones the next unshown series", () => {
    expect(assignSeries(["b"], ["a", "b", "c"], 4)).toEqual(["b", "a", "c", "c"]);
    expect(assignSeries(["a", "c", "b", "a"], ["a", "b", "c"], 1)).toEqual(["a"]);
    expect(assignSeries([], ["a"], 2)).toEqual(["a", "a"]);
    expect(assignSeries([], [], 2)).toEqual([undefined, undefined]);
  });
});
