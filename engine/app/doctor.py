"""`reembed doctor`: every node of the cluster checked before a job writes anything, and `preflight`, the cheap
driver-side part that `reembed run` runs first.

A 400 GB job that starts and then finds, an hour in, a GPU node whose torch cannot see its GPU, a node without the
model files, a worker network that cannot reach Qdrant, or a run directory that is a local disk on each machine,
has cost an hour and a cluster. The doctor asks each alive Ray node, in one task pinned to it, the questions a lane
on that node will ask: versions (same as the driver's), GPUs (seen by torch, free memory), the model (loads and
embeds one text), Qdrant (reachable with TLS and the key, its version, the source), the checkpoint store and the
run directory (writable, and the run directory the same one the driver sees). Each answer is a typed record, one
line per node and check: PASS, WARN (a risk, not a blocker) or FAIL with its fix.

The check functions take what they check as narrow values and fakes (clients, GPU probes, model builders), so the
unit tier tests them without Ray; only `run_doctor` starts Ray, through actors/doctor.py.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from qdrant_client import grpc as pb

from actors.sizing import LaneOptions, node_lanes
from engine import tunables
from engine.app import wiring
from engine.config import JobConfig
from engine.embed.base import identity
from engine.embed.vectorset import MultiVectors, VectorSet
from engine.errors import PreconditionError, QdrantUnavailable, ReembedError
from engine.flow.checkpoint import UriCheckpointStore
from engine.flow.rundir import RunDir
from engine.flow.state import Decision
from engine.migration import strategies
from engine.qdrant import values, wire
from engine.qdrant.client import QdrantGrpc, ServerInfo
from engine.qdrant.connection import Endpoint

if TYPE_CHECKING:
    from actors.doctor import ClusterNode

log = logging.getLogger(__name__)

PASS, WARN, FAIL = "PASS", "WARN", "FAIL"
DRIVER = "driver"

PROBE_TEXT = "reembed doctor: one passage embedded on this node to prove that the model loads and runs here."
PROBE_FOLDER = ".reembed-doctor-"  # + a token: the run-directory probe's own folder, deleted after the check
DRIVER_MARKER = "driver.probe"  # written by the driver: a node that cannot see it has another run directory

FIX_VERSIONS = ("install the same versions on every node: one image (deploy/docker/Dockerfile) or the same wheel "
                "and pins (ray-cluster.yaml setup_commands)")
FIX_GPU = ("install the NVIDIA driver and a CUDA build of torch on this node (ray-cluster.yaml setup_commands, "
           "deploy/docker/Dockerfile)")
FIX_RUN_DIR = ("set dead_letter.dir to a writable path every node mounts (a shared volume), or an s3:// / gs:// "
               "URI")
FIX_STORE_URI = ("make checkpoint.uri writable from here (permissions, or the s3:// / gs:// credentials), or use "
                 "checkpoint.store: qdrant")
FIX_MODEL = ("check model.name / model.revision, and that this node has the model files or reaches the hub "
             "(HF_HUB_OFFLINE, HF_TOKEN)")
FIX_REACH = ("check qdrant.url / qdrant.grpc_port (or QDRANT_URL / QDRANT_GRPC_PORT), that the server is up, and "
             "that this node reaches it (firewall, security group, DNS)")
FIX_NODE = "check the node in the Ray dashboard (ray status), or raise --timeout"


# --- records ------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DoctorResult:
    """One check on one node: PASS, WARN or FAIL, what was found, and for a FAIL (or a WARN) the fix."""

    node: str
    check: str
    status: str
    detail: str
    fix: str = ""

    def line(self, node_width: int = 0, check_width: int = 0) -> str:
        text = f"{self.status:<4}  {self.node:<{node_width}}  {self.check:<{check_width}}  {self.detail}"
        return f"{text} | fix: {self.fix}" if self.fix and self.status != PASS else text

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True)
class Versions:
    """What must be the same on the driver and every node: Python and Ray (Ray refuses a mix), torch and its CUDA
    build (the vectors and the kernels), and reembed itself."""

    python: str
    ray: str | None
    torch: str | None
    cuda: str | None  # torch.version.cuda; None on a CPU build
    reembed: str | None

    @classmethod
    def here(cls) -> Versions:
        torch_version = cuda = None
        try:
            import torch

            torch_version, cuda = torch.__version__, torch.version.cuda
        except ImportError:
            pass
        return cls(python=platform.python_version(), ray=_dist_version("ray"), torch=torch_version, cuda=cuda,
                   reembed=_dist_version("reembed"))

    def describe(self) -> str:
        build = f"CUDA {self.cuda}" if self.cuda else "CPU build"
        return (f"python {self.python}, ray {self.ray}, torch {self.torch} ({build}), reembed {self.reembed}")

    def differences(self, driver: Versions) -> list[str]:
        return [f"{name} {mine or 'none'} here, {theirs or 'none'} on the driver"
                for name, mine, theirs in (("python", self.python, driver.python), ("ray", self.ray, driver.ray),
                                           ("torch", self.torch, driver.torch), ("CUDA", self.cuda, driver.cuda),
                                           ("reembed", self.reembed, driver.reembed))
                if mine != theirs]


def _dist_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    free_bytes: int
    total_bytes: int

    def describe(self) -> str:
        return f"{self.index}: {self.name}, {self.free_bytes / 2**30:.1f} of {self.total_bytes / 2**30:.1f} GiB free"


@dataclass(frozen=True)
class GpuProbe:
    """What torch sees on a node."""

    devices: tuple[GpuInfo, ...]
    torch: str | None
    cuda: str | None
    error: str | None = None  # torch missing, or CUDA failing while asked


def torch_gpus() -> GpuProbe:
    """The GPUs torch sees here, with their free memory (this creates a CUDA context on each: the doctor's task
    runs in a worker of its own that exits after it, so the memory goes back)."""
    try:
        import torch
    except ImportError as exc:
        return GpuProbe((), None, None, f"torch cannot be imported ({exc})")
    try:
        if not torch.cuda.is_available():
            return GpuProbe((), torch.__version__, torch.version.cuda)
        devices = []
        for i in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(i)
            devices.append(GpuInfo(i, torch.cuda.get_device_name(i), int(free), int(total)))
        return GpuProbe(tuple(devices), torch.__version__, torch.version.cuda)
    except Exception as exc:  # noqa: BLE001 - any CUDA failure is the finding
        return GpuProbe((), torch.__version__, torch.version.cuda, _first_line(exc))


@dataclass(frozen=True)
class StoreSpec:
    """The job's checkpoint store as plain data: a collection on the target server, or a pyarrow.fs URI."""

    kind: str  # qdrant | uri
    collection: str
    uri: str | None = None

    @classmethod
    def of(cls, cfg: JobConfig) -> StoreSpec:
        return cls(kind=cfg.checkpoint.store, collection=cfg.checkpoint.collection, uri=cfg.checkpoint.uri)


