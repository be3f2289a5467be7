"""The zoo: ``store.py`` (:class:`Zoo`, an SQLite index plus one safetensors file per record) and
``build.py`` (:func:`build_zoo`, many tasks pruned by one method in parallel, resumable)."""

from .build import BuildReport, Job, build_zoo, run_job
from .store import DEFAULT_ZOO_METHOD, INDEX, Zoo, ZooError, ZooRecord, record_id

__all__ = ["DEFAULT_ZOO_METHOD", "INDEX", "BuildReport", "Job", "Zoo", "ZooError", "ZooRecord", "build_zoo", "record_id", "run_job"]
