"""Bad arguments fail early and clearly.

Every mistake a user can make with the public API must raise a ``ValueError`` or a
``TypeError`` whose message names the offending argument (so the user knows what to
fix), never an ``AssertionError`` or a ``RuntimeError`` from deep inside torch. Each
test matches the argument's name in the message with ``pytest.raises(..., match=...)``;
``_clear`` additionally checks that the exception is of an allowed type and not a
subclass of ``AssertionError``/``RuntimeError``.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Iterator

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from doi import ClassDoI, DatasetDoI, LineDoI, NoiseDoI, PointDoI
from influence import input_influence, internal_influence
from models import mlp, res_cnn
from qoi import ClassQoI, NeuronQoI
from slices import Cut, Slice


@contextmanager
def _clear(kind: type[Exception] | tuple[type[Exception], ...], *names: str) -> Iterator[None]:
    """``pytest.raises(kind, match=names[0])`` plus: the message mentions every name in
    ``names`` and the exception is not an assertion or a torch runtime error."""
    pattern = re.escape(names[0])
    with pytest.raises(kind, match=pattern) as info:
        yield
    error = info.value
    assert not isinstance(error, (AssertionError, RuntimeError)), repr(error)
    assert isinstance(error, (ValueError, TypeError)), repr(error)
    message = str(error)
    for name in names[1:]:
        assert name in message, f"{name!r} not in {message!r}"


@pytest.fixture
def model() -> nn.Sequential:
    return mlp(in_features=6, hidden=8, classes=3, seed=0)


@pytest.fixture
def x(rng: torch.Generator) -> torch.Tensor:
    return torch.randn(4, 6, generator=rng)


@pytest.fixture
def y() -> torch.Tensor:
    return torch.tensor([0, 1, 0, 1])


# --- baselines -------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(5,), (4, 5), (2, 3), (4, 6, 1)])
def test_baseline_of_wrong_shape_names_baseline_and_expected_shape(model, x, shape):
    """A tensor baseline that neither broadcasts to one point ``(6,)`` nor has one row
    per point ``(N, 6)``: the message names ``baseline``, its shape and the expected one."""
    with _clear(ValueError, "baseline", str(shape), "(6,)", "(N, 6)"):
        input_influence(model, 0, LineDoI(baseline=torch.zeros(shape)), x)


def test_baseline_with_too_few_rows_names_baseline(model, x):
    """One row per point, but fewer rows than points."""
    with _clear(ValueError, "baseline", "(N, 6)"):
        input_influence(model, 0, LineDoI(baseline=torch.zeros(2, 6)), x)


def test_callable_baseline_of_wrong_shape_names_baseline(model, x):
    with _clear(ValueError, "baseline", "(6,)"):
        input_influence(model, 0, LineDoI(baseline=lambda a: torch.zeros(a.shape[0], 5)), x)


def test_slice_space_baseline_of_wrong_shape_names_activations(model, x):
    """In slice space the baseline lives at the cut (8 hidden units here)."""
    doi = LineDoI(baseline=torch.zeros(6), space="slice")
    with _clear(ValueError, "baseline", "(8,)", "activations at the cut"):
        internal_influence(Slice(model, "1"), 0, doi, x)


@pytest.mark.parametrize("baseline", ["zero", None, True, [0.0] * 6])
def test_baseline_of_wrong_type(baseline):
    with _clear(TypeError, "baseline"):
        LineDoI(baseline=baseline)


# --- data of population DoIs -----------------------------------------------------------


def test_class_label_absent_from_tensors_fails_at_construction(x, y):
    """With ``(x, y)`` tensors the labels are at hand: the check is immediate and lists
    the labels present."""
    with _clear(ValueError, "label 7", "[0, 1]"):
        ClassDoI((x, y), 7)


@pytest.mark.parametrize("wrap", ["dataset", "loader"])
def test_class_label_absent_from_dataset_fails_at_run_time(model, x, y, wrap):
    """A Dataset or DataLoader is only read when the query runs; the absent label is
    reported then, as a ValueError naming the label (not an error about empty sums)."""
    data = TensorDataset(x, y)
    if wrap == "loader":
        data = DataLoader(data, batch_size=3)
    doi = ClassDoI(data, 7)  # accepted: the labels are not known yet
    with _clear(ValueError, "label 7"):
        input_influence(model, 0, doi)


def test_class_doi_needs_labels(model, x):
    with _clear(ValueError, "labels"):
        ClassDoI(x, 0)
    with _clear(ValueError, "labels"):
        input_influence(model, 0, ClassDoI(TensorDataset(x), 0))


@pytest.mark.parametrize("label", [1.0, "1", True, None])
def test_class_label_of_wrong_type(x, y, label):
    with _clear(TypeError, "label"):
        ClassDoI((x, y), label)


def test_empty_data_set(model, x, y):
    """An empty tensor, an empty pair, an empty Dataset fail at construction; an empty
    DataLoader (length unknown until read) at run time; all name ``data``."""
    with _clear(ValueError, "data is empty"):
        DatasetDoI(x[:0])
    with _clear(ValueError, "data is empty"):
        DatasetDoI(TensorDataset(x[:0]))
    with _clear(ValueError, "data is empty"):
        ClassDoI((x[:0], y[:0]), 0)
    with _clear(ValueError, "data is empty"):
        input_influence(model, 0, DatasetDoI(DataLoader(TensorDataset(x[:0]), batch_size=2)))
    with _clear(ValueError, "label 0"):
        input_influence(model, 0, ClassDoI(DataLoader(TensorDataset(x[:0], y[:0]), batch_size=2), 0))


@pytest.mark.parametrize("data", ["points", 3, (torch.zeros(2, 6),), (torch.zeros(2, 6), "y")])
def test_data_of_wrong_type(data):
    with _clear(TypeError, "data"):
        DatasetDoI(data)


def test_labels_that_do_not_match_the_points(x):
    with _clear(ValueError, "labels"):
        ClassDoI((x, torch.tensor([0, 1])), 0)


def test_inputs_with_no_points(model, x):
    """Pointwise inputs of shape ``(0, ...)`` (or a 0-d tensor) name ``inputs``."""
    with _clear(ValueError, "inputs", "(0, 6)"):
        input_influence(model, 0, PointDoI(), x[:0])
    with _clear(ValueError, "inputs"):
        input_influence(model, 0, PointDoI(), torch.tensor(1.0))


# --- quantities of interest -----------------------------------------------------------


@pytest.mark.parametrize("index", [8, 99, (8,), (0, 0)])
def test_neuron_index_out_of_range(model, x, index):
    """Layer "2" has 8 units: index 8 is out of range, a 2-tuple does not fit."""
    with _clear(ValueError, "index", repr(index)):
        internal_influence(Slice(model, "1"), NeuronQoI("2", index), PointDoI(), x)


def test_neuron_channel_index_out_of_range(rng):
    """res_cnn's ``layer1`` has 4 channels on an 8x8 map."""
    net = res_cnn(seed=0)
    images = torch.randn(2, 3, 8, 8, generator=rng)
    for index in (4, (0, 8, 0), (0, 0)):
        with _clear(ValueError, "index"):
            internal_influence(Slice(net, "stem"), NeuronQoI("layer1", index), PointDoI(), images)


