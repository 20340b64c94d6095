// Thumbnails loaded a few at a time, after the rows they belong to are on screen: a browser opens at most
// six HTTP/1.1 connections to a server, and a page of 50 thumbnail requests started at once would make
// the next search wait behind them.
export class ThumbnailQueue {
  private readonly waiting: HTMLImageElement[] = [];
  private readonly loading = new Set<HTMLImageElement>();
  private stopped = false;

  constructor(private readonly parallel = 2) {}

  /** Loads `url` into `img` when a slot is free; `onMissing` when the server has none (404...). */
  add(img: HTMLImageElement, url: string, onMissing: () => void): void {
    img.dataset.src = url;
    img.addEventListener("load", () => this.done(img));
    img.addEventListener("error", () => {
      this.done(img);
      if (!this.stopped) onMissing();
    });
    this.waiting.push(img);
  }

  /** Starts loading (call once the rows are in the document). */
  start(): void {
    requestAnimationFrame(() => this.pump());
  }

  /** Stops: nothing more is requested, requests under way are dropped. */
  stop(): void {
    this.stopped = true;
    this.waiting.length = 0;
    for (const img of this.loading) img.removeAttribute("src");
    this.loading.clear();
  }

  private done(img: HTMLImageElement): void {
    this.loading.delete(img);
    this.pump();
  }

  private pump(): void {
    while (!this.stopped && this.loading.size < this.parallel && this.waiting.length > 0) {
      const img = this.waiting.shift()!;
      this.loading.add(img);
      img.src = img.dataset.src ?? "";
    }
  }
}
