"""Scenarios: a validated YAML schema, and ``build()``, the one place names map to objects.

A scenario names the data and its partition over N workers, the model, the algorithm (with its
optimizer and compressor), the simulated network and the run length. ``compare:`` lists
variants as overrides of the base (``label`` plus any fields); ``sweep:`` maps dotted keys to
lists of values, crossed with every variant. Every variant is validated before anything runs,
and all errors are reported at once, each with its key path, YAML line, bad value and what is
allowed (``ScenarioError``).
"""
from __future__ import annotations

import copy
import difflib
import itertools
import math
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple, Optional, Union

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from simsgd.configs import ENTRIES as PLUGINS
from simsgd.configs import Context
from simsgd.schema import (SUBKEY, CompressorCfg, Fraction, OptimizerCfg, PositiveFloat,  # noqa: F401
                           PositiveInt, Strict, TopologyCfg)


# ---------------------------------------------------------------------------------------------
# Schema
class PartitionCfg(Strict):
    kind: Literal["iid", "dirichlet", "dirichlet_client", "shards", "classes_per_client", "quantity_skew"] = "iid"
    alpha: Optional[PositiveFloat] = Field(None, description="Dirichlet concentration (dirichlet, dirichlet_client)")
    shards_per_client: PositiveInt = 2
    classes: Optional[PositiveInt] = Field(None, description="classes per client (classes_per_client)")
    sigma: PositiveFloat = Field(1.0, description="log-normal sigma of client sizes (quantity_skew)")
    min_size: PositiveInt = 1

    @model_validator(mode="after")
    def _needs(self):
        if self.kind in ("dirichlet", "dirichlet_client") and self.alpha is None:
            raise ValueError(f"partition kind '{self.kind}' needs 'alpha' (a positive concentration, e.g. 0.5)")
        if self.kind == "classes_per_client" and self.classes is None:
            raise ValueError("partition kind 'classes_per_client' needs 'classes' (how many classes each client holds)")
        return self


class DataCfg(Strict):
    name: Literal["digits", "breast_cancer", "mnist1d", "fashion_mnist", "synthetic", "mnist", "cifar10",
                  "shakespeare"] = "digits"
    root: Optional[str] = Field(None, description="folder of the user's own files (mnist, cifar10, fashion_mnist)")
    workers: PositiveInt = 8
    partition: PartitionCfg = PartitionCfg()
    test_fraction: Fraction = 0.25
    limit_train: Optional[PositiveInt] = Field(None, description="use only this many training examples")


class ModelCfg(Strict):
    name: Literal["mlp", "cnn", "logistic", "transformer"] = "mlp"
    hidden: list[PositiveInt] = [200, 200]
    channels: list[PositiveInt] = [32, 64]
    dense: PositiveInt = 512


class WeightsCfg(Strict):
    """Shard the model over the workers (FSDP / ZeRO-3): weights all-gathered through ``compressor``."""
    compressor: Optional[CompressorCfg] = Field(None, description="weight quantizer of the all-gather (zeropp_qwz, "
                                                                  "qsdp, fp16, ...); null: float32 weights")
    update: Literal["master", "quantized"] = Field("master", description="master: full-precision master weights "
                                                   "(ZeRO++, QSDP practice); quantized: x <- Q_w(x - lr g) (QSDP)")


class SyncCfg(Strict):
    name: Literal["sync_sgd"]
    optimizer: OptimizerCfg = OptimizerCfg()
    batch_size: Optional[PositiveInt] = Field(32, description="examples per worker per step; null: the whole "
                                                              "local data set (full gradients)")
    compressor: CompressorCfg = CompressorCfg()
    weights: Optional[WeightsCfg] = Field(None, description="sharded weights (FSDP / ZeRO-3) with an optional weight "
                                                            "quantizer; null: replicated weights (DDP)")

    @model_validator(mode="after")
    def _plain_sgd_for_update_compressors(self):
        from simsgd.compress import COMPRESSORS

        c = COMPRESSORS[self.compressor.name](**(self.compressor.model_extra or {}))
        if c.props.replaces_optimizer and self.optimizer.name != "sgd":
            raise ValueError(f"{SUBKEY}optimizer{SUBKEY}compressor {self.compressor.name!r} carries its own "
                             f"momentum/adaptive scaling: use optimizer name 'sgd' (its lr is the method's "
                             f"learning rate), got {self.optimizer.name!r}")
        return self


class FedAvgCfg(Strict):
    name: Literal["fedavg"]
    client_optimizer: OptimizerCfg = OptimizerCfg(name="sgd", lr=0.05)
    client_fraction: Fraction = 0.1
    local_steps: Optional[PositiveInt] = None
    epochs: Optional[PositiveInt] = None
    batch_size: Optional[PositiveInt] = Field(10, description="local batch; null = the whole local data set")
    server_optimizer: OptimizerCfg = OptimizerCfg(name="sgd", lr=1.0)
    weighting: Literal["size", "uniform"] = "size"
    compressor: CompressorCfg = CompressorCfg()

    @model_validator(mode="after")
    def _needs(self):
        if (self.local_steps is None) == (self.epochs is None):
            raise ValueError("fedavg needs exactly one of 'local_steps' (H) or 'epochs' (E)")
        if self.local_steps is not None and self.batch_size is None:
            raise ValueError("fedavg with 'local_steps' needs a 'batch_size'")
        return self