@pytest.mark.parametrize("index", [-1, (0, -2)])
def test_neuron_negative_index(index):
    with _clear(ValueError, "index"):
        NeuronQoI("2", index)


@pytest.mark.parametrize("index", [1.5, "0", None, (), (1, 2.0), True])
def test_neuron_index_of_wrong_type(index):
    with _clear(TypeError, "index"):
        NeuronQoI("2", index)


def test_neuron_layer_of_wrong_type():
    with _clear(TypeError, "layer"):
        NeuronQoI(2, 0)  # type: ignore[arg-type]


def test_neuron_unknown_layer(model, x):
    with _clear(ValueError, "'zz'", "unknown layer"):
        internal_influence(Slice(model, "1"), NeuronQoI("zz", 0), PointDoI(), x)


def test_neuron_before_the_cut(model, x):
    """The neuron's layer "0" runs before the cut at "2": its value does not depend on
    the activations at the cut, so there is nothing to differentiate. Input-space DoIs
    (where layer "0" runs but is upstream of the cut) and slice-space DoIs (where it
    does not run at all, or runs on the fixed anchor for the hook realisation) both
    say that the layer must come after the cut."""
    for realisation in ("sequential", "graph", "hook"):
        slc = Slice(model, "2", realisation=realisation)
        for doi in (PointDoI(), NoiseDoI(samples=4, space="slice")):
            with _clear(ValueError, "NeuronQoI('0', 1)", "after the", "cut"):
                internal_influence(slc, NeuronQoI("0", 1), doi, x, seed=0)


def test_non_scalar_custom_qoi(model, x):
    """A callable returning the whole ``(B, C)`` output is not a QoI."""
    with _clear(ValueError, "one scalar per sample", "(4,)", "(4, 3)"):
        input_influence(model, lambda out: out, PointDoI(), x)
    with _clear(ValueError, "one scalar per sample"):
        input_influence(model, lambda out: out.sum(), PointDoI(), x)
    with _clear(ValueError, "one scalar per sample"):
        input_influence(model, lambda out: out[:2, 0], PointDoI(), x)


