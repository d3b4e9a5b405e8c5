"""Helpers shared by the ``benchmark_*.py`` scripts next to this file (not a tool itself).

The scripts measure each implementation in its own subprocess (the script calls itself
with ``--impl NAME``; the child prints one JSON line last), alternate the implementations
over the rounds so that drifts of the machine hit both alike, and report medians.

Memory: on CUDA ``torch.cuda.max_memory_allocated`` (weights included); on CPU the peak
resident set of the process minus its resident set before the first step.
"""
import json
import resource
import statistics
import subprocess
import sys
from typing import Dict, List, Sequence

# The benchmarks build mmpretrain's models next to ours: mmbeit.registry first (it switches
# off mmpretrain's multimodal models, which do not import under transformers 5).
import mmbeit.registry  # noqa: F401


def current_rss_kb() -> int:
    """The process's resident set now, in KiB (Linux)."""
    with open('/proc/self/status') as f:
        return next(int(line.split()[1]) for line in f if line.startswith('VmRSS:'))


def peak_memory_mb(device_type: str, rss_before_kb: int) -> float:
    """See the module docstring; call it after the last step."""
    if device_type == 'cuda':
        import torch
        return torch.cuda.max_memory_allocated() / 2**20
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before_kb) / 1024


def run_rounds(script: str, argv: Sequence[str], impls: Sequence[str],
               repeats: int) -> Dict[str, List[dict]]:
    """Run ``script --impl IMPL ARGV`` for every impl, ``repeats`` rounds in alternation;
    the JSON dict each child prints on its last line, per impl. Exits on a failed child."""
    results = {impl: [] for impl in impls}
    for _ in range(repeats):
        for impl in impls:
            cmd = [sys.executable, script, '--impl', impl] + list(argv)
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                sys.exit(f'{impl} run failed:\n{out.stderr[-3000:]}')
            results[impl].append(json.loads(out.stdout.strip().splitlines()[-1]))
    return results


def medians(results: Dict[str, List[dict]], keys: Sequence[str]) -> Dict[str, dict]:
    """Per impl, the median over its runs of each of ``keys``."""
    return {impl: {k: statistics.median(r[k] for r in runs) for k in keys}
            for impl, runs in results.items()}
