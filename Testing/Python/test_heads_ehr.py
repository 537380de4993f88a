"""EHR encoding (standardisation, unknown categories, validation) and α late fusion."""

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from OrthoDiffusionLib.errors import UserError
from OrthoDiffusionLib.heads import EHRFusionHead, encode_ehr, fit_ehr_spec
from OrthoDiffusionLib.heads.fit import FitConfig, fit_ehr_fusion


pytestmark = pytest.mark.usefixtures("one_thread")

RECORDS = [
    {"age": 30, "sex": "F", "height_cm": 165, "weight_kg": 60, "patient_type": "outpatient", "event": "sport"},
    {"age": "50", "sex": "male", "height_cm": 180.0, "weight_kg": 90, "patient_type": "inpatient", "event": "fall"},
    {"age": None, "sex": "", "height_cm": "", "patient_type": None},
]


def test_encoding_standardises_and_marks_missing():
    spec = fit_ehr_spec(RECORDS)
    assert spec["stats"]["age"][0] == pytest.approx(40.0)
    assert spec["patient_types"] == ["inpatient", "outpatient"] and spec["events"] == ["fall", "sport"]
    b = encode_ehr(RECORDS, spec)
    mean, std = spec["stats"]["age"]
    assert b["numeric"][0, 0] == pytest.approx((30 - mean) / std)
    assert b["numeric_missing"][2].tolist() == [1, 1, 1] and b["numeric"][2].tolist() == [0, 0, 0]
    assert b["sex"].tolist() == [1, 2, 0]
    assert b["patient_type"].tolist() == [2, 1, 0]
    assert b["present"].tolist() == [True, True, False]
    # a category never seen in training maps to "unknown" rather than failing
    assert encode_ehr([{"event": "car accident"}], spec)["event"].tolist() == [0]


@pytest.mark.parametrize("record, message", [
    ({"age": -1}, "age"), ({"age": 130}, "age"), ({"height_cm": 1.8}, "height_cm"),
    ({"weight_kg": "heavy"}, "not a number"), ({"sex": "yes"}, "sex"), ({"heigth_cm": 170}, "unknown field"),
])
def test_invalid_values_raise_user_error(record, message):
    spec = fit_ehr_spec(RECORDS)
    with pytest.raises(UserError, match=message):
        encode_ehr([record], spec)


def test_cases_without_ehr_keep_mri_logits():
    spec = fit_ehr_spec(RECORDS)
    head = EHRFusionHead(spec, n_labels=2).eval()
    z = torch.randn(3, 2)
    fused = head(z, RECORDS)
    torch.testing.assert_close(fused[2], z[2])
    assert not torch.allclose(fused[:2], z[:2])


def _toy(n, rng):
    """Label 0 depends mostly on age and the injury event; MRI logits are weak noisy evidence."""
    events = np.array(["sport", "fall", "traffic"])
    age = rng.uniform(15, 80, n)
    event = rng.integers(0, 3, n)
    risk = (age - 45) / 12 + 2.0 * (event == 0) - 1.0
    y0 = (risk + rng.normal(0, 0.5, n) > 0).astype(np.float32)
    y1 = rng.integers(0, 2, n).astype(np.float32)
    labels = np.stack([y0, y1], 1)
    mri = np.stack([0.4 * (2 * y0 - 1) + rng.normal(0, 1.5, n), 2.0 * (2 * y1 - 1) + rng.normal(0, 1.0, n)], 1)
    records = [{"age": float(a), "sex": rng.choice(["F", "M", None]), "event": str(events[e]),
                "height_cm": None if i % 7 == 0 else float(rng.normal(172, 8))} for i, (a, e) in enumerate(zip(age, event))]
    return torch.tensor(mri, dtype=torch.float32), records, labels


def test_alpha_moves_toward_informative_ehr_and_beats_mri_only():
    rng = np.random.default_rng(0)
    z_train, rec_train, y_train = _toy(400, rng)
    z_test, rec_test, y_test = _toy(300, rng)
    head, history = fit_ehr_fusion(z_train, rec_train, y_train, FitConfig(lr=1e-2, max_epochs=150, patience=20))
    alpha = head.alpha.detach()
    assert alpha[0] < 0.4  # EHR carries label 0: α moved from 0.5 toward the EHR branch
    assert alpha[0] < alpha[1]  # MRI carries label 1
    with torch.no_grad():
        fused = head(z_test, rec_test).numpy()
    assert roc_auc_score(y_test[:, 0], fused[:, 0]) > roc_auc_score(y_test[:, 0], z_test[:, 0].numpy()) + 0.1
    assert history["alpha"] == pytest.approx(alpha.tolist())
