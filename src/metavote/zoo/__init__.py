"""The zoo: ``store.py`` (:class:`Zoo`, an SQLite index plus one safetensors file per record),
``build.py`` (:func:`build_zoo`, many tasks pruned by one method in parallel, resumable),
``bundle.py`` (:func:`pack_zoo`, :func:`unpack_zoo`: a zoo shipped as one checked tar file) and ``refine.py``
(:func:`refine_zoo`: weak records trained further, so a zoo improves with use)."""

from .build import BuildReport, Job, build_zoo, run_job
from .bundle import BundleError, UnpackReport, pack_zoo, read_manifest, unpack_bundle, unpack_zoo
from .refine import RefineReport, record_budget, refine_zoo, weak_records, zoo_budget
from .store import DEFAULT_ZOO_METHOD, INDEX, Zoo, ZooError, ZooRecord, record_id

__all__ = ["DEFAULT_ZOO_METHOD", "INDEX", "BuildReport", "BundleError", "Job", "RefineReport", "UnpackReport", "Zoo", "ZooError", "ZooRecord",
           "build_zoo", "pack_zoo", "read_manifest", "record_budget", "record_id", "refine_zoo", "run_job", "unpack_bundle", "unpack_zoo", "weak_records",
           "zoo_budget"]
