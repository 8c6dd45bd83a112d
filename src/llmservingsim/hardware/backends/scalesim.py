"""SCALE-Sim backend: GEMM-shaped ops timed by the SCALE-Sim v3 cycle-level simulator, in process.

SCALE-Sim (PyPI ``scalesim``, the optional extra ``llmservingsim[scalesim]``) simulates one
systolic array cycle by cycle: the operand matrices of a GEMM folded onto the array for its
dataflow (ws / os / is), the double-buffered SRAMs, and DRAM reads and writes at a bandwidth
in words per cycle. The device YAML's ``systolic:`` section is its configuration:

* array: ``rows`` × ``cols``, ``dataflow``;
* SRAM: ``sram_mib`` shared by the chip's ``arrays``; each array's share is split 2:2:1 into
  the ifmap / filter / ofmap buffers (SCALE-Sim's own default ratio), in words of the compute
  dtype (SCALE-Sim counts one byte per word, so sizes are given to it in words);
* DRAM: the device's ``memory_bandwidth_gbps`` × ``efficiency.memory``, shared by the arrays,
  in words per cycle at ``clock_ghz``.

SCALE-Sim runs its memory model one Python iteration per simulated cycle (about 1 ms per cycle
on this project's machines), so a whole 4096 × 4096 decode GEMM (~400,000 cycles on one array)
would take minutes. Every GEMM is therefore simulated as **tiles** (docs/accelerators.md,
"SCALE-Sim in the loop"):

1. The GEMM is mapped to SCALE-Sim's spatial rows Sr, spatial columns Sc and streamed length T
   (ws: Sr = K, Sc = N, T = M; os: Sr = M, Sc = N, T = K; is: Sr = K, Sc = M, T = N); it runs
   F = ⌈Sr/R⌉·⌈Sc/C⌉·batch folds, spread over the chip's arrays (when there are fewer folds
   than arrays, T is split over the idle arrays).
2. For the streamed length t, SCALE-Sim runs two probes: one full R × C fold and two (one
   more column fold). Their difference Δ(t) is what one more fold costs in steady state
   (weights double-buffered behind the previous fold, when the dataflow overlaps them), and
   c₁ − Δ the one-off pipeline fill and first prefetch. A ragged fold (K or N not a multiple
   of the array edge) counts as a full one: SCALE-Sim's array pipeline takes the same cycles
   for it (its fill and drain span the whole array), only its operand traffic is smaller,
   which matters only while DRAM stalls the array (then the estimate is an upper bound).
3. One array's cycles = (c₁ − Δ) + (its folds) · Δ(t).
4. A stream longer than ``stream_tile`` rows (``perf.options.scalesim_stream_tile``, default
   128) is not simulated whole: a fold's cycles grow linearly with the rows it streams, so
   Δ(t) = Δ(tile) + (t − tile) · slope, the slope measured between the probes at tile and
   tile / 2 rows.

The probes depend on the streamed length only, not on K or N, so all GEMMs of a model share
them: a run simulates two probes per distinct streamed length up to ``stream_tile``. Each
probe's cycles are cached in memory and on disk, keyed by SCALE-Sim's version, the array
configuration and the probe's (M, N, K). The op's time is

    max(cycles / clock, DRAM bytes / (bandwidth · η_mem)) + launch

(the probes see their own operands only, so the whole op's DRAM traffic is a separate bound).
Ops without a GEMM shape (norms, rotary, activations, sampling) are timed by the device's
vector unit: the roofline's memory path with the YAML's per-kernel ``memory_ops`` efficiencies.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import io
import json
import math
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

from llmservingsim.errors import BackendError, ConfigError
from llmservingsim.hardware.backends.base import PERF_BACKENDS, PerfSetup
from llmservingsim.hardware.backends.external import ResultCache, default_cache_dir
from llmservingsim.hardware.backends.roofline import RooflineBackend
from llmservingsim.hardware.backends.systolic import gemm_shapes
from llmservingsim.hardware.device import DeviceSpec
from llmservingsim.model.ops import Op
from llmservingsim.model.spec import activation_bytes

EXTRA_HINT = "pip install 'llmservingsim[scalesim]'"
DEFAULT_STREAM_TILE = 128

SRAM_SPLIT = (0.4, 0.4, 0.2)  # ifmap, filter, ofmap: SCALE-Sim's default 256/256/128 kB


def scalesim_version() -> str:
    """The installed SCALE-Sim's version; a one-line error naming the extra when it is absent."""
    try:
        return metadata.version("scalesim")
    except metadata.PackageNotFoundError:
        raise ConfigError(
            f"perf.backend 'scalesim' needs the optional package scalesim: {EXTRA_HINT}"
        ) from None


