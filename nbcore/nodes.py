"""Several machines (nodes), one run: node 0 owns the run folder, the tokenizer and the shards.

Every node runs the same launch command (`--nnodes N --node-rank R --rdzv-endpoint HOST:PORT`,
HOST being node 0). Without coordination each node would make its own timestamped run folder and
build its own tokenizer and shards: on a shared filesystem they collide, elsewhere the run splits.
With it:

- node 0 makes (or, resuming, opens) the run folder, runs or reuses the producing chapters
  (01 tokenizer, 02 shards) and publishes what it made; it serves a small key-value store
  (`torch.distributed.TCPStore`) on HOST:PORT+1;
- the other nodes wait for node 0's answers: the same run folder name, and each product, found
  at the same place under their own `runs/` when the filesystem is shared (or the product was
  built there before with identical parameters), else received through the store and written
  there (folders up to `RECEIVE_LIMIT` bytes: a tokenizer, small shard sets; bigger shard sets
  need a shared filesystem or `--only 01,02` on each node first);
- resuming, rank 0 alone reads the checkpoint and broadcasts it (`nbcore.checkpoint.load`), so
  the other nodes need no copy of it.
"""
import datetime
import json
import os
import time
from pathlib import Path

from . import fileio, paths

RECEIVE_LIMIT = 512 * 2**20     # bytes of a product folder node 0 sends to the others
CHUNK = 16 * 2**20              # bytes per store value
WAIT_HOURS = 24                 # how long a node waits for node 0 (building shards can take hours)


class NodeError(RuntimeError):
    """The nodes cannot agree (bad options, an unreachable node 0, a product too big to send)."""