@dataclass(frozen=True)
class NodeSpec:
    """Everything a node's checks need, as plain data (it crosses to the node)."""

    endpoint: Endpoint
    source: str
    vectorizer: dict | None  # engine/embed/vectorize.py spec; None when no model runs on the lanes (a shortcut)
    store: StoreSpec
    runs_root: str
    driver: Versions
    lanes: LaneOptions
    server_version: str | None = None  # what the driver saw; None when it could not reach Qdrant
    shared_folder: str | None = None  # the driver's probe folder in the runs root; None when it could not write it


@dataclass(frozen=True)
class NodeReport:
    """One node's answers, and the identity of the model it loaded (to compare across nodes)."""

    node: str
    results: list[DoctorResult]
    model: dict | None = None


@dataclass
class DoctorReport:
    """All results of a doctor run: lines for people, one JSON object for machines, the exit code."""

    results: list[DoctorResult]
    nodes: list[str] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    @property
    def passed(self) -> bool:
        return self.count(FAIL) == 0

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1

    def lines(self) -> list[str]:
        if not self.results:
            return []
        node_w = max(len(r.node) for r in self.results)
        check_w = max(len(r.check) for r in self.results)
        return [r.line(node_w, check_w) for r in self.results]

    def summary(self) -> str:
        nodes = len(self.nodes) or len({r.node for r in self.results})
        verdict = "PASSED" if self.passed else "FAILED"
        return (f"doctor {verdict}: {len(self.results)} checks on {nodes} node(s): {self.count(PASS)} PASS, "
                f"{self.count(WARN)} WARN, {self.count(FAIL)} FAIL")

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "nodes": list(self.nodes), "pass": self.count(PASS), "warn": self.count(WARN),
                "fail": self.count(FAIL), "results": [r.to_dict() for r in self.results]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


