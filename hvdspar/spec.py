"""Build any compressor from a string, for command lines and configs.

    from_spec("gspar:rho=0.01")                  -> hvdspar.GSpar(rho=0.01)
    from_spec("topk:ratio=0.01,memory=true")     -> hvdspar.TopK(ratio=0.01, memory=True)
    from_spec("none"), from_spec("fp16")         -> Horovod's own Compression.none / .fp16

Grammar: NAME[:KEY=VALUE[,KEY=VALUE]...]; values are true/false, integers,
floats (1e-3 too) or bare words.
"""

import inspect
import re

_REGISTRY = {}


def register(cls, name=None):
    """Make ``cls`` (a Compressor subclass) available to from_spec under ``name``."""
    _REGISTRY[(name or cls.spec_name).lower()] = cls
    return cls


def available():
    """Names from_spec understands."""
    return sorted(set(_REGISTRY) | {"none", "fp16"})


def parse_value(text):
    """One spec value: true/false, none, an integer, a float, else the bare word."""
    low = text.strip().lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    if low in ("none", "null"):
        return None
    if re.fullmatch(r"[+-]?\d+", low):
        return int(low)
    try:
        return float(low)
    except ValueError:
        return text.strip()


def parse(spec):
    """'name:k=v,...' -> (name, {k: v}); raises ValueError naming the problem."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"hvdspar: a compressor spec must be a non-empty string, got {spec!r}")
    name, _, rest = spec.strip().partition(":")
    kwargs = {}
    items = [s.strip() for s in rest.split(",")] if rest.strip() else []
    for item in items:
        key, eq, value = item.partition("=")
        if not item:
            raise ValueError(f"hvdspar: an empty argument in compressor spec {spec!r} (a stray comma?)")
        if not eq or not key.strip():
            raise ValueError(f"hvdspar: bad argument {item!r} in compressor spec {spec!r}; expected key=value")
        if key.strip() in kwargs:
            raise ValueError(f"hvdspar: {key.strip()!r} is given twice in compressor spec {spec!r}")
        kwargs[key.strip()] = parse_value(value)
    return name.strip().lower(), kwargs


def from_spec(spec, **defaults):
    """A compressor from its spec string (see the module docstring).

    ``defaults`` (e.g. ``seed=1``) fill arguments that the compressor takes and
    the spec does not set; Horovod's none/fp16 ignore them.
    """
    name, kwargs = parse(spec)
    if name in ("none", "fp16"):
        if kwargs:
            raise ValueError(f"hvdspar: Horovod's {name!r} compression takes no arguments, got {kwargs}")
        from horovod.tensorflow.compression import Compression

        return getattr(Compression, name)
    if name not in _REGISTRY:
        raise ValueError(f"hvdspar: unknown compressor {name!r} in {spec!r}; known: {', '.join(available())}")
    cls = _REGISTRY[name]
    params = inspect.signature(cls.__init__).parameters
    kwargs = {**{k: v for k, v in defaults.items() if k in params and k != "self"}, **kwargs}
    unknown = [k for k in kwargs if k not in params or k == "self"]
    if unknown:
        allowed = [p for p in params if p != "self"]
        raise ValueError(f"hvdspar: {name!r} has no argument(s) {unknown}; it takes {allowed}")
    return cls(**kwargs)


def to_spec(compressor):
    """The spec string of a compressor (Horovod's none/fp16 included)."""
    if hasattr(compressor, "spec"):
        return compressor.spec()
    name = getattr(compressor, "__name__", type(compressor).__name__).lower()
    return {"nonecompressor": "none", "fp16compressor": "fp16"}.get(name, name)


def _register_builtins():
    from hvdspar.atomo import Atomo
    from hvdspar.gspar import GSpar, UniSp
    from hvdspar.powersgd import PowerSGD
    from hvdspar.quantize import QSGD, TernGrad
    from hvdspar.sign import EFSignSGD
    from hvdspar.topk import RandomK, TopK

    for cls in (GSpar, UniSp, TopK, RandomK, Atomo, QSGD, TernGrad, PowerSGD, EFSignSGD):
        register(cls)


_register_builtins()