class LocalSGDCfg(Strict):
    name: Literal["local_sgd"]
    optimizer: OptimizerCfg = OptimizerCfg()
    local_steps: PositiveInt = 8
    batch_size: PositiveInt = 32
    outer_optimizer: OptimizerCfg = OptimizerCfg(name="sgd", lr=1.0)
    compressor: CompressorCfg = CompressorCfg()


class DPSGDCfg(Strict):
    name: Literal["dpsgd"]
    lr: PositiveFloat = 0.1
    batch_size: PositiveInt = 32
    topology: TopologyCfg = TopologyCfg()
    order: Literal["lian", "atc"] = "lian"
    gossip_steps: PositiveInt = Field(1, description="gossip exchanges per step (W^Q), each priced")
    merge_at: Optional[PositiveInt] = Field(
        None, description="step at whose end every model is replaced by the global average, one all-reduce "
                          "(A Single Merging Suffices, Zhu et al. 2025); null: never")
    track_gap: Literal["auto", "step", "static"] = "auto"


class ChocoCfg(Strict):
    name: Literal["choco_sgd"]
    lr: PositiveFloat = 0.1
    gamma: Fraction = Field(1.0, description="consensus step size; 1 with exact messages, tune below 1 with "
                                             "compression (paper: 0.04 top-1%, 0.01 random-1%, 0.34 qsgd 4-bit)")
    batch_size: PositiveInt = 32
    topology: TopologyCfg = TopologyCfg()
    compressor: CompressorCfg = CompressorCfg()
    order: Literal["paper", "reference"] = "paper"
    x_hat_init: Literal["zero", "params"] = "zero"

    @model_validator(mode="after")
    def _fixed_graph_and_operator(self):
        from simsgd.compress import COMPRESSORS

        if self.topology.edge_failure > 0 or self.topology.resample_every is not None:
            raise ValueError(f"{SUBKEY}topology{SUBKEY}CHOCO-SGD runs on a fixed graph: no edge_failure or "
                             "resample_every")
        c = COMPRESSORS[self.compressor.name](**(self.compressor.model_extra or {}))
        if c.props.replaces_optimizer:
            raise ValueError(f"{SUBKEY}compressor{SUBKEY}compressor {self.compressor.name!r} carries its own "
                             "momentum/adaptive state; CHOCO needs a compression operator (identity, topk, randk, "
                             "qsgd, natural, fp16, signsgd, powersgd, ...)")
        return self


class DFedSAMCfg(Strict):
    name: Literal["dfedsam"]
    optimizer: OptimizerCfg = OptimizerCfg(name="sgd", lr=0.1)
    local_steps: PositiveInt = 5
    batch_size: PositiveInt = 32
    rho: Annotated[float, Field(ge=0)] = Field(0.01, description="SAM radius; 0 gives DFedAvg")
    gossip_steps: PositiveInt = Field(1, description="Q gossip steps per round (> 1: DFedSAM-MGS)")
    topology: TopologyCfg = TopologyCfg()
    track_gap: Literal["auto", "step", "static"] = "auto"


class AsyncCfg(Strict):
    name: Literal["async_sgd"]
    optimizer: OptimizerCfg = OptimizerCfg()
    batch_size: PositiveInt = 32
    staleness_damping: bool = False


class JustOneByteCfg(Strict):
    name: Literal["just_one_byte"]
    lr: PositiveFloat = 1e-4
    batch_size: PositiveInt = 32
    eps: PositiveFloat = 1e-3
    samples: PositiveInt = 1
    directions: Literal["per_worker", "shared"] = "per_worker"
    quantization: Literal["e4m3", "e5m2", "int8", "none"] = "e4m3"
    scale: PositiveFloat = 1.0
    stochastic_rounding: bool = False
    forward_fraction: Annotated[float, Field(gt=0, le=1)] = 1.0 / 3.0


class FedProxCfg(FedAvgCfg):
    name: Literal["fedprox"]
    prox_mu: Annotated[float, Field(ge=0)] = 0.01


class FedOptCfg(FedAvgCfg):
    name: Literal["fedadagrad", "fedadam", "fedyogi"]
    server_lr: PositiveFloat = 0.01
    beta1: Annotated[float, Field(ge=0, lt=1)] = 0.9
    beta2: Annotated[float, Field(ge=0, lt=1)] = 0.99
    tau: PositiveFloat = 1e-3