# --- helpers ------------------------------------------------------------------------------------------------------

def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else ""
    return line if isinstance(exc, ReembedError) else f"{type(exc).__name__}: {line}" if line else type(exc).__name__


def split_fix(message: str) -> tuple[str, str]:
    """Our one-line errors read "<problem>; <fix>": split at the first "; " outside brackets."""
    depth = 0
    for i, ch in enumerate(message):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth = max(0, depth - 1)
        elif ch == ";" and depth == 0 and message[i + 1:i + 2] == " ":
            return message[:i], message[i + 2:]
    return message, ""


def failed(node: str, check: str, exc: BaseException, fix: str) -> DoctorResult:
    """A FAIL from an exception: its own fix when it carries one (our errors do), else `fix`."""
    detail, own = split_fix(_first_line(exc))
    return DoctorResult(node, check, FAIL, detail, own or fix)


def describe_endpoint(endpoint: Endpoint) -> str:
    return (f"{endpoint.address} over gRPC{' with TLS' if endpoint.tls else ''}"
            f"{', API key set' if endpoint.api_key else ', no API key'}")


class QdrantLike(Protocol):
    """The part of QdrantGrpc the checks use (a fake stands in for it in the unit tier)."""

    def health(self) -> ServerInfo: ...

    def collection_info(self, name: str) -> pb.CollectionInfo | None: ...

    def collection_exists(self, name: str) -> bool: ...

    def create_collection(self, request: pb.CreateCollection) -> None: ...

    def delete_collection(self, name: str) -> None: ...

    def upsert_raw(self, request: bytes, what: str) -> None: ...

    def get(self, collection: str, ids: Sequence[Any], *, with_payload: bool = True) -> list: ...

    def delete_points(self, collection: str, ids: Sequence[Any]) -> None: ...

    def close(self) -> None: ...


def fast_client(endpoint: Endpoint) -> QdrantGrpc:
    """A client that gives up within seconds: a check must not wait out a job's outage budget."""
    return QdrantGrpc(endpoint, wiring.CONNECT_POLICY)


# --- the checks (each runs on a node, or on the driver) -------------------------------------------------------------

def check_versions(node: str, here: Versions, driver: Versions) -> DoctorResult:
    if here.torch is None:
        wanted = f"torch {driver.torch}" if driver.torch else "torch"
        return DoctorResult(node, "versions", FAIL, f"torch is not installed here ({here.describe()})",
                            f"install {wanted} on this node; {FIX_VERSIONS}")
    diffs = here.differences(driver)
    if diffs:
        return DoctorResult(node, "versions", FAIL, "not the driver's: " + "; ".join(diffs), FIX_VERSIONS)
    return DoctorResult(node, "versions", PASS, f"{here.describe()}: as on the driver")


def check_gpus(node: str, ray_gpus: float, probe: GpuProbe) -> DoctorResult:
    """Ray's count of the node's GPUs (what lanes are sized by) against what torch sees (what they run on)."""
    if probe.error is not None:
        status = FAIL if ray_gpus else WARN
        return DoctorResult(node, "gpu", status, f"Ray counts {ray_gpus:g} GPU(s) here; {probe.error}", FIX_GPU)
    seen = len(probe.devices)
    if ray_gpus and not seen:
        build = f"CUDA {probe.cuda} build" if probe.cuda else "a CPU build"
        return DoctorResult(node, "gpu", FAIL,
                            f"Ray counts {ray_gpus:g} GPU(s) here but torch {probe.torch} ({build}) sees none: no "
                            "NVIDIA driver (or one older than torch's CUDA) / CPU build of torch", FIX_GPU)
    listed = "; ".join(d.describe() for d in probe.devices)
    if ray_gpus > seen:
        return DoctorResult(node, "gpu", FAIL, f"Ray counts {ray_gpus:g} GPU(s) here but torch sees {seen} ({listed})",
                            f"start Ray on this node with --num-gpus={seen}, or fix CUDA_VISIBLE_DEVICES")
    if not seen:
        return DoctorResult(node, "gpu", PASS, f"no GPU (Ray counts none, torch {probe.torch} sees none)")
    busy = [d for d in probe.devices if d.free_bytes < tunables.DOCTOR_MIN_FREE_GPU_FRACTION * d.total_bytes]
    if busy:
        names = ", ".join(f"GPU {d.index}" for d in busy)
        return DoctorResult(node, "gpu", WARN, f"{seen} GPU(s), {names} mostly in use by another process: {listed}",
                            "stop the other process, or expect the lanes here to run out of GPU memory")
    if not ray_gpus:
        return DoctorResult(node, "gpu", WARN, f"torch sees {seen} GPU(s) but Ray counts none, so lanes here run the "
                            f"model on the CPU: {listed}", f"start Ray on this node with --num-gpus={seen}")
    return DoctorResult(node, "gpu", PASS, f"{seen} GPU(s), Ray counts {ray_gpus:g}: {listed}")


