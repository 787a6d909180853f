"""A sequential write into a mount over moto next to boto3's upload_file to the same moto.

    SIZE_MIB=256 ROUNDS=3 .venv/bin/python scripts/bench_stream_write.py
    WRITER="cp {src} {dst}" .venv/bin/python scripts/bench_stream_write.py   # another writer
    KEEP=1 ...   # keep the work directory (daemon.log, moto/moto.log with every request)

Starts its own moto on a free port, writes a source file of random bytes, then per round times
``upload_file`` (boto3's defaults) and the writer into the mount (write-through: the writer's
close() returns when the object is complete in the bucket), and checks the object's size.
Any STORAGEFS_* variable set in the environment reaches the mount. A benchmark, not a test:
it prints the best time of each and the speed ratio, and asserts nothing more.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3

from storagefs.devtools import emulators


def main() -> None:
    size = int(os.environ.get("SIZE_MIB", "256")) * 1024 * 1024
    rounds = int(os.environ.get("ROUNDS", "2"))
    writer = os.environ.get("WRITER", "dd if={src} of={dst} bs=1M status=none")
    work = Path(tempfile.mkdtemp(prefix="bench-stream-"))
    os.environ.update(emulators.FAKE_AWS_ENV)
    moto = emulators.start_moto(work / "moto", emulators.free_port(), buckets=("bench",))
    try:
        client = boto3.client("s3", endpoint_url=moto.url)
        src = work / "src.bin"
        with open(src, "wb") as f:
            for _ in range(size // (1 << 20)):
                f.write(os.urandom(1 << 20))
        times: dict[str, list[float]] = {"boto3": [], "mount": []}
        mountpoint = work / "mnt"
        mountpoint.mkdir()
        env = {
            **os.environ,
            "STORAGEFS_PRIMARY": "s3://bench/m",
            "STORAGEFS_S3_ENDPOINT_URL": moto.url,
            "STORAGEFS_CACHE_DIR": str(work / "cache"),
        }
        with open(work / "daemon.log", "wb") as log:
            daemon = subprocess.Popen(
                [sys.executable, "-m", "storagefs", "mount", str(mountpoint), "--foreground"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            while not os.path.ismount(mountpoint):
                if daemon.poll() is not None:
                    sys.exit(f"the daemon exited: see {work / 'daemon.log'}")
                time.sleep(0.1)
            for i in range(rounds):
                start = time.monotonic()
                client.upload_file(str(src), "bench", f"direct{i}")
                times["boto3"].append(time.monotonic() - start)
                argv = writer.format(src=src, dst=mountpoint / f"f{i}").split()
                start = time.monotonic()
                subprocess.run(argv, check=True)
                times["mount"].append(time.monotonic() - start)
                stored = client.head_object(Bucket="bench", Key=f"m/f{i}")["ContentLength"]
                if stored != size:
                    sys.exit(f"the object has {stored} bytes, not {size}")
        finally:
            subprocess.run(["fusermount3", "-u", str(mountpoint)], check=False)
            daemon.wait(60)
        mib = size / (1 << 20)
        for name, values in times.items():
            runs = ", ".join(f"{t:.2f}" for t in values)
            print(f"{name}: best {min(values):.2f} s = {mib / min(values):.0f} MiB/s ({runs})")
        ratio = min(times["boto3"]) / min(times["mount"])
        print(f"speed ratio mount/boto3 (best of each): {ratio:.2f}x; load {os.getloadavg()}")
    finally:
        moto.stop()
        if os.environ.get("KEEP"):
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
