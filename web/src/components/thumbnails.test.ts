// @vitest-environment jsdom
import { describe, expect, it } from "vitest";
import { ThumbnailQueue } from "./thumbnails";

const frame = () => new Promise((done) => requestAnimationFrame(() => done(undefined)));

describe("ThumbnailQueue", () => {
  it("loads two at a time, the next when one finishes, and stops", async () => {
    const queue = new ThumbnailQueue(2);
    const imgs = [0, 1, 2, 3].map(() => document.createElement("img"));
    const missing: number[] = [];
    imgs.forEach((img, i) => queue.add(img, `http://x/${i}`, () => missing.push(i)));
    expect(imgs.map((i) => i.getAttribute("src"))).toEqual([null, null, null, null]);
    queue.start();
    await frame();
    expect(imgs.map((i) => i.getAttribute("src"))).toEqual(["http://x/0", "http://x/1", null, null]);
    imgs[0]!.dispatchEvent(new Event("error"));
    expect(missing).toEqual([0]);
    expect(imgs[2]!.getAttribute("src")).toBe("http://x/2");
    queue.stop();
    expect(imgs[1]!.getAttribute("src")).toBeNull();
    imgs[2]!.dispatchEvent(new Event("load"));
    expect(imgs[3]!.getAttribute("src")).toBeNull();
  });
});
