"""A finished run folder read back: its config, record and prompts, checked before anything is built.

`predict`, `export`, `inspect` and `eval --run` open runs through `open_run`, so a missing, truncated or
edited file is one error naming it: a `config.yaml` that does not match the config recorded in
`result.json` (a truncated file would otherwise be filled in silently with defaults), an unreadable
`prompts.safetensors`, prompts trained on other backbone weights.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tailprompt.backbone.checkpoints import error_summary
from tailprompt.engine.run_config import RunConfig
from tailprompt.files import FileReadError, read_json_object, read_safetensors, short_repr
from tailprompt.schema import ConfigError, from_dict, load_yaml

if TYPE_CHECKING:
    from torch import Tensor

    from tailprompt.backbone import FrozenVLM
    from tailprompt.prompts import PromptLearner

# Splits that were the training label space in records written before `split_roles` existed.
_LEGACY_TRAINING_SPLITS = ("base", "all", "source")


@dataclass
class SavedRun:
    run_dir: Path
    config: RunConfig
    result: dict[str, Any]
    prompts: dict[str, Tensor]  # prompts.safetensors: the learned parameters under reference names
    meta: dict[str, str]  # its metadata: backbone identity, learner, class names, template

    @property
    def training_split(self) -> str:
        roles = self.result.get("split_roles") or {}
        named = [n for n, role in roles.items() if isinstance(role, dict) and role.get("training")]
        if named:
            return named[0]
        present = [n for n in _LEGACY_TRAINING_SPLITS if n in (self.result.get("splits") or {})]
        if not present:
            raise FileReadError(f"{self.run_dir / 'result.json'}: no training split recorded")
        return present[0]

    @property
    def classnames(self) -> list[str]:
        """The class names of the label space the prompts were trained on, in label order."""
        names = (self.result["splits"].get(self.training_split) or {}).get("classnames")
        if isinstance(names, list) and names:
            return [str(n) for n in names]
        where = self.run_dir / "prompts.safetensors"
        try:
            names = json.loads(self.meta.get("classnames", "[]"))
        except json.JSONDecodeError:
            raise FileReadError(f"{where}: metadata 'classnames' is not valid JSON (expected a list of class "
                                f"names)") from None
        if not _names(names):
            raise FileReadError(f"{where}: no class names recorded (neither in result.json's training split nor in "
                                f"this file's metadata); predict with --classes FILE")
        return list(names)

    @property
    def template(self) -> str:
        """The dataset's hand template (`a photo of a {}.`); runs that did not record it load the dataset."""
        recorded = self.result.get("template") or self.meta.get("template")
        if isinstance(recorded, str) and "{}" in recorded:
            return recorded
        from tailprompt.data.registry import load_dataset
        from tailprompt.world import datasets as _world_datasets  # noqa: F401  (registers the world datasets)

        return load_dataset(self.config.data.name, self.config.data.root, self.config.data.options).template


