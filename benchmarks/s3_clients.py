"""Which S3 client for the S3 blob store: obstore, boto3 or aiobotocore? Measured on the operations of the
ingest and retrieve paths against a local SeaweedFS (started here), one process per client, CPU time of
that process (``time.process_time``: what the client costs the node, whatever the machine's load).

* **put**: ``--small`` conditional PUTs (``If-None-Match: *``) of a ``--size-kb`` instance from a file on
  disk, what :meth:`pacskit.store.s3.S3BlobStore.put_file` sends for every C-STORE;
* **get**: the same objects read as ``S3BlobStore.open`` does, one ranged GET of the first MiB;
* **large**: one ``--large-mb`` file uploaded in 8 MiB parts, 4 in flight: CPU and peak RSS (memory must
  stay flat whatever the size).

aiobotocore is asynchronous: its calls run one after another on one event loop (its best case; the
blob store is called from the server's handler threads, so it would also need a loop per call or a
loop thread). Each client runs twice, interleaved, so a warming SeaweedFS favours none.

    python benchmarks/s3_clients.py [--small 300] [--size-kb 100] [--large-mb 100] [--python PY]

``--python``: the interpreter the clients run under (one that has all three installed; by default
this one, and a client it lacks is skipped). The figures of this machine are in docs/deployment.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

CHILD = r'''
import json, os, resource, sys, time
client, endpoint, n, size_kb, large, folder = (sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]),
                                              sys.argv[5], sys.argv[6])
bucket, prefix = "bench", f"{client}-{os.getpid()}/"
small = os.path.join(folder, "small.dcm")
with open(small, "wb") as fh:
    fh.write(os.urandom(size_kb * 1024))
size = os.path.getsize(small)
MIB = 1 << 20
if client == "boto3":
    import boto3
    from boto3.s3.transfer import TransferConfig
    from botocore.config import Config
    c = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="k", aws_secret_access_key="s",
                     region_name="us-east-1", config=Config(s3={"addressing_style": "path"}))
    def put(k):
        with open(small, "rb") as body:
            c.put_object(Bucket=bucket, Key=k, Body=body, ContentType="application/dicom", IfNoneMatch="*")
    def get(k):
        r = c.get_object(Bucket=bucket, Key=k, Range=f"bytes=0-{MIB - 1}")
        return len(r["Body"].read())
    cfg = TransferConfig(multipart_threshold=8 * MIB, multipart_chunksize=8 * MIB, max_concurrency=4)
    upload = lambda k, path: c.upload_file(path, bucket, k, Config=cfg)
    run = lambda f: f()
elif client == "aiobotocore":
    import asyncio
    from aiobotocore.session import get_session
    from botocore.config import Config
    loop = asyncio.new_event_loop()
    ctx = get_session().create_client("s3", endpoint_url=endpoint, aws_access_key_id="k", aws_secret_access_key="s",
                                      region_name="us-east-1", config=Config(s3={"addressing_style": "path"}))
    c = loop.run_until_complete(ctx.__aenter__())
    async def aput(k):
        with open(small, "rb") as body:
            await c.put_object(Bucket=bucket, Key=k, Body=body.read(), ContentType="application/dicom",
                               IfNoneMatch="*")
    async def aget(k):
        r = await c.get_object(Bucket=bucket, Key=k, Range=f"bytes=0-{MIB - 1}")
        async with r["Body"] as body:
            return len(await body.read())
    async def aupload(k, path):  # parts of 8 MiB, 4 in flight, as s3transfer and obstore do
        up = await c.create_multipart_upload(Bucket=bucket, Key=k)
        sem, parts = asyncio.Semaphore(4), []
        async def part(i, data):
            async with sem:
                r = await c.upload_part(Bucket=bucket, Key=k, UploadId=up["UploadId"], PartNumber=i, Body=data)
                parts.append({"PartNumber": i, "ETag": r["ETag"]})
        tasks = []
        with open(path, "rb") as fh:
            i = 0
            while True:
                await sem.acquire(); sem.release()  # read a part only when one can go: memory flat
                data = fh.read(8 * MIB)
                if not data:
                    break
                i += 1
                tasks.append(asyncio.ensure_future(part(i, data)))
                await asyncio.sleep(0)
        await asyncio.gather(*tasks)
        parts.sort(key=lambda p: p["PartNumber"])
        await c.complete_multipart_upload(Bucket=bucket, Key=k, UploadId=up["UploadId"],
                                          MultipartUpload={"Parts": parts})
    put = lambda k: loop.run_until_complete(aput(k))
    get = lambda k: loop.run_until_complete(aget(k))
    upload = lambda k, path: loop.run_until_complete(aupload(k, path))
else:
    import obstore
    from obstore.store import S3Store
    s = S3Store(bucket, endpoint=endpoint, access_key_id="k", secret_access_key="s", region="us-east-1",
                virtual_hosted_style_request=False, client_options={"allow_http": True})
    def put(k):
        with open(small, "rb") as body:
            obstore.put(s, k, body, mode="create", attributes={"Content-Type": "application/dicom"})
    def get(k):
        return len(obstore.get(s, k, options={"range": (0, MIB)}).bytes())
    def upload(k, path):
        with open(path, "rb") as fh:
            obstore.put(s, k, fh, chunk_size=8 * MIB, max_concurrency=4)
put(prefix + "warm"); get(prefix + "warm")
t0, c0 = time.perf_counter(), time.process_time()
for i in range(n):
    put(f"{prefix}{i}")
puts = (time.perf_counter() - t0, time.process_time() - c0)
t0, c0 = time.perf_counter(), time.process_time()
for i in range(n):
    assert get(f"{prefix}{i}") == size
gets = (time.perf_counter() - t0, time.process_time() - c0)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0, c0 = time.perf_counter(), time.process_time()
upload(prefix + "large", large)
big = (time.perf_counter() - t0, time.process_time() - c0)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"put_wall": puts[0], "put_cpu": puts[1], "get_wall": gets[0], "get_cpu": gets[1],
                  "large_wall": big[0], "large_cpu": big[1], "rss_before_large_mb": base / 1024,
                  "rss_peak_mb": peak / 1024}))
'''

CLIENTS = {"obstore": "obstore", "boto3": "boto3", "aiobotocore": "aiobotocore"}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--small", type=int, default=300)
    parser.add_argument("--size-kb", type=int, default=100)
    parser.add_argument("--large-mb", type=int, default=100)
    parser.add_argument("--python", default=sys.executable, help="the interpreter the clients run under")
    args = parser.parse_args()
    from pacskit.testing.seaweedfs import seaweedfs

    present = [name for name, module in CLIENTS.items()
               if subprocess.run([args.python, "-c", f"import {module}"], capture_output=True).returncode == 0]
    print(f"clients: {', '.join(present)} (load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs)")
    with seaweedfs() as server, tempfile.TemporaryDirectory() as tmp:
        server.create_bucket("bench")
        large = os.path.join(tmp, "large.bin")
        with open(large, "wb") as fh:
            for _ in range(args.large_mb):
                fh.write(os.urandom(1 << 20))
        for client in present * 2:  # twice, interleaved: the store warms up
            out = subprocess.run([args.python, "-c", CHILD, client, server.endpoint_url, str(args.small),
                                  str(args.size_kb), large, tmp], capture_output=True, text=True)
            if out.returncode:
                print(f"{client}: failed\n{out.stderr[-2000:]}")
                continue
            r = json.loads(out.stdout)
            n = args.small
            print(f"{client:11} {args.size_kb} KB: PUT {1000 * r['put_cpu'] / n:5.2f} ms CPU "
                  f"({n / r['put_wall']:5.0f}/s), GET {1000 * r['get_cpu'] / n:5.2f} ms CPU ({n / r['get_wall']:5.0f}/s)"
                  f" | {args.large_mb} MB upload: {r['large_cpu']:5.2f} s CPU, {r['large_wall']:5.2f} s, "
                  f"peak RSS {r['rss_peak_mb']:.0f} MB (before {r['rss_before_large_mb']:.0f} MB)", flush=True)


if __name__ == "__main__":
    main()
