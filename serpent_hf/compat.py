"""What differs between the transformers releases we support (5.17 through the latest 5.x).

transformers 5.24 renamed the cache that models take and return from `past_key_values` to
`cache` (the old name still works there, with a deprecation warning). generate() looks for the
cache in a model's output under its own release's name only, so our outputs carry it under
that name (`CACHE_NAME`), and our forward methods accept either name.
"""

from dataclasses import field, fields, make_dataclass

from transformers.utils import ModelOutput

# From 5.24 on, ModelOutput answers the old name through a property that reads `cache`.
CACHE_NAME = "cache" if isinstance(getattr(ModelOutput, "past_key_values", None), property) else "past_key_values"


def resolve_cache(cache, past_key_values):
    """The cache passed under either name; two different caches at once are ambiguous. The same cache under both
    names is not: generate() before 5.24 keeps a cache given as `cache` and adds the returned one (the same
    object, advanced in place) as `past_key_values`."""
    if cache is not None and past_key_values is not None and cache is not past_key_values:
        raise ValueError("two different caches were passed, as `cache` and as `past_key_values`: pass one, not both")
    return cache if cache is not None else past_key_values


def cache_field_named_for_this_release(cls):
    """A ModelOutput dataclass with a field `cache`, as written, from transformers 5.24 on; before, the same class
    with that field named `past_key_values` (where generate() looks for it), in the same place."""
    if CACHE_NAME == "cache":
        return cls
    renamed = [(CACHE_NAME if f.name == "cache" else f.name, f.type, field(default=f.default)) for f in fields(cls)]
    old = make_dataclass(cls.__name__, renamed, bases=cls.__bases__, namespace={"__doc__": cls.__doc__})
    old.__module__, old.__qualname__ = cls.__module__, cls.__qualname__
    return old
