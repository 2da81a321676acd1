"""No class of the package overrides a private method (one leading underscore) of `PreTrainedModel` or `Trainer`, or of
any library class between them and the package's class (LLaVA's model classes, which the captioner subclasses,
`GenerationMixin`, `nn.Module`): those hooks change without notice between releases. `_init_weights` is
transformers' documented hook."""

import importlib
import inspect
import pkgutil

import pytest
from transformers import LlavaModel, PreTrainedModel, Trainer

ALLOWED = {"_init_weights"}
BASES = (PreTrainedModel, Trainer)


def package_modules():
    """Every module of dali_hf, its `modeling` and `trainers` packages included (the demo too)."""
    names = {"dali_hf"}
    for package in ("dali_hf", "dali_hf.modeling", "dali_hf.trainers"):
        module = importlib.import_module(package)
        names.update(info.name for info in pkgutil.walk_packages(module.__path__, package + "."))
    return [importlib.import_module(name) for name in sorted(names)]


def project_classes(modules):
    """Classes defined by the package (not imported from a library), by qualified name."""
    classes = {}
    for module in modules:
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__.startswith("dali_hf"):
                classes[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return classes


def private_overrides(cls) -> list[str]:
    """`Class.method` for each private method of a library base that `cls` or a project class in its MRO
    defines again."""
    found = []
    for base in BASES:
        if not issubclass(cls, base):
            continue
        library = [klass for klass in cls.__mro__ if not klass.__module__.startswith("dali_hf")]
        library_methods = {name for klass in library for name, value in vars(klass).items() if callable(value)
                           or isinstance(value, (classmethod, staticmethod, property))}
        for klass in cls.__mro__:
            if not klass.__module__.startswith("dali_hf"):
                continue
            for name, value in vars(klass).items():
                is_method = callable(value) or isinstance(value, (classmethod, staticmethod, property))
                if (is_method and name.startswith("_") and not name.startswith("__") and name not in ALLOWED
                        and name in library_methods):
                    found.append(f"{klass.__module__}.{klass.__qualname__}.{name}")
    return sorted(set(found))


def test_walk_finds_the_package_models_and_trainers():
    classes = project_classes(package_modules())
    names = {name.rsplit(".", 1)[1] for name, cls in classes.items() if issubclass(cls, BASES)}
    assert {"LlavaAudioForConditionalGeneration", "LlavaAudioModel", "LlavaAudioAlignmentModel", "CavMaeAudioModel",
            "DistributionAlignmentTrainer", "PrefixTuningTrainer", "AudioVisualDistillationTrainer"} <= names


def test_no_private_method_of_pretrainedmodel_or_trainer_is_overridden():
    classes = project_classes(package_modules())
    overridden = [name for cls in classes.values() for name in private_overrides(cls)]
    assert overridden == [], f"private transformers hooks overridden: {overridden}"


@pytest.mark.parametrize("base,method", [(Trainer, "_load_from_checkpoint"),
                                         (PreTrainedModel, "_load_pretrained_model")])
def test_a_planted_override_is_named(base, method):
    planted = type("Planted", (base,), {method: lambda self, *args: None, "__module__": "dali_hf.planted"})
    assert private_overrides(planted) == [f"dali_hf.planted.Planted.{method}"]
    allowed = type("Allowed", (PreTrainedModel,), {"_init_weights": lambda self, module: None,
                                                  "_own_helper": lambda self: None, "__module__": "dali_hf.planted"})
    assert private_overrides(allowed) == []


def test_a_private_helper_of_a_library_model_class_is_named():
    """A private helper defined by a library model class (as LLaVA's, between `PreTrainedModel` and the captioner)
    is caught too when a package class defines it again."""
    library = type("LibraryModel", (LlavaModel,), {"_merge_features": lambda self: None,
                                                   "__module__": "transformers.planted"})
    planted = type("Planted", (library,), {"_merge_features": lambda self: None, "__module__": "dali_hf.planted"})
    assert private_overrides(planted) == ["dali_hf.planted.Planted._merge_features"]