def test_class_qoi_out_of_range(model, x):
    with _clear(ValueError, "class 3", "3 classes"):
        input_influence(model, ClassQoI(3), PointDoI(), x)
    with _clear(ValueError, "class 5"):
        input_influence(model, 5, PointDoI(), x)  # int shorthand


@pytest.mark.parametrize("qoi", ["logit", 1.5, None, True, object()])
def test_qoi_of_wrong_type(model, x, qoi):
    with _clear(TypeError, "qoi"):
        input_influence(model, qoi, PointDoI(), x)


def test_empty_list_of_qois(model, x):
    with _clear(ValueError, "qoi", "empty"):
        input_influence(model, [], PointDoI(), x)
    with _clear(ValueError, "qoi", "empty"):
        input_influence(model, (), PointDoI(), x)


def test_class_qoi_arguments():
    with _clear(ValueError, "class"):
        ClassQoI(-1)
    with _clear(TypeError, "class"):
        ClassQoI("cat")  # type: ignore[arg-type]
    with _clear(TypeError, "output"):
        ClassQoI(0, output=1.5)


# --- slices ----------------------------------------------------------------------------


def test_unknown_layer_lists_close_matches():
    net = res_cnn(seed=0)
    with _clear(ValueError, "'layr2'", "did you mean", "'layer2'"):
        Slice(net, "layr2")
    with _clear(ValueError, "'layer1.cnv1'", "'layer1.conv1'"):
        Slice(net, Cut("layer1.cnv1"))


def test_unknown_layer_without_close_match_lists_valid_names():
    with _clear(ValueError, "'zzzzzzzz'", "valid names", "'stem'"):
        Slice(res_cnn(seed=0), "zzzzzzzz")


def test_slice_arguments(model):
    with _clear(ValueError, "realisation"):
        Slice(model, "2", realisation="fx")  # type: ignore[arg-type]
    with _clear(TypeError, "layer"):
        Slice(model, 2)  # type: ignore[arg-type]
    with _clear(ValueError, "at"):
        Cut("2", at="middle")  # type: ignore[arg-type]
    with _clear(TypeError, "h and g"):
        Slice.from_functions(model, "g")  # type: ignore[arg-type]


def test_non_module_model(x):
    with _clear(TypeError, "model"):
        input_influence(lambda t: t, 0, PointDoI(), x)  # type: ignore[arg-type]
    with _clear(TypeError, "model"):
        Slice(lambda t: t, "0")  # type: ignore[arg-type]


def test_module_given_where_a_slice_is_expected(model, x):
    with _clear(TypeError, "slice", "Slice(model, layer)"):
        internal_influence(model, 0, PointDoI(), x)  # type: ignore[arg-type]


# --- DoI parameters --------------------------------------------------------------------


@pytest.mark.parametrize("steps, kind", [(0, ValueError), (-1, ValueError), (1.5, TypeError), (True, TypeError), ("8", TypeError)])
def test_bad_steps(steps, kind):
    with _clear(kind, "steps"):
        LineDoI(steps=steps)


def test_trapezoid_needs_two_steps():
    with _clear(ValueError, "steps", "trapezoid"):
        LineDoI(steps=1, rule="trapezoid")


@pytest.mark.parametrize("rule", ["simpson", "", None, "Gauss-Legendre"])
def test_bad_rule(rule):
    with _clear(ValueError, "rule", "gauss-legendre"):
        LineDoI(rule=rule)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "sigma, kind",
    [(0, ValueError), (-0.1, ValueError), (float("nan"), ValueError), (float("inf"), ValueError), ("0.1", TypeError), (True, TypeError), (None, TypeError)],
)
def test_bad_sigma(sigma, kind):
    with _clear(kind, "sigma"):
        NoiseDoI(sigma=sigma)


@pytest.mark.parametrize("sampler", ["qmc", "Sobol", None, ""])
def test_bad_sampler(sampler):
    with _clear(ValueError, "sampler"):
        NoiseDoI(sampler=sampler)  # type: ignore[arg-type]


@pytest.mark.parametrize("samples, kind", [(0, ValueError), (-4, ValueError), (8.0, TypeError), (False, TypeError)])
def test_bad_samples(samples, kind):
    with _clear(kind, "samples"):
        NoiseDoI(samples=samples)


def test_replicates_must_divide_samples():
    with _clear(ValueError, "replicates", "(4)", "(10)"):
        NoiseDoI(samples=10, replicates=4)
    with _clear(ValueError, "replicates"):
        NoiseDoI(samples=8, replicates=0)
    with _clear(TypeError, "replicates"):
        NoiseDoI(samples=8, replicates=2.0)  # type: ignore[arg-type]
    with _clear(ValueError, "replicates", "sobol"):
        NoiseDoI(samples=8, sampler="random", replicates=2)


