"""Synthetic EHR fields correlated with the findings, and the findings' co-occurrence.

Correlations (qualitative, from epidemiology): ACL tears cluster in young, sport-active
patients (non-contact pivoting; Gianotti SM et al., J Sci Med Sport 2009;12:622-627), with MCL
tears, bone bruises and effusion as frequent companions; degenerative meniscal tears rise with
age (Englund M et al., NEJM 2008;359:1108-1115); PCL tears follow dashboard (traffic) injuries;
first-time patellar dislocation is typical of young women (Fithian DC et al., AJSM
2004;32:1114-1121). Numbers below are plausible, not fitted.
"""

from __future__ import annotations

import numpy as np

from .findings import FINDING_KEYS

EVENTS = ("sport", "fall", "traffic", "twisting", "none", "unknown")
PATIENT_TYPES = ("outpatient", "inpatient", "emergency")
EHR_FIELDS = ("age", "sex", "height_cm", "weight_kg", "patient_type", "event")


def _conditional(p: float, p_given: float, p_parent: float) -> float:
    """Probability for the child when the parent is absent, keeping the marginal ~ ``p``."""
    return float(np.clip((p - p_parent * p_given) / max(1e-6, 1 - p_parent), 0.01, 0.99))


def sample_findings(rng: np.random.Generator, prevalence: dict[str, float]) -> dict[str, int]:
    """Findings with realistic co-occurrence; marginals stay close to ``prevalence``."""
    p = {k: float(prevalence.get(k, 0.0)) for k in FINDING_KEYS}
    out = {k: 0 for k in FINDING_KEYS}
    out["ACL"] = int(rng.random() < p["ACL"])
    out["PD"] = int(rng.random() < p["PD"])
    out["PCL"] = int(rng.random() < p["PCL"])
    for child, lift in (("MCL", 2.2), ("LM", 1.8)):
        given = min(0.95, lift * p[child])
        q = given if out["ACL"] else _conditional(p[child], given, p["ACL"])
        out[child] = int(rng.random() < q)
    out["MM"] = int(rng.random() < p["MM"])
    out["LCL"] = int(rng.random() < (min(0.95, 2.0 * p["LCL"]) if out["PCL"] else
                                       _conditional(p["LCL"], min(0.95, 2.0 * p["LCL"]), p["PCL"])))
    acute = out["ACL"] or out["PD"] or out["PCL"]
    p_acute = 1 - (1 - p["ACL"]) * (1 - p["PD"]) * (1 - p["PCL"])
    given = min(0.95, 1.6 * p["EFFU"])
    if p_acute * given > p["EFFU"]:
        given = p["EFFU"] / max(p_acute, 1e-6)
    out["EFFU"] = int(rng.random() < (given if acute else _conditional(p["EFFU"], given, p_acute)))
    for k in FINDING_KEYS:
        if p[k] <= 0:
            out[k] = 0
    return out


def sample_ehr(rng: np.random.Generator, findings: dict[str, int], missing_rate: float = 0.04) -> dict:
    acl, pd_, pcl = findings["ACL"], findings["PD"], findings["PCL"]
    men = findings["MM"] or findings["LM"]
    if pd_:
        sex = "F" if rng.random() < 0.65 else "M"
    else:
        sex = "F" if rng.random() < 0.48 else "M"
    if pd_:
        age = rng.normal(19, 5)
    elif acl:
        age = rng.normal(28, 9)
    elif men:
        age = rng.normal(52, 12)
    else:
        age = rng.normal(42, 16)
    age = float(np.clip(round(age), 12, 90))
    height = rng.normal(178 if sex == "M" else 165, 7)
    bmi = rng.normal(26 if age > 40 else 23.5, 3.5)
    weight = bmi * (height / 100) ** 2
    if acl:
        probs = [0.55, 0.08, 0.05, 0.27, 0.02, 0.03]
    elif pd_:
        probs = [0.40, 0.10, 0.02, 0.42, 0.03, 0.03]
    elif pcl:
        probs = [0.25, 0.20, 0.40, 0.05, 0.05, 0.05]
    elif men:
        probs = [0.15, 0.15, 0.03, 0.25, 0.30, 0.12]
    else:
        probs = [0.15, 0.15, 0.05, 0.10, 0.35, 0.20]
    event = EVENTS[int(rng.choice(len(EVENTS), p=probs))]
    acute = acl or pd_ or pcl
    ptype = PATIENT_TYPES[int(rng.choice(3, p=[0.45, 0.10, 0.45] if acute else [0.85, 0.07, 0.08]))]
    ehr = {"age": age, "sex": sex, "height_cm": round(float(height), 1),
           "weight_kg": round(float(weight), 1), "patient_type": ptype, "event": event}
    for k in EHR_FIELDS:
        if rng.random() < missing_rate:
            ehr[k] = None
    return ehr