def _output_shape(out: Any) -> tuple[str, list[np.ndarray]]:
    """The embedding of one text, described (dimension and dtype), and its arrays to check for NaN / zero."""
    if isinstance(out, MultiVectors):
        return f"{len(out.data)} token vectors of {out.dim} ({out.data.dtype})", [out.data]
    if isinstance(out, VectorSet):
        parts, arrays = [], []
        if out.dense is not None:
            parts.append(f"dense {out.dense.shape[1]}-d {out.dense.dtype}")
            arrays.append(out.dense)
        if out.sparse is not None:
            parts.append(f"sparse {len(out.sparse[0][0])} non-zeros")
        if out.multi is not None:
            parts.append(f"{len(out.multi.data)} token vectors of {out.multi.dim}")
            arrays.append(out.multi.data)
        return " + ".join(parts), arrays
    arr = np.asarray(out)
    return f"{arr.shape[-1]}-d {arr.dtype}", [arr]


def check_model(node: str, vectorizer: dict | None, lanes: int, resources: Mapping[str, float],
                build: Callable[[dict], Any]) -> tuple[DoctorResult, dict | None]:
    """Build the lanes' vectorizer here (on the GPU where there is one: model.device auto picks it) and embed one
    text. Returns the result and the model's identity (None when nothing was loaded)."""
    if vectorizer is None:
        return DoctorResult(node, "model", PASS,
                            "no model runs on the lanes (a shortcut maps the stored vectors)"), None
    if lanes == 0:
        return DoctorResult(node, "model", PASS,
                            f"not loaded: this node hosts no lane (Ray offers it {resources.get('CPU', 0):g} CPU, "
                            f"{resources.get('GPU', 0):g} GPU)"), None
    t0 = time.monotonic()
    try:
        model = build(vectorizer)
        out = model.embed([PROBE_TEXT])
        described = model.describe()
    except Exception as exc:  # noqa: BLE001 - whatever stops the model is the finding
        return failed(node, "model", exc, FIX_MODEL), None
    shape, arrays = _output_shape(out)
    name = described.get("name") or described.get("kind")
    where = f"{name} on {described.get('device', 'cpu')} ({described.get('dtype', '?')})"
    elapsed = time.monotonic() - t0
    if any(not np.all(np.isfinite(a)) or not np.any(a) for a in arrays):
        return DoctorResult(node, "model", FAIL, f"{where} embeds the probe text as a zero or NaN vector ({shape})",
                            "check model.dtype (float16 overflows on some models: use bfloat16 or float32)"), None
    gpus = float(resources.get("GPU", 0))
    device = str(described.get("device", "cpu"))
    if gpus and device == "cpu" and (vectorizer.get("dense") or {}).get("device") != "cpu":
        return DoctorResult(node, "model", WARN, f"{where} ran on the CPU although Ray counts {gpus:g} GPU(s) here",
                            FIX_GPU), identity(described)
    return DoctorResult(node, "model", PASS, f"{where}: one text -> {shape} in {elapsed:.1f} s"), identity(described)


def check_qdrant(node: str, client: QdrantLike, endpoint: Endpoint, source: str,
                 driver_version: str | None) -> DoctorResult:
    """Reachable (TLS, key), its version, and the source collection (or alias) there: an authenticated call, so a
    wrong key fails here and not at the first write."""
    where = describe_endpoint(endpoint)
    try:
        info = client.health()
        exists = client.collection_info(source) is not None
    except QdrantUnavailable as exc:
        # Its own fix speaks of a job's retry budget; here the question is whether this node reaches the server.
        return DoctorResult(node, "qdrant", FAIL, split_fix(_first_line(exc))[0], FIX_REACH)
    except Exception as exc:  # noqa: BLE001 - refused key, bad certificate: each is the finding
        return failed(node, "qdrant", exc, FIX_REACH)
    if not exists:
        return DoctorResult(node, "qdrant", FAIL, f"{where}: Qdrant {info.version}, but the source collection "
                            f"{source!r} does not exist", "set source.collection to an existing collection or alias")
    if driver_version is not None and info.version != driver_version:
        return DoctorResult(node, "qdrant", WARN, f"{where}: Qdrant {info.version} here, {driver_version} from the "
                            "driver", "finish the rolling upgrade first, or check that the address names one cluster")
    return DoctorResult(node, "qdrant", PASS, f"{where}: Qdrant {info.version}, source {source!r} found")