def _scalar_max(*args: Any) -> Any:
    """``max`` that returns a 1-element numpy result as a Python number. SCALE-Sim 3.0.0 calls
    ``int(max(array))`` on (n, 1) arrays, which NumPy >= 2.4 refuses; shadowing ``max`` in its
    two memory modules keeps its arithmetic unchanged."""
    result = builtins.max(*args)
    item = getattr(result, "item", None)
    if item is not None and getattr(result, "size", 0) == 1:
        return item()
    return result


def _load_scalesim() -> dict[str, ModuleType]:
    scalesim_version()
    try:
        from scalesim import layout_utils, scale_config, single_layer_sim, topology_utils
        from scalesim.memory import double_buffered_scratchpad_mem, read_buffer
    except ImportError as exc:
        raise ConfigError(
            f"perf.backend 'scalesim': cannot import scalesim ({exc}); {EXTRA_HINT}"
        ) from None
    read_buffer.max = _scalar_max
    double_buffered_scratchpad_mem.max = _scalar_max
    return {
        "config": scale_config,
        "topology": topology_utils,
        "layout": layout_utils,
        "layer": single_layer_sim,
    }


@dataclass(frozen=True)
class ArrayConfig:
    """One systolic array as SCALE-Sim sees it (sizes in words, bandwidth in words/cycle)."""

    rows: int
    cols: int
    dataflow: str
    ifmap_kwords: int
    filter_kwords: int
    ofmap_kwords: int
    bandwidth_words: int

    @classmethod
    def of(cls, device: DeviceSpec, dtype: str, where: str = "") -> ArrayConfig:
        array = device.systolic
        if array is None:
            raise ConfigError(
                f"perf backend 'scalesim' needs the device's array geometry: {device.name!r} has "
                "no 'systolic:' section (rows, cols, arrays, clock_ghz, sram_mib, dataflow)"
            )
        prefix = f"{where}: " if where else f"device {device.name!r}: "
        word = word_bytes(dtype)
        per_array_words = array.sram_mib * 2**20 / array.arrays / word
        sizes = [math.floor(per_array_words * share / 1024) for share in SRAM_SPLIT]
        if min(sizes) < 1:
            raise ConfigError(
                f"{prefix}systolic.sram_mib = {array.sram_mib:g}: SCALE-Sim needs at least "
                f"1 K words per buffer of each array; expected >= "
                f"{5 * 1024 * word * array.arrays / 2**20:g} MiB for {array.arrays} arrays"
            )
        bandwidth = (
            device.memory_bandwidth
            * device.efficiency.memory
            / (array.clock_ghz * 1e9 * word * array.arrays)
        )
        if bandwidth < 1:
            raise ConfigError(
                f"{prefix}memory_bandwidth_gbps = {device.memory_bandwidth_gbps:g}: SCALE-Sim "
                f"needs at least 1 word per cycle per array; this is {bandwidth:.3g}"
            )
        return cls(
            rows=array.rows,
            cols=array.cols,
            dataflow=array.dataflow,
            ifmap_kwords=sizes[0],
            filter_kwords=sizes[1],
            ofmap_kwords=sizes[2],
            bandwidth_words=int(bandwidth),
        )

    def spatial(self, m: int, n: int, k: int) -> tuple[int, int, int]:
        """(Sr, Sc, T) of a GEMM (M × K)·(K × N) under this dataflow (SCALE-Sim's mapping)."""
        if self.dataflow == "ws":
            return k, n, m
        if self.dataflow == "os":
            return m, n, k
        return k, m, n  # is

    def gemm(self, sr: int, sc: int, t: int) -> tuple[int, int, int]:
        """The (M, N, K) whose :meth:`spatial` is (sr, sc, t)."""
        if self.dataflow == "ws":
            return t, sc, sr
        if self.dataflow == "os":
            return sr, sc, t
        return sc, t, sr  # is


