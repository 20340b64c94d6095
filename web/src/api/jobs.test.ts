import { describe, expect, it } from "vitest";
import { type Job, canCancel, canRetry, jobPercent, jobProgressText, jobsReducer } from "./jobs";

function job(over: Partial<Job>): Job {
  return {
    id: "1", kind: "retrieve", state: "queued", source: "ORTHANC", destination: null, study_uid: "1.2.3",
    patient_name: "DOE^J", description: "CT", total: null, completed: 0, failed: 0, warning: 0, rate: null,
    error: null, created_at: "2026-01-01T10:00:00Z", updated_at: "2026-01-01T10:00:00Z", ...over,
  };
}

describe("job progress", () => {
  it("is unknown until the total is", () => {
    expect(jobPercent(job({ state: "running" }))).toBeNull();
    expect(jobProgressText(job({ completed: 3 }))).toBe("3 / ?");
  });

  it("counts failed and warned instances as processed", () => {
    const j = job({ state: "running", total: 10, completed: 4, failed: 1, warning: 1 });
    expect(jobPercent(j)).toBe(60);
    expect(jobProgressText(j)).toBe("5 / 10 (1 failed, 1 warnings)");
  });

  it("is 100 when done", () => {
    expect(jobPercent(job({ state: "done", total: null }))).toBe(100);
  });

  it("allows cancel and retry by state", () => {
    expect(canCancel(job({ state: "running" }))).toBe(true);
    expect(canCancel(job({ state: "done" }))).toBe(false);
    expect(canRetry(job({ state: "failed" }))).toBe(true);
    expect(canRetry(job({ state: "cancelled" }))).toBe(true);
    expect(canRetry(job({ state: "queued" }))).toBe(false);
  });
});

describe("jobsReducer", () => {
  it("keeps the newest first", () => {
    let jobs = jobsReducer([], { type: "upsert", job: job({ id: "a", created_at: "2026-01-01T10:00:00Z" }) });
    jobs = jobsReducer(jobs, { type: "upsert", job: job({ id: "b", created_at: "2026-01-01T11:00:00Z" }) });
    expect(jobs.map((j) => j.id)).toEqual(["b", "a"]);
  });

  it("replaces a job by a newer update and ignores an older one", () => {
    let jobs = jobsReducer([], { type: "upsert", job: job({ id: "a", completed: 5, updated_at: "2026-01-01T10:00:05Z" }) });
    jobs = jobsReducer(jobs, { type: "upsert", job: job({ id: "a", completed: 2, updated_at: "2026-01-01T10:00:02Z" }) });
    expect(jobs[0]!.completed).toBe(5);
    jobs = jobsReducer(jobs, { type: "upsert", job: job({ id: "a", completed: 9, state: "done", updated_at: "2026-01-01T10:00:09Z" }) });
    expect(jobs).toHaveLength(1);
    expect(jobs[0]).toMatchObject({ completed: 9, state: "done" });
  });

  it("resets and removes", () => {
    const jobs = jobsReducer([], { type: "reset", jobs: [job({ id: "a" }), job({ id: "b" })] });
    expect(jobsReducer(jobs, { type: "remove", id: "a" }).map((j) => j.id)).toEqual(["b"]);
  });

  it("does not change the list it is given", () => {
    const start = [job({ id: "a" })];
    jobsReducer(start, { type: "upsert", job: job({ id: "b" }) });
    expect(start).toHaveLength(1);
  });
});
