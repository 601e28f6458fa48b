"""Settings records: one typed record per kind of work; single settings may still be given as keywords."""

from __future__ import annotations

import pytest

from xlsteer.errors import UsageError
from xlsteer.evaluation.config import EvalConfig
from xlsteer.evaluation.engine import EngineCall
from xlsteer.settings import parameters_of


def test_a_keyword_overrides_the_record_and_an_unknown_name_is_one_line():
    base = EvalConfig(limit=5, seed=3)
    cfg = EvalConfig.of(base, split="dev")
    assert (cfg.split, cfg.limit, cfg.seed) == ("dev", 5, 3) and base.split == "test"
    with pytest.raises(UsageError, match=r"^unknown evaluation setting\(s\) splt; known: split, limit, "):
        EvalConfig.of(base, splt="dev")


def test_none_is_not_given_unless_none_is_a_value_of_that_setting():
    assert EvalConfig.of(EvalConfig(split="dev"), split=None).split == "dev"  # a command line's unset option
    assert EvalConfig.of(EvalConfig(limit=5), limit=None).limit is None  # every item
    assert EngineCall.of(None, anchor=None).anchor is None  # steer every row
    assert EngineCall.of(None).anchor == "en"


def test_what_fit_param_may_set_is_the_fit_functions_record():
    from xlsteer.cli.params import parse_params
    from xlsteer.interventions.clas import fit_clas
    from xlsteer.interventions.learned import fit_learned

    learned = parameters_of(fit_learned)
    assert {"steps", "lr", "patience", "objective", "anchor"} <= set(learned) and "cfg" not in learned
    assert learned["steps"] == "int" and {"beta", "k", "category_langs", "meta"} <= set(parameters_of(fit_clas))
    assert parse_params("learned", ("steps=3", "lr=0.1")) == {"steps": 3, "lr": 0.1}
    with pytest.raises(UsageError, match="learned has no parameter 'stepz'; its parameters: .*steps"):
        parse_params("learned", ("stepz=3",))
    with pytest.raises(UsageError, match="wrong type"):
        parse_params("learned", ("steps=fast",))


def test_a_settings_keyword_reaches_the_fit():
    """``fit_clas(..., beta=0.3)`` and ``fit_clas(..., ClasConfig(beta=0.3))`` are the same fit."""
    from xlsteer.interventions.clas import ClasConfig, fit_clas
    from xlsteer.models.sites import Site
    from xlsteer.stats import collect
    from xlsteer.testing import tiny_model

    lm = tiny_model("llama")
    texts = {lang: [f"{lang} text number {i}" for i in range(4)] for lang in ("en", "de", "sw")}
    stats = collect(lm, texts, [Site(0, "mlp_act"), Site(1, "mlp_act")], batch_size=2)
    a = fit_clas(stats, ["en", "de", "sw"], layers=[0], beta=0.3)
    b = fit_clas(stats, ["en", "de", "sw"], layers=[0], cfg=ClasConfig(beta=0.3))
    assert a.params["beta"] == b.params["beta"] == 0.3
    assert all((a.tensors[k] == b.tensors[k]).all() for k in a.tensors)
