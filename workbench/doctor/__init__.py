"""The run doctor: detectors (metric histories + logs → findings) and the rules diagnosis
(findings + params + log → cause and remedies).  Stable API for the supervisor:

* ``diagnose_run(client_or_uri, run_id, scaffold=None) -> RunVerdict``
* ``detect(histories, run_info, log_text, thresholds) -> list[Finding]``
* ``diagnose(findings, params, log_text, playbook) -> (Diagnosis | None, list[Remedy])``
"""

from workbench.doctor.core import detect, diagnose, diagnose_run
from workbench.doctor.types import (
    CAUSES,
    FINDING_KINDS,
    HEALTHY,
    NO_DATA,
    Diagnosis,
    Finding,
    PatchOp,
    Remedy,
    RunVerdict,
)

__all__ = [
    "CAUSES",
    "FINDING_KINDS",
    "HEALTHY",
    "NO_DATA",
    "Diagnosis",
    "Finding",
    "PatchOp",
    "Remedy",
    "RunVerdict",
    "detect",
    "diagnose",
    "diagnose_run",
]
