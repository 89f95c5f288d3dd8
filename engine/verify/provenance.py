"""Provenance: which model made the new vectors, as the target collection's metadata says (Qdrant >= 1.16 keeps
free JSON per collection) or, on older servers, as the job's checkpoint recorded it."""

from __future__ import annotations

from engine.migration.target import metadata_tag
from engine.verify.check import INFO, Check
from engine.verify.context import VerifyContext
from engine.verify.findings import Findings
from engine.verify.reads import Reads

_KEYS = ("name", "revision", "dim", "pooling", "normalize", "fingerprint")


class Provenance:
    def run(self, ctx: VerifyContext, reads: Reads, found: Findings) -> list[Check]:
        tag = metadata_tag(found.target.info)
        if isinstance(tag, dict):
            m = tag.get("model") or {}
            prov = {"where": "target collection metadata", "job_id": tag.get("job_id"), **{k: m.get(k) for k in _KEYS}}
        else:
            prov = {"where": "checkpoint (the server keeps no collection metadata before 1.16)",
                    "job_id": ctx.job_id, **{k: ctx.model.get(k) for k in _KEYS}}
        found.provenance = prov
        detail = (f"{prov['name']} rev {prov['revision'] or '-'}, {prov['dim']}-d, pooling {prov['pooling']}, "
                  f"job {prov['job_id']} (in the {prov['where']})")
        return [Check("provenance", INFO, detail)]

