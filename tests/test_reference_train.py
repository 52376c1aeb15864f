"""Reference tier (opt-in): the fine-tuning step against DeepLabCut 3.0.2 live, every element.

    .venv/bin/python -m pytest -m reference tests/test_reference_train.py -s

Runs ``tests/reference/make_train_fixtures.py --full`` in the reference environment (``.ref/``): DeepLabCut's
own dataset, targets, loss, gradients and three AdamW steps, float32 and float64, with every
parameter leaf kept whole (~430 MB in a temporary folder), then the checks of
``test_train_parity.py`` on all of it instead of the committed subsets.  About 10 minutes on 2 cores.
"""

import json

import numpy as np
import pytest
import test_train_parity as parity

from conftest import run_reference_script

pytestmark = pytest.mark.reference


@pytest.fixture(scope='module')
def golden(tmp_path_factory):
    out = tmp_path_factory.mktemp('live_train')
    run_reference_script('make_train_fixtures.py', out, '--full')
    with (np.load(out / 'train_step_golden_full.npz') as g,
          np.load(out / 'train_step_golden_float64_full.npz') as g64):
        g, g64 = dict(g), dict(g64)
    assert not any(k.startswith('grad_index/') for k in g)  # Every leaf whole.
    return g, g64, json.loads((out / 'train_step_manifest_full.json').read_text())


setup = parity.setup
ours32 = parity.ours32
ours64 = parity.ours64
test_live_batch = parity.test_batch_matches_deeplabcut_dataset
test_live_head = parity.test_head_is_sliced_as_deeplabcut_slices_it
test_live_loss = parity.test_loss_matches_deeplabcut
test_live_gradients = parity.test_gradients_match_deeplabcut
test_live_float64 = parity.test_float64_step_equals_deeplabcut_float64
test_live_three_steps = parity.test_three_adamw_steps_match_deeplabcut