def word_bytes(dtype: str) -> int:
    """Bytes per array word: the op graph's activation bytes (quantized weights and fp8
    compute in 16-bit on the arrays)."""
    return int(activation_bytes(dtype))


class ScaleSimRunner:
    """Runs one GEMM through SCALE-Sim in process (no files: traces are not saved, its report
    is not written, its prints are swallowed) and returns its total cycles, stalls included."""

    def __init__(self, config: ArrayConfig) -> None:
        self.config = config
        self.version = scalesim_version()
        self._modules: dict[str, ModuleType] | None = None  # imported at the first run

    def cycles(self, m: int, n: int, k: int) -> int:
        if self._modules is None:
            self._modules = _load_scalesim()
        mods, c = self._modules, self.config
        conf = mods["config"].scale_config()
        conf.array_rows, conf.array_cols = c.rows, c.cols
        conf.ifmap_sz_kb, conf.filter_sz_kb = c.ifmap_kwords, c.filter_kwords
        conf.ofmap_sz_kb = c.ofmap_kwords
        conf.df = c.dataflow
        conf.use_user_bandwidth = True
        conf.bandwidths = [c.bandwidth_words]
        conf.ifmap_sram_bank_bandwidth = c.bandwidth_words
        conf.filter_sram_bank_bandwidth = c.bandwidth_words
        conf.using_ifmap_custom_layout = False
        conf.using_filter_custom_layout = False
        # One SRAM bank per buffer: the bandwidth need not divide by SCALE-Sim's default 10
        # banks (bank layouts are only evaluated with custom layouts, which are off).
        conf.ifmap_sram_bank_num = conf.filter_sram_bank_num = 1
        conf.force_valid()
        topo = mods["topology"].topologies()
        # SCALE-Sim's GEMM row: ifmap M × K, one K-wide filter per output column N.
        topo.load_layer_params_from_list("gemm", ["gemm", m, k, 1, k, 1, n, 1, 1, 1, 1])
        layer = mods["layer"].single_layer_sim()
        sink = io.StringIO()
        try:
            with contextlib.redirect_stdout(sink):
                layer.set_params(
                    layer_id=0,
                    config_obj=conf,
                    topology_obj=topo,
                    layout_obj=mods["layout"].layouts(),
                    verbose=False,
                )
                layer.run()
            return int(layer.memory_system.get_total_compute_cycles())
        except Exception as exc:  # SCALE-Sim asserts and raises plain exceptions
            raise BackendError(
                f"SCALE-Sim {self.version} failed on GEMM M={m} N={n} K={k} "
                f"({c.rows}x{c.cols} {c.dataflow}): {type(exc).__name__}: {exc}"
            ) from None


def default_scalesim_cache_dir() -> Path:
    return default_cache_dir().parent / "scalesim"


