"""Pipeline in process: wiring, running, errors, identity, pickling, and the ready steps."""

from __future__ import annotations

import functools
import pickle

import cloudpickle
import numpy as np
import pytest

import taskflow as tf
from taskflow.errors import InputError, PipelineError, ShapeError
from taskflow.ir.fingerprint import model_hash
from taskflow.pipeline.steps import L2Normalize, MeanPool, Normalize, Resize, Softmax, TopK

from .pipeline_helpers import average, ensemble, mlp, raw_rows, reference, scale


@pytest.fixture(scope="module")
def models():
    return mlp(1), mlp(2)


def test_chain_wiring_names_each_value_after_its_stage(models):
    a, _ = models
    pipe = tf.Pipeline([("pre", scale), ("model", a), ("soft", Softmax())], name="chain")
    assert pipe.input_names == ["raw"]  # the first function's parameter
    assert [s.input_values for s in pipe.stages] == [["raw"], ["pre"], ["model"]]
    assert pipe.output_names == ["soft"]
    raw = raw_rows(12)
    got = pipe(dict(raw=raw))["soft"]
    logits = a.run(None, {"input": scale(raw)})[0]
    e = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(got, e / e.sum(1, keepdims=True), rtol=1e-6)
    assert got.std(axis=0).min() > 1e-3  # the rows differ: the model saw them


def test_fan_out_and_fan_in_match_the_hand_written_ensemble(models):
    a, b = models
    raw = raw_rows(40)
    got = ensemble(a, b)(dict(raw=raw))
    want = reference(a, b, raw)
    assert list(got) == ["labels", "scores", "avg"]
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-6, err_msg=name)
    assert len(set(got["labels"][:, 0])) > 1  # the top label depends on the input


def test_nested_pipeline_is_a_stage_and_names_its_outputs(models):
    a, b = models
    inner = tf.Pipeline([tf.Stage("a", a, inputs=["x"]), tf.Stage("b", b, inputs=["x"])],
                        name="pair", outputs=["a", "b"])
    outer = tf.Pipeline([tf.Stage("pre", scale, inputs=["raw"]), tf.Stage("pair", inner),
                         tf.Stage("avg", average, inputs=["pair.a", "pair.b"])])
    raw = raw_rows(9)
    np.testing.assert_allclose(outer(dict(raw=raw))["avg"], reference(a, b, raw)["avg"],
                               rtol=1e-6)
    assert len(outer.models()) == 2 and set(outer.stage_models()) == {"pair/a", "pair/b"}


def test_only_the_stages_an_output_needs_run(models):
    a, _ = models
    calls = []

    def after(x):
        calls.append(len(x))
        return x

    pipe = tf.Pipeline([("pre", scale), ("model", a), ("after", after)])
    pre, = pipe.run(["pre"], {"raw": raw_rows(5)})  # an intermediate as an output
    assert pre.dtype == np.float32 and calls == []
    pipe.run(None, {"raw": raw_rows(5)})
    assert calls == [5]


def test_stage_batch_size_slices_big_batches_with_the_same_result(models):
    a, _ = models
    seen = []

    def pre(raw):
        seen.append(len(raw))
        return scale(raw)

    raw = raw_rows(23)
    whole = tf.Pipeline([("pre", pre), ("model", a)])(dict(raw=raw))["model"]
    sliced = tf.Pipeline([tf.Stage("pre", pre, batch_size=10),
                          tf.Stage("model", a, batch_size=4)])(dict(raw=raw))["model"]
    assert seen == [23, 10, 10, 3]
    np.testing.assert_allclose(sliced, whole, rtol=1e-5, atol=1e-6)  # GEMM blocking by rows


@pytest.mark.parametrize("build, match", [
    (lambda a: [("pre", scale), tf.Stage("m", a, inputs=["nope"])], r"reads \['nope'\].*"
     r"values before it are \['raw', 'pre'\]"),
    (lambda a: [("pre", scale), ("pre", scale)], "two stages are named 'pre'"),
    (lambda a: [tf.Stage("m", a, inputs=["x", "y"])], r"takes 1 input\(s\) \['input'\]"),
    (lambda a: [("pre", scale), tf.Stage("m", a, outputs=["pre"])], r"writes \['pre'\]"),
    (lambda a: [tf.Stage("m", a, inputs={"wrong": "x"})], "must map each of the op's inputs"),
    (lambda a: [("m", 42)], "expected a Model, an ONNX path"),
])
def test_wiring_mistakes_are_named_before_anything_runs(models, build, match):
    with pytest.raises(PipelineError, match=match):
        tf.Pipeline(build(models[0]))


def test_unknown_outputs_and_feeds_are_input_errors(models):
    pipe = tf.Pipeline([("pre", scale), ("model", models[0])])
    with pytest.raises(PipelineError, match=r"output\(s\) \['x'\] are no stage's value"):
        tf.Pipeline([("pre", scale)], outputs=["x"])
    with pytest.raises(InputError, match=r"takes inputs \['raw'\]; the feed has \['images'\]"):
        pipe.run(None, {"images": raw_rows(2)})
    with pytest.raises(InputError, match=r"unknown output name\(s\) \['nope'\]"):
        pipe.run(["nope"], {"raw": raw_rows(2)})


def test_a_stage_that_loses_the_batch_rows_is_a_shape_error():
    pipe = tf.Pipeline([("total", lambda x: x.sum(axis=0))])  # mixes rows: forbidden
    with pytest.raises(ShapeError, match=r"stage 'total' output 'total' has shape \(3,\) for "
                                         r"a batch of 5 rows"):
        pipe.run(None, {"x": np.ones((5, 3))})