class ScaffoldCfg(Strict):
    name: Literal["scaffold"]
    lr: PositiveFloat = 0.05
    client_fraction: Fraction = 0.1
    local_steps: Optional[PositiveInt] = 10
    epochs: Optional[PositiveInt] = None
    batch_size: Optional[PositiveInt] = 10
    server_lr: PositiveFloat = 1.0
    option: Literal["I", "II"] = "II"

    @model_validator(mode="after")
    def _needs(self):
        if (self.local_steps is None) == (self.epochs is None):
            raise ValueError("scaffold needs exactly one of 'local_steps' (K) or 'epochs' (E)")
        return self


class ScallionCfg(Strict):
    name: Literal["scallion", "scafcom"]
    lr: PositiveFloat = 0.05
    client_fraction: Fraction = 0.1
    local_steps: PositiveInt = 10
    batch_size: PositiveInt = 10
    server_lr: PositiveFloat = 1.0
    compressor: CompressorCfg = CompressorCfg()
    alpha: Annotated[float, Field(ge=0, le=1)] = Field(1.0, description="scallion: damping of the control updates")
    beta: Annotated[float, Field(gt=0, le=1)] = Field(1.0, description="scafcom: local momentum weight")


class QSRCfg(Strict):
    name: Literal["qsr"]
    optimizer: OptimizerCfg = OptimizerCfg()
    batch_size: PositiveInt = 32
    total_steps: PositiveInt = 1000
    warmup_steps: Annotated[int, Field(ge=0)] = 0
    final_lr: Annotated[float, Field(ge=0)] = 0.0
    h_base: PositiveInt = 4
    alpha: Annotated[float, Field(ge=0)] = 0.0175
    init_h: Optional[PositiveInt] = None
    power: PositiveFloat = 2.0
    inner_state: Literal["keep", "average"] = "keep"

    @model_validator(mode="after")
    def _warmup(self):
        if self.warmup_steps >= self.total_steps:
            raise ValueError(f"{SUBKEY}warmup_steps{SUBKEY}warmup_steps must be below total_steps")
        return self


class PostLocalSGDCfg(Strict):
    name: Literal["post_local_sgd"]
    optimizer: OptimizerCfg = OptimizerCfg()
    batch_size: PositiveInt = 32
    total_steps: PositiveInt = 1000
    switch_step: Annotated[int, Field(ge=0)] = 500
    local_steps: PositiveInt = 16


class LofiCfg(Strict):
    name: Literal["lofi"]
    optimizer: OptimizerCfg = OptimizerCfg()
    batch_size: PositiveInt = 32
    total_steps: Optional[PositiveInt] = Field(None, description="local steps per worker; null = run.steps")


LOCAL_FAMILY = (FedProxCfg, FedOptCfg, ScaffoldCfg, ScallionCfg, QSRCfg, PostLocalSGDCfg, LofiCfg)
PLUGIN_MODELS = tuple(dict.fromkeys(e.model for e in PLUGINS.values()))   # simsgd.configs, in name order
AlgorithmCfg = Annotated[Union[(SyncCfg, FedAvgCfg, LocalSGDCfg, DPSGDCfg, AsyncCfg, JustOneByteCfg, ChocoCfg,
                                DFedSAMCfg, *LOCAL_FAMILY, *PLUGIN_MODELS)],
                         Field(discriminator="name")]


class ComputeCfg(Strict):
    seconds_per_step: Optional[PositiveFloat] = Field(
        None, description="seconds per local step; null = the model's FLOPs (XLA cost analysis) / device_tflops")
    device_tflops: PositiveFloat = 10.0
    straggler: Literal["none", "exponential", "lognormal", "pareto"] = "none"
    scale: Annotated[float, Field(ge=0)] = 0.0
    speeds: Optional[list[PositiveFloat]] = Field(None, description="persistent per-worker slowdown factors")
    dropout: Annotated[float, Field(ge=0, le=1, description="P(up -> down) per worker per step (workers drop out; "
                                                            "a two-state Markov chain with rejoin); 0: always up")] = 0.0
    rejoin: Annotated[float, Field(ge=0, le=1, description="P(down -> up) per worker per step; mean down time "
                                                           "1/rejoin steps, availability rejoin/(dropout+rejoin)")] = 0.0


class NetworkCfg(Strict):
    bandwidth_gbps: PositiveFloat = 1.0
    latency_ms: Annotated[float, Field(ge=0)] = 0.1
    collective: Literal["auto", "allreduce", "rabenseifner", "tree", "hierarchical", "allgather", "ps"] = "auto"
    server_bandwidth_gbps: Optional[PositiveFloat] = None
    workers_per_node: PositiveInt = Field(1, description="hierarchical: workers per node; bandwidth_gbps is each "
                                                         "node's NIC, intra_* the links inside a node")
    intra_bandwidth_gbps: Optional[PositiveFloat] = None
    intra_latency_ms: Annotated[float, Field(ge=0)] = 0.002
    overlap_bucket_mb: Optional[PositiveFloat] = Field(
        None, description="overlap communication with the backward pass in buckets of this many MB (PyTorch DDP's "
                          "default is 25); null: communication after compute")
    compute: ComputeCfg = ComputeCfg()

    @model_validator(mode="after")
    def _hierarchy(self):
        if self.collective == "hierarchical" and self.intra_bandwidth_gbps is None:
            raise ValueError(f"{SUBKEY}intra_bandwidth_gbps{SUBKEY}collective 'hierarchical' needs "
                             "intra_bandwidth_gbps (the link between workers of one node)")
        return self