def _probe_point(token: str) -> tuple[str, bytes]:
    pid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"reembed-doctor/{token}"))
    # job_id matches no job (theirs are 12 hex digits), so no job's checkpoint ever lists it.
    point = pb.PointStruct(id=wire.point_id(pid),
                           payload=values.payload_from_python({"job_id": "_doctor", "kind": "doctor-probe"}))
    point.vectors.vector.dense.data.append(1.0)  # the checkpoint collection's 1-d vector
    return pid, point.SerializeToString()


def probe_qdrant_store(client: QdrantLike, collection: str, token: str, create_if_absent: bool) -> str:
    """Write, read back and delete a probe point in the checkpoint collection; where it does not exist yet, create
    and drop a throwaway collection beside it instead (the job creates the real one at its first save)."""
    if client.collection_exists(collection):
        pid, blob = _probe_point(token)
        client.upsert_raw(wire.upsert_request(collection, [blob], wait=True, insert_only=False),
                          f"write a doctor probe into {collection!r}")
        try:
            if not client.get(collection, [pid], with_payload=False):
                raise PreconditionError(f"a probe point written to {collection!r} with wait=true cannot be read "
                                        "back; check the server's health")
        finally:
            client.delete_points(collection, [pid])
        return f"wrote, read and deleted a probe point in {collection!r}"
    if not create_if_absent:
        return f"{collection!r} does not exist yet: the driver creates it at the job's first save"
    scratch = f"{collection}_doctor_{token[:8]}"
    req = pb.CreateCollection(collection_name=scratch)
    req.vectors_config.params.CopyFrom(pb.VectorParams(size=1, distance=pb.Distance.Dot))
    client.create_collection(req)
    try:
        _, blob = _probe_point(token)
        client.upsert_raw(wire.upsert_request(scratch, [blob], wait=True, insert_only=False),
                          f"write a doctor probe into {scratch!r}")
    finally:
        client.delete_collection(scratch)
    return f"{collection!r} does not exist yet; created, wrote and dropped {scratch!r} (the job creates it)"


def probe_uri_store(uri: str, token: str) -> str:
    """Save and delete a probe object under checkpoint.uri the way the store saves a job (a temporary file moved
    into place); its name cannot be a job id, so no job's checkpoint is touched."""
    store = UriCheckpointStore(uri)
    name = f"reembed-doctor-{token}"
    store.save_text(name, '{"probe": true}')
    store.delete(name)
    return f"wrote and deleted a probe object under {uri}"


def check_store(node: str, store: StoreSpec, client: QdrantLike | None, token: str,
                create_if_absent: bool) -> DoctorResult:
    try:
        if store.kind == "uri":
            assert store.uri is not None  # the config refuses store=uri without a uri
            detail = probe_uri_store(store.uri, token)
        else:
            assert client is not None
            detail = probe_qdrant_store(client, store.collection, token, create_if_absent)
    except Exception as exc:  # noqa: BLE001 - permissions, credentials, a read-only key: each is the finding
        fix = FIX_STORE_URI if store.kind == "uri" else "use an API key that may write (not a read-only one)"
        return failed(node, "checkpoint", exc, fix)
    return DoctorResult(node, "checkpoint", PASS, detail)


def write_marker(root: str, token: str) -> str:
    """The driver's probe file in a fresh folder of the runs root; returns the folder's name."""
    folder = PROBE_FOLDER + token
    RunDir(root, folder).write_text(DRIVER_MARKER, "written by the driver of reembed doctor\n")
    return folder


def remove_folder(root: str, folder: str) -> None:
    probe = RunDir(root, folder)
    if probe.exists():
        probe.fs.delete_dir(probe.path)