def open_run(run_dir: str | Path) -> SavedRun:
    """Read and cross-check a finished run folder (`config.yaml`, `result.json`, `prompts.safetensors`)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileReadError(f"{run_dir}: not a run folder (expected OUTPUT_DIR/<run_id>/ of a finished run)")
    result_path = run_dir / "result.json"
    if not result_path.is_file():
        raise FileReadError(f"{result_path}: not found; {run_dir} is not a finished run (train it first)")
    result = read_json_object(result_path, "result file")
    check_result_shape(result, result_path)
    config_path = run_dir / "config.yaml"
    data = load_yaml(config_path)
    recorded = result.get("config")
    if isinstance(recorded, dict) and _plain(data) != _plain(recorded):
        missing = sorted(set(recorded) - set(data))
        hint = f"missing {', '.join(missing)}; truncated?" if missing else "edited after the run?"
        raise ConfigError(f"{config_path}: does not match the config recorded in {result_path.name} ({hint})")
    try:
        config = from_dict(RunConfig, data)
    except ConfigError as e:
        raise ConfigError(f"{config_path}: {e}") from None
    prompts, meta = read_safetensors(run_dir / "prompts.safetensors", "prompts file")
    return SavedRun(run_dir, config, result, prompts, meta)


def check_result_shape(result: dict[str, Any], path: Path) -> None:
    """The parts of a run's `result.json` that reading the run relies on, checked up front: `splits` maps
    split names to objects, `split_roles` (when present) split names to objects, class names are strings."""
    splits = result.get("splits")
    if not isinstance(splits, dict) or not splits:
        raise FileReadError(f"{path}: field 'splits' should map split names to their metrics, got "
                            f"{short_repr(splits)}; not a finished run's record")
    for name, split in splits.items():
        if not isinstance(split, dict):
            raise FileReadError(f"{path}: splits.{name} should be an object of metrics, got {short_repr(split)}")
        names = split.get("classnames")
        if names is not None and not _names(names):
            raise FileReadError(f"{path}: splits.{name}.classnames should be a list of class names (strings), got "
                                f"{short_repr(names)}")
    roles = result.get("split_roles")
    if roles is not None and not (isinstance(roles, dict) and all(isinstance(r, dict) for r in roles.values())):
        raise FileReadError(f"{path}: field 'split_roles' should map split names to objects, got {short_repr(roles)}")


def _names(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(n, str) and n for n in value)


def _plain(data: Any) -> Any:
    return json.loads(json.dumps(data, sort_keys=True, default=str))


def run_backbone(saved: SavedRun, device: str | None = None) -> FrozenVLM:
    """The run's backbone, checked to be the weights its prompts were trained on."""
    from dataclasses import replace

    from tailprompt.engine.run import BackboneCache

    cfg = saved.config.backbone if device is None else replace(saved.config.backbone, device=device)
    backbone = BackboneCache().get(cfg)
    trained_on = saved.meta.get("backbone_identity")
    if trained_on not in (None, backbone.identity):
        raise ConfigError(f"{saved.run_dir / 'prompts.safetensors'}: prompts were trained on backbone {trained_on}, "
                          f"but {cfg.name} now loads as {backbone.identity}")
    return backbone


def run_learner(saved: SavedRun, backbone: FrozenVLM, classnames: list[str] | None = None,
                template: str | None = None) -> PromptLearner:
    """The run's learner with its trained prompts, for `classnames` (default: its training classes)."""
    from tailprompt.prompts import build_learner

    names = list(classnames) if classnames is not None else saved.classnames
    cfg = saved.config
    learner = build_learner(cfg.learner.name, cfg.learner.options, backbone, names, template or saved.template)
    if cfg.init.from_run:  # a second stage (DPC) keeps the first stage's prompts: reload them, as training did
        from tailprompt.engine.run import initial_prompts

        learner.load_initial_state(initial_prompts(cfg, backbone, learner))
    load_prompts(learner, saved.prompts, saved.run_dir / "prompts.safetensors")
    if names != saved.classnames:  # a label space the prompts were not trained on (DPC mixes differently there)
        learner.set_classnames(names, template or saved.template, seen=False)
    learner.eval()
    return learner


def load_prompts(learner: PromptLearner, state: dict[str, Any], path: str | Path, initial: bool = False) -> None:
    """`learner.load_prompt_state(state)` (`load_initial_state` for a second stage's first-stage prompts); a
    state that does not fit (other learner, shapes, values) is an error naming `path`, the file it came from."""
    from tailprompt.prompts.common import PromptStateError

    try:
        (learner.load_initial_state if initial else learner.load_prompt_state)(state)
    except PromptStateError as e:
        raise PromptStateError(f"{path}: {e}") from None


