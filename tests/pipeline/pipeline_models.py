"""Bad (and good) artifacts for the pipeline's validation stages, built in milliseconds.

Nothing here is ever unpickled or loaded as code: the hostile pickle is written with
``pickle.dumps`` and only read back by the scanner under test.
"""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from pathlib import Path

import model_factory as mf
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class _RunsAShellCommand:
    """Unpickling this would call ``os.system("echo")``; it is only ever dumped."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("echo",))


def write_hostile_pickle(path: Path) -> Path:
    path.write_bytes(pickle.dumps(_RunsAShellCommand(), protocol=4))
    return path


def write_clean_pickle(path: Path) -> Path:
    path.write_bytes(pickle.dumps({"weights": [0.5, 1.5], "classes": 3}, protocol=4))
    return path


def write_torch_style_zip(path: Path, hostile: bool = True) -> Path:
    """PyTorch's zip layout: ``archive/data.pkl`` next to tensor storages."""
    payload = pickle.dumps(_RunsAShellCommand() if hostile else {"w": 1}, protocol=2)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", payload)
        archive.writestr("archive/version", "3\n")
    return path


def _set_external(tensor: TensorProto, location: str, length: int) -> None:
    """Point ``tensor`` at ``location`` by hand, as a hostile exporter could."""
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", "0"), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key = key
        entry.value = value


def make_external_weights_model(folder: Path, location: str, *, write_data_to: Path | None) -> Path:
    """The 10-class test classifier with its weights stored externally at ``location``.

    ``write_data_to`` is where the weight bytes really go (None: nowhere, a dangling reference).
    """
    folder.mkdir(parents=True, exist_ok=True)
    path = mf.make_classifier_model(folder / "model.onnx")
    model = onnx.load(str(path))
    weights = next(t for t in model.graph.initializer if t.name == "weights")
    data = numpy_helper.to_array(weights).astype(np.float32).tobytes()
    _set_external(weights, location, len(data))
    if write_data_to is not None:
        write_data_to.parent.mkdir(parents=True, exist_ok=True)
        write_data_to.write_bytes(data)
    path.write_bytes(model.SerializeToString())
    return path


def make_properly_external_model(folder: Path) -> Path:
    """A valid model whose weights live in ``weights.data`` beside it (what onnx.save writes)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = mf.make_classifier_model(folder / "model.onnx")
    model = onnx.load(str(path))
    onnx.save(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="weights.data",
        size_threshold=0,
    )
    return path


def make_subgraph_constant_escape_model(path: Path, location: str) -> Path:
    """An ``If`` whose then-branch holds a Constant tensor attribute stored at ``location``."""
    value = numpy_helper.from_array(np.ones(3, dtype=np.float32), "secret_constant")
    _set_external(value, location, 12)
    then_graph = helper.make_graph(
        [helper.make_node("Constant", [], ["then_out"], value=value)],
        "then",
        [],
        [helper.make_tensor_value_info("then_out", TensorProto.FLOAT, [3])],
    )
    else_graph = helper.make_graph(
        [
            helper.make_node(
                "Constant",
                [],
                ["else_out"],
                value=numpy_helper.from_array(np.zeros(3, dtype=np.float32)),
            )
        ],
        "else",
        [],
        [helper.make_tensor_value_info("else_out", TensorProto.FLOAT, [3])],
    )
    graph = helper.make_graph(
        [helper.make_node("If", ["cond"], ["out"], then_branch=then_graph, else_branch=else_graph)],
        "branchy",
        [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", mf.OPSET)])
    model.ir_version = mf.IR_VERSION
    path.write_bytes(model.SerializeToString())
    return path


def make_custom_op_model(path: Path, domain: str = "evil.ops") -> Path:
    """A classifier-shaped graph whose last step is an operator from ``domain``."""
    nodes = [
        helper.make_node("GlobalAveragePool", ["images"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("Backdoor", ["flat"], ["logits"], domain=domain),
    ]
    graph = helper.make_graph(
        nodes,
        "custom",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", mf.OPSET), helper.make_opsetid(domain, 1)],
    )
    model.ir_version = mf.IR_VERSION
    path.write_bytes(model.SerializeToString())
    return path


def make_local_function_model(path: Path, domain: str = "my.functions") -> Path:
    """A model calling a function it defines itself in ``domain``: no custom-op library needed."""
    function = helper.make_function(
        domain,
        "PoolAndFlatten",
        ["x"],
        ["y"],
        [
            helper.make_node("GlobalAveragePool", ["x"], ["p"]),
            helper.make_node("Flatten", ["p"], ["y"], axis=1),
        ],
        opset_imports=[helper.make_opsetid("", mf.OPSET)],
    )
    graph = helper.make_graph(
        [helper.make_node("PoolAndFlatten", ["images"], ["logits"], domain=domain)],
        "with_function",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", mf.OPSET), helper.make_opsetid(domain, 1)],
        functions=[function],
    )
    model.ir_version = mf.IR_VERSION
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def make_old_opset_model(path: Path) -> Path:
    """An identity-like classifier that imports default-domain opset 6."""
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["images"], ["pooled"])],
        "old",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("pooled", TensorProto.FLOAT, [1, 3, 1, 1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 6)])
    model.ir_version = 3
    path.write_bytes(model.SerializeToString())
    return path


def make_model_folder(target: Path, onnx_path: Path, *, task: str, labels: list[str]) -> Path:
    """A registered version's MLflow model folder, laid out as ``registry/card.py`` writes it."""
    from cvdeploy._hashing import file_sha256

    data = target / "data"
    (data / "reference_images").mkdir(parents=True)
    model_file = data / "model.onnx"
    model_file.write_bytes(onnx_path.read_bytes())
    (data / "reference_images" / "000.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    card = {
        "name": "demo",
        "task": task,
        "labels": labels,
        "input_size": [32, 32],
        "sha256": file_sha256(model_file),
        "onnx": "data/model.onnx",
    }
    (data / "model_card.json").write_text(json.dumps(card), encoding="utf-8")
    (target / "MLmodel").write_text(
        "flavors:\n  python_function:\n    loader_module: cvdeploy.registry.pyfunc\n"
        "    data: data\n",
        encoding="utf-8",
    )
    (target / "requirements.txt").write_text("cvdeploy\n", encoding="utf-8")
    (target / "python_env.yaml").write_text("python: 3.11\n", encoding="utf-8")
    return target


