"""What a benchmark figure was taken on: CPU, cores, load, versions, date (for its JSON file)."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform

# /proc/cpuinfo flags that decide which oneDNN kernels (and hence which speeds) a CPU gets.
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
PACKAGES = ("tensorflow", "tensorflow-cpu", "keras", "numpy")


def _cpuinfo() -> tuple[str, set[str]]:
    model, found = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    found = set(value.split())
                    break
    except OSError:  # not Linux
        pass
    return model, found


def describe() -> dict:
    model, found = _cpuinfo()
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "cpu": model, "cores": os.cpu_count(),
            "cpu_flags": [f for f in CPU_FLAGS if f in found],
            "load_average_1min": round(os.getloadavg()[0], 2),
            "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default"),
            "python": platform.python_version(), **versions}


def headline(info: dict) -> str:
    versions = ", ".join(f"{n} {info[n]}" for n in PACKAGES if n in info)
    return (f"{info['date']}  {info['cpu']}, {info['cores']} cores "
            f"[{' '.join(info['cpu_flags'])}], load {info['load_average_1min']}; "
            f"Python {info['python']}, {versions}")