def check_run_dir(node: str, root: str, token: str, shared_folder: str | None) -> DoctorResult:
    """Write, read back and delete a probe file in the runs root. With `shared_folder` (the driver's probe folder),
    the probe goes there and the driver's file must be visible: lanes write dead letters where the driver merges
    them, so a path that is a local disk on each machine would lose them."""
    folder = shared_folder or PROBE_FOLDER + token
    name = f"node-{token[:12]}.probe"
    probe = RunDir(root, folder)
    try:
        probe.write_text(name, f"written by reembed doctor on {node}\n")
        if probe.read_text(name) is None:
            raise OSError(f"{probe.display(name)} vanished right after it was written")
        probe.delete(probe.join(name))
        shared = shared_folder is not None and probe.exists(DRIVER_MARKER)
        if shared_folder is None or not shared:
            remove_folder(root, folder)  # this node's own folder (a local disk that is not the driver's)
    except Exception as exc:  # noqa: BLE001 - permission, missing mount, credentials: each is the finding
        return failed(node, "run-dir", exc, FIX_RUN_DIR)
    if shared_folder is not None and not shared:
        return DoctorResult(node, "run-dir", FAIL, f"{root} is writable here but is not the driver's: the driver's "
                            "probe file is not visible from this node, so dead letters written here would be lost",
                            FIX_RUN_DIR)
    seen = ", the driver's probe visible" if shared_folder is not None else ""
    return DoctorResult(node, "run-dir", PASS, f"{root}: wrote, read and deleted a probe file{seen}")


# --- one node -------------------------------------------------------------------------------------------------------

def node_checks(node: str, resources: Mapping[str, float], spec: NodeSpec, *,
                connect: Callable[[Endpoint], QdrantLike] = fast_client,
                gpu_probe: Callable[[], GpuProbe] = torch_gpus,
                build: Callable[[dict], Any] | None = None,
                versions: Callable[[], Versions] = Versions.here) -> NodeReport:
    """Every check of one node, in the order a lane meets them; the model last, as it is the slowest."""
    token = uuid.uuid4().hex
    results = [check_versions(node, versions(), spec.driver),
               check_gpus(node, float(resources.get("GPU", 0.0)), gpu_probe())]
    client: QdrantLike | None = None
    try:
        client = connect(spec.endpoint)
    except Exception as exc:  # noqa: BLE001 - an unreadable CA certificate here is the finding
        results.append(failed(node, "qdrant", exc, "make qdrant.tls_ca_cert readable on every node"))
    try:
        if client is not None:
            reached = check_qdrant(node, client, spec.endpoint, spec.source, spec.server_version)
            results.append(reached)
            if spec.store.kind == "qdrant" and reached.status != FAIL:
                results.append(check_store(node, spec.store, client, token, create_if_absent=False))
        if spec.store.kind == "uri":
            results.append(check_store(node, spec.store, None, token, create_if_absent=False))
    finally:
        if client is not None:
            client.close()
    results.append(check_run_dir(node, spec.runs_root, token, spec.shared_folder))
    lanes, _ = node_lanes(resources, spec.lanes)
    if build is None:
        from engine.embed.vectorize import build_vectorizer

        build = build_vectorizer
    model_result, model = check_model(node, spec.vectorizer, lanes, resources, build)
    results.append(model_result)
    return NodeReport(node, results, model)


def node_task(node: ClusterNode, spec: NodeSpec) -> NodeReport:
    """What actors/doctor.py runs on each node."""
    return node_checks(node.label(), node.resources, spec)


def model_agreement(reports: Sequence[NodeReport]) -> list[DoctorResult]:
    """Every node that loaded the model must have loaded the same one, or lanes would write vectors of two models
    into one target."""
    groups: dict[str, list[str]] = {}
    for r in reports:
        if r.model is not None:
            groups.setdefault(json.dumps(r.model, sort_keys=True, default=str), []).append(r.node)
    if len(groups) <= 1:
        return []
    kinds = "; ".join(f"{json.loads(k).get('fingerprint') or k[:60]} on {', '.join(v)}" for k, v in groups.items())
    return [DoctorResult(DRIVER, "model", FAIL, f"nodes load different models: {kinds}",
                         "install the same model files (or pin model.revision) on every node")]


# --- the driver -----------------------------------------------------------------------------------------------------

def _raised_in(exc: BaseException, module: Any) -> bool:
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == module.__file__:
            return True
        tb = tb.tb_next
    return False