class RunCfg(Strict):
    steps: PositiveInt = 100
    eval_every: Optional[PositiveInt] = None
    chunk: PositiveInt = 50
    record_every: PositiveInt = 1
    worker_map: Annotated[str, Field(pattern=r"^(auto|vmap|map|map:[1-9][0-9]*)$")] = "auto"


class Scenario(Strict):
    name: str = "scenario"
    description: str = ""
    label: Optional[str] = None
    seed: int = 0
    data: DataCfg = DataCfg()
    model: ModelCfg = ModelCfg()
    algorithm: AlgorithmCfg = SyncCfg(name="sync_sgd")
    network: NetworkCfg = NetworkCfg()
    run: RunCfg = RunCfg()
    compare: list[dict[str, Any]] = Field(default_factory=list)
    sweep: dict[str, list[Any]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _speeds(self):
        speeds = self.network.compute.speeds
        if speeds is not None and len(speeds) != self.data.workers:
            raise ValueError(f"network.compute.speeds has {len(speeds)} entries but data.workers is {self.data.workers}")
        supports_dropout = ("sync_sgd", "fedavg", "fedsgd", "fedprox", "fedadagrad", "fedadam", "fedyogi", "local_sgd",
                            "async_sgd")
        if self.network.compute.dropout > 0 and self.algorithm.name not in supports_dropout:
            raise ValueError(f"network.compute.dropout is supported by {', '.join(supports_dropout)}; not by "
                             f"{self.algorithm.name!r}")
        g = self.network.workers_per_node
        if self.network.collective == "hierarchical" and self.data.workers % g:
            raise ValueError(f"network.workers_per_node is {g} but data.workers ({self.data.workers}) is not a "
                             "multiple of it")
        return self


# ---------------------------------------------------------------------------------------------
# Errors with YAML lines
class ScenarioError(ValueError):
    """Every problem found in a scenario, one per line: ``file:line: key.path: message (got value)``."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid scenario:\n  " + "\n  ".join(problems))


def _yaml_lines(text: str) -> dict[tuple, int]:
    """Map each key path (tuple of keys / list indices) to its 1-based line in the YAML text."""
    lines: dict[tuple, int] = {}

    def walk(node, path):
        lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                lines[path + (k.value,)] = k.start_mark.line + 1
                walk(v, path + (k.value,))
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                walk(v, path + (i,))

    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return lines
    if root is not None:
        walk(root, ())
    return lines


def _allowed(model: type[BaseModel] | None, loc: tuple) -> list[str]:
    """Field names allowed at ``loc`` (for 'did you mean')."""
    if model is None:
        return []
    for part in loc[:-1]:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return []
        ann = field.annotation
        candidates = [a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)]
        if not candidates:
            return []
        model = candidates[0]
    return sorted(model.model_fields)


ALGORITHM_MODELS = {name: m
                    for m in (SyncCfg, FedAvgCfg, LocalSGDCfg, DPSGDCfg, AsyncCfg, JustOneByteCfg, ChocoCfg, DFedSAMCfg,
                              *LOCAL_FAMILY, *PLUGIN_MODELS)
                    for name in m.model_fields["name"].annotation.__args__}


def _clean_loc(loc: tuple) -> tuple:
    """Drop pydantic's union tags (``algorithm.fedavg.epochs`` -> ``algorithm.epochs``)."""
    if len(loc) > 1 and loc[0] == "algorithm" and loc[1] in ALGORITHM_MODELS:
        return loc[:1] + loc[2:]
    return loc


def _format_errors(err: ValidationError, lines: dict, source: str, override_prefix: tuple = ()) -> list[str]:
    """One line per pydantic error; the line number comes from the override (if any) or the base."""
    out = []
    for e in err.errors(include_url=False):
        raw_loc = tuple(e["loc"])
        loc = _clean_loc(raw_loc)
        path = ".".join(str(p) for p in loc) or "(top level)"
        line = None
        for cut in range(len(loc), -1, -1):
            line = (override_prefix and lines.get(override_prefix + loc[:cut])) or lines.get(loc[:cut])
            if line:
                break
        msg = e["msg"].removeprefix("Value error, ")
        if msg.startswith(SUBKEY):
            sub, msg = msg[1:].split(SUBKEY, 1)
            loc += (sub,)
            path = f"{path}.{sub}"
            line = (override_prefix and lines.get(override_prefix + loc)) or lines.get(loc) or line
        if e["type"] == "extra_forbidden":
            if raw_loc[:1] == ("algorithm",) and len(raw_loc) > 2:
                allowed = _allowed(ALGORITHM_MODELS[raw_loc[1]], loc[1:])
            else:
                allowed = _allowed(Scenario, loc)
            close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            msg = f"unknown key; allowed here: {', '.join(allowed)}" + (f" (did you mean '{close[0]}'?)" if close else "")
        got = "" if e["type"] == "missing" or isinstance(e["input"], dict) else f" (got {e['input']!r})"
        if e["type"] in ("union_tag_invalid", "union_tag_not_found"):
            path += ".name"
            line = lines.get(override_prefix + loc + ("name",)) or lines.get(loc + ("name",)) or line
            name = e["input"].get("name") if isinstance(e["input"], dict) else None
            msg = f"{'unknown' if name else 'missing'} algorithm name; allowed: {', '.join(ALGORITHM_MODELS)}"
            got = f" (got {name!r})" if name else ""
        out.append(f"{source}:{line or '?'}: {path}: {msg}{got}")
    return out


# ---------------------------------------------------------------------------------------------
# Loading, overrides, variants
def parse_value(text: str):
    """A command-line value, read as YAML (``0.1`` -> float, ``[1, 2]`` -> list, ``ring`` -> str)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def set_path(raw: dict, dotted: str, value) -> dict:
    """A copy of ``raw`` with ``a.b.c`` set to ``value`` (intermediate mappings created)."""
    raw = copy.deepcopy(raw)
    node = raw
    parts = dotted.split(".")
    for p in parts[:-1]:
        if not isinstance(node.get(p), dict):
            node[p] = {}
        node = node[p]
    node[parts[-1]] = value
    return raw


def merge(base: dict, override: dict) -> dict:
    """Deep-merge ``override`` into ``base``; a section whose ``name`` changes is replaced, not merged."""
    out = copy.deepcopy(base)
    for k, v in override.items():
        if "." in k:
            out = set_path(out, k, v)
        elif isinstance(v, dict) and isinstance(out.get(k), dict) and v.get("name", out[k].get("name")) == out[k].get("name"):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _scenario(raw: dict) -> Scenario:
    """Validate one raw mapping; an algorithm section without a name is the default, sync_sgd."""
    if isinstance(raw.get("algorithm"), dict) and "name" not in raw["algorithm"]:
        raw = {**raw, "algorithm": {"name": "sync_sgd", **raw["algorithm"]}}
    return Scenario(**raw)


class Loaded(NamedTuple):
    base: Scenario
    variants: list[Scenario]   # every run: compare x sweep (just the base when neither is given)


def load(source: str | Path | dict, overrides: list[str] | tuple = ()) -> Loaded:
    """Read, override (``key.path=value`` strings) and validate a scenario and all its variants."""
    if isinstance(source, dict):
        raw, text, name = copy.deepcopy(source), "", "<dict>"
    else:
        path = Path(source)
        if not path.exists():
            raise ScenarioError([f"{path}: no such scenario file"])
        text, name = path.read_text(), str(path)
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            raise ScenarioError([f"{name}:{mark.line + 1 if mark else '?'}: not valid YAML: {getattr(e, 'problem', e)}"]) from None
        raw = {} if raw is None else raw
        if not isinstance(raw, dict):
            raise ScenarioError([f"{name}:1: a scenario must be a mapping of keys (data, model, algorithm, ...), got {type(raw).__name__}"])
    problems = []
    for item in overrides:
        if "=" not in item:
            problems.append(f"--set {item!r}: expected key.path=value")
            continue
        key, value = item.split("=", 1)
        raw = set_path(raw, key.strip(), parse_value(value))
    if problems:
        raise ScenarioError(problems)
    lines = _yaml_lines(text)
    try:
        base = _scenario(raw)
    except ValidationError as err:
        raise ScenarioError(_format_errors(err, lines, name)) from None
    except TypeError as err:
        raise ScenarioError([f"{name}:1: {err}"]) from None
    variants, problems = [], []
    core = {k: v for k, v in raw.items() if k not in ("compare", "sweep")}
    compare = base.compare or [{}]
    keys = list(base.sweep)
    for ci, entry in enumerate(compare):
        for values in itertools.product(*(base.sweep[k] for k in keys)):
            merged = merge(core, entry)
            label = entry.get("label") or (None if not base.compare else f"variant{ci}")
            for k, v in zip(keys, values):
                merged = set_path(merged, k, v)
            sweep_label = ",".join(f"{k.split('.')[-1]}={v}" for k, v in zip(keys, values))
            merged["label"] = "|".join(p for p in (label, sweep_label) if p) or None
            try:
                variants.append(_scenario(merged))
            except ValidationError as err:
                prefix = ("compare", ci) if base.compare else ()
                where = f"{name} (compare[{ci}]{' ' + repr(label) if label else ''})" if base.compare else name
                for p in _format_errors(err, lines, where, prefix):
                    if p not in problems:
                        problems.append(p)
    if problems:
        raise ScenarioError(problems)
    return Loaded(base, variants)


# ---------------------------------------------------------------------------------------------
# Building: the only place names map to objects
class Built(NamedTuple):
    scenario: Scenario
    algorithm: Any        # simsgd.algorithms.Algorithm
    state: Any            # its initial state
    key: Any              # the run's PRNG key
    task: Any             # simsgd.task.Task
    info: dict            # facts worth recording (parameters, partition sizes, seconds per step)
    system: Any = None    # simsgd.algorithms.System: the simulated links, compute model and collective


def optimizer(cfg: OptimizerCfg):
    import optax

    if cfg.name == "sgd":
        opt = optax.sgd(cfg.lr)
    elif cfg.name == "momentum":
        opt = optax.sgd(cfg.lr, momentum=cfg.momentum)
    elif cfg.name == "nesterov":
        opt = optax.sgd(cfg.lr, momentum=cfg.momentum, nesterov=True)
    elif cfg.name == "adam":
        opt = optax.adam(cfg.lr)
    else:
        return optax.adamw(cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.weight_decay:
        opt = optax.chain(optax.add_decayed_weights(cfg.weight_decay), opt)
    return opt


def compressor(cfg: CompressorCfg):
    from simsgd import compress

    c = compress.COMPRESSORS[cfg.name](**(cfg.model_extra or {}))
    return c if cfg.feedback == "none" else compress.FEEDBACK[cfg.feedback](c, **cfg.feedback_args)


def dataset(cfg: DataCfg, seed: int):
    from simsgd import data

    fn = data.DATASETS[cfg.name]
    if cfg.name in ("mnist", "cifar10"):
        if not cfg.root:
            raise ScenarioError([f"data.root: data set '{cfg.name}' reads your own files; set data.root to their folder"])
        ds = fn(cfg.root)
    elif cfg.name == "fashion_mnist":
        ds = fn(cfg.root)
    elif cfg.name in ("digits", "breast_cancer"):
        ds = fn(test_fraction=cfg.test_fraction, seed=seed)
    elif cfg.name == "mnist1d":
        ds = fn()   # the package's own seed: the paper's data set
    elif cfg.name == "shakespeare":
        ds = fn(test_fraction=cfg.test_fraction, root=cfg.root)   # x, y: [n, 64] tokens and next tokens
    else:
        ds = fn(seed=seed)
    return ds


def partition(cfg: PartitionCfg, labels, workers: int, seed: int):
    import numpy as np

    from simsgd.data import PARTITIONERS

    params = {"iid": {}, "dirichlet": {"alpha": cfg.alpha, "min_size": cfg.min_size},
              "dirichlet_client": {"alpha": cfg.alpha}, "shards": {"shards_per_client": cfg.shards_per_client},
              "classes_per_client": {"k": cfg.classes},
              "quantity_skew": {"sigma": cfg.sigma, "min_size": cfg.min_size}}[cfg.kind]
    return PARTITIONERS[cfg.kind](labels, workers, np.random.default_rng(seed), **params)


def model(cfg: ModelCfg, input_shape, num_classes):
    from simsgd import models

    if cfg.name == "mlp":
        return models.mlp(input_shape, num_classes, hidden=cfg.hidden)
    if cfg.name == "cnn":
        if len(input_shape) != 3:
            raise ScenarioError([f"model.name: 'cnn' needs image inputs [H, W, C]; this data set has shape {list(input_shape)}"])
        return models.cnn(input_shape, num_classes, channels=cfg.channels, dense=cfg.dense)
    if cfg.name == "transformer":
        # hidden = [d] * L: width d, L blocks; heads of 16 dimensions (one head if d is not a multiple); dense = MLP width
        if len(input_shape) != 1 or len(set(cfg.hidden)) != 1:
            raise ScenarioError([f"model: 'transformer' needs token sequences [T] (e.g. data.name shakespeare) and "
                                 f"equal widths hidden: [d, d, ...]; got inputs {list(input_shape)}, hidden {cfg.hidden}"])
        d = cfg.hidden[0]
        return models.transformer(num_classes, input_shape[0], width=d, layers=len(cfg.hidden),
                                  heads=d // 16 if d % 16 == 0 else 1, mlp=cfg.dense)
    return models.logistic(input_shape, num_classes)


def step_flops(task, params, batch) -> float:
    """FLOPs of one forward+backward pass on ``batch`` by XLA's cost analysis; 6 x params x batch
    (Kaplan et al. 2020) when the backend reports none."""
    import jax

    from simsgd.tree import tree_size

    try:
        cost = jax.jit(jax.grad(task.loss)).lower(params, batch).compile().cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        flops = float(cost.get("flops", 0.0))
    except Exception:  # noqa: BLE001 - cost analysis is optional on some backends
        flops = 0.0
    return flops if flops > 0 else 6.0 * tree_size(params) * batch.x.shape[0]


def gossip_topology(s: Scenario, t: TopologyCfg):
    """The graph of a gossip method: a user matrix, one topology, or a schedule of redrawn random graphs."""
    import numpy as np

    from simsgd import comm

    if t.matrix is not None:
        return np.asarray(t.matrix, np.float64)
    builder = comm.TOPOLOGIES[t.name]
    kwargs = {"p": t.p} if t.name == "erdos_renyi" else {}
    if t.name == "random_regular":
        kwargs = {"degree": t.degree}
    if t.name == "hierarchical":
        kwargs = {"per_node": s.network.workers_per_node}
    if t.name != "exponential":   # the exponential graph has its own weights (Ying et al. 2021)
        kwargs["rule"] = t.mixing
    if t.name in ("erdos_renyi", "random_regular"):
        draws = 1 if t.resample_every is None else min(64, -(-s.run.steps // t.resample_every))
        graphs = [builder(s.data.workers, seed=s.seed + 1000 * k, **kwargs) for k in range(draws)]
        return graphs[0] if draws == 1 else comm.dynamic.schedule(graphs, t.resample_every)
    return builder(s.data.workers, **kwargs)


def batch_size_of(alg: Any, data_sizes) -> int:
    b = getattr(alg, "batch_size", None)
    return int(max(data_sizes)) if b is None else int(b)


def build(s: Scenario) -> Built:
    """Turn a validated scenario into an algorithm, its initial state and a key."""
    import jax
    import numpy as np

    from simsgd import algorithms as A
    from simsgd import batches, comm, network
    from simsgd.task import classification, next_token

    ds = dataset(s.data, s.seed)
    x, y = ds.x_train, ds.y_train
    if s.data.limit_train:
        keep = np.random.default_rng(s.seed).permutation(len(y))[: s.data.limit_train]
        x, y = x[keep], y[keep]
    try:
        # sequences (y: [n, T] next tokens) are one class in text order for the partitioners
        parts = partition(s.data.partition, y if y.ndim == 1 else np.zeros(len(y), np.int64), s.data.workers, s.seed)
        data = batches.worker_data(x, y, parts)
    except ValueError as e:
        raise ScenarioError([f"data.partition: {e}"]) from None
    m = model(s.model, x.shape[1:], ds.num_classes)
    task = (classification if ds.y_test.ndim == 1 else next_token)(m, ds.x_test, ds.y_test)
    key = jax.random.PRNGKey(s.seed)
    k_init, k_alg, k_run = jax.random.split(key, 3)
    params = m.init(k_init)
    a = s.algorithm
    b = batch_size_of(a, [len(p) for p in parts])
    c = s.network.compute
    if c.seconds_per_step is None:
        probe = batches.gather(data, 0, jax.numpy.zeros((b,), jax.numpy.int32))
        flops = step_flops(task, params, probe)
        seconds = flops / (c.device_tflops * 1e12)
    else:
        flops, seconds = None, c.seconds_per_step
    link = network.Link(latency_s=s.network.latency_ms * 1e-3, bandwidth_bps=s.network.bandwidth_gbps * 1e9)
    server = (network.Link(link.latency_s, s.network.server_bandwidth_gbps * 1e9)
              if s.network.server_bandwidth_gbps else None)
    compute = network.Compute(seconds_per_step=seconds, straggler=c.straggler, scale=c.scale,
                              speeds=tuple(c.speeds) if c.speeds else None, dropout=c.dropout, rejoin=c.rejoin)
    collective = s.network.collective
    server_methods = ("fedavg", "fedprox", "fedadagrad", "fedadam", "fedyogi", "scaffold", "scallion", "scafcom")
    if collective == "auto" and (a.name in server_methods or (a.name in PLUGINS and PLUGINS[a.name].server)):
        collective = "ps"
    intra = (network.Link(s.network.intra_latency_ms * 1e-3, s.network.intra_bandwidth_gbps * 1e9)
             if s.network.intra_bandwidth_gbps else None)
    system = A.System(link=link, compute=compute, collective=collective, server_link=server,
                      per_node=s.network.workers_per_node, intra_link=intra,
                      bucket_bytes=int(s.network.overlap_bucket_mb * 1e6) if s.network.overlap_bucket_mb else None)
    wm = s.run.worker_map
    try:
        if a.name in PLUGINS:
            ctx = Context(s, task, data, system, wm, optimizer, compressor, lambda t: gossip_topology(s, t), s.seed)
            alg = PLUGINS[a.name].build(a, ctx)
        elif a.name == "sync_sgd":
            from simsgd.algorithms.fsdp import Weights

            sharded = None if a.weights is None else Weights(
                compressor(a.weights.compressor) if a.weights.compressor is not None else None, a.weights.update)
            alg = A.sync_sgd(task, data, optimizer=optimizer(a.optimizer), batch_size=a.batch_size,
                             compressor=compressor(a.compressor), system=system, worker_map=wm, weights=sharded)
        elif a.name in ("fedavg", "fedprox", "fedadagrad", "fedadam", "fedyogi"):
            per_round = max(int(math.floor(a.client_fraction * s.data.workers)), 1)
            server = (optimizer(a.server_optimizer) if a.name in ("fedavg", "fedprox")
                      else A.fedopt(a.name[3:], a.server_lr, a.beta1, a.beta2, a.tau))
            alg = A.fedavg(task, data, client_optimizer=optimizer(a.client_optimizer), clients_per_round=per_round,
                           local_steps=a.local_steps, epochs=a.epochs, batch_size=a.batch_size,
                           server_optimizer=server, weighting=a.weighting, prox_mu=getattr(a, "prox_mu", 0.0),
                           compressor=compressor(a.compressor), system=system, worker_map=wm, name=a.name)
        elif a.name == "scaffold":
            per_round = max(int(math.floor(a.client_fraction * s.data.workers)), 1)
            alg = A.scaffold(task, data, lr=a.lr, local_steps=a.local_steps, epochs=a.epochs, batch_size=a.batch_size,
                             clients_per_round=per_round, server_lr=a.server_lr, option=a.option, system=system,
                             worker_map=wm)
        elif a.name in ("scallion", "scafcom"):
            per_round = max(int(math.floor(a.client_fraction * s.data.workers)), 1)
            common = dict(lr=a.lr, local_steps=a.local_steps, batch_size=a.batch_size, clients_per_round=per_round,
                          server_lr=a.server_lr, compressor=compressor(a.compressor), system=system, worker_map=wm)
            alg = (A.scallion(task, data, alpha=a.alpha, **common) if a.name == "scallion"
                   else A.scafcom(task, data, beta=a.beta, **common))
        elif a.name == "qsr":
            alg = A.qsr_local_sgd(task, data, optimizer=lambda lr: optimizer(a.optimizer.model_copy(update={"lr": lr})),
                                  lr_schedule=A.cosine_lr(a.optimizer.lr, a.total_steps, a.warmup_steps, a.final_lr),
                                  total_steps=a.total_steps, batch_size=a.batch_size, h_base=a.h_base, alpha=a.alpha,
                                  warmup_steps=a.warmup_steps, init_h=a.init_h, power=a.power,
                                  inner_state=a.inner_state, system=system, worker_map=wm)
        elif a.name == "post_local_sgd":
            alg = A.post_local_sgd(task, data, optimizer=optimizer(a.optimizer), batch_size=a.batch_size,
                                   total_steps=a.total_steps, switch_step=a.switch_step, local_steps=a.local_steps,
                                   system=system, worker_map=wm)
        elif a.name == "lofi":
            alg = A.lofi(task, data, optimizer=optimizer(a.optimizer), batch_size=a.batch_size,
                         total_steps=a.total_steps or s.run.steps, system=system, worker_map=wm)
        elif a.name == "local_sgd":
            alg = A.local_sgd(task, data, optimizer=optimizer(a.optimizer), local_steps=a.local_steps,
                              batch_size=a.batch_size, outer_optimizer=optimizer(a.outer_optimizer),
                              compressor=compressor(a.compressor), system=system, worker_map=wm)
        elif a.name in ("dpsgd", "choco_sgd", "dfedsam"):
            topo = gossip_topology(s, a.topology)
            t = a.topology
            if a.name == "dpsgd":
                alg = A.dpsgd(task, data, topo, lr=a.lr, batch_size=a.batch_size, order=a.order,
                              edge_failure=t.edge_failure, gossip_steps=a.gossip_steps, merge_at=a.merge_at,
                              track_gap=a.track_gap, system=system, worker_map=wm)
            elif a.name == "choco_sgd":
                alg = A.choco_sgd(task, data, topo, lr=a.lr, gamma=a.gamma, batch_size=a.batch_size,
                                  compressor=compressor(a.compressor), order=a.order, x_hat_init=a.x_hat_init,
                                  system=system, worker_map=wm)
            else:
                alg = A.dfedsam(task, data, topo, optimizer=optimizer(a.optimizer), local_steps=a.local_steps,
                                batch_size=a.batch_size, rho=a.rho, gossip_steps=a.gossip_steps,
                                edge_failure=t.edge_failure, track_gap=a.track_gap, system=system, worker_map=wm)
        elif a.name == "just_one_byte":
            alg = A.just_one_byte(task, data, lr=a.lr, batch_size=a.batch_size, eps=a.eps, samples=a.samples,
                                  seed=s.seed, directions=a.directions, quantization=a.quantization, scale=a.scale,
                                  stochastic_rounding=a.stochastic_rounding, forward_fraction=a.forward_fraction,
                                  system=system, worker_map=wm)
        else:
            alg = A.async_sgd(task, data, optimizer=optimizer(a.optimizer), batch_size=a.batch_size, system=system,
                              staleness_damping=a.staleness_damping)
    except ValueError as e:
        raise ScenarioError([f"{s.label or s.name}: {e}"]) from None
    from simsgd.tree import tree_size

    info = {"parameters": tree_size(params), "worker_sizes": [len(p) for p in parts],
            "seconds_per_step": seconds, "flops_per_step": flops, "dataset": ds.name,
            "train_examples": int(len(y)), "test_examples": int(len(ds.y_test))}
    return Built(s, alg, alg.init(k_alg, params), k_run, task, info, system)
