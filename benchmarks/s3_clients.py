"""boto3 or obstore for the S3 blob store? Small PUT+HEAD+GET round trips and one large streamed upload
against a local SeaweedFS (started here), in one process each, with CPU time and peak RSS.

    python benchmarks/s3_clients.py [--small 300] [--size-kb 100] [--large-mb 100]

The numbers of this machine are in docs/store.md (the S3 blob store).
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
client, endpoint, n, size_kb, large = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
bucket, prefix = "bench", f"{client}-{os.getpid()}/"
payload = os.urandom(size_kb * 1024)
if client.startswith("boto3"):
    import boto3
    from boto3.s3.transfer import TransferConfig
    from botocore.config import Config
    checks = "when_required" if client == "boto3-nocrc" else "when_supported"  # CRC32 of every upload or not
    c = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="k", aws_secret_access_key="s",
                     region_name="us-east-1", config=Config(s3={"addressing_style": "path"},
                                                            request_checksum_calculation=checks))
    put = lambda k, d: c.put_object(Bucket=bucket, Key=k, Body=d)
    head = lambda k: c.head_object(Bucket=bucket, Key=k)["ContentLength"]
    get = lambda k: c.get_object(Bucket=bucket, Key=k)["Body"].read()
    cfg = TransferConfig(multipart_threshold=8 << 20, multipart_chunksize=8 << 20, max_concurrency=4)
    upload = lambda k, path: c.upload_file(path, bucket, k, Config=cfg)
else:
    import obstore
    from obstore.store import S3Store
    s = S3Store(bucket, endpoint=endpoint, access_key_id="k", secret_access_key="s", region="us-east-1",
                virtual_hosted_style_request=False, client_options={"allow_http": True})
    put = lambda k, d: obstore.put(s, k, d)
    head = lambda k: obstore.head(s, k)["size"]
    get = lambda k: bytes(obstore.get(s, k).bytes())
    def upload(k, path):
        with open(path, "rb") as fh:
            obstore.put(s, k, fh, chunk_size=8 << 20, max_concurrency=4)
t0, c0 = time.perf_counter(), time.process_time()
for i in range(n):
    k = f"{prefix}{i}"
    put(k, payload); assert head(k) == len(payload); assert get(k) == payload
small = (time.perf_counter() - t0, time.process_time() - c0)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0, c0 = time.perf_counter(), time.process_time()
upload(prefix + "large", large)
big = (time.perf_counter() - t0, time.process_time() - c0)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"small_wall": small[0], "small_cpu": small[1], "large_wall": big[0], "large_cpu": big[1],
                  "rss_before_large_mb": base / 1024, "rss_peak_mb": peak / 1024}))
'''


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--small", type=int, default=300)
    parser.add_argument("--size-kb", type=int, default=100)
    parser.add_argument("--large-mb", type=int, default=100)
    args = parser.parse_args()
    from pacskit.testing.seaweedfs import seaweedfs

    with seaweedfs() as server, tempfile.TemporaryDirectory() as tmp:
        server.create_bucket("bench")
        large = os.path.join(tmp, "large.bin")
        with open(large, "wb") as fh:
            for _ in range(args.large_mb):
                fh.write(os.urandom(1 << 20))
        for client in ("obstore", "boto3", "boto3-nocrc", "obstore", "boto3"):  # twice: the store warms up
            out = subprocess.run([sys.executable, "-c", CHILD, client, server.endpoint_url, str(args.small),
                                  str(args.size_kb), large], capture_output=True, text=True, check=True)
            r = json.loads(out.stdout)
            n = args.small
            print(f"{client:11} {n} x {args.size_kb} KB PUT+HEAD+GET: {n / r['small_wall']:6.0f}/s, "
                  f"{1000 * r['small_cpu'] / n:5.2f} ms CPU each | {args.large_mb} MB upload: "
                  f"{r['large_wall']:5.2f} s, {r['large_cpu']:5.2f} s CPU, peak RSS {r['rss_peak_mb']:.0f} MB "
                  f"(before {r['rss_before_large_mb']:.0f} MB)")


if __name__ == "__main__":
    main()
