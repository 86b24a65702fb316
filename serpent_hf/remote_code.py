"""The model's code, written into every saved checkpoint, so that transformers alone loads it:
`AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)` where serpent-hf is not installed.

transformers' dynamic-module loader reads `auto_map` in config.json ("module.Class" per Auto class),
takes that module from the checkpoint and, recursively, every module it imports relatively
(`from .x import y`), all from one flat folder. The package's files are written so that this flat
folder holds them unchanged: serpent_hf's modules import their siblings and `.modeling` (the
modeling/ package, written as modeling.py, whose `__init__` imports its own siblings as
`.block`, ...), and modeling/'s modules import only their siblings. So each file keeps its own
name and content; no copy of the code lives in the repository.

The files written are those the loader will ask for, found with its own reader of relative imports
and resolved through the import system, so this works from a wheel, an editable install, or a
checkpoint's own copy (a model loaded from its code saves that code again).
"""

import importlib.util
import shutil
from pathlib import Path

from transformers.dynamic_module_utils import get_relative_imports


def auto_map():
    """config.json's {Auto class: "module.Class"}. Every checkpoint names all four classes: a causal LM
    checkpoint also loads as the base model, or as the start of a classifier."""
    # Imported here, not at the top: the model modules import the config's, which imports this one.
    # transformers' loader reads these lines too, so loading any class of a checkpoint (the config
    # first) fetches all of its code, and a model loaded that way can save all of it again.
    from .configuration_serpent import SeRpEntConfig
    from .modeling_serpent import SeRpEntForCausalLM, SeRpEntModel
    from .modeling_serpent_classification import SeRpEntForSequenceClassification

    classes = {"AutoConfig": SeRpEntConfig, "AutoModel": SeRpEntModel, "AutoModelForCausalLM": SeRpEntForCausalLM,
               "AutoModelForSequenceClassification": SeRpEntForSequenceClassification}
    return {auto: f"{cls.__module__.rpartition('.')[2]}.{cls.__name__}" for auto, cls in classes.items()}


def _source(module_name):
    """(file, package that its relative imports are relative to) of an importable module."""
    spec = importlib.util.find_spec(module_name)
    if spec is None or spec.origin is None:
        raise ImportError(f"the checkpoint code needs the module {module_name}, which cannot be found")
    is_package = spec.submodule_search_locations is not None
    return Path(spec.origin), module_name if is_package else module_name.rpartition(".")[0]


def code_files():
    """{flat file name: source file} of this module and everything it imports relatively, which
    includes the modules of every `auto_map` class and all that they import."""
    files, pending = {}, [__name__]
    while pending:
        module_name = pending.pop()
        origin, package = _source(module_name)
        name = module_name.rpartition(".")[2] + ".py"
        if name in files:
            if files[name] != origin:
                raise ValueError(f"two modules would be written as {name} in a checkpoint: {files[name]} and "
                                 f"{origin}; the flat folder that transformers loads needs distinct module names")
            continue
        files[name] = origin
        for relative in get_relative_imports(origin):
            if not relative.isidentifier():  # `from ..x` or `from .x.y`: no such file in a flat folder
                raise ValueError(f"{origin} imports .{relative}; the checkpoint's flat folder only resolves "
                                 "`from .module import ...` of a module beside it")
            pending.append(f"{package}.{relative}")
    return files


def write_code(folder):
    """Copy the model's code into `folder` (a checkpoint)."""
    for name, origin in code_files().items():
        shutil.copyfile(origin, Path(folder) / name)
