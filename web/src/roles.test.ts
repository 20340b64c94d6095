import { describe, expect, it } from "vitest";
import { can } from "./roles";

describe("roles", () => {
  it("viewer searches and views only", () => {
    expect(can("viewer", "search")).toBe(true);
    expect(can("viewer", "view")).toBe(true);
    expect(can("viewer", "retrieve")).toBe(false);
    expect(can("viewer", "logs")).toBe(false);
    expect(can("viewer", "manager-read")).toBe(false);
  });

  it("operator retrieves, sends, reads logs and the manager, but changes nothing there", () => {
    for (const a of ["retrieve", "send", "manage-jobs", "logs", "manager-read"] as const) expect(can("operator", a)).toBe(true);
    expect(can("operator", "manager-write")).toBe(false);
    expect(can("operator", "users")).toBe(false);
  });

  it("admin may do everything; nobody is nothing", () => {
    expect(can("admin", "users")).toBe(true);
    expect(can("admin", "manager-write")).toBe(true);
    expect(can(null, "search")).toBe(false);
  });
});