@PERF_BACKENDS.register("scalesim")
class ScaleSimBackend:
    def __init__(
        self,
        device: DeviceSpec,
        dtype: str,
        cache_dir: Path | None = None,
        stream_tile: int = DEFAULT_STREAM_TILE,
    ) -> None:
        self.device = device
        self.dtype = dtype
        self.array = ArrayConfig.of(device, dtype)
        assert device.systolic is not None
        if stream_tile < 2:
            raise ConfigError(
                f"perf.options.scalesim_stream_tile = {stream_tile}: expected an integer >= 2"
            )
        self.stream_tile = stream_tile
        self.arrays = device.systolic.arrays
        self.clock_hz = device.systolic.clock_ghz * 1e9
        self.runner = ScaleSimRunner(self.array)
        self._vector = RooflineBackend(device, dtype)
        self._bandwidth = device.memory_bandwidth * device.efficiency.memory
        self._launch = device.efficiency.kernel_launch_us * 1e-6
        identity = {
            "scalesim": self.runner.version,
            "array": asdict(self.array),
        }
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
        self.cache: ResultCache | None = None
        if cache_dir is not None:
            self.cache = ResultCache(cache_dir / f"{digest[:20]}.jsonl")
        self._probes: dict[tuple[int, int, int], int] = {}
        self._times: dict[Op, float] = {}
        self.sim_calls = 0
        self.sim_seconds = 0.0
        self.cache_hits = 0
        self.disk_hits = 0

    @classmethod
    def from_config(cls, device: DeviceSpec, setup: PerfSetup) -> ScaleSimBackend:
        options = setup.perf.options
        tile = options.get("scalesim_stream_tile", DEFAULT_STREAM_TILE)
        if not isinstance(tile, int) or isinstance(tile, bool) or tile < 2:
            raise ConfigError(
                f"perf.options.scalesim_stream_tile = {tile!r}: expected an integer >= 2"
            )
        cache_dir = setup.perf.cache_dir or default_scalesim_cache_dir()
        return cls(device, setup.compute_dtype, cache_dir, tile)

    # ------------------------------------------------------------------ SCALE-Sim calls

    def simulated_cycles(self, m: int, n: int, k: int) -> int:
        """SCALE-Sim's cycles for one GEMM on one array, from the caches when known."""
        key = (m, n, k)
        cycles = self._probes.get(key)
        if cycles is not None:
            self.cache_hits += 1
            return cycles
        disk_key = json.dumps(key)
        stored = self.cache.get(disk_key) if self.cache is not None else None
        if stored is not None:
            self.cache_hits += 1
            self.disk_hits += 1
            cycles = int(stored)
        else:
            start = time.perf_counter()
            cycles = self.runner.cycles(m, n, k)
            self.sim_seconds += time.perf_counter() - start
            self.sim_calls += 1
            if self.cache is not None:
                try:
                    self.cache.put(disk_key, float(cycles))
                except OSError as exc:
                    raise ConfigError(
                        f"perf.cache_dir: cannot write the SCALE-Sim cache "
                        f"{self.cache.path}: {exc.strerror or exc}"
                    ) from None
        self._probes[key] = cycles
        return cycles

    def _probe(self, t: int) -> tuple[int, int]:
        """(first-fold overhead, steady cycles per fold) for full R × C folds streaming t."""
        a = self.array
        one = self.simulated_cycles(*a.gemm(a.rows, a.cols, t))
        two = self.simulated_cycles(*a.gemm(a.rows, 2 * a.cols, t))
        step = max(0, two - one)
        return one - step, step

    # ------------------------------------------------------------------ tiling

    def gemm_cycles(self, m: int, n: int, k: int, batch: int = 1) -> int:
        """Cycles of ``batch`` GEMMs (M × K)·(K × N) on the chip, from tile probes."""
        a = self.array
        sr, sc, t = a.spatial(m, n, k)
        folds = math.ceil(sr / a.rows) * math.ceil(sc / a.cols) * batch
        groups = 1 if folds >= self.arrays else min(self.arrays // folds, t)
        per_array = math.ceil(folds * groups / self.arrays)
        t_each = math.ceil(t / groups)
        tile = self.stream_tile
        if t_each <= tile:
            overhead, step = self._probe(t_each)
            return overhead + per_array * step
        # A longer stream: a fold's cycles grow linearly with the rows it streams; the slope is
        # measured between the probes at tile and tile / 2 rows.
        overhead, step = self._probe(tile)
        half = tile // 2
        _, half_step = self._probe(half)
        slope = max(0.0, (step - half_step) / (tile - half))
        return round(overhead + per_array * (step + (t_each - tile) * slope))

    def array_seconds(self, op: Op) -> float | None:
        """Seconds the arrays are busy with the op's GEMMs (None: the op has no GEMM shape)."""
        shapes = gemm_shapes(op)
        if not shapes:
            return None
        return sum(self.gemm_cycles(m, n, k, b) for m, n, k, b in shapes) / self.clock_hz

    def time(self, op: Op) -> float:
        seconds = self._times.get(op)
        if seconds is not None:
            return seconds
        array_s = self.array_seconds(op) if op.flops > 0.0 else None
        if array_s is None:
            seconds = self._vector.time(op)
        else:
            seconds = max(array_s, op.bytes / self._bandwidth) + self._launch
        self._times[op] = seconds
        return seconds

    def stats(self) -> dict[str, Any]:
        return {
            "accelerator_sim_calls": self.sim_calls,
            "accelerator_sim_s": round(self.sim_seconds, 3),
            "accelerator_sim_cache_hits": self.cache_hits,
            "accelerator_sim_disk_hits": self.disk_hits,
        }
