import { describe, expect, it } from "vitest";
import { DicomWebClient, DicomWebError } from "./dicomweb";

interface Call { url: string; headers: Record<string, string> }

function fakeFetch(routes: Record<string, () => Response>, calls: Call[]): typeof fetch {
  return (async (input: RequestInfo | URL, init?: RequestInit) => {
    const url = String(input);
    calls.push({ url, headers: init?.headers as Record<string, string> });
    const route = routes[url];
    return route ? route() : new Response(JSON.stringify({ detail: "no such study" }), { status: 404,
      headers: { "Content-Type": "application/problem+json" } });
  }) as typeof fetch;
}

describe("DicomWebClient", () => {
  it("asks for DICOM JSON with the caller's headers", async () => {
    const calls: Call[] = [];
    const client = new DicomWebClient({ url: "http://pacs/dicom-web/", headers: () => ({ Authorization: "Bearer t" }),
      fetch: fakeFetch({ "http://pacs/dicom-web/studies/1.2/metadata": () => Response.json([{ "00080018": { vr: "UI", Value: ["9"] } }]) }, calls) });
    const metadata = await client.studyMetadata("1.2");
    expect(metadata).toHaveLength(1);
    expect(calls[0].headers).toEqual({ Accept: "application/dicom+json", Authorization: "Bearer t" });
  });

  it("reads the study's counts from QIDO-RS", async () => {
    const calls: Call[] = [];
    const url = "/dw/studies?StudyInstanceUID=1.2&includefield=00201206&includefield=00201208";
    const client = new DicomWebClient({ url: "/dw", fetch: fakeFetch({ [url]: () => Response.json([
      { "00201206": { vr: "IS", Value: [2] }, "00201208": { vr: "IS", Value: [31] } }]) }, calls) });
    expect(await client.studyCounts("1.2")).toEqual({ series: 2, instances: 31 });
    const none = new DicomWebClient({ url: "/dw", fetch: fakeFetch({ [url]: () => new Response(null, { status: 204 }) }, calls) });
    expect(await none.studyCounts("1.2")).toBeUndefined();
  });

  it("turns an error answer into a DicomWebError with the problem detail", async () => {
    const client = new DicomWebClient({ url: "/dw", fetch: fakeFetch({}, []) });
    const err = await client.studyMetadata("9.9").catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DicomWebError);
    expect(err).toMatchObject({ status: 404, detail: "no such study" });
  });

  it("has no thumbnail (not an error) when the server has none", async () => {
    const client = new DicomWebClient({ url: "/dw", fetch: fakeFetch({}, []) });
    expect(await client.seriesThumbnail("1", "2")).toBeUndefined();
  });
});