def write_old_protocol_pickle(path: Path, protocol: int, *, hostile: bool = True) -> Path:
    """A protocol 0 or 1 pickle: no ``\\x80`` header, so only its opcodes say it is pickle."""
    payload = _RunsAShellCommand() if hostile else {"weights": [0.5, 1.5], "classes": 3}
    path.write_bytes(pickle.dumps(payload, protocol=protocol))
    return path


def make_sparse_external_model(
    folder: Path,
    location: str,
    *,
    where: str = "attribute",
    part: str = "values",
    write_data: bool = False,
) -> Path:
    """A model holding the sparse tensor ``secret_sparse`` with its ``part`` stored externally.

    ``where`` is ``"attribute"`` (a ``Constant``'s ``sparse_value``) or ``"initializer"``
    (``graph.sparse_initializer``); ``write_data`` writes the bytes at ``location`` in ``folder``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    values = numpy_helper.from_array(np.array([1.0, 2.0], dtype=np.float32), "secret_sparse")
    indices = numpy_helper.from_array(np.array([1, 4], dtype=np.int64), "")
    sparse = helper.make_sparse_tensor(values, indices, [6])
    stored = sparse.values if part == "values" else sparse.indices
    data = numpy_helper.to_array(stored).tobytes()
    _set_external(stored, location, len(data))
    if write_data:
        (folder / location).write_bytes(data)
    output = [helper.make_tensor_value_info("out", TensorProto.FLOAT, [6])]
    if where == "attribute":
        node = helper.make_node("Constant", [], ["out"], sparse_value=sparse)
        graph = helper.make_graph([node], "sparse_attr", [], output)
    else:
        node = helper.make_node("Identity", ["secret_sparse"], ["out"])
        graph = helper.make_graph([node], "sparse_init", [], output, sparse_initializer=[sparse])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", mf.OPSET)])
    model.ir_version = mf.IR_VERSION
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def set_external_field(path: Path, tensor: str, key: str, value: str) -> Path:
    """Rewrite one ``external_data`` entry (``offset``, ``length``) of ``tensor`` in place."""
    model = onnx.load(str(path), load_external_data=False)
    target = next(t for t in model.graph.initializer if t.name == tensor)
    next(e for e in target.external_data if e.key == key).value = value
    path.write_bytes(model.SerializeToString())
    return path