def test_a_failing_function_names_its_stage():
    pipe = tf.Pipeline([("boom", lambda x: 1 / 0)])
    with pytest.raises(tf.TaskflowError, match=r"stage 'boom' \(.*<lambda>\) failed on a batch "
                                               r"of 2 rows: ZeroDivisionError"):
        pipe.run(None, {"x": np.ones((2, 3))})


def test_a_dict_result_is_matched_by_key_and_a_tuple_by_position():
    pipe = tf.Pipeline([
        tf.Stage("split", lambda x: {"hi": x + 1, "lo": x - 1}, outputs=["lo", "hi"]),
        tf.Stage("pair", lambda lo, hi: (hi - lo, hi + lo), inputs=["lo", "hi"],
                 outputs=["diff", "sum"])], outputs=["diff", "sum", "lo"])
    diff, total, lo = pipe.run(None, {"x": np.arange(4.0)})
    assert diff.tolist() == [2.0] * 4 and total.tolist() == [0.0, 2.0, 4.0, 6.0]
    assert lo.tolist() == [-1.0, 0.0, 1.0, 2.0]
    bad = tf.Pipeline([tf.Stage("two", lambda x: (x, x, x), outputs=["a", "b"])])
    with pytest.raises(ShapeError, match=r"returned 3 arrays; its outputs are \['a', 'b'\]"):
        bad.run(None, {"x": np.ones(2)})


def test_fingerprint_follows_code_closures_weights_and_wiring(models):
    a, b = models

    def make(threshold, model):
        return tf.Pipeline([("pre", lambda raw: (raw > threshold).astype(np.float32)),
                            ("m", model)])

    base = make(100, a).fingerprint()
    assert make(100, a).fingerprint() == base  # equal construction, equal identity
    assert make(101, a).fingerprint() != base  # a closure's value is part of the job
    assert make(100, b).fingerprint() != base  # other weights
    assert tf.Pipeline([("pre", lambda raw: (raw >= 100).astype(np.float32)), ("m", a)]
                       ).fingerprint() != base  # other code
    assert model_hash(make(100, a)) == base  # the stream's identity is the pipeline's own
    steps = [tf.Pipeline([("t", TopK(k))]).fingerprint() for k in (3, 3, 4)]
    assert steps[0] == steps[1] != steps[2]
    # a pipeline file's step with args is a functools.partial: its arguments count too
    clipped = [tf.Pipeline([("c", functools.partial(np.clip, a_min=0, a_max=hi))]).fingerprint()
               for hi in (1.0, 1.0, 2.0)]
    assert clipped[0] == clipped[1] != clipped[2]


def test_a_pipeline_pickles_with_its_models_as_graphs(models):
    a, b = models
    pipe = ensemble(a, b)
    raw = raw_rows(10)
    back = pickle.loads(cloudpickle.dumps(pipe))
    assert back.fingerprint() == pipe.fingerprint()
    for name, want in pipe(dict(raw=raw)).items():
        np.testing.assert_array_equal(back(dict(raw=raw))[name], want)


def test_top_k_and_softmax_match_numpy():
    x = np.random.default_rng(3).standard_normal((50, 30)).astype(np.float32)
    out = TopK(5)(x)
    want = np.argsort(-x, axis=1)[:, :5]
    np.testing.assert_array_equal(out["labels"], want)
    np.testing.assert_array_equal(out["scores"], np.take_along_axis(x, want, 1))
    assert TopK(5)(x.reshape(50, 30, 1, 1))["labels"].shape == (50, 5)  # CNN logits
    p = Softmax()(x)
    np.testing.assert_allclose(p.sum(1), 1, rtol=1e-6)
    assert (np.argmax(p, 1) == want[:, 0]).all()


def test_mean_pool_ignores_padding_and_l2_normalises():
    rng = np.random.default_rng(4)
    h = rng.standard_normal((3, 6, 4)).astype(np.float32)
    mask = np.array([[1] * 6, [1, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0]])
    pooled = MeanPool()(h, mask)
    for i, n in enumerate([6, 3, 1]):
        np.testing.assert_allclose(pooled[i], h[i, :n].mean(0), rtol=1e-5)
    unit = L2Normalize()(pooled)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1, rtol=1e-6)


def test_resize_reproduces_a_linear_ramp_and_keeps_constants():
    ramp = np.tile(np.arange(16, dtype=np.float32), (1, 8, 1))[..., None]  # (1, 8, 16, 1)
    out = Resize(4, 8)(ramp)[0, :, :, 0]
    centres = (np.arange(8) + 0.5) * 2 - 0.5  # half-pixel centres of 8 outputs over 16
    np.testing.assert_allclose(out, np.tile(centres, (4, 1)), atol=1e-5)
    flat = np.full((2, 5, 7, 3), 200, np.uint8)
    assert (Resize(9, 3)(flat) == 200).all() and Resize(9, 3)(flat).dtype == np.uint8


def test_normalize_matches_the_formula_and_transposes():
    x = np.random.default_rng(5).integers(0, 256, (2, 4, 5, 3)).astype(np.uint8)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    y = Normalize(1 / 255, mean, std, layout="NHWC->NCHW")(x)
    want = ((x / 255.0 - mean) / std).transpose(0, 3, 1, 2)
    assert y.shape == (2, 3, 4, 5) and y.dtype == np.float32
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)