def check_server(cfg: JobConfig, client: QdrantLike, server: ServerInfo) -> DoctorResult:
    """The driver's connection: reached (wiring.connect did), its version, and an authenticated call."""
    where = describe_endpoint(wiring.endpoint_of(cfg))
    try:
        client.collection_exists(cfg.source.collection)  # the health check is open to all; this one needs the key
    except Exception as exc:  # noqa: BLE001 - a refused key or a server failing mid-check
        return failed(DRIVER, "qdrant", exc, "check qdrant.api_key / QDRANT_API_KEY")
    return DoctorResult(DRIVER, "qdrant", PASS, f"{where}: {server.title} {server.version}")


def _strategy_result(decision: Decision, server: ServerInfo) -> DoctorResult:
    detail = f"{decision.strategy} ({decision.layout} layout) writing {decision.collection!r}: {decision.reason}"
    if decision.layout == "new_collection" and server.version_tuple() < strategies.UPDATE_MODE_SINCE:
        return DoctorResult(DRIVER, "strategy", WARN, f"{detail}; Qdrant {server.version} predates update_mode "
                            "(1.17), so writes are plain upserts that may overwrite what the application writes "
                            "into the target meanwhile", "keep the application writing to the old collection until "
                            "swap, or upgrade Qdrant")
    return DoctorResult(DRIVER, "strategy", PASS, detail)


def driver_checks(cfg: JobConfig, client: QdrantLike | None, server: ServerInfo | None,
                  found: Any = None) -> tuple[list[DoctorResult], Any]:
    """The driver's checks; returns them and the probe of the source (None when it failed)."""
    token = uuid.uuid4().hex
    results: list[DoctorResult] = []
    store = StoreSpec.of(cfg)
    if client is not None and server is not None:
        reached = check_server(cfg, client, server)
        results.append(reached)
        if reached.status != FAIL:
            if found is None:
                from engine.app.preconditions import probe

                try:
                    found = probe(cfg, client, server)  # type: ignore[arg-type]
                except ReembedError as exc:
                    # The probe checks the source, then the strategy; its failure names one of them.
                    check = "strategy" if _raised_in(exc, strategies) else "source"
                    results.append(failed(DRIVER, check, exc, f"check the {check} settings of the job config"))
            if found is not None:
                results.append(DoctorResult(DRIVER, "source", PASS, f"{cfg.source.collection!r}: {found.total:,} "
                                            f"points, text from {wiring.text_description(cfg)}"))
                results.append(_strategy_result(found.decision, server))
            if store.kind == "qdrant":
                results.append(check_store(DRIVER, store, client, token, create_if_absent=True))
    if store.kind == "uri":
        results.append(check_store(DRIVER, store, None, token, create_if_absent=True))
    results.append(check_run_dir(DRIVER, wiring.runs_root(cfg), token, None))
    return results, found


def preflight(cfg: JobConfig, client: QdrantGrpc, server: ServerInfo, *, found: Any = None) -> list[DoctorResult]:
    """The cheap part of the doctor, before `reembed run` writes anything: the server (reached, version, the key),
    the source, the strategy, the checkpoint store and the run directory writable. `found`: the job's own probe
    (engine/app/job.py Probe), when it has run it already, so the source is not counted twice."""
    return driver_checks(cfg, client, server, found)[0]


def require(results: Sequence[DoctorResult]) -> None:
    """Raise the first FAIL as a one-line PreconditionError (nothing has been written)."""
    fails = [r for r in results if r.status == FAIL]
    if not fails:
        return
    first = fails[0]
    more = f" ({len(fails) - 1} more: see `reembed doctor`)" if len(fails) > 1 else ""
    raise PreconditionError(f"preflight {first.check} failed on the {first.node}: {first.detail}{more}; {first.fix}")


def _vectorizer(cfg: JobConfig, found: Any) -> dict | None:
    if cfg.shortcut.kind != "none":
        return None
    if found is not None:
        from engine.app.lanes import vectorizer_spec

        return vectorizer_spec(cfg, found.decision, None)
    # The source or the strategy failed: check the dense model the config names all the same.
    return {"dense": cfg.model_spec(), "sparse": None, "shortcut": None}