class Nodes:
    """This node's view of a multi-node launch: its rank, the node count, the shared store."""

    def __init__(self, node_rank: int, nnodes: int, store, job: str):
        self.node_rank, self.nnodes, self.store, self.job = node_rank, nnodes, store, job

    @property
    def is_owner(self) -> bool:
        return self.node_rank == 0

    # -- the store ---------------------------------------------------------------------------
    def _key(self, name):
        return f"nbcore/{self.job}/{name}"

    def publish(self, name: str, value) -> None:
        self.store.set(self._key(name), json.dumps(value))

    def wait_for(self, name: str, what: str):
        """The value node 0 published under `name` (waits for it, saying what it waits for)."""
        key, failed = self._key(name), self._key("failed")
        deadline, said = time.time() + WAIT_HOURS * 3600, False
        while not self.store.check([key]):
            if self.store.check([failed]) and not self.store.check([key]):  # it may have come just before
                raise NodeError(f"node {self.node_rank}: node 0 failed before it had {what}: "
                                f"{json.loads(self.store.get(failed))}")
            if time.time() > deadline:
                raise NodeError(f"node {self.node_rank}: node 0 did not provide {what} within {WAIT_HOURS} h")
            if not said:
                print(f"[launch] node {self.node_rank}: waiting for node 0 ({what})", flush=True)
                said = True
            time.sleep(0.5)
        return json.loads(self.store.get(key))

    def fail(self, message: str) -> None:
        """Node 0 failed: the waiting nodes stop with its message instead of waiting."""
        if self.is_owner:
            self.publish("failed", message)

    # -- the run folder ------------------------------------------------------------------------
    def run_folder(self, make) -> Path:
        """Node 0: `make()` the run folder and publish its name; others: the same name under
        their own runs/ (made if this filesystem is not shared)."""
        if self.is_owner:
            run_dir = Path(make())
            self.publish("run_dir", {"name": _relative(run_dir), "absolute": str(run_dir)})
            return run_dir
        got = self.wait_for("run_dir", "the run folder")
        run_dir = _local(got)
        run_dir.mkdir(parents=True, exist_ok=True)
        return run_dir

    # -- products of 01 and 02 -----------------------------------------------------------------
    def publish_product(self, chapter: str, folder: Path, key: str) -> None:
        """Node 0, after a producing chapter ran or was reused: where it is, and (when small) its files."""
        folder = Path(folder)
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        size = sum(p.stat().st_size for p in files)
        sent = size <= RECEIVE_LIMIT
        if sent:
            for i, p in enumerate(files):
                data = p.read_bytes()
                chunks = max(1, -(-len(data) // CHUNK))
                for c in range(chunks):
                    self.store.set(self._key(f"product/{chapter}/file{i}/{c}"), data[c * CHUNK:(c + 1) * CHUNK])
        self.publish(f"product/{chapter}", {
            "name": _relative(folder), "absolute": str(folder), "key": key, "bytes": size, "sent": sent,
            "files": [[str(p.relative_to(folder)), p.stat().st_size] for p in files]})

    def product(self, chapter: str, marker_name: str, what: str) -> tuple[Path, str]:
        """Other nodes: node 0's product of `chapter` as a local folder -> (folder, how it came)."""
        got = self.wait_for(f"product/{chapter}", what)
        folder = _local(got)
        marker = folder / marker_name
        if marker.exists() and fileio.read_json(marker).get("key") == got["key"]:
            return folder, "found"  # shared filesystem, or built here before with the same parameters
        if not got["sent"]:
            raise NodeError(
                f"node {self.node_rank}: {what} ({got['bytes'] / 2**30:.1f} GiB) is not in {folder} on this node "
                f"and too big to send (limit {RECEIVE_LIMIT / 2**20:.0f} MiB): put runs/ on a filesystem all nodes "
                f"share, or build it on every node first (the same launch command with --only 01,02)")
        for i, (rel, nbytes) in enumerate(got["files"]):
            chunks = max(1, -(-nbytes // CHUNK))
            data = b"".join(self.store.get(self._key(f"product/{chapter}/file{i}/{c}")) for c in range(chunks))
            if len(data) != nbytes:
                raise NodeError(f"node {self.node_rank}: {rel} of {what} arrived with {len(data)} of {nbytes} bytes")
            fileio.write_bytes(folder / rel, data)
        return folder, "received"

    # -- the plan, the end -----------------------------------------------------------------------
    def plan(self, plan: dict | None) -> dict:
        """Node 0 publishes the plan it runs; the others take it when they have none (a resume
        whose launch.json only node 0 can read)."""
        if self.is_owner:
            self.publish("plan", plan)
            return plan
        got = self.wait_for("plan", "the parameter set")
        return plan if plan is not None else got

    def same(self, name: str, value):
        """Node 0's `value` on every node (e.g. the name of a chapter's executed copy)."""
        if self.is_owner:
            self.publish(f"same/{name}", value)
            return value
        return self.wait_for(f"same/{name}", name)

    def finish(self, timeout_s: float = 600) -> None:
        """Each node says it is done; node 0 keeps the store up until all have (or timeout_s)."""
        self.store.set(self._key(f"done/{self.node_rank}"), "1")
        if self.is_owner:
            keys = [self._key(f"done/{k}") for k in range(self.nnodes)]
            try:
                self.store.wait(keys, datetime.timedelta(seconds=timeout_s))
            except Exception:
                print(f"[launch] node 0: not every node reported done within {timeout_s:.0f} s", flush=True)


def _relative(folder: Path) -> str:
    """A folder as a path under runs/ when it is there (each node has its own runs/), else absolute."""
    folder = Path(folder).resolve()
    try:
        return str(folder.relative_to(paths.runs_dir().resolve()))
    except ValueError:
        return str(folder)


def _local(got: dict) -> Path:
    name = Path(got["name"])
    return name if name.is_absolute() else paths.runs_dir() / name


def connect(nnodes, node_rank, rdzv_endpoint, rdzv_id=None, port_offset: int = 1) -> Nodes | None:
    """This node's Nodes for a launch over `nnodes` machines (None for one node).

    Node 0 must be the rendezvous host; it serves the store on the rendezvous port + port_offset
    (set NBCORE_NODES_PORT to choose another port)."""
    nnodes = int(nnodes or 1)
    if nnodes <= 1:
        return None
    if node_rank is None or rdzv_endpoint is None:
        raise NodeError("a multi-node launch needs --node-rank (0 on the node that owns the run) and "
                        "--rdzv-endpoint HOST:PORT (HOST = node 0) on every node")
    node_rank = int(node_rank)
    if not 0 <= node_rank < nnodes:
        raise NodeError(f"--node-rank {node_rank} must lie in 0..{nnodes - 1}")
    host, _, port = str(rdzv_endpoint).rpartition(":")
    if not host or not port.isdigit():
        raise NodeError(f"--rdzv-endpoint {rdzv_endpoint!r}: expected HOST:PORT")
    port = int(os.environ.get("NBCORE_NODES_PORT") or int(port) + port_offset)
    from torch.distributed import TCPStore

    t0 = time.time()
    try:
        store = TCPStore(host, port, nnodes, node_rank == 0, datetime.timedelta(hours=WAIT_HOURS),
                         wait_for_workers=False)
    except Exception as e:
        where = "serve" if node_rank == 0 else "reach node 0's"
        raise NodeError(f"node {node_rank}: cannot {where} coordination store at {host}:{port} "
                        f"({type(e).__name__}: {e}); set NBCORE_NODES_PORT to a free port (the same on every "
                        f"node)") from e
    if node_rank and time.time() - t0 > 5:
        print(f"[launch] node {node_rank}: reached node 0 after {time.time() - t0:.0f} s", flush=True)
    return Nodes(node_rank, nnodes, store, str(rdzv_id or "default"))


__all__ = ["Nodes", "NodeError", "connect", "RECEIVE_LIMIT"]