def read_prompt_checkpoint(path: str | Path) -> dict[str, Any]:
    """A prompt state from a file: a reference (Dassl) checkpoint `model.pth.tar-N` saved with `torch.save`
    (`{"state_dict": ..., "epoch": ..., "optimizer": ..., "scheduler": ...}`), a bare state dict, or a
    `.safetensors` file (a run's prompts or an export). `torch.save` files are read with `weights_only=True`;
    Python objects beyond that (Dassl's pickled schedulers) load as inert stand-ins, never run."""
    import pickle
    import warnings

    import torch

    from tailprompt.files import reading, require_file

    path = Path(path)
    if path.suffix == ".safetensors":
        tensors, _ = read_safetensors(path, "prompt file")
        return tensors
    with reading(path, "prompt checkpoint"):
        require_file(path)
        try:
            with warnings.catch_warnings():  # torch's notes on pickle protocols are not the user's business
                warnings.simplefilter("ignore")
                data = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:  # globals beyond the allow-list (or no torch.save file at all)
            try:
                data = _tensors_beside_inert_objects(path)
            except Exception as e2:  # a stream the inert reader cannot follow either: anything can raise
                raise FileReadError(f"{path}: not a torch.save checkpoint of tensors (a plain pickle or another "
                                    f"format; {error_summary(e2)})") from None
        except (IsADirectoryError, PermissionError):
            raise  # `reading` names these
        except Exception as e:  # a cut zip archive is OSError(EINVAL); text or other formats raise anything
            raise FileReadError(f"{path}: truncated or not a torch.save checkpoint ({error_summary(e)})") from None
    inner = data.get("state_dict") if isinstance(data, dict) else None
    if isinstance(data, _Inert) or isinstance(inner, _Inert):
        where, stand_in = ("state_dict", inner) if isinstance(inner, _Inert) else ("the file", data)
        raise FileReadError(f"{path}: {where} holds a pickled {stand_in.pickled} object, expected a dict of "
                            f"tensors (Dassl's {{'state_dict': ...}} or a state dict)")
    if not isinstance(data, dict):
        raise FileReadError(f"{path}: expected a checkpoint dict (Dassl's {{'state_dict': ...}} or a state dict), "
                            f"got {type(data).__name__}")
    if "state_dict" in data and not isinstance(inner, dict):
        raise FileReadError(f"{path}: state_dict is {short_repr(inner, 40)}, expected a dict of tensors")
    return data


class _Inert(dict):
    """Stands in for any class or function a checkpoint pickles beyond torch's weights-only allow-list: built,
    filled and called, it does nothing (a dict, so a pickled dict subclass such as `defaultdict` fills it)."""

    pickled = "an object"  # `module.name` of the global it stands for, on the per-global subclasses

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()

    def __call__(self, *args: Any, **kwargs: Any) -> _Inert:
        return _Inert()

    def __setstate__(self, state: Any) -> None:
        pass

    def append(self, item: Any) -> None:
        pass

    def extend(self, items: Any) -> None:
        pass


def _tensors_beside_inert_objects(path: Path) -> Any:
    """`torch.load` of a checkpoint whose extra state pickles Python objects: Dassl's `save_model` stores its
    warm-up scheduler, whose state holds the successor scheduler and the optimiser as objects. Every global
    outside torch's weights-only allow-list is unpickled as an `_Inert` stand-in, so no code from the file
    runs; the tensors (`state_dict`) come back as `weights_only=True` would give them."""
    import pickle
    import types
    import warnings

    import torch
    from torch._weights_only_unpickler import _get_allowed_globals

    allowed = _get_allowed_globals()

    class Unpickler(pickle._Unpickler):  # the Python unpickler: its opcode table can be narrowed
        dispatch = dict(pickle._Unpickler.dispatch)

        def find_class(self, module: str, name: str) -> Any:
            # a stand-in class per global, so a message can say what was pickled where a tensor belongs
            return allowed.get(f"{module}.{name}") or type(name, (_Inert,), {"pickled": f"{module}.{name}"})

        def load_build(self) -> None:
            target = self.stack[-2]  # the state is on top, the object it would update below it
            if isinstance(target, (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType)):
                raise pickle.UnpicklingError("the file sets attributes of a class or function (BUILD on it)")
            super().load_build()

        dispatch[pickle.BUILD[0]] = load_build

    def load(file: Any, **kwargs: Any) -> Any:  # the legacy (non-zip) format's header records go through here
        return Unpickler(file, **kwargs).load()

    inert_pickle = types.ModuleType("tailprompt_inert_pickle")
    inert_pickle.Unpickler = Unpickler  # type: ignore[attr-defined]
    inert_pickle.load = load  # type: ignore[attr-defined]
    inert_pickle.UnpicklingError = pickle.UnpicklingError  # type: ignore[attr-defined]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=inert_pickle)
