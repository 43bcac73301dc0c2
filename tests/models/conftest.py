"""Fixtures: tiny random Hugging Face models saved to temporary directories."""

import pytest

from tests.models.hf_util import make_hf_model


@pytest.fixture(scope="session")
def saved_hf(tmp_path_factory):
    """family -> (torch model, directory written by save_pretrained); built once per session."""
    pytest.importorskip("transformers")
    cache = {}

    def get(family):
        if family not in cache:
            model = make_hf_model(family)
            path = tmp_path_factory.mktemp(f"hf_{family}")
            model.save_pretrained(path)
            cache[family] = (model, path)
        return cache[family]

    return get