def cluster_result(nodes: Sequence[ClusterNode], lanes: LaneOptions, min_gpus: int) -> DoctorResult:
    per_node = [node_lanes(n.resources, lanes)[0] for n in nodes]
    gpus = sum(float(n.resources.get("GPU", 0.0)) for n in nodes)
    detail = f"{len(nodes)} alive node(s), {gpus:g} GPU(s), room for {sum(per_node)} lane(s)"
    if not sum(per_node):
        return DoctorResult(DRIVER, "cluster", FAIL, f"{detail}: no node can host a lane",
                            "add worker nodes (GPUs, or CPUs for a CPU run), or lower pipeline.io_cpus")
    if min_gpus > gpus:
        return DoctorResult(DRIVER, "cluster", WARN, f"{detail}; pipeline.min_gpus is {min_gpus}, so a job waits for "
                            "the autoscaler", "check the autoscaler can add GPU nodes (ray status)")
    return DoctorResult(DRIVER, "cluster", PASS, detail)


def run_doctor(cfg: JobConfig, timeout_s: float = tunables.DOCTOR_NODE_TIMEOUT_S) -> DoctorReport:
    """The driver's checks, then one task per alive Ray node."""
    from actors.doctor import alive_nodes, on_every_node
    from actors.start import start_ray, wait_for_gpus
    from engine.app.lanes import lane_options

    client: QdrantGrpc | None = None
    server: ServerInfo | None = None
    results: list[DoctorResult] = []
    try:
        client, server = wiring.connect(cfg)
    except ReembedError as exc:
        results.append(failed(DRIVER, "qdrant", exc, "check qdrant.url / qdrant.grpc_port"))
    try:
        checks, found = driver_checks(cfg, client, server)
    finally:
        if client is not None:
            client.close()
    results += checks
    try:
        start_ray()
    except ReembedError as exc:
        results.append(failed(DRIVER, "ray", exc, "point RAY_ADDRESS at the cluster"))
        return DoctorReport(results, [DRIVER])
    waited: DoctorResult | None = None
    if cfg.pipeline.min_gpus:
        # The fleet the job would wait for is the fleet to check: ask the autoscaler for it first.
        try:
            wait_for_gpus(cfg.pipeline.min_gpus, cfg.pipeline.resource_wait_s)
        except ReembedError as exc:
            waited = failed(DRIVER, "cluster", exc, "check the autoscaler (ray status)")
    nodes = alive_nodes()
    options = lane_options(cfg)
    results.append(waited or cluster_result(nodes, options, cfg.pipeline.min_gpus))
    root = wiring.runs_root(cfg)
    try:
        shared: str | None = write_marker(root, uuid.uuid4().hex)
    except Exception:  # noqa: BLE001 - the driver's run-dir check already reported why
        shared = None
    spec = NodeSpec(endpoint=wiring.endpoint_of(cfg), source=cfg.source.collection, vectorizer=_vectorizer(cfg, found),
                    store=StoreSpec.of(cfg), runs_root=root, driver=Versions.here(), lanes=options,
                    server_version=server.version if server is not None else None, shared_folder=shared)
    try:
        answers = on_every_node(node_task, spec, nodes, timeout_s)
    finally:
        if shared is not None:
            remove_folder(root, shared)
    reports: list[NodeReport] = []
    for answer in answers:
        label = answer.node.label()
        if answer.error is not None:
            results.append(DoctorResult(label, "node", FAIL, answer.error, FIX_NODE))
        else:
            reports.append(answer.value)
            results += answer.value.results
    results += model_agreement(reports)
    return DoctorReport(results, [DRIVER] + [n.label() for n in nodes])


# --- the command ----------------------------------------------------------------------------------------------------

def cmd_doctor(args: argparse.Namespace) -> int:
    from engine.app.args import load

    report = run_doctor(load(args), timeout_s=args.timeout)
    for line in report.lines():
        print(line)
    print(report.summary(), flush=True)
    if args.json:
        print(report.to_json(), flush=True)
    return report.exit_code


def _timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds; give one such as 300") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value:g} must be above 0 seconds")
    return value


def register(sub: Any) -> None:
    from engine.app.args import job_command

    p = job_command(sub, "doctor", cmd_doctor, "check every node of the cluster before a job (exit 0: nothing FAILs)")
    p.add_argument("--timeout", type=_timeout, default=tunables.DOCTOR_NODE_TIMEOUT_S, metavar="SECONDS",
                   help=f"how long each node may take to answer (default {tunables.DOCTOR_NODE_TIMEOUT_S:g}; "
                        "a first model "
                        "download takes minutes)")
    p.add_argument("--json", action="store_true", help="also print one JSON object of every result, as the last line")
