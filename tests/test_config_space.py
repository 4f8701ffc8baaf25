"""A property over the config space (hypothesis, seeded): every drawn config is either refused at validation in
one line naming a key, or trains a tiny fit whose export serves what `eval` wrote. bench/config_fuzz.py runs the
same property over a few hundred configs."""

import shutil

import pytest
from config_space import (fit_or_refused_by_data, overrides, refused_in_one_line, served_as_evaluated, with_source,
                          write_sources)
from conftest import LUNG
from hypothesis import HealthCheck, given, seed, settings

from medkeras.config import load_config
from medkeras.errors import ConfigError


@pytest.fixture(scope="module")
def sources(tmp_path_factory, breast):
    return write_sources(tmp_path_factory.mktemp("fuzz-data"), breast, LUNG)


@seed(20261201)
@settings(max_examples=20, deadline=None, database=None, derandomize=False,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(drawn=overrides())
def test_a_config_is_refused_in_one_line_or_runs_whole(drawn, sources, tmp_path_factory):
    import keras

    try:
        cfg = load_config("demo", with_source(drawn, sources))
    except ConfigError as exc:
        refused_in_one_line(exc)
        return
    work = tmp_path_factory.mktemp("case")
    try:
        run = fit_or_refused_by_data(cfg, work / "run")
        if run is not None:
            served_as_evaluated(run, work / "serving")
    finally:
        keras.backend.clear_session()
        shutil.rmtree(work, ignore_errors=True)