@pytest.mark.parametrize("make", [LineDoI, NoiseDoI])
def test_bad_space(make):
    with _clear(ValueError, "space"):
        make(space="hidden")


@pytest.mark.parametrize("each", ["point", PointDoI, 3])
def test_bad_each(x, y, each):
    """``each`` must be a pointwise DoI instance (not a class, a string, a population)."""
    with _clear(TypeError, "each"):
        DatasetDoI(x, each=each)
    with _clear(TypeError, "each"):
        ClassDoI((x, y), 0, each=each)


def test_population_doi_is_not_a_valid_each(x):
    with _clear(TypeError, "each", "DatasetDoI"):
        DatasetDoI(x, each=DatasetDoI(x))


# --- query arguments -------------------------------------------------------------------


@pytest.mark.parametrize("batch_size, kind", [(0, ValueError), (-3, ValueError), (2.0, TypeError), (True, TypeError), (None, TypeError)])
def test_bad_batch_size(model, x, batch_size, kind):
    with _clear(kind, "batch_size"):
        input_influence(model, 0, PointDoI(), x, batch_size=batch_size)


def test_inputs_none_for_a_pointwise_doi(model):
    for doi in (PointDoI(), LineDoI(), NoiseDoI()):
        with _clear(ValueError, "inputs", "pass inputs"):
            input_influence(model, 0, doi)


def test_inputs_given_for_a_population_doi(model, x, y):
    for doi in (DatasetDoI(x), ClassDoI((x, y), 1)):
        with _clear(ValueError, "inputs", "inputs=None"):
            input_influence(model, 0, doi, x)


@pytest.mark.parametrize("layer", [None, "0", "2"])
@pytest.mark.parametrize(
    "make, owner",
    [
        (lambda x, y: (PointDoI(), x), "inputs"),
        (lambda x, y: (LineDoI(steps=3), x), "inputs"),
        (lambda x, y: (DatasetDoI(x), None), "doi: the data of DatasetDoI"),
        (lambda x, y: (ClassDoI((x, y), 1), None), "doi: the data of ClassDoI"),
        (lambda x, y: (DatasetDoI(TensorDataset(x, y), each=LineDoI(steps=3, space="slice")), None), "doi: the data of DatasetDoI"),
    ],
)
def test_points_that_do_not_fit_the_model(model, make, owner, layer):
    """Points of the wrong shape (here 5 features for a model of 6) name the data and
    the shape of one point, pointwise and pooled, at the input and at a layer."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(4, 5, generator=g), torch.tensor([0, 1, 0, 1])
    doi, inputs = make(x, y)
    with _clear(ValueError, owner, "(5,)", "mat1 and mat2"):
        internal_influence(Slice(model, layer), 0, doi, inputs)


@pytest.mark.parametrize("inputs, kind", [([[0.0] * 6], TypeError), ("x", TypeError), (torch.zeros(2, 6, dtype=torch.long), TypeError)])
def test_inputs_of_wrong_type(model, inputs, kind):
    with _clear(kind, "inputs"):
        input_influence(model, 0, PointDoI(), inputs)


@pytest.mark.parametrize("doi", ["line", None, LineDoI, 3])
def test_doi_of_wrong_type(model, x, doi):
    with _clear(TypeError, "doi"):
        input_influence(model, 0, doi, x)


def test_other_query_arguments(model, x):
    with _clear(TypeError, "seed"):
        input_influence(model, 0, PointDoI(), x, seed=1.5)
    with _clear(TypeError, "seed"):
        input_influence(model, 0, PointDoI(), x, seed=True)
    with _clear(TypeError, "dtype"):
        input_influence(model, 0, PointDoI(), x, dtype=torch.int64)
    with _clear(TypeError, "multiply_activation"):
        input_influence(model, 0, PointDoI(), x, multiply_activation=1)
    with _clear(ValueError, "device"):
        input_influence(model, 0, PointDoI(), x, device="not-a-device")


def test_unavailable_device(model, x):
    """A device this torch build or machine lacks: a ValueError naming ``device``, not
    torch's ``AssertionError("Torch not compiled with CUDA enabled")``."""
    if torch.cuda.is_available():
        device = f"cuda:{torch.cuda.device_count()}"  # one past the last GPU
    else:
        device = "cuda:0"
    with _clear(ValueError, "device", repr(device)):
        input_influence(model, 0, PointDoI(), x, device=device)


def test_function_slice_cannot_be_converted(model, x):
    """A slice from user functions cannot be copied to another dtype: asking for one
    names ``dtype`` instead of failing inside a matmul."""
    slc = Slice.from_functions(model[:2], model[2:], model=model)
    with _clear(ValueError, "dtype", "from_functions"):
        internal_influence(slc, 0, PointDoI(), x, dtype=torch.float64)
