"""The ``semantic`` task: the numpy embedder, grouping by meaning, the vote, features, threshold fit,
and a whole calibrate/evaluate on free-form traces under oracle-agreement labels."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import write_traces

from pyramid_moa.artifact import load_artifact
from pyramid_moa.cores import SIGNALS, PairModel, answer_core, default_pair_model, embedding_text, fit_pair_model
from pyramid_moa.dataset import load_routing_data
from pyramid_moa.embedding import DIM, default_embedder
from pyramid_moa.features import AgentOutput, make_feature_set
from pyramid_moa.fitting import Target, fit_router
from pyramid_moa.semantic import SemanticFeatures, groups, prepare, semantic_vote


@pytest.fixture(scope="module")
def emb():
    return default_embedder()


def test_tokenizer_matches_bert_uncased_ids(emb):
    # bert-base-uncased vocabulary ids: [CLS]=101, hello=7592, world=2088, !=999, [SEP]=102
    assert emb.tokenizer.encode("Hello, WORLD!") == [101, 7592, 1010, 2088, 999, 102]
    # Accents stripped, long inputs cut to 256 tokens with [SEP] kept last.
    assert emb.tokenizer.encode("café") == emb.tokenizer.encode("cafe")
    long = emb.tokenizer.encode("word " * 1000)
    assert len(long) == 256 and long[-1] == 102


def test_embeddings_are_unit_vectors_and_paraphrases_are_closer(emb):
    v = emb.embed(
        [
            "The capital of France is Paris.",
            "Paris is France's capital city.",
            "Photosynthesis turns light into chemical energy.",
        ]
    )
    assert v.shape == (3, DIM)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    sim = v @ v.T
    assert sim[0, 1] > 0.8 > 0.2 > sim[0, 2]
    # One text alone embeds as in a batch with others (padding masked out).
    np.testing.assert_allclose(emb.embed(["Paris is France's capital city."])[0], v[1], atol=1e-5)
    np.testing.assert_allclose(
        emb.embed(["a b", "a much longer sentence here"], batch=2)[0], emb.embed(["a b"])[0], atol=1e-5
    )


def _out(name: str, text: str | None, vec=None, failed: bool = False) -> AgentOutput:
    v = None if vec is None else np.asarray(vec, np.float32) / np.linalg.norm(vec)
    return AgentOutput(name, text, text, 10, failed=failed, embedding=v)


LEXICAL = default_pair_model()  # no cosine: no embeddings needed


def test_groups_are_connected_components_in_first_member_order():
    prob = np.array([[1, 0.2, 0.9, 0.1], [0.2, 1, 0.3, 0.95], [0.9, 0.3, 1, 0.2], [0.1, 0.95, 0.2, 1]])
    assert groups(prob, [True] * 4) == [0, 1, 0, 1]
    assert groups(prob, [True, False, True, True]) == [0, None, 0, 1]
    assert groups(prob, [True] * 4, 0.05) == [0, 0, 0, 0]


def test_cores_read_the_claim_not_the_wording():
    q = "who got the first nobel prize in physics"
    span = answer_core("Wilhelm Rontgen", q)
    para = answer_core("The first Nobel Prize in Physics was awarded in 1901 to Wilhelm Rontgen for X-rays.", q)
    other = answer_core("The first Nobel Prize in Physics was awarded in 1903 to Marie Curie for radioactivity.", q)
    assert "rontgen" in span.words and "nobel" not in para.words  # the question's own words are not the claim
    assert LEXICAL.same(span, para) > 0.5 > LEXICAL.same(span, other)
    assert LEXICAL.same(para, other) < 0.5  # same shape, another laureate
    assert embedding_text("Wilhelm Rontgen", q) == "Wilhelm Rontgen"


def test_vote_is_largest_group_weights_apply_and_answer_is_the_most_complete_member():
    q = "who got the first nobel prize in physics"
    outs = [
        _out("x", "Wilhelm Rontgen"),
        _out("y", "It was awarded in 1901 to Wilhelm Rontgen for his discovery of X-rays."),
        _out("z", "Rontgen"),
        _out("w", "Marie Curie"),
    ]
    vote, _, labels, _ = semantic_vote(outs, LEXICAL, q)
    assert labels == [0, 0, 0, 1]
    assert (vote.answer, vote.key, vote.count, vote.n_distinct) == (outs[1].answer, "g0", 3, 2)
    vote, _, _, _ = semantic_vote(outs, LEXICAL, q, weights=[1, 1, 1, 4])  # a heavy lone agent wins
    assert (vote.answer, vote.count) == ("Marie Curie", 1)
    outs2 = [_out("x", None), _out("y", "Curie", failed=True), _out("z", "Rontgen")]
    vote, _, labels, _ = semantic_vote(outs2, LEXICAL, q)
    assert labels == [None, None, 0] and vote.answer == "Rontgen"
    with_cos = default_pair_model(with_cosine=True)
    with pytest.raises(ValueError, match="answer has no embedding"):
        semantic_vote([_out("z", "a"), _out("y", "b")], with_cos, q)


def test_features_describe_the_group_structure():
    fs = make_feature_set("semantic", ["x", "y", "z"], pair_model=LEXICAL.to_dict())
    assert isinstance(fs, SemanticFeatures) and fs.pair_model.signals == LEXICAL.signals
    outs = [
        _out("x", "Paris"),
        _out("y", "The capital is Paris, on the Seine."),
        _out("z", "I'm sorry, I cannot say: Lyon"),
    ]
    x, vote = fs("what is the capital of france", outs)
    f = dict(zip(fs.names, x))
    assert len(x) == len(fs.names)
    assert f["vote_share"] == pytest.approx(2 / 3) and f["runner_up_share"] == pytest.approx(1 / 3)
    assert f["same_within_winner"] > 0.5 > f["same_between"] and f["contained_in_winner"] == 1.0
    assert (f["agrees[x]"], f["agrees[y]"], f["agrees[z]"]) == (1.0, 1.0, 0.0)
    assert f["answer_hedges"] == 0.0 and vote.answer == "The capital is Paris, on the Seine."
    with pytest.raises(ValueError, match="pair model"):
        make_feature_set("semantic", ["x"], pair_model={"prior": 0.5})
    # The task's options reach every feature set; one that does not use an option ignores it.
    assert make_feature_set("agreement", ["x"], pair_model=LEXICAL.to_dict()).names == ["vote_share", "agrees[x]"]


def test_pair_model_fits_with_and_without_labels():
    rng = np.random.default_rng(0)
    same = rng.random(600) < 0.4
    levels = np.zeros((600, len(SIGNALS)), int)
    levels[:, 0] = same & (rng.random(600) < 0.6)
    levels[:, 1] = np.where(same, rng.integers(2, 4, 600), rng.integers(0, 2, 600))
    levels[:, 2] = np.where(same, rng.integers(1, 4, 600), rng.integers(0, 2, 600))
    levels[:, 4] = np.where(rng.random(600) < 0.5, np.where(same, 2, 1), 0)
    for model in (fit_pair_model(levels), fit_pair_model(levels, same)):
        p = np.array([model.prob(lv) for lv in levels])
        assert ((p >= 0.5) == same).mean() > 0.9, model.fitted
        assert PairModel.from_dict(model.to_dict()).prob(levels[0]) == pytest.approx(p[0])
    assert fit_pair_model(levels).fitted == "em" and fit_pair_model(levels, same).fitted == "judgements"
    with pytest.raises(ValueError, match="all one class"):
        fit_pair_model(levels, np.ones(600, bool))


_ANSWERS = {  # paraphrase families, one per topic; the oracle says the first of each
    "paris": ["The capital of France is Paris.", "Paris is the French capital.", "France's capital city is Paris."],
    "blue": [
        "The sky looks blue because of Rayleigh scattering: air scatters short blue wavelengths of sunlight more.",
        "Rayleigh scattering: blue light is scattered by the atmosphere far more than red light.",
        "Because of Rayleigh scattering of sunlight in the air.",
    ],
    "water": ["Water boils at 100 degrees Celsius at sea level.", "At sea level water boils at 100 °C."],
}
_OFF_TOPIC = [
    "Bananas are rich in potassium.",
    "The stock market closed lower on Friday.",
    "Mount Everest is the highest mountain on Earth.",
    "Python is a popular programming language.",
]


def _free_form_traces(tmp_path):
    """60 free-form questions: on 40 the committee and the oracle say the same thing in other words;
    on 20 two agents wander off topic (each elsewhere) and the vote, a three-way tie, goes to the first."""
    rng = np.random.default_rng(1)
    questions, lines = [], {"a1": [], "a2": [], "a3": [], "big": []}
    for i in range(60):
        topic = ["paris", "blue", "water"][i % 3]
        fam = _ANSWERS[topic]
        texts = [fam[rng.integers(len(fam))] for _ in range(3)]
        if i % 3 == 0:
            texts[0], texts[1] = _OFF_TOPIC[i % 4], _OFF_TOPIC[(i + 1) % 4]
        questions.append({"idx": i, "question": f"free-form question {i} about {topic}?", "gold": None})
        for name, t in zip(["a1", "a2", "a3", "big"], [*texts, fam[0]]):
            lines[name].append(json.dumps({"idx": i, "samples": [{"text": t, "answer": None, "output_tokens": 20}]}))
    return write_traces(tmp_path / "ff", questions, lines)


def test_free_form_calibrate_and_route_under_oracle_labels(tmp_path, emb):
    root = _free_form_traces(tmp_path)
    data = load_routing_data(str(root), ["a1", "a2", "a3"], "big", task="semantic", params={"big": [70.0]})
    assert data.labels == "oracle"  # no gold: oracle-agreement labels
    model = prepare(data, tmp_path / "emb.npz")
    assert model.uses_embedding and model.fitted == "em"
    assert data.outputs["a1"][0].answer == data.outputs["a1"][0].text.strip()
    # The oracle's own answer agrees with itself; a paraphrase of it agrees too.
    assert data.correct(data.answers("big")).all()
    art = fit_router(data, np.arange(data.n), Target("max_disagreement", 0.0), "flops", "semantic")
    assert art.task == "semantic" and art.task_options["pair_model"] == model.to_dict()
    assert art.arbiter is None  # vote weights: the members' own accuracies (reliability_weights), ties only
    path = tmp_path / "calib.json"
    art.save(path)
    router = load_artifact(path).router()
    assert router.stages[-1].features.pair_model.to_dict() == model.to_dict()
    escalated = {}
    for r in range(data.n):
        res = router.route(data.questions[r], lambda m, r=r: data.outputs[m][r])
        escalated[r] = res.escalated
        if not res.escalated:  # an accepted answer is one committee member's text, verbatim
            assert res.answer in {o.answer for o in (data.outputs[a][r] for a in data.committee)}
    split = [r for r in range(data.n) if r % 3 == 0]
    agreed = [r for r in range(data.n) if r % 3 != 0]
    # Exactly the split questions are labelled wrong, and they are the ones sent to the oracle.
    assert not data.correct(data.features("semantic", data.committee)[1])[split].any()
    assert data.correct(data.features("semantic", data.committee)[1])[agreed].all()
    assert np.mean([escalated[r] for r in split]) > 0.9 and np.mean([escalated[r] for r in agreed]) < 0.2
    # The embeddings were cached: a second prepare embeds nothing new.
    data2 = load_routing_data(str(root), ["a1", "a2", "a3"], "big", task="semantic")
    assert prepare(data2, tmp_path / "emb.npz").to_dict() == model.to_dict()


def test_semantic_gold_is_graded_by_its_aliases_or_a_grader(tmp_path):
    root = write_traces(
        tmp_path / "g",
        [{"idx": 0, "question": "q", "gold": "4/four"}],
        {n: [json.dumps({"idx": 0, "samples": [{"text": "2+2 is 4. #### 4", "answer": "4"}]})] for n in "abcd"},
    )
    data = load_routing_data(str(root), ["a", "b", "c"], "d", task="semantic")
    prepare(data, None, embed=False, pair_model=LEXICAL)
    assert data.labels == "gold" and data.correct(data.answers("a")).all()  # the alias "4" is in the answer
    graded = load_routing_data(str(root), ["a", "b", "c"], "d", task="semantic")
    prepare(graded, None, embed=False, grade="text", pair_model=LEXICAL)
    assert not graded.correct(graded.answers("a")).any()  # the text task's exact match: not "4"
    oracle_labelled = load_routing_data(str(root), ["a", "b", "c"], "d", task="semantic", labels="oracle")
    prepare(oracle_labelled, None, embed=False, pair_model=LEXICAL)
    assert oracle_labelled.correct(oracle_labelled.answers("a")).all()


def test_symmetric_semantic_features_have_no_per_agent_feature():
    outs = [_out("x", "Paris"), _out("y", "It is Paris"), _out("z", "Lyon")]
    full = make_feature_set("semantic", ["x", "y", "z"])
    sym = make_feature_set("semantic_symmetric", ["x", "y", "z"])
    assert sym.symmetric and not any("[" in n for n in sym.names)
    assert sym.names == make_feature_set("semantic_symmetric", ["p", "q", "r"]).names
    xf, vf = full("q", outs)
    xs, vs = sym("q", outs)
    assert vs == vf and xs == [v for n, v in zip(full.names, xf) if not n.startswith("agrees[")]
