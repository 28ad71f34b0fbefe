"""Which S3 library: obstore or aiobotocore, measured on one 100 MB streamed put.

    python -m tests.bench_objectstore [--mib 100] [--runs 2]

Starts the moto S3 server in this process and runs each put in a fresh child process, so the
child's peak RSS is the client's alone. Prints import time, seconds and MiB/s of the put, peak RSS
growth during the put, and the child's exit status (obstore 0.12 on CPython 3.11 sometimes
aborts the interpreter at exit, -6, after a streamed put or get). Both libraries must be
installed (`pip install obstore`: only aiobotocore is a runtime dependency); the figures and
the decision are in README.md, Media, Object store.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

from tests.fakes.s3 import running_s3_server

CHUNK = 64 * 1024  # what an HTTP download typically hands over at a time
PART = int(os.environ.get("BENCH_PART_MIB", "5")) * 1024 * 1024


def rss_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field)


def reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM := VmRSS


async def source(total: int) -> AsyncIterator[bytes]:
    # A new bytes object per chunk, as a download produces: a library that keeps references
    # instead of copies must not look cheaper than it is.
    piece = os.urandom(CHUNK)
    for _ in range(total // CHUNK):
        yield bytes(bytearray(piece))


async def put_obstore(bucket: str, total: int) -> None:
    from obstore import put_async
    from obstore.store import S3Store

    store = S3Store(bucket, client_options={"allow_http": True})
    await put_async(store, "bench/obj", source(total), chunk_size=PART, max_concurrency=2)


async def put_aiobotocore(bucket: str, total: int) -> None:
    from aiobotocore.session import get_session

    async with get_session().create_client("s3") as s3:
        upload = await s3.create_multipart_upload(Bucket=bucket, Key="bench/obj")
        parts: list[dict[str, object]] = []
        buffer = bytearray()

        async def send() -> None:
            number = len(parts) + 1
            answer = await s3.upload_part(
                Bucket=bucket,
                Key="bench/obj",
                UploadId=upload["UploadId"],
                PartNumber=number,
                Body=bytes(buffer),
            )
            parts.append({"PartNumber": number, "ETag": answer["ETag"]})
            buffer.clear()

        async for chunk in source(total):
            buffer += chunk
            if len(buffer) >= PART:
                await send()
        if buffer:
            await send()
        await s3.complete_multipart_upload(
            Bucket=bucket,
            Key="bench/obj",
            UploadId=upload["UploadId"],
            MultipartUpload={"Parts": parts},
        )


def child(library: str, bucket: str, total: int) -> None:
    started = time.perf_counter()
    if library == "obstore":
        import obstore.store  # noqa: F401
    else:
        import aiobotocore.session  # noqa: F401
    imported = time.perf_counter() - started
    put = put_obstore if library == "obstore" else put_aiobotocore
    before = rss_kib("VmRSS")
    reset_peak_rss()
    started = time.perf_counter()
    asyncio.run(put(bucket, total))
    seconds = time.perf_counter() - started
    growth = rss_kib("VmHWM") - before
    print(json.dumps({"import_s": imported, "put_s": seconds, "rss_growth_kib": growth}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=100)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    total = args.mib * 1024 * 1024
    if args.child:
        child(args.child[0], args.child[1], total)
        return
    with running_s3_server() as server:
        for library in ("obstore", "aiobotocore"):
            for run in range(args.runs):
                bucket = server.create_bucket("bench")
                done = subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "tests.bench_objectstore",
                        "--mib",
                        str(args.mib),
                        "--child",
                        library,
                        bucket,
                    ],
                    env={**os.environ, **server.env},
                    check=False,
                    capture_output=True,
                    text=True,
                )
                r = json.loads(done.stdout.splitlines()[-1])  # printed before any exit trouble
                assert server.keys(bucket) == ["bench/obj"]
                size = server.client().head_object(Bucket=bucket, Key="bench/obj")
                assert size["ContentLength"] == total
                print(
                    f"[objectstore-bench] {library:<11} run {run + 1}: import"
                    f" {r['import_s'] * 1000:.0f} ms, put {args.mib} MiB {r['put_s']:.2f} s"
                    f" = {args.mib / r['put_s']:.0f} MiB/s, peak RSS +"
                    f"{r['rss_growth_kib'] / 1024:.1f} MiB, exit {done.returncode}"
                )


if __name__ == "__main__":
    main()
